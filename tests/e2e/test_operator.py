"""The operator end to end: HPOStudy in, GPU trial Jobs out, against the local cluster (2 nodes x 2 GPUs).

The trials run a small trainer built on the SDK (a quadratic in ``x``, a report every fraction of
a second), so a study takes seconds; the operator runs as a subprocess with the chart's RBAC
(tests/e2e/conftest.py). Times of pod events are taken from a watch in the test process.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.cluster.cluster import LocalCluster
from tests.cluster.rest import ApiError, Kube
from tests.cluster.waiting import wait_for
from tests.support.e2e_study import (
    GROUP_PATH,
    JSON,
    PodWatch,
    Samples,
    create_study,
    expected_best,
    first_report_at,
    next_pod_latencies,
    reporting,
    sample,
    scrape,
    study_manifest,
    summary,
    trials_of,
    wait_phase,
)
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.e2e

# --- the tests -------------------------------------------------------------------------------------


def test_study_runs_to_success_inside_its_budget_and_prunes_fast(
    operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    started = time.time()
    scraped_before = scrape(operator)
    requests_before = api_requests(scraped_before)
    with PodWatch(kube, namespace) as watch:
        create_study(kube, namespace, study_manifest("digits", deadline="40s"))
        study = wait_phase(kube, namespace, "digits", {"Succeeded", "Failed"}, 90)
        wait_for(
            lambda: all(p.gone or p.ended for p in watch.pods.values()), 30, 0.2, "every trial pod ended"
        )
    status = study["status"]
    assert status["phase"] == "Succeeded", status
    trials = trials_of(kube, namespace)
    assert len(trials) >= 6, [t["metadata"]["name"] for t in trials]

    # Inside the budget, and the budget says by how much.
    budget = status["budget"]
    assert budget["finishedInsideSeconds"] >= 0, budget
    assert budget["usedSeconds"] <= budget["budgetSeconds"], budget

    # At most the 4 GPUs' worth of trial pods at once, and the GPUs were used.
    assert 3 <= watch.max_at_once("running") <= 4, watch.max_at_once("running")
    assert watch.max_at_once("added") <= 4, watch.max_at_once("added")
    assert all(n == 1 for n in watch.running_per_trial.values()), watch.running_per_trial

    # The best in status agrees with the reports.
    plan = status["plan"]
    name, value = expected_best(trials, [*plan["rungs"], plan["maximumResource"]])
    assert (status["best"]["trial"], status["best"]["value"]) == (name, value), status["best"]
    best_trial = next(t for t in trials if t["metadata"]["name"] == name)
    assert status["best"]["hyperparameters"] == best_trial["spec"]["hyperparameters"]

    # Pruned trials' pods stopped within seconds of the report that pruned them: deleted by the Job
    # controller, or ended on their own first (such a pod stays with its kept Job, as a completed
    # trial's does, and holds no GPU).
    pods = watch.by_trial()
    pruned = [t for t in trials if t["status"].get("phase") == "Pruned"]
    assert pruned, "a study of this size prunes"
    to_deleting, to_stopped = [], []
    for trial in pruned:
        reported = first_report_at(trial, plan["rungs"][trial["status"]["rung"]])["time"]
        pod = pods[trial["metadata"]["name"]]
        assert pod.gone is not None or pod.ended is not None, f"{trial['metadata']['name']}'s pod still runs"
        if pod.deleting is not None:
            to_deleting.append(pod.deleting - reported)
        to_stopped.append(pod.holds_gpu_until() - reported)
    print()
    print(summary("pruning report -> pod deletionTimestamp", to_deleting))
    print(summary("pruning report -> pod gone or ended", to_stopped))
    print(summary("trial pod end -> next trial pod created", next_pod_latencies(watch)))
    print(f"study: {len(trials)} trials, {len(pruned)} pruned, {time.time() - started:.1f}s, budget {budget}")
    print(f"trials with more than one pod: { ({t: n for t, n in watch.added_per_trial.items() if n > 1}) }")
    assert max(to_stopped) < 5, to_stopped
    # Their Jobs stay, scaled to no pod and without a deadline that would fail them at the study's.
    listed = kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs")["items"]
    jobs = {j["metadata"]["name"]: j for j in listed}
    for trial in pruned:
        spec = jobs[trial["metadata"]["name"]]["spec"]
        assert spec["parallelism"] == 0 and "activeDeadlineSeconds" not in spec, spec

    # Events for humans: starts, prunes, the finish.
    events = kube.get(f"/api/v1/namespaces/{namespace}/events")["items"]
    reasons = {e["reason"] for e in events if e["involvedObject"].get("kind") == "HPOStudy"}
    assert {"TrialStarted", "TrialPruned", "StudySucceeded"} <= reasons, reasons

    # The operator's metrics agree with the API (the operator ran the whole study: its counters
    # started before it). The gauges follow the status write of the study's last reconcile.
    study_labels = {"namespace": namespace, "study": "digits"}

    def finished_in_metrics() -> Samples | None:
        samples = scrape(operator)
        return samples if sample(samples, "hpo_study_phase", **study_labels, phase="Succeeded") == 1 else None

    samples = wait_for(finished_in_metrics, 10, 0.2, "hpo_study_phase Succeeded in /metrics")
    assert sample(samples, "hpo_trials_started_total", **study_labels) == len(trials)
    assert sample(samples, "hpo_trials_finished_total", **study_labels, outcome="pruned") == len(pruned)
    finished = sum(
        sample(samples, "hpo_trials_finished_total", **study_labels, outcome=o)
        for o in ("completed", "pruned", "failed", "stopped")
    )
    assert finished == len(trials), {k: v for k, v in samples.items() if k[0] == "hpo_trials_finished_total"}
    assert (
        sample(samples, "hpo_study_best_value", **study_labels, metric="accuracy") == status["best"]["value"]
    )
    assert sample(samples, "hpo_decision_latency_seconds_count") > 0
    # The reconciles read the operator's watch-fed caches: over the whole study the only reads are
    # the periodic listing of the studies (the trials' ServiceAccounts are watched too), and the
    # server's version, read once in the operator's life at its first reconcile.
    made = {k: v - requests_before.get(k, 0) for k, v in api_requests(samples).items()}
    made = {k: v for k, v in made.items() if v}
    reads = {k: v for k, v in made.items() if k[0] in ("get", "list")}
    count = ("hpo_reconcile_duration_seconds_count", frozenset())
    reconciles = samples[count] - scraped_before.get(count, 0)
    assert set(reads) <= {("list", "hpostudies"), ("get", "version")}, reads
    assert reads.get(("get", "version"), 0) <= 1, reads
    assert reads.get(("list", "hpostudies"), 0) < reconciles / 4, (reads, reconciles)
    assert made.get(("patch", "hpostudies"), 0) > 0, made  # the counts do count this operator
    assert operator.get("/healthz", operator.port) == (200, "ok\n")


def api_requests(samples: Samples) -> dict[tuple[str, str], float]:
    """The operator's API requests so far, by (verb, resource)."""
    counts: dict[tuple[str, str], float] = {}
    for (name, labels), value in samples.items():
        if name == "hpo_kube_api_request_duration_seconds_count":
            tags = dict(labels)
            counts[(tags["verb"], tags["resource"])] = value
    return counts


