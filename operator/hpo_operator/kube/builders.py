"""The objects the operator creates for a study: HPOTrials, trial Jobs and each trial's identity.

Pure functions from the study (a dict as the API returns it) to manifests; nothing here talks to
the API. Every name is deterministic, so a create repeated after a restart is a 409, never a copy.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import MetricsCollector
from ..trial_command import DEFAULT_TERMINATION_LOG, IMAGE_PYTHON, kube_literal, substitute, wrap
from .resources import (
    API,
    GPU,
    GROUP,
    RUN_LABEL,
    STUDY_LABEL,
    TRIAL_KIND,
    TRIAL_LABEL,
    TRIAL_PLURAL,
    created_claim_name,
    job_name,
    trial_identity_name,
    trial_name,
)
from .verdict import VERDICT_ANNOTATION, verdict_of, verdict_text

JSON = dict[str, Any]

# The environment variables the trial contract promises (docs/architecture.md); these replace any
# the template sets, except the checkpoint folder, which a template may point at its own volume.
# With spec.checkpoints the study's claim is mounted here in every trial pod, and the trial's
# checkpoint folder is on it (the template may not move it then).
CHECKPOINT_ROOT = "/tmp/hpo-checkpoints"
TEMPLATE_MAY_SET = frozenset({"HPO_CHECKPOINT_DIR"})
CHECKPOINT_MOUNT = "/hpo-checkpoints"
CHECKPOINT_VOLUME = "hpo-checkpoints"


@dataclass(frozen=True)
class Run:
    """One run of a trial: the first (from the HPOTrial's spec) or a resume (from its status)."""

    number: int = 0
    start_from: float | None = None
    stop_at: float | None = None
    final: bool = False


def run_of(trial: Mapping[str, Any]) -> Run:
    """The trial's current run, as the operator recorded it."""
    status = verdict_of(trial)
    number = int(status.get("run") or 0)
    if number == 0:
        stop_at = (trial.get("spec") or {}).get("stopAt")
        return Run(0, None, None if stop_at is None else float(stop_at), bool(status.get("final")))
    start, stop = status.get("startFrom"), status.get("stopAt")
    return Run(
        number,
        None if start is None else float(start),
        None if stop is None else float(stop),
        bool(status.get("final")),
    )


def checkpoint_claim(study: Mapping[str, Any]) -> str | None:
    """The claim the study's checkpoints live on, or None without spec.checkpoints."""
    ckpt = (study.get("spec") or {}).get("checkpoints")
    if not ckpt:
        return None
    return str(ckpt.get("claimName") or created_claim_name(study["metadata"]["name"]))


def checkpoint_path(study: Mapping[str, Any], trial: str) -> str:
    """A trial's checkpoint folder relative to the claim's root; the study's uid keeps a recreated
    study of the same name from resuming old checkpoints."""
    meta = study["metadata"]
    return f"{meta['name']}-{meta['uid']}/{trial}"


def cleanup_job_name(study: str) -> str:
    return f"{study}-checkpoint-cleanup"


# Pod settings of the trial template that the cleanup pod keeps: where it may run, and as whom (the
# files on the claim belong to the trials' user).
_CLEANUP_POD_KEYS = ("nodeSelector", "tolerations", "affinity", "imagePullSecrets", "securityContext")


def build_cleanup_job(study: Mapping[str, Any], trials: Sequence[str]) -> JSON | None:
    """A Job, owned by the study, that deletes ``trials``' checkpoint folders from the study's claim
    with the trial image's ``sh`` and ``rm``; None without a claim or a folder to delete."""
    claim = checkpoint_claim(study)
    if claim is None or not trials:
        return None
    meta = study["metadata"]
    template = study["spec"]["trialTemplate"].get("spec") or {}
    trial_container = (template.get("containers") or [{}])[0]
    container: JSON = {
        "name": "cleanup",
        "image": trial_container.get("image", ""),
        "command": [
            "sh",
            "-c",
            'rm -rf -- "$@"',
            "cleanup",
            *(f"{CHECKPOINT_MOUNT}/{checkpoint_path(study, t)}" for t in trials),
        ],
        "volumeMounts": [{"name": CHECKPOINT_VOLUME, "mountPath": CHECKPOINT_MOUNT}],
    }
    for key in ("securityContext", "imagePullPolicy"):
        if key in trial_container:
            container[key] = copy.deepcopy(trial_container[key])
    pod_spec: JSON = {key: copy.deepcopy(template[key]) for key in _CLEANUP_POD_KEYS if key in template}
    pod_spec |= {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "containers": [container],
        "volumes": [{"name": CHECKPOINT_VOLUME, "persistentVolumeClaim": {"claimName": claim}}],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": owned_by_study(study, cleanup_job_name(meta["name"])),
        "spec": {
            "backoffLimit": 2,
            "completions": 1,
            "parallelism": 1,
            "template": {"metadata": {"labels": labels(meta["name"])}, "spec": pod_spec},
        },
    }


def build_claim(study: Mapping[str, Any]) -> JSON | None:
    """The PersistentVolumeClaim the operator creates for spec.checkpoints.size, owned by the study."""
    ckpt = (study.get("spec") or {}).get("checkpoints") or {}
    if not ckpt.get("size") or ckpt.get("claimName"):
        return None
    meta = study["metadata"]
    spec: JSON = {
        "accessModes": list(ckpt.get("accessModes") or ["ReadWriteMany"]),
        "resources": {"requests": {"storage": ckpt["size"]}},
    }
    if ckpt.get("storageClassName"):
        spec["storageClassName"] = ckpt["storageClassName"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": owned_by_study(study, created_claim_name(meta["name"])),
        "spec": spec,
    }


def owned_by_study(study: Mapping[str, Any], name: str) -> JSON:
    """Metadata of an object of the study's: in its namespace, with its label, deleted with it."""
    meta = study["metadata"]
    return {
        "name": name,
        "namespace": meta["namespace"],
        "labels": labels(meta["name"]),
        "ownerReferences": [owner_reference(study)],
    }


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


def build_trial(
    study: Mapping[str, Any], index: int, params: Mapping[str, Any], stop_at: float | None = None
) -> JSON:
    """The HPOTrial of trial ``index``, owned by its study; ``stop_at``: its first run pauses there."""
    meta = study["metadata"]
    name = trial_name(meta["name"], index)
    return {
        "apiVersion": API,
        "kind": TRIAL_KIND,
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": labels(meta["name"], name),
            "annotations": {VERDICT_ANNOTATION: verdict_text({"phase": "Pending"})},
            "ownerReferences": [owner_reference(study)],
        },
        "spec": {
            "study": meta["name"],
            "index": index,
            "hyperparameters": dict(params),
            **({} if stop_at is None else {"stopAt": stop_at}),
        },
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
    if checkpoint_claim(study) is not None:
        values["HPO_CHECKPOINT_DIR"] = f"{CHECKPOINT_MOUNT}/{checkpoint_path(study, name)}"
    rungs = ((study.get("status") or {}).get("plan") or {}).get("rungs")
    if rungs:
        # The SDK sends a report reaching a rung at once and may hold the others a moment.
        values["HPO_RUNG_LEVELS"] = ",".join(_number_text(level) for level in rungs)
    if spec.get("goal") is not None:
        # A report that reaches the goal ends the study: the SDK sends it at once, never thinned.
        values["HPO_GOAL"] = _number_text(spec["goal"])
        values["HPO_GOAL_RESOURCE"] = _number_text(
            spec.get("goalResource") or spec.get("maximumResource", 10)
        )
        values["HPO_MODE"] = str(spec.get("mode", "max"))
    run = run_of(trial)
    if run.start_from is not None:
        values["HPO_START_RESOURCE"] = _number_text(run.start_from)
    if run.stop_at is not None:
        values["HPO_STOP_RESOURCE"] = _number_text(run.stop_at)
    return [{"name": k, "value": v} for k, v in values.items()]


def _number_text(value: float | int) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _with_env(container: JSON, env: list[JSON], may_set: frozenset[str] = TEMPLATE_MAY_SET) -> JSON:
    own = {e["name"] for e in container.get("env", [])}
    ours = {e["name"] for e in env}
    kept = [e for e in container.get("env", []) if e["name"] not in ours or e["name"] in may_set]
    added = [e for e in env if e["name"] not in own or e["name"] not in may_set]
    return {**container, "env": kept + added}


def _with_mount(container: JSON) -> JSON:
    mounts = [m for m in container.get("volumeMounts", []) if m.get("name") != CHECKPOINT_VOLUME]
    return {
        **container,
        "volumeMounts": [*mounts, {"name": CHECKPOINT_VOLUME, "mountPath": CHECKPOINT_MOUNT}],
    }


def _sets_gpus(containers: list[JSON]) -> bool:
    return any(
        GPU in (c.get("resources", {}).get(kind) or {}) for c in containers for kind in ("limits", "requests")
    )


def _with_params(container: JSON, params: Mapping[str, Any]) -> JSON:
    """The container with each ``${name}`` of its command and args replaced by the trial's value."""
    out = dict(container)
    for key in ("command", "args"):
        items = container.get(key)
        if isinstance(items, list):
            out[key] = [substitute(a, params, kube=True) if isinstance(a, str) else a for a in items]
    return out


def _with_collector(container: JSON, collector: MetricsCollector) -> JSON:
    """The container's command and args run by the metrics collector, from the image's python3
    (the image must hold hpo_trial, as the trial image does)."""
    termination_log = container.get("terminationMessagePath") or DEFAULT_TERMINATION_LOG
    user = [*(container.get("command") or []), *(container.get("args") or [])]
    wrapped = wrap(user, collector, IMAGE_PYTHON, termination_log)
    # The user's part keeps Kubernetes' $(VAR) expansion; the collector's own options are literal.
    own = len(wrapped) - len(user)
    out = {k: v for k, v in container.items() if k != "args"}
    out["command"] = [*(kube_literal(a) for a in wrapped[:own]), *user]
    return out


def metrics_collector(study: Mapping[str, Any]) -> MetricsCollector | None:
    """The study's spec.metricsCollector, or None (trials report with hpo_trial.report())."""
    raw = (study.get("spec") or {}).get("metricsCollector")
    return None if raw is None else MetricsCollector.model_validate(raw)


def pod_template(study: Mapping[str, Any], trial: Mapping[str, Any], service_account: str) -> JSON:
    """trialTemplate with the trial's hyper-parameters in its command lines, the metrics collector
    around the first container's command, and the trial environment, labels, restartPolicy and GPU
    limit applied."""
    template = copy.deepcopy(study["spec"]["trialTemplate"])
    spec: JSON = template.get("spec", {})
    meta: JSON = template.get("metadata", {})
    params = trial["spec"].get("hyperparameters") or {}
    spec["containers"] = [_with_params(c, params) for c in spec.get("containers", [])]
    collector = metrics_collector(study)
    if collector is not None and spec["containers"]:
        spec["containers"][0] = _with_collector(spec["containers"][0], collector)
    env = trial_env(study, trial)
    claim = checkpoint_claim(study)
    if claim is None:
        spec["containers"] = [_with_env(c, env) for c in spec.get("containers", [])]
    else:
        spec["containers"] = [_with_mount(_with_env(c, env, frozenset())) for c in spec.get("containers", [])]
        volumes = [v for v in spec.get("volumes", []) if v.get("name") != CHECKPOINT_VOLUME]
        spec["volumes"] = [
            *volumes,
            {"name": CHECKPOINT_VOLUME, "persistentVolumeClaim": {"claimName": claim}},
        ]
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
    # Always the account the reconcile chose (the policy checked the template's): the deprecated
    # serviceAccount field would otherwise name another.
    spec.pop("serviceAccount", None)
    spec["serviceAccountName"] = service_account
    trial_meta = trial["metadata"]
    meta["labels"] = {**(meta.get("labels") or {}), **labels(study["metadata"]["name"], trial_meta["name"])}
    run = run_of(trial).number
    if run > 0:  # a pod without the label is of the first run
        meta["labels"][RUN_LABEL] = str(run)
    return {"metadata": meta, "spec": spec}


def active_deadline_seconds(deadline: float | None, now: float) -> int | None:
    """Seconds from now to the study's deadline, rounded down so the Job never outlives the budget."""
    if deadline is None:
        return None
    return max(1, math.floor(deadline - now))


def build_job(study: Mapping[str, Any], trial: Mapping[str, Any], deadline: float | None, now: float) -> JSON:
    """The batch/v1 Job that runs the trial's current run, owned by its HPOTrial; it never retries a
    failed pod. ``deadline``: when the Job must end (the study's, or the final training's bound)."""
    meta = trial["metadata"]
    spec: JSON = {
        "backoffLimit": 0,
        "completions": 1,
        "parallelism": 1,
        "template": pod_template(study, trial, trial_account(study, trial["metadata"]["name"])),
    }
    seconds = active_deadline_seconds(deadline, now)
    if seconds is not None:
        spec["activeDeadlineSeconds"] = seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(meta["name"], run_of(trial).number),
            "namespace": meta["namespace"],
            "labels": labels(study["metadata"]["name"], meta["name"]),
            # A trial about to be created has no uid yet: its creator adds the reference then.
            **({"ownerReferences": [owner_reference(trial)]} if "uid" in meta else {}),
        },
        "spec": spec,
    }


