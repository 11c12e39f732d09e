"""What `hpo status STUDY` and `hpo plot STUDY` do with a study in the cluster, shared by the `hpo`
commands and the kubectl plugin (kubectl_plugin.py): the flags that pick the cluster and namespace,
and reading the study. Errors are CommandError, which each command turns into its exit 2.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from .kube.reading import ClusterAccess, StudyRead

F = TypeVar("F", bound=Callable[..., Any])


class CommandError(Exception):
    """The command cannot do its work (an extra is missing, the cluster cannot be reached): exit 2."""


class NotAsked(CommandError):
    """The cluster could not be asked: the operator extra is missing, the kubeconfig or the API
    server is not there, or it refused."""


class NoSuchStudy(CommandError):
    """The API answered, and there is no HPOStudy of that name in the namespace."""

    def __init__(self, namespace: str) -> None:
        super().__init__(f"no such HPOStudy in namespace {namespace}")
        self.namespace = namespace


def require_matplotlib() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise CommandError("hpo plot needs matplotlib: pip install 'hpo-operator[plot]'")


def cluster_options(func: F) -> F:
    """-n/--namespace, --context and --kubeconfig, as kubectl names them."""
    options = [
        click.option(
            "-n", "--namespace", default=None, help="The HPOStudy's namespace [the context's, else default]"
        ),
        click.option("--context", default=None, help="The kubeconfig context to use [its current context]"),
        click.option(
            "--kubeconfig", default=None, help="The kubeconfig file [$KUBECONFIG, else ~/.kube/config]"
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def access_of(namespace: str | None, context: str | None, kubeconfig: str | None) -> ClusterAccess:
    from .kube.reading import ClusterAccess

    return ClusterAccess(kubeconfig=kubeconfig, context=context, namespace=namespace)


def read(name: str, access: ClusterAccess) -> StudyRead:
    """The study and its trials; raises NotAsked, or NoSuchStudy where the API says it is not there."""
    try:
        from .kube.reading import read_study
    except ImportError as err:
        raise NotAsked(
            f"cluster studies need the operator extra ({err}): pip install 'hpo-operator[operator]'"
        ) from None
    try:
        found = read_study(access, name)
    except Exception as err:  # no kubeconfig, no cluster, no rights: one line that says which
        raise NotAsked(f"the cluster cannot be asked: {err}") from None
    if found.study is None:
        raise NoSuchStudy(found.namespace)
    return found


def status_lines(name: str, access: ClusterAccess) -> list[str]:
    from .kube.show import render_study

    found = read(name, access)
    assert found.study is not None
    return render_study(found.study, found.trials)


def plot_study(name: str, access: ClusterAccess, output: Path | None) -> Path:
    """Draws the study to ``output`` (default ``./<name>.png``); returns the path written."""
    found = read(name, access)
    assert found.study is not None
    require_matplotlib()
    from .kube.curves import cluster_curves
    from .plot import save_plot

    curves = cluster_curves(found.study, found.trials, now=time.time())
    return save_plot(curves, output or Path(f"{name}.png"))
