"""Faults, bad specs and least privilege, against the local cluster (2 nodes x 2 GPUs).

Each test injects one fault into a running study (the operator SIGKILLed again and again, the
kube-apiserver restarted, trials that crash or are killed as if out of memory, a node lost, a
study deleted while the operator is down) and checks what is left afterwards: every trial once,
every report each trial process wrote kept in its HPOTrial, no Job or pod left running, and the
study's best equal to the best recomputed from the stored reports. docs/reliability.md is the table.

The trials run a fake trainer on the SDK (tests/support/logged_study.py) that also appends each
report it delivered (and its pid) to a file of its own, so that "no report lost" is checked against
what the trial processes wrote, not against what the operator saw.
"""

from __future__ import annotations

import itertools
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.cluster import LocalCluster
from tests.cluster.rest import ApiError, Kube
from tests.cluster.waiting import wait_for
from tests.support.e2e_study import sample, scrape
from tests.support.logged_study import (
    GROUP_PATH,
    JSON,
    can_i,
    create,
    get_study,
    manifest,
    pods_of,
    trials_of,
    wait_phase,
)
from tests.support.operator_process import (
    CHART,
    OPERATOR_NAMESPACE,
    SERVICE_ACCOUNT,
    OperatorProcess,
    helm_template,
)
from tests.support.spec_mutations import broken_specs

pytestmark = pytest.mark.e2e