def trial_account(study: Mapping[str, Any], trial: str) -> str:
    """The ServiceAccount a trial's pods run as: the one its template names (which the trial policy
    must allow, see policy.py), else the trial's own identity."""
    spec = (study["spec"].get("trialTemplate") or {}).get("spec") or {}
    return str(spec.get("serviceAccountName") or spec.get("serviceAccount") or trial_identity_name(trial))


def build_trial_identity(trial: Mapping[str, Any]) -> list[JSON]:
    """ServiceAccount, Role and RoleBinding with which the trial's pods may get and patch their own
    HPOTrial's status and nothing else; owned by the HPOTrial (which needs a uid: create it first)."""
    meta = trial["metadata"]
    name = trial_identity_name(meta["name"])
    common: JSON = {
        "name": name,
        "namespace": meta["namespace"],
        "labels": dict(meta.get("labels") or {}),
        **({"ownerReferences": [owner_reference(trial)]} if "uid" in meta else {}),
    }
    rbac = "rbac.authorization.k8s.io"
    # The account last: created in this order, an account that exists has its Role and binding, so
    # an operator stopped half way never leaves a pod running as an account without its rights.
    return [
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "Role",
            "metadata": dict(common),
            "rules": [
                {
                    "apiGroups": [GROUP],
                    "resources": [f"{TRIAL_PLURAL}/status"],
                    "resourceNames": [meta["name"]],
                    "verbs": ["get", "patch"],
                }
            ],
        },
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "RoleBinding",
            "metadata": dict(common),
            "roleRef": {"apiGroup": rbac, "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": meta["namespace"]}],
        },
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": dict(common)},
    ]
