"""Reading a study from the API for a person's commands (`hpo status|plot STUDY`, `kubectl hpo`):
the cluster, user and namespace picked as kubectl picks them.

The kubeconfig is --kubeconfig, else $KUBECONFIG (several files, merged), else ~/.kube/config; its
context --context, else its current context; the namespace -n, else the context's namespace, else
``default``. Without --kubeconfig and --context, inside a pod the pod's ServiceAccount is used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .resources import STUDY_LABEL
from .world import study_path, trial_path

JSON = dict[str, Any]


@dataclass(frozen=True)
class ClusterAccess:
    """The flags a cluster command was given (None: not given)."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None

    def merged(self, defaults: ClusterAccess) -> ClusterAccess:
        """These flags, and ``defaults``' where these are not given (a command's flags over its
        group's: `kubectl hpo -n NS status STUDY`)."""
        return ClusterAccess(
            kubeconfig=self.kubeconfig or defaults.kubeconfig,
            context=self.context or defaults.context,
            namespace=self.namespace or defaults.namespace,
        )


def context_namespace(
    contexts: list[Mapping[str, Any]], active: Mapping[str, Any] | None, name: str | None
) -> str:
    """The namespace of the context named ``name`` (None: the current one), else ``default``."""
    chosen = active if name is None else next((c for c in contexts if c.get("name") == name), None)
    return str(((chosen or {}).get("context") or {}).get("namespace") or "default")


def _namespace(access: ClusterAccess) -> str:
    if access.namespace:
        return access.namespace
    from kubernetes import config as kube_config

    try:
        contexts, active = kube_config.list_kube_config_contexts(config_file=access.kubeconfig)  # type: ignore[no-untyped-call]
    except (kube_config.ConfigException, OSError):
        return "default"  # in a pod without a kubeconfig
    return context_namespace(contexts, active, access.context)


@dataclass(frozen=True)
class StudyRead:
    """What was read: the HPOStudy (None: not there), its HPOTrials, and the namespace asked."""

    namespace: str
    study: JSON | None
    trials: list[JSON]


def read_study(access: ClusterAccess, name: str) -> StudyRead:
    """The HPOStudy and its HPOTrials. Raises where the kubeconfig is missing or unusable, or the API
    cannot be reached or refuses."""
    from .api import Api, load_configuration

    configuration = load_configuration(access.kubeconfig, access.context)
    namespace = _namespace(access)
    api = Api(configuration)
    study = api.get_or_none(study_path(namespace, name))
    if study is None:
        return StudyRead(namespace, None, [])
    trials = api.list(trial_path(namespace), labelSelector=f"{STUDY_LABEL}={name}")
    return StudyRead(namespace, study, trials)
