"""Raising the budget of a finished HPOStudy on the local cluster: it runs again, with new trials
only, and ends Succeeded again (docs/study-lifecycle.md, "Extending a finished study").

A `kubectl patch` of spec.budget is a merge patch of the study; the new budget counts from the
study's original start.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from tests.cluster.cluster import LocalCluster
from tests.cluster.rest import Kube
from tests.cluster.waiting import wait_for
from tests.support.e2e_study import (
    JSON,
    PROMOTE_MAX_RESOURCE,
    PodWatch,
    create_study,
    get_study,
    promote_manifest,
    study_manifest,
    study_path,
    trials_of,
    wait_phase,
)
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.e2e


def _seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def raise_budget(kube: Kube, namespace: str, name: str, deadline: str) -> JSON:
    """Patch the deadline of a finished study; wait for it to run again and finish again."""
    kube.patch(study_path(namespace, name), {"spec": {"budget": {"deadline": deadline}}})

    def finished_again() -> JSON | None:
        study = get_study(kube, namespace, name)
        status = study.get("status") or {}
        again = status.get("observedGeneration") == study["metadata"]["generation"]
        return study if again and status.get("phase") in ("Succeeded", "Failed") else None

    study: JSON = wait_for(
        finished_again,
        120,
        0.2,
        lambda: f"{name} finished again: {get_study(kube, namespace, name)['status']}",
    )
    return study


def conditions(status: JSON) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def study_events(kube: Kube, namespace: str, name: str) -> list[str]:
    events = kube.get(f"/api/v1/namespaces/{namespace}/events")["items"]
    return [e["reason"] for e in events if e["involvedObject"].get("name") == name]


def jobs_by_name(kube: Kube, namespace: str) -> dict[str, str]:
    items = kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs")["items"]
    return {j["metadata"]["name"]: j["metadata"]["uid"] for j in items}


def test_a_raised_budget_continues_a_succeeded_study_without_rerunning_a_trial(
    operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    with PodWatch(kube, namespace) as watch:
        create_study(kube, namespace, study_manifest("grow", deadline="15s", parallel=2))
        first = wait_phase(kube, namespace, "grow", {"Succeeded", "Failed"}, 60)["status"]
        assert first["phase"] == "Succeeded", first
        wait_for(lambda: all(p.gone or p.ended for p in watch.pods.values()), 30, 0.2, "trial pods ended")
        before = {t["metadata"]["name"]: t for t in trials_of(kube, namespace, "grow")}
        pods_before = dict(watch.added_per_trial)
        jobs_before = jobs_by_name(kube, namespace)

        study = raise_budget(kube, namespace, "grow", "40s")
        wait_for(lambda: all(p.gone or p.ended for p in watch.pods.values()), 30, 0.2, "trial pods ended")
    status = study["status"]
    assert status["phase"] == "Succeeded", status
    trials = trials_of(kube, namespace, "grow")
    assert len(trials) > len(before), (len(trials), sorted(before))
    print(
        f"\nextended 15s -> 40s: {len(before)} trials -> {len(trials)}, "
        f"best {first['best']} -> {status['best']}"
    )

    # The new budget counts from the original start; the status and an event say what happened.
    budget = status["budget"]
    assert budget["startedAt"] == first["budget"]["startedAt"]
    assert _seconds(budget["deadline"]) == pytest.approx(_seconds(budget["startedAt"]) + 40, abs=1)
    assert budget["previousDeadline"] == first["budget"]["deadline"]
    assert _seconds(budget["extendedAt"]) > _seconds(first["budget"]["finishedAt"])
    assert budget["finishedInsideSeconds"] >= 0, budget
    wanted = {
        "Extended": ("True", "BudgetRaised"),
        "Complete": ("True", "Succeeded"),
        "Ready": ("False", "Finished"),
    }
    assert {k: conditions(status)[k] for k in wanted} == wanted
    reasons = study_events(kube, namespace, "grow")
    assert "Extended" in reasons and reasons.count("StudySucceeded") == 2, reasons

    # No finished trial ran again: the same reports and phase, no second pod, no Job made anew.
    for name, old in before.items():
        now = next(t for t in trials if t["metadata"]["name"] == name)
        assert reports_of(now) == reports_of(old), name
        assert now["status"]["phase"] == old["status"]["phase"], name
        # (a trial stopped before its pod was created has none)
        assert watch.added_per_trial.get(name, 0) == pods_before.get(name, 0) <= 1, name
    jobs_after = jobs_by_name(kube, namespace)
    assert all(jobs_after.get(name, uid) == uid for name, uid in jobs_before.items()), (
        jobs_before,
        jobs_after,
    )
    assert not [j for j in jobs_after if j in before and j not in jobs_before]

    # The best moved only to something better: a higher level, or a better value at the same one
    # (on an equal value the lower index, an older trial, keeps it).
    best, was = status["best"], first["best"]
    if best["trial"] == was["trial"]:
        assert best == was
    else:
        assert (best["resource"], best["value"]) > (was["resource"], was["value"]), (was, best)
        assert best["trial"] not in before, (was, best)


def test_a_paused_trial_is_resumed_from_its_checkpoint_after_an_extension(
    operator: OperatorProcess, cluster: LocalCluster, kube: Kube, namespace: str
) -> None:
    manifest = promote_manifest("regrow", deadline="20s")
    # Every configuration scores the same (the fake trainer's score reads x alone), so at a rung a
    # trial recorded earlier ranks first: the trials paused before the extension are promoted
    # before any trial it starts.
    manifest["spec"]["hpSpace"] = {
        "x": {"paramType": "choice", "range": [0.3]},
        "y": {"paramType": "uniform", "range": [0.0, 1.0]},
    }
    create_study(kube, namespace, manifest)
    first = wait_phase(kube, namespace, "regrow", {"Succeeded", "Failed"}, 90)["status"]
    assert first["phase"] == "Succeeded", first
    before = {t["metadata"]["name"]: t for t in trials_of(kube, namespace, "regrow")}
    paused = {n: t for n, t in before.items() if t["status"]["phase"] == "Paused"}
    assert paused, {n: t["status"]["phase"] for n, t in before.items()}

    # Without spec.checkpoints.keepFor the checkpoints of a finished study stay: no clean-up Job.
    root = Path(cluster.root) / "volumes" / namespace / "regrow-checkpoints"
    folders = {n: root / first["final"]["checkpoint"]["path"].rsplit("/", 1)[0] / n for n in paused}
    assert all((f / "env.json").is_file() for f in folders.values()), sorted(root.rglob("*"))
    cleanup = f"/apis/batch/v1/namespaces/{namespace}/jobs/regrow-checkpoint-cleanup"
    assert kube.get_or_none(cleanup) is None

    study = raise_budget(kube, namespace, "regrow", "50s")
    status = study["status"]
    assert status["phase"] == "Succeeded", status
    trials = {t["metadata"]["name"]: t for t in trials_of(kube, namespace, "regrow")}
    assert len(trials) > len(before)

    # A trial paused before the extension ran again from where it paused, in the same folder.
    resumed = {n: trials[n] for n, t in paused.items() if run_of(trials[n]) > run_of(t)}
    assert resumed, {n: trials[n]["status"] for n in paused}
    print(
        f"\nextended 20s -> 50s: {len(before)} trials -> {len(trials)}, {len(paused)} paused, "
        f"resumed {sorted(resumed)}"
    )
    for name, trial in resumed.items():
        old = paused[name]["status"]
        reports = reports_of(trial)
        assert reports[: len(old["reports"])] == old["reports"], name  # nothing reported is lost
        paused_at = max(r["resource"] for r in old["reports"])
        assert min(r["resource"] for r in reports[len(old["reports"]) :]) == paused_at + 1, reports
        # The latest run's environment, in the folder the paused run wrote (promoted once more, it
        # starts further on).
        env = json.loads((folders[name] / "env.json").read_text())
        assert float(env["HPO_START_RESOURCE"]) >= paused_at, env
        assert env["HPO_CHECKPOINT_DIR"].endswith(f"/{name}"), env
        job = f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}-run{run_of(trial)}"
        # A run promoted a moment before the deadline may be stopped there, with or without its Job.
        shown = trial["status"]
        stopped = shown.get("phase") == "Stopped" and shown.get("reason") == "Deadline"
        assert stopped or kube.get_or_none(job) is not None, shown

    # The other finished trials are as they were; the model is still the best's, trained to R.
    for name, old in before.items():
        if old["status"]["phase"] != "Paused":
            assert reports_of(trials[name]) == reports_of(old), name
    final = status["final"]
    assert final["phase"] == "Succeeded" and final["resource"] == PROMOTE_MAX_RESOURCE, final
    assert final["trial"] == status["best"]["trial"]
    assert kube.get_or_none(cleanup) is None


def reports_of(trial: JSON) -> list[JSON]:
    return list((trial.get("status") or {}).get("reports") or [])


def run_of(trial: JSON) -> int:
    return int((trial.get("status") or {}).get("run") or 0)