def reports_written(log_dir: Path) -> dict[str, list[JSON]]:
    """What every trial process wrote: trial name -> its report lines."""
    return {
        path.stem: [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for path in sorted(log_dir.glob("*.jsonl"))
    }


def stored_reports(trial: JSON) -> list[JSON]:
    """The HPOTrial's reports, the first of each (seq, time), as the operator reads them."""
    seen: set[tuple[Any, Any]] = set()
    out = []
    for r in (trial.get("status") or {}).get("reports") or []:
        if (r["seq"], r["time"]) not in seen:
            seen.add((r["seq"], r["time"]))
            out.append(r)
    return out


def assert_no_report_lost(kube: Kube, namespace: str, log_dir: Path) -> int:
    """Every report a trial process wrote was delivered and is in its HPOTrial; returns how many."""
    trials = {t["metadata"]["name"]: t for t in trials_of(kube, namespace)}
    total = 0
    for name, lines in reports_written(log_dir).items():
        assert all(line["delivered"] for line in lines), (name, lines)
        wrote = Counter((line["resource"], line["value"]) for line in lines)
        kept = Counter((r["resource"], r["value"]) for r in stored_reports(trials[name]))
        assert not wrote - kept, f"{name}: written but not stored: {wrote - kept}"
        total += len(lines)
    return total


def assert_nothing_left_running(kube: Kube, namespace: str) -> None:
    """Every Job is owned by an existing HPOTrial, every pod by an existing Job, none still runs."""

    def running() -> list[str]:
        return [
            p["metadata"]["name"]
            for p in pods_of(kube, namespace)
            if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        ]

    def orphans() -> list[str]:
        trial_uids = {t["metadata"]["uid"] for t in trials_of(kube, namespace)}
        jobs = kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs")["items"]
        job_uids = {j["metadata"]["uid"] for j in jobs}
        owned_by = [({o["uid"] for o in x["metadata"].get("ownerReferences") or []}, x) for x in jobs]
        found = [f"Job {j['metadata']['name']}" for owners, j in owned_by if not owners & trial_uids]
        for pod in pods_of(kube, namespace):
            if not {o["uid"] for o in pod["metadata"].get("ownerReferences") or []} & job_uids:
                found.append(f"pod {pod['metadata']['name']}")
        return found

    wait_for(lambda: not running(), 30, 0.2, lambda: f"pods still running: {running()}")
    # A deleted Job's ended pod is the garbage collector's, which removes it in the background.
    wait_for(lambda: not orphans(), 30, 0.2, lambda: f"orphans: {orphans()}")


# The reconcile that finished a study read the trials up to a few seconds before it wrote
# finishedAt (a loaded machine makes a reconcile slow).
READ_MARGIN_SECONDS = 3.0


def best_of(study: JSON, trials: list[JSON], counted: Callable[[JSON], bool]) -> tuple[str, float] | None:
    """The documented rule over the reports ``counted`` keeps: the highest level (rung or R) any
    trial reached; among the trials there, the best first report at that level; ties to the lower
    index."""
    kept = {t["metadata"]["name"]: [r for r in stored_reports(t) if counted(r)] for t in trials}
    plan = study["status"]["plan"]
    levels = [*plan["rungs"], plan["maximumResource"]]
    sign = 1 if study["spec"]["mode"] == "max" else -1
    reached = {name: max(r["resource"] for r in reports) for name, reports in kept.items() if reports}
    if not reached:
        return None
    top = max(lv for lv in levels if any(res >= lv for res in reached.values()))
    candidates = []
    for t in trials:
        name = t["metadata"]["name"]
        if reached.get(name, 0) >= top:
            first = min((r for r in kept[name] if r["resource"] >= top), key=lambda r: r["time"])
            candidates.append((sign * first["value"], -int(t["spec"]["index"]), name, first["value"]))
    _, _, name, value = max(candidates)
    return name, value


def possible_bests(study: JSON, trials: list[JSON], log_dir: Path) -> set[tuple[str, float] | None]:
    """The bests the study may have finished with. The reconcile that finished it read the stored
    reports at some moment ``cut`` shortly before finishedAt: a report the trial process had been
    told was delivered by then counts, one made after it does not (a trial stopped at the deadline
    may still land a report; a finished study does not change for it), and one in flight across it
    (a report being retried, say) may go either way. Every cut in the window and every choice for
    the reports in flight at it is allowed; the trial processes' logs say when each was delivered."""
    finished = to_seconds(study["status"]["budget"]["finishedAt"])
    delivered_at: dict[tuple[str, float, float], float] = {}
    for name, lines in reports_written(log_dir).items():
        for line in lines:
            key = (name, line["resource"], line["value"])
            if "deliveredAt" in line:
                delivered_at[key] = max(delivered_at.get(key, 0.0), line["deliveredAt"])
    # (made, delivered) per stored report; a process killed before it logged its last delivery
    # leaves that report's delivery unknown: it may have landed any time up to the end.
    spans: dict[int, tuple[float, float]] = {
        id(r): (r["time"], delivered_at.get((t["metadata"]["name"], r["resource"], r["value"]), finished))
        for t in trials
        for r in stored_reports(t)
    }
    cuts = {finished - READ_MARGIN_SECONDS, finished}
    cuts |= {v for span in spans.values() for v in span if finished - READ_MARGIN_SECONDS <= v <= finished}
    found: set[tuple[str, float] | None] = set()
    for cut in cuts:
        sure = {r for r, (_, delivered) in spans.items() if delivered <= cut}
        in_flight = [r for r, (made, delivered) in spans.items() if made <= cut < delivered]
        assert len(in_flight) <= 10, f"{len(in_flight)} reports in flight at one moment"
        for chosen in itertools.product((False, True), repeat=len(in_flight)):
            counted = sure | {r for r, keep in zip(in_flight, chosen, strict=True) if keep}
            found.add(best_of(study, trials, lambda r, counted=counted: id(r) in counted))  # type: ignore[misc]
    return found


def to_seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def assert_best_matches_reports(kube: Kube, namespace: str, name: str, log_dir: Path) -> None:
    study = get_study(kube, namespace, name)
    trials = trials_of(kube, namespace, name)
    best = study["status"]["best"]
    assert (best["trial"], best["value"]) in possible_bests(study, trials, log_dir), best
    owner = next(t for t in trials if t["metadata"]["name"] == best["trial"])
    assert best["hyperparameters"] == owner["spec"]["hyperparameters"]


def assert_each_trial_once(kube: Kube, namespace: str, log_dir: Path) -> None:
    """Trial indices 0..n-1, distinct hyper-parameters, one Job each, one process each."""
    trials = trials_of(kube, namespace)
    assert [int(t["spec"]["index"]) for t in trials] == list(range(len(trials)))
    params = [json.dumps(t["spec"]["hyperparameters"], sort_keys=True) for t in trials]
    repeated = {p: [i for i, q in enumerate(params) if q == p] for p in params if params.count(p) > 1}
    assert not repeated, f"configurations tried by more than one trial (by index): {repeated}"
    processes = {name: {line["pid"] for line in lines} for name, lines in reports_written(log_dir).items()}
    assert all(len(pids) == 1 for pids in processes.values()), processes


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    path = tmp_path / "reports"
    path.mkdir()
    path.chmod(0o777)
    return path


# --- faults -------------------------------------------------------------------------------------


# Defined first (so run first), before the apiserver restart below: that restart takes every node
# NotReady at once, the node lifecycle controller enters and leaves its master disruption mode, and
# afterwards the 1.20 controller-manager here did not taint a node lost 48 s later (three runs of
# three: no NoExecute taint within 30 s), so the lost node's pods were never evicted.
def test_a_lost_node_requeues_its_trials_without_failing_them(
    operator: OperatorProcess, cluster: LocalCluster, kube: Kube, namespace: str, log_dir: Path
) -> None:
    lost = cluster.node_names[-1]

    def running_on_lost_node() -> list[str]:
        # Trials whose pod runs there and that have not reported yet: no verdict (pruning) can
        # settle them before the node is gone, so each must be requeued.
        quiet = {t["metadata"]["name"] for t in trials_of(kube, namespace) if not stored_reports(t)}
        return [
            p["metadata"]["labels"]["hpo.dev/trial"]
            for p in pods_of(kube, namespace)
            if p["spec"].get("nodeName") == lost
            and p["status"].get("phase") == "Running"
            and p["metadata"]["labels"].get("hpo.dev/trial") in quiet
        ]

    # An epoch of 1 s: a trial's first report comes more than a second after its pod runs.
    create(kube, namespace, manifest("nomad", log_dir, deadline="50s", epoch_seconds=1.0))
    try:
        on_lost = wait_for(running_on_lost_node, 30, 0.05, "a trial running on the node to lose")
        first_pods = {p["metadata"]["uid"] for p in pods_of(kube, namespace)}
        cluster.stop_node(lost)
        lost_at = time.time()

        def tainted_no_execute() -> bool:
            node = cluster.admin().get(f"/api/v1/nodes/{lost}")
            return any(t.get("effect") == "NoExecute" for t in node["spec"].get("taints") or [])

        # The node lifecycle controller taints the node once it is NotReady past its grace period
        # (10 s; its taint queue is rate-limited to a node per 10 s), well before the 50 s deadline.
        # Waited for on its own, so that a control plane that never evicts is named as the cause,
        # and the operator's own stop at the deadline cannot pass for an eviction.
        wait_for(tainted_no_execute, 30, 0.5, f"the control plane to taint the lost node {lost} NoExecute")
        # Evicted once the taint is past the pods' toleration (5 s).
        wait_for(
            lambda: all(
                p["metadata"].get("deletionTimestamp")
                for p in pods_of(kube, namespace)
                if p["spec"].get("nodeName") == lost
            ),
            30,
            0.5,
            "the lost node's pods evicted",
        )

        def requeued() -> list[str]:
            return [
                p["metadata"]["labels"]["hpo.dev/trial"]
                for p in pods_of(kube, namespace)
                if p["metadata"]["labels"].get("hpo.dev/trial") in on_lost
                and p["metadata"]["uid"] not in first_pods
            ]

        # Each trial of the lost node gets a new pod from its Job (it runs when a GPU is free).
        wait_for(lambda: set(requeued()) == set(on_lost), 60, 0.2, lambda: f"new pods for {on_lost}")
        study = wait_phase(kube, namespace, "nomad", {"Succeeded", "Failed"}, 90)
    finally:
        cluster.start_node(lost)
    status = study["status"]
    assert status["phase"] == "Succeeded", status
    assert status["trials"]["failed"] == 0, status["trials"]
    trials = {t["metadata"]["name"]: t for t in trials_of(kube, namespace)}
    for name in on_lost:
        assert trials[name]["status"]["phase"] != "Failed", trials[name]["status"]
    # Whether a requeued trial reported again before the deadline depends on when a GPU freed up.
    rerun = [n for n in on_lost if any(r["time"] > lost_at + 5 for r in stored_reports(trials[n]))]
    assert_nothing_left_running(kube, namespace)
    assert_no_report_lost(kube, namespace, log_dir)
    assert_best_matches_reports(kube, namespace, "nomad", log_dir)
    print(f"\nlost {lost}: {on_lost} requeued (new pods), {rerun} reported again before the deadline")


def test_operator_sigkilled_again_and_again_loses_nothing(
    operator: OperatorProcess, kube: Kube, namespace: str, log_dir: Path
) -> None:
    rng = random.Random(20240611)
    create(kube, namespace, manifest("survivor", log_dir, deadline="30s"))
    kills = []
    started = time.monotonic()
    for _ in range(4):
        time.sleep(rng.uniform(0.3, 4.0))  # the fault's moment, drawn from the seeded generator
        if get_study(kube, namespace, "survivor").get("status", {}).get("phase") in ("Succeeded", "Failed"):
            break
        operator.kill()
        kills.append(round(time.monotonic() - started, 1))
        time.sleep(rng.uniform(0.0, 2.0))  # down for a while: trials go on reporting
        operator.start()
    assert len(kills) >= 3, kills
    study = wait_phase(kube, namespace, "survivor", {"Succeeded", "Failed"}, 60)
    assert study["status"]["phase"] == "Succeeded", study["status"]
    assert_nothing_left_running(kube, namespace)
    assert_each_trial_once(kube, namespace, log_dir)
    written = assert_no_report_lost(kube, namespace, log_dir)
    assert_best_matches_reports(kube, namespace, "survivor", log_dir)
    print(f"\nkilled at {kills} s; {len(trials_of(kube, namespace))} trials, {written} reports kept")


def start_two_reporting(kube: Kube, namespace: str, log_dir: Path, name: str) -> None:
    """A 30 s study of two trials at once, returned once both have reported."""
    create(kube, namespace, manifest(name, log_dir, deadline="30s", parallel=2))
    wait_for(
        lambda: sum(bool(stored_reports(t)) for t in trials_of(kube, namespace)) >= 2,
        30,
        0.2,
        "two trials reporting",
    )


def test_apiserver_restart_mid_study_the_operator_reconnects_and_no_report_is_lost(
    operator: OperatorProcess, cluster: LocalCluster, kube: Kube, namespace: str, log_dir: Path
) -> None:
    pid = operator.proc.pid if operator.proc else None
    start_two_reporting(kube, namespace, log_dir, "steady")
    cluster.restart_apiserver(down_seconds=3)
    study = wait_phase(kube, namespace, "steady", {"Succeeded", "Failed"}, 90)
    assert study["status"]["phase"] == "Succeeded", study["status"]
    logs = assert_came_through(operator, pid, cluster, kube, namespace, log_dir, "steady")
    # The SDK did retry: some trial's report failed while the apiserver was away, then got through.
    assert any("retrying" in text for text in logs), "no report was retried"


def assert_came_through(
    operator: OperatorProcess,
    pid: int | None,
    cluster: LocalCluster,
    kube: Kube,
    namespace: str,
    log_dir: Path,
    study: str,
) -> list[str]:
    """The operator process that began the study is still up, and the study came through whole:
    nothing left running, no report lost, every trial once, the best recomputed from the reports.
    Returns the trials' container logs."""
    assert operator.alive() and operator.proc is not None and operator.proc.pid == pid, (
        "the operator process ended"
    )
    assert_nothing_left_running(kube, namespace)
    assert_no_report_lost(kube, namespace, log_dir)
    assert_each_trial_once(kube, namespace, log_dir)
    assert_best_matches_reports(kube, namespace, study, log_dir)
    return container_logs(cluster, namespace)


def container_logs(cluster: LocalCluster, namespace: str) -> list[str]:
    """What the namespace's containers wrote (the trials' SDK logs its failed attempts)."""
    return [p.read_text(errors="replace") for p in (cluster.log_dir / "containers").glob(f"{namespace}_*")]


def watch_failures(operator: OperatorProcess) -> float:
    """The operator's hpo_operator_watch_failures_total."""
    return sample(scrape(operator), "hpo_operator_watch_failures_total")


TRIALS_PATH = "/apis/hpo.dev/v1alpha1/hpotrials"


def serve(kube: Kube, plural: str, served: bool) -> None:
    """Serve the custom resource or not: its objects stay in etcd, but its paths answer a bare
    "404 page not found", as they do for a moment after an API server starts."""
    ops = [{"op": "replace", "path": "/spec/versions/0/served", "value": served}]
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{plural}.hpo.dev"
    kube.patch(path, ops, content_type="application/json-patch+json")


def test_hpotrials_not_served_after_an_apiserver_restart_kopf_runs_again_and_no_report_is_lost(
    operator: OperatorProcess, cluster: LocalCluster, kube: Kube, namespace: str, log_dir: Path
) -> None:
    pid = operator.proc.pid if operator.proc else None
    failures = watch_failures(operator)
    start_two_reporting(kube, namespace, log_dir, "unserved")
    # The restart ends every watch; their reconnection finds HPOTrials and HPOStudies not served
    # (404), as when an API server serves a custom resource a moment after it listens. The operator's
    # HPOTrial informer lists again until they are; kopf's HPOStudy watch ends kopf, whose next run
    # waits in its startup until both are served (kopf looks its resources up once). The garbage
    # collector, which sees the owners of the trials' Jobs answer 404 too, may delete those Jobs
    # meanwhile.
    serve(kube, "hpotrials", False)
    serve(kube, "hpostudies", False)
    try:
        cluster.restart_apiserver(down_seconds=1)
        wait_for(
            lambda: "has failed: 404 page not found" in operator.tail(100),
            30,
            0.1,
            lambda: f"kopf's HPOStudy watch meeting the 404; operator log:\n{operator.tail()}",
        )
        wait_for(
            lambda: (
                "watching hpotrials failed: GET /apis/hpo.dev/v1alpha1/hpotrials: 404" in operator.tail(200)
            ),
            30,
            0.1,
            lambda: f"the HPOTrial informer meeting the 404; operator log:\n{operator.tail()}",
        )
        wait_for(
            lambda: "hpotrials.hpo.dev/v1alpha1 not served yet" in operator.tail(30),
            30,
            0.1,
            lambda: f"the next run of kopf waiting for HPOTrials; operator log:\n{operator.tail()}",
        )
        # The trials stalled in their reports' back-off (up to 10 s between attempts) may have
        # slept through the window so far: kept unserved until one of them meets the 404.
        wait_for(
            lambda: any("not served" in text for text in container_logs(cluster, namespace)),
            30,
            0.2,
            "a trial's report meeting the 404",
        )
    finally:
        serve(kube, "hpostudies", True)
        serve(kube, "hpotrials", True)
    wait_for(
        lambda: watch_failures(operator) > failures,
        30,
        0.2,
        lambda: f"kopf run again; operator log:\n{operator.tail()}",
        ignore=(OSError,),
    )
    study = wait_phase(kube, namespace, "unserved", {"Succeeded", "Failed"}, 90)
    assert study["status"]["phase"] == "Succeeded", study["status"]
    # The reports the 404 refused were retried and got through once HPOTrials were back.
    assert_came_through(operator, pid, cluster, kube, namespace, log_dir, "unserved")
    assert "starting it again" in operator.tail(400)
    # The new run of kopf found its resource: none is left unwatched.
    assert "Unresolved resources" not in operator.log_path.read_text(errors="replace")


def test_crashed_and_oom_killed_trials_fail_with_their_exit_code_and_the_study_goes_on(
    operator: OperatorProcess, kube: Kube, namespace: str, log_dir: Path
) -> None:
    env = {"CRASH_EXIT": "1", "CRASH_KILL": "2"}
    create(kube, namespace, manifest("bumpy", log_dir, deadline="20s", env=env))
    study = wait_phase(kube, namespace, "bumpy", {"Succeeded", "Failed"}, 60)
    assert study["status"]["phase"] == "Succeeded", study["status"]
    trials = {t["spec"]["index"]: t["status"] for t in trials_of(kube, namespace)}
    assert (trials[1]["phase"], trials[1]["exitCode"], trials[1]["reason"]) == ("Failed", 3, "Error")
    assert (trials[2]["phase"], trials[2]["exitCode"]) == ("Failed", 137), trials[2]
    assert "exit code 137" in trials[2]["message"]
    assert study["status"]["trials"]["failed"] == 2
    assert study["status"]["trials"]["total"] > 3
    assert_nothing_left_running(kube, namespace)
    assert_no_report_lost(kube, namespace, log_dir)
    assert_best_matches_reports(kube, namespace, "bumpy", log_dir)


def test_a_hopeless_study_stops_after_its_failures_not_at_its_deadline(
    operator: OperatorProcess, kube: Kube, namespace: str, log_dir: Path
) -> None:
    create(kube, namespace, manifest("hopeless", log_dir, deadline="120s", env={"CRASH_EXIT": "*"}))
    study = wait_phase(kube, namespace, "hopeless", {"Succeeded", "Failed"}, 60)
    status = study["status"]
    assert status["phase"] == "Failed", status
    complete = next(c for c in status["conditions"] if c["type"] == "Complete")
    assert complete["status"] == "True" and complete["reason"] == "Failed", complete
    assert "trials failed" in complete["message"] and "maxFailedTrials" in complete["message"], complete
    assert status["trials"]["failed"] >= 3
    assert status["budget"]["usedSeconds"] < 60, status["budget"]
    assert_nothing_left_running(kube, namespace)


def test_a_study_no_node_can_hold_fails_at_once(
    operator: OperatorProcess, kube: Kube, namespace: str, log_dir: Path
) -> None:
    started = time.monotonic()
    create(kube, namespace, manifest("huge", log_dir, gpus=3))
    study = wait_phase(kube, namespace, "huge", {"Succeeded", "Failed"}, 20)
    took = time.monotonic() - started
    status = study["status"]
    assert status["phase"] == "Failed", status
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "Unschedulable", ready
    assert "gpusPerTrial" in ready["message"] and "3" in ready["message"], ready
    assert trials_of(kube, namespace) == [] and pods_of(kube, namespace) == []
    assert took < 10, took


def test_a_study_deleted_while_the_operator_is_down_leaves_nothing(
    operator: OperatorProcess, kube: Kube, namespace: str, log_dir: Path
) -> None:
    create(kube, namespace, manifest("orphaned", log_dir, deadline="60s"))
    wait_for(
        lambda: any(p["status"].get("phase") == "Running" for p in pods_of(kube, namespace)),
        30,
        0.2,
        "a running trial pod",
    )
    operator.kill()
    try:
        kube.delete(f"{GROUP_PATH}/namespaces/{namespace}/hpostudies/orphaned")
        study_path = f"{GROUP_PATH}/namespaces/{namespace}/hpostudies/orphaned"
        wait_for(lambda: kube.get_or_none(study_path) is None, 10, 0.2, "the study gone (no finalizer)")
        selector = {"labelSelector": "hpo.dev/study=orphaned"}

        def leftovers() -> dict[str, int]:
            rbac = "/apis/rbac.authorization.k8s.io/v1/namespaces/" + namespace
            paths = {
                "trials": f"{GROUP_PATH}/namespaces/{namespace}/hpotrials",
                "jobs": f"/apis/batch/v1/namespaces/{namespace}/jobs",
                "pods": f"/api/v1/namespaces/{namespace}/pods",
                "serviceaccounts": f"/api/v1/namespaces/{namespace}/serviceaccounts",
                "roles": f"{rbac}/roles",
                "rolebindings": f"{rbac}/rolebindings",
            }
            counts = {k: len(kube.get(p, **selector)["items"]) for k, p in paths.items()}
            return {k: n for k, n in counts.items() if n}

        wait_for(lambda: not leftovers(), 90, 0.5, lambda: f"leftovers: {leftovers()}")
    finally:
        operator.start()
    assert trials_of(kube, namespace) == []


def test_studies_in_two_namespaces_see_only_their_own_trials_and_an_invalid_one_slows_none(
    operator: OperatorProcess, cluster: LocalCluster, kube: Kube, namespace: str, log_dir: Path
) -> None:
    other = namespace[:50] + "-b"
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}})
    try:
        wait_for(
            lambda: (kube.get_or_none(f"/api/v1/namespaces/{other}/serviceaccounts/default") or {}).get(
                "secrets"
            ),
            30,
            0.2,
            f"default ServiceAccount of {other}",
        )
        broken = manifest("twin", log_dir)
        broken["metadata"]["name"] = "broken"
        broken["spec"]["hpSpace"] = {"x": {"paramType": "uniform", "range": [1.0, 0.0]}}
        started = time.monotonic()
        create(kube, namespace, broken)
        studies = {
            ns: create(kube, ns, manifest("twin", log_dir, deadline="20s", parallel=2))
            for ns in (namespace, other)
        }
        wait_phase(kube, namespace, "broken", {"Failed"}, 15)
        for ns in (namespace, other):
            wait_for(lambda ns=ns: trials_of(kube, ns, "twin"), 15, 0.2, f"a trial of twin in {ns}")  # type: ignore[misc]
        first_trials = time.monotonic() - started
        for ns in (namespace, other):
            study = wait_phase(kube, ns, "twin", {"Succeeded", "Failed"}, 60)
            assert study["status"]["phase"] == "Succeeded", (ns, study["status"])
            trials = trials_of(kube, ns)
            assert trials and all(t["metadata"]["namespace"] == ns for t in trials)
            assert {t["spec"]["study"] for t in trials} == {"twin"}
            uid = studies[ns]["metadata"]["uid"]
            assert all(t["metadata"]["ownerReferences"][0]["uid"] == uid for t in trials)
            assert study["status"]["trials"]["total"] == len(trials)
            for pod in pods_of(kube, ns):
                env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
                assert env["HPO_NAMESPACE"] == ns
            assert_best_matches_reports(kube, ns, "twin", log_dir)
        assert trials_of(kube, namespace, "broken") == []
        assert first_trials < 15, first_trials
    finally:
        kube.delete(f"/api/v1/namespaces/{other}")
        kube.delete(f"/api/v1/namespaces/{other}/pods")
        wait_for(
            lambda: not pods_of(kube, other) if kube.get_or_none(f"/api/v1/namespaces/{other}") else True,
            60,
            0.2,
            f"pods of {other} gone",
            ignore=(ApiError,),
        )