def test_parallel_trials_one_runs_one_trial_at_a_time(
    operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    with PodWatch(kube, namespace) as watch:
        create_study(
            kube, namespace, study_manifest("sequential", deadline="15s", parallel=1, max_resource=3)
        )
        study = wait_phase(kube, namespace, "sequential", {"Succeeded", "Failed"}, 60)
        wait_for(
            lambda: all(p.gone or p.ended for p in watch.pods.values()), 30, 0.2, "every trial pod ended"
        )
    assert study["status"]["phase"] == "Succeeded", study["status"]
    assert len(watch.pods) >= 3
    assert watch.max_at_once("running") == 1
    assert watch.max_at_once("added") == 1
    print()
    print(summary("sequential: trial pod end -> next trial pod created", next_pod_latencies(watch)))


def test_a_long_run_writes_the_reports_that_decide_and_few_others(
    operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    # 27 reports a run, at most 3 spaced points: the SDK writes the first two, the first at each
    # rung, the last, and a few between (trial_image/README.md); the decisions and the best are
    # those of every report, since none that can change them is left out.
    manifest = study_manifest("thin", deadline="20s", max_resource=27, epoch_seconds=0.05)
    container = manifest["spec"]["trialTemplate"]["spec"]["containers"][0]
    container["env"].append({"name": "HPO_STATUS_POINTS", "value": "3"})
    create_study(kube, namespace, manifest)
    status = wait_phase(kube, namespace, "thin", {"Succeeded", "Failed"}, 60)["status"]
    assert status["phase"] == "Succeeded", status
    plan = status["plan"]
    levels = [*plan["rungs"], plan["maximumResource"]]
    assert levels == [1, 3, 9, 27], plan
    trials = [t for t in trials_of(kube, namespace, "thin") if (t.get("status") or {}).get("reports")]
    bound = 3 + len(plan["rungs"]) + 3
    for trial in trials:
        written = sorted(r["resource"] for r in trial["status"]["reports"])
        assert len(written) == len(set(written)) <= bound, (trial["metadata"]["name"], written)
        # The trainer reports 1, 2, ... so the first report at or past a level is at the level.
        assert written[:2] == [r for r in (1, 2) if r <= max(written)], written
        assert all(level in written for level in levels if level <= max(written)), written
    completed = [t for t in trials if t["status"].get("phase") == "Completed"]
    assert completed, [(t["metadata"]["name"], t["status"].get("phase")) for t in trials]
    assert all(max(r["resource"] for r in t["status"]["reports"]) == 27 for t in completed)
    for trial in trials:
        if trial["status"].get("phase") == "Pruned":
            rung = plan["rungs"][trial["status"]["rung"]]
            assert first_report_at(trial, rung)["resource"] == rung, trial["status"]
    name, value = expected_best(trials, levels)
    assert (status["best"]["trial"], status["best"]["value"]) == (name, value), status["best"]


def test_invalid_study_gets_its_condition_and_no_pod(
    operator: OperatorProcess, cluster: LocalCluster, kube: Kube, namespace: str
) -> None:
    # Wrong types never get in: the CRD's schema rejects them at apply.
    bad_type = study_manifest("typo")
    bad_type["spec"]["maximumResource"] = "ten"
    with pytest.raises(ApiError) as rejected:
        create_study(kube, namespace, bad_type)
    assert rejected.value.status == 422 and "maximumResource" in rejected.value.body

    # Well-typed but wrong: the operator says every problem in a condition and starts nothing.
    space = {
        "lr": {"paramType": "loguniform", "range": [0, 0.1]},
        "bs": {"paramType": "quniform", "range": [64, 32, 2]},
    }
    create_study(kube, namespace, study_manifest("invalid", hp_space=space))
    study = wait_phase(kube, namespace, "invalid", {"Failed", "Succeeded", "Running"}, 20)
    status = study["status"]
    assert status["phase"] == "Failed", status
    invalid = next(c for c in status["conditions"] if c["type"] == "Invalid")
    assert invalid["status"] == "True" and invalid["reason"] == "InvalidSpec"
    assert "spec.hpSpace.lr" in invalid["message"] and "spec.hpSpace.bs" in invalid["message"], invalid
    assert trials_of(kube, namespace) == []
    assert kube.get(f"/api/v1/namespaces/{namespace}/pods")["items"] == []
    assert kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs")["items"] == []


def test_deleting_a_study_leaves_nothing_behind(
    operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    create_study(kube, namespace, study_manifest("doomed", deadline="60s"))
    wait_for(
        lambda: any(
            (p.get("status") or {}).get("phase") == "Running"
            for p in kube.get(f"/api/v1/namespaces/{namespace}/pods")["items"]
        ),
        30,
        0.2,
        "a running trial pod",
    )
    kube.delete(f"{GROUP_PATH}/namespaces/{namespace}/hpostudies/doomed")
    selector = {"labelSelector": "hpo.dev/study=doomed"}
    leftovers: list[Callable[[], list[JSON]]] = [
        lambda: trials_of(kube, namespace),
        lambda: kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs", **selector)["items"],
        lambda: kube.get(f"/api/v1/namespaces/{namespace}/pods", **selector)["items"],
        lambda: kube.get(f"/api/v1/namespaces/{namespace}/serviceaccounts", **selector)["items"],
        lambda: kube.get(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles", **selector)[
            "items"
        ],
        lambda: kube.get(
            f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings", **selector
        )["items"],
    ]
    # The garbage collector picks up a new CRD's objects on its next discovery (up to 30s).
    wait_for(
        lambda: not any(f() for f in leftovers),
        90,
        0.5,
        lambda: f"leftovers: {[len(f()) for f in leftovers]}",
    )


def test_operator_killed_mid_study_finishes_it_without_a_duplicate(
    operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    with PodWatch(kube, namespace) as watch:
        create_study(kube, namespace, study_manifest("survivor", deadline="30s", parallel=2))
        wait_for(lambda: reporting(kube, namespace) >= 2, 30, 0.2, "two trials reporting")
        before = {t["metadata"]["name"]: t["spec"]["hyperparameters"] for t in trials_of(kube, namespace)}
        reports_before = sum(
            len((t.get("status") or {}).get("reports") or []) for t in trials_of(kube, namespace)
        )
        operator.kill()
        # Trials keep training and reporting while no operator runs.
        wait_for(
            lambda: (
                sum(len((t.get("status") or {}).get("reports") or []) for t in trials_of(kube, namespace))
                > reports_before + 2
            ),
            30,
            0.2,
            "reports while the operator is down",
        )
        operator.start()
        study = wait_phase(kube, namespace, "survivor", {"Succeeded", "Failed"}, 60)
        wait_for(
            lambda: all(p.gone or p.ended for p in watch.pods.values()), 30, 0.2, "every trial pod ended"
        )
    assert study["status"]["phase"] == "Succeeded", study["status"]
    trials = trials_of(kube, namespace)
    indices = [int(t["spec"]["index"]) for t in trials]
    assert indices == list(range(len(trials))), indices
    assert all(n == 1 for n in watch.running_per_trial.values()), watch.running_per_trial
    assert set(watch.added_per_trial) == {t["metadata"]["name"] for t in trials}
    after = {t["metadata"]["name"]: t["spec"]["hyperparameters"] for t in trials}
    assert {k: after[k] for k in before} == before
    assert study["status"]["trials"]["total"] == len(trials) > len(before)
    assert watch.max_at_once("added") <= 2
    # No report lost: each trial's seq numbers run 0..n-1.
    for t in trials:
        seqs = sorted(r["seq"] for r in t["status"].get("reports") or [])
        assert seqs == list(range(len(seqs))), (t["metadata"]["name"], seqs)
