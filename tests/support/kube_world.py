"""Studies, trials, Jobs, pods and worlds as the operator's reconcile reads them, for its unit tests.

The study starts at ``T0`` on the tests' clock; one epoch takes 1 s.
"""

from __future__ import annotations

from typing import Any

from hpo_operator.kube.capacity import Capacity
from hpo_operator.kube.observe import to_rfc3339
from hpo_operator.kube.verdict import VERDICT_ANNOTATION, verdict_text
from hpo_operator.kube.writes import World

JSON = dict[str, Any]
T0 = 1_800_000_000.0  # the study's start on the test's clock


def study(status: JSON | None = None, **spec: Any) -> JSON:
    return {
        "apiVersion": "hpo.dev/v1alpha1",
        "kind": "HPOStudy",
        "metadata": {"name": "s", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": {
            "metric": "accuracy",
            "hpSpace": {"x": {"paramType": "uniform", "range": [0, 1]}},
            "minimumResource": 1,
            "maximumResource": 9,
            "reductionFactor": 3,
            "budget": {"trainTime": "9s", "timeRatio": 10},  # 90s; one epoch takes 1s
            "trialTemplate": {"spec": {"containers": [{"name": "t", "image": "i"}]}},
            **spec,
        },
        "status": status if status is not None else {"budget": {"startedAt": to_rfc3339(T0, micro=True)}},
    }


def trial(
    index: int,
    *reports: tuple[float, float, float],
    phase: str | None = None,
    legacy: bool = False,
    **status: Any,
) -> JSON:
    """An HPOTrial whose status says ``phase`` and ``status``, as the operator recorded them in its
    verdict annotation (``legacy``: no annotation, as an operator before it wrote them)."""
    recorded = {
        "phase": phase or "Pending",
        **{k: v for k, v in status.items() if k not in ("resource", "lastValue")},
    }
    if phase in ("Completed", "Pruned", "Failed", "Stopped", "Paused"):
        recorded["reportsCounted"] = len(reports)
    annotations = {} if legacy else {VERDICT_ANNOTATION: verdict_text(recorded)}
    body: JSON = {
        "apiVersion": "hpo.dev/v1alpha1",
        "kind": "HPOTrial",
        "metadata": {"name": f"s-{index}", "namespace": "ns", "uid": f"t{index}", "annotations": annotations},
        "spec": {"study": "s", "index": index, "hyperparameters": {"x": 0.1 * index}},
        "status": {
            "reports": [
                {"seq": i, "resource": r, "value": v, "time": T0 + t} for i, (r, v, t) in enumerate(reports)
            ],
            **({"phase": phase} if phase else {}),
            **status,
        },
    }
    return body


def job(name: str, condition_type: str | None = None, reason: str = "") -> JSON:
    conditions = [{"type": condition_type, "status": "True", "reason": reason}] if condition_type else []
    return {
        "metadata": {"name": name},
        "spec": {"activeDeadlineSeconds": 50},
        "status": {"conditions": conditions},
    }


def pod(name: str, phase: str = "Running", exit_code: int | None = None, unschedulable: bool = False) -> JSON:
    state: JSON = {"running": {"startedAt": to_rfc3339(T0 + 1)}}
    if exit_code is not None:
        state = {"terminated": {"exitCode": exit_code, "reason": "Error", "startedAt": to_rfc3339(T0 + 1)}}
    status: JSON = {"phase": phase, "containerStatuses": [{"state": state}]}
    if unschedulable:
        status = {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/2 nodes"}
            ],
        }
    return {
        "metadata": {"name": f"{name}-pod", "creationTimestamp": "2027-01-01T00:00:00Z"},
        "status": status,
    }


def world(
    s: JSON,
    *trials: JSON,
    jobs: list[JSON] | None = None,
    pods: dict[str, list[JSON]] | None = None,
    free: int = 4,
    identities: dict[str, str] | None = None,
    token_secrets: bool = False,
) -> World:
    return World(
        study=s,
        trials=tuple(trials),
        jobs={j["metadata"]["name"]: j for j in jobs or []},
        pods={k: tuple(v) for k, v in (pods or {}).items()},
        capacity=Capacity(total=4, used=4 - free),
        identities=identities or {},
        token_secrets=token_secrets,
    )


def running(*trials: JSON) -> dict[str, Any]:
    names = [t["metadata"]["name"] for t in trials]
    return {"jobs": [job(n) for n in names], "pods": {n: [pod(n)] for n in names}}


def merge_patch(target: JSON, patch: JSON) -> JSON:
    """``target`` after a JSON merge patch (RFC 7386: None removes a key, objects merge), as the
    API server applies the operator's status writes."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_patch(out[key], value)
        else:
            out[key] = value
    return out