# --- bad specs in the cluster ---------------------------------------------------------------------


def test_generated_invalid_specs_get_invalid_conditions_and_no_pod_and_the_operator_stays_calm(
    operator: OperatorProcess, kube: Kube, namespace: str, log_dir: Path
) -> None:
    log_start = operator.log_path.stat().st_size if operator.log_path.exists() else 0
    valid = manifest("template", log_dir)["spec"]
    accepted, rejected = [], []
    for i, spec in enumerate(broken_specs(valid, seed=5, count=8)):
        body = {"apiVersion": "hpo.dev/v1alpha1", "kind": "HPOStudy", "metadata": {"name": f"bad-{i}"}}
        try:
            create(kube, namespace, {**body, "spec": spec})
            accepted.append(f"bad-{i}")
        except ApiError as err:
            assert err.status == 422 and "spec" in err.body, err
            rejected.append(f"bad-{i}")
    assert len(accepted) >= 4, (accepted, rejected)
    for name in accepted:
        status = wait_phase(kube, namespace, name, {"Failed", "Running", "Succeeded"}, 20)["status"]
        assert status["phase"] == "Failed", (name, status)
        invalid = next(c for c in status["conditions"] if c["type"] == "Invalid")
        assert invalid["status"] == "True" and "spec." in invalid["message"], (name, invalid)
    versions = {n: get_study(kube, namespace, n)["metadata"]["resourceVersion"] for n in accepted}
    # Longer than the operator's resync (5 s in these tests): a study written in a loop would move.
    quiet_until = time.monotonic() + 7
    while time.monotonic() < quiet_until:
        assert operator.alive(), operator.tail()
        time.sleep(0.5)
    assert versions == {n: get_study(kube, namespace, n)["metadata"]["resourceVersion"] for n in accepted}
    assert pods_of(kube, namespace) == [] and trials_of(kube, namespace) == []
    events = kube.get(f"/api/v1/namespaces/{namespace}/events")["items"]
    per_study = Counter(e["involvedObject"]["name"] for e in events if e["reason"] == "InvalidSpec")
    assert all(n <= 1 for n in per_study.values()), per_study
    with operator.log_path.open("rb") as log:
        log.seek(log_start)
        assert b"Traceback" not in log.read(), operator.tail()


