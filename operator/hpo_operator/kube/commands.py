"""The operator's commands of the `hpo` CLI: `hpo operator` and `hpo crds`.

They import kopf and the Kubernetes client only when run, so the rest of `hpo` works without the
`operator` extra.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command(name="operator")
@click.option(
    "-n",
    "--namespace",
    "namespaces",
    multiple=True,
    help="Serve this namespace (repeatable); default: every namespace",
)
@click.option("--kubeconfig", default=None, help="Default: in-cluster, else $KUBECONFIG or ~/.kube/config")
@click.option("--liveness-port", type=click.IntRange(1, 65535), default=None, help="Serve /healthz here")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None, help="Serve /metrics here")
@click.option("--resync", type=click.FloatRange(min=1), default=30.0, show_default=True, help="Seconds")
@click.option(
    "--leader-elect",
    is_flag=True,
    help="Reconcile only while holding a Lease, so that several replicas can run (one leads)",
)
@click.option(
    "--leader-election-namespace",
    default=None,
    help="The Lease's namespace; default: $POD_NAMESPACE, else the pod's own, else default",
)
@click.option("--leader-election-id", default="hpo-operator", show_default=True, help="The Lease's name")
@click.option(
    "--allow-service-account",
    "allowed_accounts",
    multiple=True,
    metavar="NAMESPACE/NAME",
    help="A ServiceAccount trial templates may name (*/NAME: in every namespace); repeatable",
)
@click.option(
    "--allow-trial-setting",
    "allowed_settings",
    multiple=True,
    metavar="SETTING",
    help="Let trial templates use hostNamespaces, privileged, hostPath, hostPorts or unconfined; repeatable",
)
@click.option(
    "--allow-capability",
    "allowed_capabilities",
    multiple=True,
    metavar="CAP",
    help="A Linux capability trial containers may add beyond the baseline's; repeatable",
)
@click.option(
    "--no-watch-caches",
    "no_watch_caches",
    is_flag=True,
    help="Read the API in every reconcile instead of watch-fed caches (more API load; for comparisons)",
)
def operator_command(
    namespaces: tuple[str, ...],
    kubeconfig: str | None,
    liveness_port: int | None,
    metrics_port: int | None,
    resync: float,
    leader_elect: bool,
    leader_election_namespace: str | None,
    leader_election_id: str,
    allowed_accounts: tuple[str, ...],
    allowed_settings: tuple[str, ...],
    allowed_capabilities: tuple[str, ...],
    no_watch_caches: bool,
) -> None:
    """Run the operator: HPOStudy resources to GPU trial Jobs, until interrupted.

    Trial templates are held to the Pod Security baseline and to the trial's own identity unless
    the --allow-* options say otherwise (docs/security.md)."""
    from .policy import parse_policy

    try:
        policy = parse_policy(allowed_accounts, allowed_settings, allowed_capabilities)
    except ValueError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    try:
        from .engine import EngineSettings
        from .main import LeaderSettings, default_lease_namespace, run_operator
    except ImportError as err:
        click.echo(
            f"error: hpo operator needs the operator extra ({err}): pip install 'hpo-operator[operator]'"
        )
        sys.exit(2)
    leader = None
    if leader_elect:
        leader = LeaderSettings(leader_election_namespace or default_lease_namespace(), leader_election_id)
    settings = EngineSettings(resync_seconds=resync)
    run_operator(
        namespaces,
        kubeconfig,
        liveness_port,
        metrics_port,
        settings,
        leader,
        policy,
        watch_caches=not no_watch_caches,
    )


@click.command(name="crds")
@click.argument("directories", nargs=-1, type=click.Path(file_okay=False, path_type=Path))
@click.option("--check", is_flag=True, help="Only check that the files match the models (exit 1 if not)")
def crds_command(directories: tuple[Path, ...], check: bool) -> None:
    """Write the CRDs generated from the models into DIRECTORIES (default: crds)."""
    from .crd import main

    sys.exit(main([*map(str, directories), *(["--check"] if check else [])]))


def register(group: click.Group) -> None:
    group.add_command(operator_command)
    group.add_command(crds_command)
