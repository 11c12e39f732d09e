"""The objects the operator creates for a study: HPOTrials, trial Jobs and the trials' API access.

Pure functions from the study (a dict as the API returns it) to manifests; nothing here talks to
the API. Every name is deterministic, so a create repeated after a restart is a 409, never a copy.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from typing import Any

from .resources import (
    API,
    GPU,
    GROUP,
    STUDY_LABEL,
    TRIAL_KIND,
    TRIAL_LABEL,
    TRIAL_PLURAL,
    trial_access_name,
    trial_name,
)

JSON = dict[str, Any]

# The environment variables the trial contract promises (docs/architecture.md); these replace any
# the template sets, except the checkpoint folder, which a template may point at its own volume.
CHECKPOINT_ROOT = "/tmp/hpo-checkpoints"
TEMPLATE_MAY_SET = frozenset({"HPO_CHECKPOINT_DIR"})


def owner_reference(owner: Mapping[str, Any]) -> JSON:
    """A controller reference, so the garbage collector deletes the child with its owner."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
    }


def labels(study: str, trial: str | None = None) -> dict[str, str]:
    out = {STUDY_LABEL: study}
    if trial is not None:
        out[TRIAL_LABEL] = trial
    return out


def build_trial(study: Mapping[str, Any], index: int, params: Mapping[str, Any]) -> JSON:
    """The HPOTrial of trial ``index``, owned by its study."""
    meta = study["metadata"]
    name = trial_name(meta["name"], index)
    return {
        "apiVersion": API,
        "kind": TRIAL_KIND,
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": labels(meta["name"], name),
            "ownerReferences": [owner_reference(study)],
        },
        "spec": {"study": meta["name"], "index": index, "hyperparameters": dict(params)},
    }


def trial_env(study: Mapping[str, Any], trial: Mapping[str, Any]) -> list[JSON]:
    meta, spec = study["metadata"], study["spec"]
    name = trial["metadata"]["name"]
    values = {
        "HPO_STUDY": meta["name"],
        "HPO_TRIAL": name,
        "HPO_NAMESPACE": meta["namespace"],
        "HPO_HYPERPARAMETERS": json.dumps(trial["spec"]["hyperparameters"], sort_keys=True),
        "HPO_METRIC": spec.get("metric", "mAP"),
        "HPO_MAX_RESOURCE": _number_text(spec.get("maximumResource", 10)),
        # The study's uid keeps a recreated study of the same name from resuming old checkpoints.
        "HPO_CHECKPOINT_DIR": f"{CHECKPOINT_ROOT}/{meta['namespace']}/{meta['name']}-{meta['uid']}/{name}",
    }
    return [{"name": k, "value": v} for k, v in values.items()]


def _number_text(value: float | int) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _with_env(container: JSON, env: list[JSON]) -> JSON:
    own = {e["name"] for e in container.get("env", [])}
    ours = {e["name"] for e in env}
    kept = [e for e in container.get("env", []) if e["name"] not in ours or e["name"] in TEMPLATE_MAY_SET]
    added = [e for e in env if e["name"] not in own or e["name"] not in TEMPLATE_MAY_SET]
    return {**container, "env": kept + added}


def _sets_gpus(containers: list[JSON]) -> bool:
    return any(
        GPU in (c.get("resources", {}).get(kind) or {}) for c in containers for kind in ("limits", "requests")
    )


def pod_template(study: Mapping[str, Any], trial: Mapping[str, Any], service_account: str) -> JSON:
    """trialTemplate with the trial environment, labels, restartPolicy and GPU limit applied."""
    template = copy.deepcopy(study["spec"]["trialTemplate"])
    spec: JSON = template.get("spec", {})
    meta: JSON = template.get("metadata", {})
    env = trial_env(study, trial)
    spec["containers"] = [_with_env(c, env) for c in spec.get("containers", [])]
    gpus = int(study["spec"].get("gpusPerTrial", 1))
    if (
        gpus > 0
        and spec["containers"]
        and not _sets_gpus(spec["containers"] + spec.get("initContainers", []))
    ):
        first = spec["containers"][0]
        resources = first.setdefault("resources", {})
        resources["limits"] = {**(resources.get("limits") or {}), GPU: str(gpus)}
    if spec.get("restartPolicy") not in ("Never", "OnFailure"):
        spec["restartPolicy"] = "Never"  # a Job's pod may not restart Always
    spec.setdefault("serviceAccountName", service_account)
    trial_meta = trial["metadata"]
    meta["labels"] = {**(meta.get("labels") or {}), **labels(study["metadata"]["name"], trial_meta["name"])}
    return {"metadata": meta, "spec": spec}


def active_deadline_seconds(deadline: float | None, now: float) -> int | None:
    """Seconds from now to the study's deadline, rounded down so the Job never outlives the budget."""
    if deadline is None:
        return None
    return max(1, math.floor(deadline - now))


def build_job(study: Mapping[str, Any], trial: Mapping[str, Any], deadline: float | None, now: float) -> JSON:
    """The batch/v1 Job that runs one trial, owned by its HPOTrial; it never retries a failed pod."""
    meta = trial["metadata"]
    spec: JSON = {
        "backoffLimit": 0,
        "completions": 1,
        "parallelism": 1,
        "template": pod_template(study, trial, trial_access_name(study["metadata"]["name"])),
    }
    seconds = active_deadline_seconds(deadline, now)
    if seconds is not None:
        spec["activeDeadlineSeconds"] = seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": labels(study["metadata"]["name"], meta["name"]),
            # A trial about to be created has no uid yet: its creator adds the reference then.
            **({"ownerReferences": [owner_reference(trial)]} if "uid" in meta else {}),
        },
        "spec": spec,
    }


def build_trial_access(study: Mapping[str, Any]) -> list[JSON]:
    """ServiceAccount, Role and RoleBinding with which trial pods may only get and patch their status."""
    meta = study["metadata"]
    name, namespace = trial_access_name(meta["name"]), meta["namespace"]
    common = {
        "name": name,
        "namespace": namespace,
        "labels": labels(meta["name"]),
        "ownerReferences": [owner_reference(study)],
    }
    rbac = "rbac.authorization.k8s.io"
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": dict(common)},
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "Role",
            "metadata": dict(common),
            "rules": [
                {"apiGroups": [GROUP], "resources": [f"{TRIAL_PLURAL}/status"], "verbs": ["get", "patch"]}
            ],
        },
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "RoleBinding",
            "metadata": dict(common),
            "roleRef": {"apiGroup": rbac, "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    ]