# --- least privilege ------------------------------------------------------------------------------


def granted_rules() -> Iterator[tuple[str, str, str]]:
    import yaml

    for doc in yaml.safe_load_all(helm_template()):
        if doc and doc.get("kind") == "ClusterRole":
            for rule in doc["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        for verb in rule["verbs"]:
                            kind, slash, sub = resource.partition("/")
                            name = f"{kind}.{group}" if group else kind
                            yield verb, name + slash + sub, group


def test_the_operator_account_can_do_exactly_what_the_chart_grants(
    operator: OperatorProcess, cluster: LocalCluster, namespace: str
) -> None:
    user = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{SERVICE_ACCOUNT}"
    granted = {(verb, resource) for verb, resource, _ in granted_rules()}
    assert granted, f"no ClusterRole rendered from {CHART}"
    for verb, resource in sorted(granted):
        scope = None if resource == "nodes" else namespace
        assert can_i(cluster, user, verb, resource, scope), (verb, resource)
    denied = [
        ("get", "secrets"), ("list", "secrets"), ("watch", "secrets"), ("create", "pods"),
        ("create", "pods/exec"), ("get", "pods/log"), ("update", "hpostudies.hpo.dev"),
        ("delete", "hpostudies.hpo.dev"), ("delete", "hpotrials.hpo.dev"), ("update", "jobs.batch"),
        ("create", "clusterroles.rbac.authorization.k8s.io"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
        ("delete", "roles.rbac.authorization.k8s.io"), ("bind", "roles.rbac.authorization.k8s.io"),
        ("escalate", "roles.rbac.authorization.k8s.io"), ("patch", "nodes"), ("get", "configmaps"),
        ("create", "deployments.apps"), ("impersonate", "serviceaccounts"),
        ("create", "serviceaccounts/token"),
    ]  # fmt: skip
    for verb, resource in denied:
        assert (verb, resource) not in granted
        assert not can_i(cluster, user, verb, resource, namespace), (verb, resource)
    # The leader Lease: in the operator's own namespace only.
    for verb in ("get", "create", "update"):
        assert can_i(cluster, user, verb, "leases.coordination.k8s.io", OPERATOR_NAMESPACE), verb
        assert not can_i(cluster, user, verb, "leases.coordination.k8s.io", namespace), verb
    assert not can_i(cluster, user, "delete", "leases.coordination.k8s.io", OPERATOR_NAMESPACE)


def test_the_operator_runs_non_root_with_a_read_only_root_filesystem() -> None:
    import yaml

    docs = [d for d in yaml.safe_load_all(helm_template()) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # The one writable place: an emptyDir at /tmp.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and "hostPath" not in str(pod["volumes"])
    dockerfile = (CHART.parents[1] / "operator" / "Dockerfile").read_text()
    assert "USER 10001:10001" in dockerfile
