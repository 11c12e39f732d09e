"""`kubectl hpo`: the kubectl plugin, an executable `kubectl-hpo` installed with the package.

kubectl runs ``kubectl-hpo`` with every argument after ``hpo``, and leaves its own flags to it: the
cluster commands here take kubectl's --kubeconfig, --context and -n/--namespace (before or after
the subcommand) and pick the cluster and namespace as kubectl does (kube/reading.py). A STUDY is
always an HPOStudy's name, never a local folder (that is `hpo status|plot DIR`).
"""

from __future__ import annotations

from pathlib import Path

import click

from .cli import fail, manifest
from .cluster_commands import CommandError, access_of, cluster_options, plot_study, status_lines
from .kube.reading import ClusterAccess


def _access(
    ctx: click.Context, namespace: str | None, context: str | None, kubeconfig: str | None
) -> ClusterAccess:
    """The command's flags over the group's (`kubectl hpo -n NS status STUDY`)."""
    group: ClusterAccess = ctx.find_object(ClusterAccess) or ClusterAccess()
    return access_of(namespace, context, kubeconfig).merged(group)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hpo-operator")
@cluster_options
@click.pass_context
def plugin(ctx: click.Context, namespace: str | None, context: str | None, kubeconfig: str | None) -> None:
    """HPOStudies in the cluster: `kubectl hpo status STUDY`, `kubectl hpo plot STUDY`.

    kubectl's --kubeconfig, --context and -n/--namespace pick the cluster and the namespace."""
    ctx.obj = access_of(namespace, context, kubeconfig)


@plugin.command(name="status")
@click.argument("study")
@cluster_options
@click.pass_context
def status_command(
    ctx: click.Context, study: str, namespace: str | None, context: str | None, kubeconfig: str | None
) -> None:
    """Show an HPOStudy: its phase, conditions, plan, budget, best, and the table of its trials."""
    try:
        lines = status_lines(study, _access(ctx, namespace, context, kubeconfig))
    except CommandError as err:
        fail(f"{study}: {err}")
    for line in lines:
        click.echo(line)


@plugin.command(name="plot")
@click.argument("study")
@cluster_options
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None, help="[./STUDY.png]"
)
@click.pass_context
def plot_command(
    ctx: click.Context,
    study: str,
    namespace: str | None,
    context: str | None,
    kubeconfig: str | None,
    output: Path | None,
) -> None:
    """Draw an HPOStudy's learning curves and its trials over time to a PNG."""
    try:
        written = plot_study(study, _access(ctx, namespace, context, kubeconfig), output)
    except CommandError as err:
        fail(f"{study}: {err}")
    click.echo(str(written))


# `kubectl hpo manifest CONFIG ... | kubectl apply -f -`: the same command as `hpo manifest`.
plugin.add_command(manifest)


def main() -> None:
    """The executable's entry point: its usage lines say `kubectl hpo`, as it is run."""
    plugin(prog_name="kubectl hpo")
