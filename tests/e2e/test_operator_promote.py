"""The promote variant and the final training end to end, against the local cluster.

A study with ``asha.variant: promote``, ``finalTraining.enabled`` and a checkpoint claim the operator
creates: trials pause at their rung, the best are resumed by a second Job from the same checkpoint
folder, and after HPO the best configuration trains on to R. The trials run the fixtures' fake
trainer, which honours HPO_START_RESOURCE and HPO_STOP_RESOURCE.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.cluster import LocalCluster
from tests.cluster.rest import Kube
from tests.cluster.waiting import wait_for
from tests.support.e2e_study import (
    PROMOTE_MAX_RESOURCE,
    create_study,
    promote_manifest,
    trials_of,
    wait_phase,
)
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.e2e

JSON = dict[str, Any]
MAX_RESOURCE = PROMOTE_MAX_RESOURCE
SLACK_SECONDS = 1.5  # the Job deadline is whole seconds and a report is written when its epoch ends


def by_time(trial: JSON) -> list[JSON]:
    return sorted((trial.get("status") or {}).get("reports") or [], key=lambda r: (r["time"], r["seq"]))


def test_promote_and_final_training(
    operator: OperatorProcess, cluster: LocalCluster, kube: Kube, namespace: str
) -> None:
    manifest = promote_manifest("promo")
    manifest["spec"]["checkpoints"]["keepFor"] = "0s"  # deleted at the end: the budget stays as it is
    create_study(kube, namespace, manifest)
    study = wait_phase(kube, namespace, "promo", {"Succeeded", "Failed"}, 80)
    status = study["status"]
    assert status["phase"] == "Succeeded", status
    trials = trials_of(kube, namespace)

    # Every trial's first run paused at the first rung; a promoted trial's second run started from
    # its checkpoint: its first report (seq 0 again) is at the resumed resource, not 1.
    assert all(t["spec"]["stopAt"] == 1 for t in trials)
    resumed = [t for t in trials if ((t.get("status") or {}).get("run") or 0) >= 1]
    assert resumed, [t.get("status") for t in trials]
    for t in resumed:
        firsts = [r for r in by_time(t) if r["seq"] == 0]
        assert len(firsts) >= 2, by_time(t)
        assert firsts[0]["resource"] == 1 and all(r["resource"] > 1 for r in firsts[1:]), firsts
    assert any(t["status"]["phase"] == "Paused" for t in trials)
    jobs = {j["metadata"]["name"] for j in kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs")["items"]}
    # Each resumed run had a Job of its own; a trial stopped during its run 1 (at the deadline) had
    # that Job deleted with its pods, which is the only way one may be missing.
    stopped_in_run1 = {
        t["metadata"]["name"]
        for t in resumed
        if t["status"]["run"] == 1 and t["status"]["phase"] in ("Stopped", "Pruned")
    }
    kept = [t for t in resumed if t["metadata"]["name"] not in stopped_in_run1]
    assert kept, [(t["metadata"]["name"], t["status"]["run"], t["status"]["phase"]) for t in resumed]
    missing = [
        (t["metadata"]["name"], t["status"]) for t in kept if f"{t['metadata']['name']}-run1" not in jobs
    ]
    assert not missing, (missing, sorted(jobs))

    # The final training: the best configuration trained on to R, after the HPO budget.
    final = status["final"]
    assert final["phase"] == "Succeeded" and final["resource"] == MAX_RESOURCE, final
    final_trial = next(t for t in trials if t["metadata"]["name"] == final["trial"])
    assert final_trial["status"]["phase"] == "Completed"
    assert max(r["resource"] for r in by_time(final_trial)) == MAX_RESOURCE
    # Either the best trial was trained on after HPO, or promotion had already taken it to R.
    trained_after = final_trial["status"].get("final") is True
    assert trained_after == ("startedAt" in final), (final, final_trial["status"])

    # Inside the budget: every report but the final training's was made before the deadline, and
    # the final training began at the end of HPO.
    deadline = _seconds(status["budget"]["deadline"])
    final_start = _seconds(final["startedAt"]) if trained_after else float("inf")
    assert final_start == float("inf") or final_start <= deadline + SLACK_SECONDS, (final, status["budget"])
    for t in trials:
        for r in by_time(t):
            if t is final_trial and r["time"] >= final_start:
                continue
            assert r["time"] <= deadline + SLACK_SECONDS, (t["metadata"]["name"], r, status["budget"])

    # The model is where status.final says: a folder on the claim the operator created.
    checkpoint = final["checkpoint"]
    assert checkpoint["claimName"] == "promo-checkpoints"
    claim = kube.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/promo-checkpoints")
    assert claim["metadata"]["ownerReferences"][0]["name"] == "promo"
    folder = Path(cluster.root) / "volumes" / namespace / checkpoint["claimName"] / checkpoint["path"]
    env = json.loads((folder / "env.json").read_text())
    assert env["HPO_CHECKPOINT_DIR"] == f"/hpo-checkpoints/{checkpoint['path']}"
    assert env.get("HPO_STOP_RESOURCE") == str(MAX_RESOURCE) and "HPO_START_RESOURCE" in env, env

    # Once the study is over (keepFor: 0s), a Job deletes every checkpoint folder but the model's.
    root = folder.parent
    wait_for(
        lambda: [p.name for p in root.iterdir()] == [final["trial"]] or None,
        60,
        0.2,
        lambda: f"checkpoint folders left: {sorted(p.name for p in root.iterdir())}",
    )
    cleanup = kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/promo-checkpoint-cleanup")
    assert cleanup["metadata"]["ownerReferences"][0]["name"] == "promo"


def _seconds(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


REFERENCE_MAX_RESOURCE = 4


def reference_manifest(name: str) -> JSON:
    """The reference trainer (torch, digits, the tiny model) with the promote variant: rungs 1 and 2
    (eta 2), R = 4, two trials at once, and the final training."""
    manifest = promote_manifest(name)
    spec = manifest["spec"]
    spec |= {
        "hpSpace": {
            "learning_parameters.learning_rate": {"paramType": "qloguniform", "range": [0.001, 0.3, 0.001]},
            "learning_parameters.batch_size": {"paramType": "qloguniform", "range": [16, 128, 16]},
        },
        "maximumResource": REFERENCE_MAX_RESOURCE,
        "reductionFactor": 2,
        "budget": {"deadline": "75s"},
        "parallelTrials": 2,
    }
    container = spec["trialTemplate"]["spec"]["containers"][0]
    container |= {
        "image": "hpo-trial:local",
        "command": ["python", "-m", "hpo_trial.train", "--dataset", "digits", "--model", "tiny"],
        "env": [{"name": "OMP_NUM_THREADS", "value": "1"}],
    }
    return manifest


def test_the_reference_trainer_resumes_from_its_checkpoint(
    operator: OperatorProcess, cluster: LocalCluster, kube: Kube, namespace: str
) -> None:
    create_study(kube, namespace, reference_manifest("ref"))
    study = wait_phase(kube, namespace, "ref", {"Succeeded", "Failed"}, 180)
    status = study["status"]
    assert status["phase"] == "Succeeded", status
    trials = trials_of(kube, namespace)

    # A promoted trial's next run loads the checkpoint its last run wrote: the run's first report
    # (seq 0 again) is the epoch after the pause, and no epoch is reported twice.
    resumed = [t for t in trials if ((t.get("status") or {}).get("run") or 0) >= 1]
    assert resumed, [(t["metadata"]["name"], t.get("status")) for t in trials]
    for t in resumed:
        reports = by_time(t)
        starts = [i for i, r in enumerate(reports) if r["seq"] == 0]
        assert len(starts) >= 2, reports
        for i in starts[1:]:
            assert reports[i]["resource"] == reports[i - 1]["resource"] + 1, reports
        resources = [r["resource"] for r in reports]
        assert resources == list(range(1, len(resources) + 1)), resources

    # Inside the budget: every report but the final training's came before the deadline.
    deadline = _seconds(status["budget"]["deadline"])
    final = status["final"]
    assert final["phase"] == "Succeeded" and final["resource"] == REFERENCE_MAX_RESOURCE, final
    final_start = _seconds(final["startedAt"]) if "startedAt" in final else float("inf")
    for t in trials:
        for r in by_time(t):
            if t["metadata"]["name"] == final["trial"] and r["time"] >= final_start:
                continue
            assert r["time"] <= deadline + SLACK_SECONDS, (t["metadata"]["name"], r, status["budget"])

    # The trained model is where status.final says: the trainer's checkpoint of epoch R.
    checkpoint = final["checkpoint"]
    folder = Path(cluster.root) / "volumes" / namespace / checkpoint["claimName"] / checkpoint["path"]
    assert (folder / f"epoch-{REFERENCE_MAX_RESOURCE:04d}.pt").is_file(), sorted(folder.iterdir())
