"""Operator overhead and scale on the local Kubernetes 1.20 cluster (tests/cluster).

    .venv/bin/python -m benchmarks.operator_scale --studies 1 10 50 --trials 8 --minutes 3

One cluster, one operator (``hpo operator`` as a process with a token of the chart's ServiceAccount,
the chart's RBAC applied, as tests/e2e/conftest.py does), then one phase per entry of ``--studies``:
that many HPOStudies in a fresh namespace, ``--trials`` running trials each, every trial reporting
once per second, measured for ``--minutes`` after a warm-up, then the namespace is deleted.

Who plays the trials: the trial pods are real pods of the operator's Jobs, scheduled by the real
scheduler and run by the harness's process kubelet, but their container is a shell that waits
(``sh -c 'trap "exit 0" TERM; sleep ... & wait'``, about 1 MB each) instead of a Python trainer
(about 30 MB and a TLS handshake per report, 400 of which do not fit on 2 cores). One player
process (``--play``, started by the harness) finds each running trial pod, and every second sends
the trial's report exactly as the SDK does: ``hpo_trial``'s Reporter and ClusterTransport (the same
seq/time report, the same JSON patch of the HPOTrial's status subresource, the same init rounds),
authenticated with the token the kubelet mounted into that pod (the pod's ServiceAccount, so RBAC is
exactly the trial's). The only difference to the SDK: the player's HTTP connections are kept alive
and shared instead of one new TLS connection per report. After the report at ``maximumResource`` the
player sends SIGTERM to the container's process (its pid is the pod's containerID), the shell exits
0, and the kubelet reports the pod Succeeded, as a trainer that finished. A pruned trial's pod is
deleted by the operator and stopped by the kubelet; the player stops reporting for it when its
deletion starts.

What is timed (harness process, watches on pods and HPOTrials, this machine's clock, the same clock
as the reports' ``time``):

* completed trial's pod Succeeded -> the study's next trial pod created;
* pruning report (its ``time``) -> the pruned pod's deletionTimestamp; -> the next trial pod created;
* decision lag: a trial's first report at or past a rung (its ``time``) -> the operator's reaction
  seen in the API (the HPOTrial's status.resource raised to the rung, or its phase Pruned);
* apiserver_request_total (apiserver /metrics) and the operator's own request counts, per trial
  started in the window; CPU seconds and RSS of the operator and of the control plane from /proc;
  os.getloadavg() every 5 s.

Phases: ``--phases 1x8 10x8 50x8:cache 1x200`` (studies x running trials per study, optionally
``:cache`` or ``:api``) replaces ``--studies``/``--trials``. Each phase runs once per
``--report-interval`` and once per ``--reads`` mode (a ``:mode`` suffix fixes it for that phase):
``cache``, the operator reading from its watch-fed caches (its default), or ``api``, ``hpo operator
--no-watch-caches``, every reconcile reading the API. The operator is restarted when the mode
changes. Each phase records its mode and the operator's requests per trial split into lists, gets
and writes, and per reconcile.

    .venv/bin/python -m benchmarks.operator_scale --phases 1x8 10x8 --reads api cache \\
        --report-interval 2 --minutes 2 --warmup 30 --out benchmarks/results/operator_scale_caches.json

Results: benchmarks/results/operator_scale*.json; docs/benchmarks/operator-scale.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

JSON = dict[str, Any]
GROUP_PATH = "/apis/hpo.dev/v1alpha1"
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "operator_scale.json"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
WAITER = "trap 'kill $! 2>/dev/null; exit 0' TERM; sleep 100000 & wait"
READS = ("cache", "api")  # the operator's reads: its watch-fed caches, or the API at every reconcile
READ_VERBS = ("list", "get")


@dataclass(frozen=True)
class Phase:
    studies: int
    trials: int  # running trials per study (parallelTrials)
    reads: str | None = None  # None: every mode of --reads


def parse_phase(text: str) -> Phase:
    """``NxT`` or ``NxT:mode``: N studies of T running trials, optionally in one reads mode."""
    shape, _, mode = text.partition(":")
    try:
        studies, trials = (int(v) for v in shape.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"phase {text!r}: expected STUDIESxTRIALS[:cache|:api], e.g. 10x8 or 50x8:cache"
        ) from None
    if studies < 1 or trials < 1:
        raise argparse.ArgumentTypeError(f"phase {text!r}: studies and trials must be at least 1")
    if mode and mode not in READS:
        raise argparse.ArgumentTypeError(
            f"phase {text!r}: reads mode {mode!r} is not one of {', '.join(READS)}"
        )
    return Phase(studies, trials, mode or None)


def phase_plan(args: argparse.Namespace) -> list[tuple[Phase, float, str]]:
    """Every (phase, report interval, reads mode) to run, in order: modes innermost, so the modes of
    one scale run next to each other in time."""
    phases = args.phases or [Phase(n, args.trials) for n in args.studies]
    return [
        (phase, interval, reads)
        for phase in phases
        for interval in args.report_interval
        for reads in ([phase.reads] if phase.reads else args.reads)
    ]


# --- the trials' reports: the SDK's code over kept-alive connections --------------------------------


def _pooled_transport_class() -> Any:
    import urllib3

    from hpo_trial.transports import JSON_PATCH, ClusterTransport, SendError

    @dataclass(frozen=True)
    class PooledTransport(ClusterTransport):
        """hpo_trial's ClusterTransport (same patches, same token file, same init rounds); only the
        HTTP connection is taken from a shared keep-alive pool instead of a new one per report."""

        pool: Any = None

        def _patch(self, ops: list[dict[str, Any]], timeout: float) -> int:
            try:
                response = self.pool.request(
                    "PATCH",
                    self.status_url,
                    body=json.dumps(ops, allow_nan=False).encode(),
                    headers={"Content-Type": JSON_PATCH, "Accept": "application/json", **self._auth_header()},
                    timeout=timeout,
                    retries=False,
                )
                return int(response.status)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise SendError(f"PATCH {self.status_url}: {exc}", retryable=True) from exc

    return PooledTransport


@dataclass
class Playing:
    namespace: str
    trial: str
    pod: str
    pid: int
    x: float
    max_resource: int
    reporter: Any
    next_due: float
    resource: int = 1
    busy: bool = False
    stopped: bool = False


def value_at(x: float, resource: float) -> float:
    """The fake trainer of tests/e2e/test_operator.py, with a slower curve: x near 0.3 is best."""
    return round((1 - (x - 0.3) ** 2) * (1 - 0.5 ** (resource / 10)), 6)


def play(config_path: str) -> None:
    """The player process: reports for every running trial pod, once per ``interval`` seconds."""
    import urllib3
    from tests.cluster.rest import ApiError, Kube

    from hpo_trial.reporting import Reporter, RetryPolicy
    from hpo_trial.sending import HPO_REPORT_INTERVAL_SECONDS, BackgroundReporter, Urgency

    cfg = json.loads(Path(config_path).read_text())
    kube = Kube(cfg["server"], cfg["token"], cfg["ca_file"])
    pool = urllib3.PoolManager(num_pools=2, maxsize=256, cert_reqs="CERT_REQUIRED", ca_certs=cfg["ca_file"])
    transport_class = _pooled_transport_class()
    interval = float(cfg["interval"])
    out = open(cfg["log"], "a", buffering=1)  # noqa: SIM115 (lives as long as the process)
    lock = threading.Lock()
    playing: dict[str, Playing] = {}  # by pod uid
    stats = {"sent": 0, "failed": 0, "late": [], "ended": 0}
    # A thread per trial at most, as every trial is its own process in a cluster: a slow API server
    # makes reports late, never the player.
    executor = ThreadPoolExecutor(int(cfg.get("threads", 256)))

    def write(record: JSON) -> None:
        with lock:
            out.write(json.dumps(record) + "\n")

    def handle(kind: str, pod: JSON) -> None:
        meta, status = pod["metadata"], pod.get("status") or {}
        uid = meta["uid"]
        with lock:
            current = playing.get(uid)
            if (
                kind == "DELETED"
                or meta.get("deletionTimestamp")
                or status.get("phase") in ("Succeeded", "Failed")
            ):
                if current is not None:
                    current.stopped = True
                    playing.pop(uid, None)
                return
            if current is not None or status.get("phase") != "Running":
                return
        containers = status.get("containerStatuses") or []
        if not containers or "running" not in (containers[0].get("state") or {}):
            return
        pid = int(containers[0]["containerID"].rsplit("/", 1)[1])
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env") or []}
        sa_dir = Path(cfg["root"]) / "nodes" / pod["spec"]["nodeName"] / "pods" / uid / "serviceaccount"
        transport = transport_class(
            api_url=cfg["server"],
            namespace=meta["namespace"],
            trial=env["HPO_TRIAL"],
            sa_dir=sa_dir,
            pool=pool,
        )
        params = json.loads(env.get("HPO_HYPERPARAMETERS") or "{}")
        reporter: Any = Reporter(transport, RetryPolicy(total_seconds=30.0))
        if env.get(HPO_REPORT_INTERVAL_SECONDS):
            # The SDK's background sender, as a trainer's hpo_trial.report() uses it; without the
            # variable, a report waits for its delivery, as an SDK without the sender does.
            reporter = BackgroundReporter(
                reporter,
                interval=float(env[HPO_REPORT_INTERVAL_SECONDS] or 0),
                urgent=Urgency.from_env({k: v for k, v in env.items() if v is not None}),
            )
        started = time.time()
        with lock:
            playing[uid] = Playing(
                namespace=meta["namespace"],
                trial=env["HPO_TRIAL"],
                pod=meta["name"],
                pid=pid,
                x=float(params.get("x", 0.5)),
                max_resource=int(float(env.get("HPO_MAX_RESOURCE") or 9)),
                reporter=reporter,
                next_due=started + interval,
            )

    def watch() -> None:
        path = "/api/v1/pods"
        selector = {"labelSelector": "hpo.dev/trial"}
        while True:
            try:
                listing = kube.get(path, **selector)
                for pod in listing["items"]:
                    handle("ADDED", pod)
                version = listing["metadata"]["resourceVersion"]
                for event in kube.watch(path, timeout_seconds=60, resourceVersion=version, **selector):
                    if event["type"] == "ERROR":
                        break
                    handle(event["type"], event["object"])
            except (ApiError, OSError, ValueError) as err:
                write({"event": "watch-error", "error": str(err)[:200], "t": time.time()})
                time.sleep(0.5)

    def send(p: Playing, resource: int, due: float) -> None:
        late = time.time() - due
        ok = p.reporter.report(resource, value_at(p.x, resource))
        if ok and resource >= p.max_resource and isinstance(p.reporter, BackgroundReporter):
            ok = p.reporter.flush(30.0)  # the trainer's exit sends what is queued
        if not ok:
            write(
                {
                    "event": "failed",
                    "ns": p.namespace,
                    "trial": p.trial,
                    "resource": resource,
                    "t": time.time(),
                }
            )
        with lock:
            stats["sent" if ok else "failed"] += 1
            stats["late"].append(late)  # type: ignore[attr-defined]
            p.busy = False
        if ok and resource >= p.max_resource and not p.stopped:
            # The trainer is done: its process exits 0 and the kubelet reports the pod Succeeded.
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
            with lock:
                stats["ended"] += 1
            write({"event": "end", "ns": p.namespace, "trial": p.trial, "pod": p.pod, "t": time.time()})

    threading.Thread(target=watch, daemon=True).start()
    last_stats = time.time()
    while True:
        now = time.time()
        with lock:
            due = [p for p in playing.values() if not p.busy and not p.stopped and p.next_due <= now]
            for p in due:
                p.busy = True
        for p in due:
            resource = p.resource
            if resource > p.max_resource:
                continue
            executor.submit(send, p, resource, p.next_due)
            p.resource += 1
            p.next_due += interval
        if now - last_stats >= 5:
            with lock:
                late = sorted(stats["late"])  # type: ignore[type-var]
                record = {
                    "event": "stats",
                    "t": now,
                    "sent": stats["sent"],
                    "failed": stats["failed"],
                    "ended": stats["ended"],
                    "playing": len(playing),
                    "late_p50": late[len(late) // 2] if late else None,
                    "late_p99": late[int(len(late) * 0.99)] if late else None,
                    "late_max": late[-1] if late else None,
                }
                stats["late"] = []
            write(record)
            last_stats = now
        time.sleep(0.02)


# --- watching pods and trials ----------------------------------------------------------------------


@dataclass
class PodSeen:
    namespace: str
    study: str
    trial: str
    added: float
    running: float | None = None
    ended: float | None = None
    phase: str | None = None
    deleting: float | None = None
    gone: float | None = None


@dataclass
class TrialSeen:
    created: float
    resource: dict[float, float] = field(default_factory=dict)  # status.resource -> first seen
    phases: dict[str, float] = field(default_factory=dict)  # status.phase -> first seen


class Watcher:
    """Watches on every namespace's trial pods and HPOTrials, each in a thread, recording times."""

    def __init__(self, kube: Any) -> None:
        self.kube = kube
        self.pods: dict[tuple[str, str], PodSeen] = {}
        self.trials: dict[tuple[str, str], TrialSeen] = {}
        self.lock = threading.Lock()

    def start(self) -> None:
        for path, query, record in (
            ("/api/v1/pods", {"labelSelector": "hpo.dev/trial"}, self._pod),
            (f"{GROUP_PATH}/hpotrials", {}, self._trial),
        ):
            threading.Thread(target=self._run, args=(path, query, record), daemon=True).start()

    def _run(self, path: str, query: dict[str, str], record: Any) -> None:
        from tests.cluster.rest import ApiError

        while True:
            try:
                version = self.kube.get(path, **query)["metadata"]["resourceVersion"]
                for event in self.kube.watch(path, timeout_seconds=60, resourceVersion=version, **query):
                    if event["type"] == "ERROR":
                        break
                    record(event["type"], event["object"], time.time())
            except (ApiError, OSError, ValueError):
                time.sleep(0.2)

    def _pod(self, kind: str, pod: JSON, now: float) -> None:
        meta = pod["metadata"]
        labels = meta.get("labels") or {}
        key = (meta["namespace"], meta["name"])
        with self.lock:
            seen = self.pods.get(key)
            if seen is None:
                seen = self.pods[key] = PodSeen(
                    meta["namespace"], labels.get("hpo.dev/study", ""), labels.get("hpo.dev/trial", ""), now
                )
        phase = (pod.get("status") or {}).get("phase")
        if phase == "Running" and seen.running is None:
            seen.running = now
        if phase in ("Succeeded", "Failed") and seen.ended is None:
            seen.ended, seen.phase = now, phase
        if meta.get("deletionTimestamp") and seen.deleting is None:
            seen.deleting = now
        if kind == "DELETED" and seen.gone is None:
            seen.gone = now

    def _trial(self, kind: str, trial: JSON, now: float) -> None:
        meta, status = trial["metadata"], trial.get("status") or {}
        key = (meta["namespace"], meta["name"])
        with self.lock:
            seen = self.trials.setdefault(key, TrialSeen(now))
        if status.get("resource") is not None:
            seen.resource.setdefault(float(status["resource"]), now)
        if status.get("phase"):
            seen.phases.setdefault(status["phase"], now)


# --- measuring processes and the API server ------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and its reaped children."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / CLK_TCK


def proc_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def cpu_of(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for name, pid in pids.items():
        with contextlib.suppress(OSError):
            out[name] = proc_cpu(pid)
    return out


def apiserver_requests(kube: Any) -> dict[tuple[str, str], float]:
    """apiserver_request_total summed by (verb, resource[/subresource]), all clients."""
    from prometheus_client.parser import text_string_to_metric_families

    text = kube.get("/metrics")
    totals: dict[tuple[str, str], float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        if family.name != "apiserver_request":
            continue
        for s in family.samples:
            if s.name != "apiserver_request_total":
                continue
            resource = s.labels.get("resource", "")
            if s.labels.get("subresource"):
                resource += "/" + s.labels["subresource"]
            totals[(s.labels.get("verb", ""), resource)] += s.value
    return dict(totals)


def operator_samples(operator: Any) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    code, text = operator.get("/metrics")
    if code != 200:
        return {}
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def operator_requests(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float],
) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for (name, labels), value in samples.items():
        if name == "hpo_kube_api_request_duration_seconds_count":
            d = dict(labels)
            out[(d.get("verb", ""), d.get("resource", ""))] = value
    return out


def histogram(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str) -> dict[float, float]:
    out = {}
    for (sample, labels), value in samples.items():
        if sample == f"{name}_bucket":
            out[float(dict(labels)["le"])] = value
    return out


def histogram_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """The upper bound of the bucket holding quantile ``q`` of the observations between two scrapes."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    target = q * counts[-1]
    return next(b for b, c in zip(bounds, counts, strict=True) if c >= target)


def delta(after: dict[Any, float], before: dict[Any, float]) -> dict[Any, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


def stats(values: list[float]) -> JSON:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "median": round(statistics.median(ordered), 4),
        "p90": round(ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)], 4),
        "max": round(ordered[-1], 4),
    }


# --- the studies ---------------------------------------------------------------------------------


def study_manifest(
    name: str, seed: int, args: argparse.Namespace, report_interval: float, trials: int
) -> JSON:
    env = (
        [{"name": "HPO_REPORT_INTERVAL_SECONDS", "value": f"{report_interval:g}"}] if report_interval else []
    )
    return {
        "apiVersion": "hpo.dev/v1alpha1",
        "kind": "HPOStudy",
        "metadata": {"name": name},
        "spec": {
            "metric": "accuracy",
            "mode": "max",
            "hpSpace": {"x": {"paramType": "uniform", "range": [0.0, 1.0]}},
            "minimumResource": args.min_resource,
            "maximumResource": args.max_resource,
            "reductionFactor": 3,
            "budget": {"deadline": "120m"},
            "parallelTrials": trials,
            "gpusPerTrial": 1,
            "seed": seed,
            "trialTemplate": {
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {
                            "name": "trial",
                            "image": "hpo-bench-waiter:local",
                            "command": ["/bin/sh", "-c", WAITER],
                            "env": env,
                        }
                    ],
                }
            },
        },
    }


def first_report_at(trial: JSON, level: float) -> JSON | None:
    reports = sorted((trial.get("status") or {}).get("reports") or [], key=lambda r: r["time"])
    return next((r for r in reports if r["resource"] >= level), None)


def analyse(
    namespace: str,
    window: tuple[float, float],
    watcher: Watcher,
    studies: list[JSON],
    trials: list[JSON],
    ends: list[JSON],
) -> JSON:
    t0, t1 = window
    inside = lambda t: t is not None and t0 <= t <= t1  # noqa: E731
    pods = [p for p in list(watcher.pods.values()) if p.namespace == namespace]
    added_by_study: dict[str, list[float]] = defaultdict(list)
    for p in pods:
        added_by_study[p.study].append(p.added)
    for v in added_by_study.values():
        v.sort()

    def next_added(study: str, after: float) -> float | None:
        later = [a for a in added_by_study[study] if a >= after]
        return later[0] - after if later and later[0] - after < 30 else None

    end_to_next = []
    for p in pods:
        if p.phase == "Succeeded" and inside(p.ended):
            assert p.ended is not None
            gap = next_added(p.study, p.ended)
            if gap is not None:
                end_to_next.append(gap)
    by_pod = {(p.namespace, p.trial): p for p in pods}
    exit_to_next = []
    for e in ends:
        if e["ns"] == namespace and inside(e["t"]):
            p = by_pod.get((namespace, e["trial"]))
            if p is not None:
                gap = next_added(p.study, e["t"])
                if gap is not None:
                    exit_to_next.append(gap)
    plans = {s["metadata"]["name"]: (s.get("status") or {}).get("plan") or {} for s in studies}
    prune_to_delete, prune_to_next, lag, lag_pruned, reports_in = [], [], [], [], 0
    pruned = completed = 0
    for t in trials:
        name, status = t["metadata"]["name"], t.get("status") or {}
        study = t["spec"]["study"]
        rungs = plans.get(study, {}).get("rungs") or []
        reports_in += sum(inside(r["time"]) for r in status.get("reports") or [])
        seen = watcher.trials.get((namespace, name))
        if status.get("phase") == "Completed":
            completed += 1
        if status.get("phase") == "Pruned" and status.get("rung") is not None and rungs:
            report = first_report_at(t, rungs[int(status["rung"])])
            pod = by_pod.get((namespace, name))
            if report is not None and inside(report["time"]):
                pruned += 1
                if pod is not None and pod.deleting is not None:
                    prune_to_delete.append(pod.deleting - report["time"])
                gap = next_added(study, report["time"])
                if gap is not None:
                    prune_to_next.append(gap)
                if seen is not None and "Pruned" in seen.phases:
                    lag_pruned.append(seen.phases["Pruned"] - report["time"])
        if seen is None:
            continue
        for level in rungs:
            report = first_report_at(t, level)
            if report is None or not inside(report["time"]):
                continue
            reacted = [ts for res, ts in seen.resource.items() if res >= level]
            reacted += [
                ts for ph, ts in seen.phases.items() if ph in ("Pruned", "Completed", "Failed", "Stopped")
            ]
            if reacted:
                lag.append(min(reacted) - report["time"])
    started = sum(1 for p in pods if inside(p.added))
    return {
        "trial_pods_created": started,
        "trials_pruned": pruned,
        "trials_completed_in_phase": completed,
        "reports": reports_in,
        "reports_per_second": round(reports_in / (t1 - t0), 1),
        "completed_end_to_next_pod_s": stats(end_to_next),
        "container_exit_to_next_pod_s": stats(exit_to_next),
        "prune_report_to_deletion_s": stats(prune_to_delete),
        "prune_report_to_next_pod_s": stats(prune_to_next),
        "decision_lag_s": stats(lag),
        "decision_lag_pruned_s": stats(lag_pruned),
    }


# --- the run -------------------------------------------------------------------------------------


def main() -> None:
    args = parser().parse_args()
    if args.play:
        play(args.play)
        return
    run(args)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--trials", type=int, default=8, help="running trials per study")
    parser.add_argument(
        "--phases",
        type=parse_phase,
        nargs="+",
        help="per phase STUDIESxTRIALS[:cache|:api], e.g. 1x8 50x8:cache 1x200; replaces --studies, --trials",
    )
    parser.add_argument(
        "--reads",
        nargs="+",
        choices=READS,
        default=["cache"],
        help="per phase: the operator reads from its watch-fed caches, or the API (--no-watch-caches)",
    )
    parser.add_argument("--minutes", type=float, default=3.0, help="measured minutes per phase")
    parser.add_argument("--min-resource", type=int, default=10, help="reports to the first rung")
    parser.add_argument("--max-resource", type=int, default=90, help="reports of a full training")
    parser.add_argument("--warmup", type=float, default=45.0, help="seconds after the last trial pod runs")
    parser.add_argument("--nodes", type=int, default=6)
    parser.add_argument("--gpus-per-node", type=int, default=80)
    parser.add_argument(
        "--report-interval",
        type=float,
        nargs="+",
        default=[0.0],
        help="per phase: the SDK's report interval in seconds (0: each report waits for its delivery)",
    )
    parser.add_argument(
        "--resync",
        type=float,
        default=30.0,
        help="the operator's --resync in seconds (the chart's default; the test harness uses 5)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--play", help=argparse.SUPPRESS)
    return parser


def run(args: argparse.Namespace) -> None:
    from tests.cluster.cluster import ClusterSpec, LocalCluster
    from tests.support.operator_process import OperatorProcess, install_chart_without_operator

    cluster = LocalCluster(ClusterSpec(nodes=args.nodes, gpus_per_node=args.gpus_per_node))
    t = time.monotonic()
    cluster.up(timeout=180)
    print(f"cluster up in {time.monotonic() - t:.1f}s: {cluster.root}", flush=True)
    operator = player = None
    try:
        kube = cluster.admin()
        kubeconfig = install_chart_without_operator(cluster)
        plan = phase_plan(args)
        mode = plan[0][2]
        operator = OperatorProcess(
            kubeconfig, cluster.log_dir / "hpo-operator.log", operator_args(mode, args.resync)
        )
        operator.start()
        assert operator.proc is not None
        play_log = cluster.root / "player.jsonl"
        play_cfg = cluster.root / "player.json"
        play_cfg.write_text(
            json.dumps(
                {
                    "server": cluster.server,
                    "token": cluster.admin_token,
                    "ca_file": str(cluster.ca_file),
                    "root": str(cluster.root),
                    "log": str(play_log),
                    "interval": 1.0,
                }
            )
        )
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "trial_image")])}
        player = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.operator_scale", "--play", str(play_cfg)],
            cwd=REPO,
            env=env,
            stdout=open(cluster.log_dir / "player.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        watcher = Watcher(kube)
        watcher.start()
        pids = {"operator": operator.proc.pid, **cluster.control_plane.pids()}
        pids |= {f"agent-{n}": p.pid for n, p in cluster.agents.items()}
        pids["player"] = player.pid
        pids["harness"] = os.getpid()
        result: JSON = {
            "command": "python -m benchmarks.operator_scale " + " ".join(sys.argv[1:]),
            "machine": {"cpus": os.cpu_count(), "load_before": os.getloadavg()},
            "source": source_state(),
            "cluster": {"nodes": args.nodes, "gpus_per_node": args.gpus_per_node, "kubernetes": "1.20.2"},
            "operator": {"resync_s": args.resync},
            "study": {
                "trials": args.trials,
                "min_resource": args.min_resource,
                "max_resource": args.max_resource,
                "reduction_factor": 3,
                "report_every_s": 1.0,
            },
            "idle": idle_phase(kube, operator, pids),
            "phases": [],
        }
        print(f"idle: {json.dumps(result['idle'])}", flush=True)
        for index, (spec, interval, reads) in enumerate(plan):
            if reads != mode:
                # The other mode: a fresh operator (the last phase's namespace is gone already).
                operator.stop()
                operator = OperatorProcess(
                    kubeconfig, cluster.log_dir / "hpo-operator.log", operator_args(reads, args.resync)
                )
                operator.start()
                assert operator.proc is not None
                pids["operator"], mode = operator.proc.pid, reads
                print(f"operator restarted, reads: {reads}", flush=True)
            phase = run_phase(
                spec, interval, reads, args, cluster, kube, operator, watcher, pids, play_log, index
            )
            result["phases"].append(phase)
            print(json.dumps(phase, indent=1), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1) + "\n")
        result["ratios"] = ratios(result["phases"])
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result["ratios"], indent=1))
    finally:
        if player is not None:
            player.terminate()
            player.wait(10)
        if operator is not None:
            operator.stop()
        print(f"cluster down in {cluster.down():.1f}s", flush=True)
        if not os.environ.get("HPO_KEEP_CLUSTER"):
            cluster.remove()


def listed(kube: Any, path: str, attempts: int = 5) -> list[JSON]:
    """Every item of a collection, in pages, each retried: on a saturated API server one read of
    hundreds of trials with their reports can outlast the client's timeout."""
    items: list[JSON] = []
    query: dict[str, Any] = {"limit": 50}
    while True:
        for attempt in range(attempts):
            try:
                page = kube.get(path, **query)
                break
            except (TimeoutError, OSError):
                if attempt == attempts - 1:
                    raise
                time.sleep(2.0)
        items += page.get("items") or []
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            return items
        query = {"limit": 50, "continue": token}


def operator_args(reads: str, resync: float) -> list[str]:
    return ["--resync", f"{resync:g}", *(["--no-watch-caches"] if reads == "api" else [])]


def source_state() -> JSON:
    """The commit the operator ran from, and the operator files that differed from it."""

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "operator_changes": git("status", "--short", "operator")}


def idle_phase(kube: Any, operator: Any, pids: dict[str, int], seconds: float = 20.0) -> JSON:
    """What the cluster costs with no study: background API requests and CPU per second."""
    api0, cpu0, t0 = apiserver_requests(kube), cpu_of(pids), time.time()
    time.sleep(seconds)
    api1, cpu1, t1 = apiserver_requests(kube), cpu_of(pids), time.time()
    wall = t1 - t0
    return {
        "seconds": round(wall, 1),
        "api_requests_per_s": round(sum(delta(api1, api0).values()) / wall, 1),
        "cpu_fraction": {k: round((cpu1[k] - cpu0.get(k, 0)) / wall, 3) for k in cpu1},
        "operator_rss_mb": round(proc_rss_mb(pids["operator"]), 1),
        "load": os.getloadavg(),
    }


def run_phase(
    spec: Phase,
    report_interval: float,
    reads: str,
    args: argparse.Namespace,
    cluster: Any,
    kube: Any,
    operator: Any,
    watcher: Watcher,
    pids: dict[str, int],
    play_log: Path,
    index: int,
) -> JSON:
    n, per_study = spec.studies, spec.trials
    # The phase's place in the run is in the name: a phase run twice must not find the trials of
    # the first in the watcher's records, which are keyed by namespace and name.
    namespace = f"scale-{index}-{n}x{per_study}-{report_interval:g}-{reads}".replace(".", "-")
    kube.create(
        "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
    )
    created = time.time()
    for i in range(n):
        body = study_manifest(f"s{i:03d}", 1000 + i, args, report_interval, per_study)
        kube.create(f"{GROUP_PATH}/namespaces/{namespace}/hpostudies", body)
    want = n * per_study

    def running() -> int:
        return sum(
            1
            for p in list(watcher.pods.values())
            if p.namespace == namespace and p.running and not p.ended and not p.deleting
        )

    deadline = time.time() + 300
    while running() < want and time.time() < deadline:
        time.sleep(1)
    warm = time.time()
    start = {"running": running(), "wanted": want, "seconds": round(warm - created, 1)}
    print(
        f"{n}x{per_study} ({reads}): {start['running']}/{want} trial pods running after {start['seconds']}s",
        flush=True,
    )
    time.sleep(args.warmup)
    # The window.
    api0, op0, cpu0 = apiserver_requests(kube), operator_samples(operator), cpu_of(pids)
    t0 = time.time()
    loads, rss, counts = [], [], []
    while time.time() < t0 + args.minutes * 60:
        time.sleep(5)
        loads.append(os.getloadavg()[0])
        with contextlib.suppress(OSError):
            rss.append(proc_rss_mb(pids["operator"]))
        counts.append(running())
    t1 = time.time()
    api1, op1, cpu1 = apiserver_requests(kube), operator_samples(operator), cpu_of(pids)
    studies = listed(kube, f"{GROUP_PATH}/namespaces/{namespace}/hpostudies")
    trials = listed(kube, f"{GROUP_PATH}/namespaces/{namespace}/hpotrials")
    ends, failed_in_window = [], 0
    for line in play_log.read_text().splitlines():
        record = json.loads(line)
        if record["event"] == "end":
            ends.append(record)
        # Reports given up inside the window, in this phase's namespace (the teardown's 404s come
        # after it; a pruned pod's reports held at its deletion are given up too, see the page).
        failed_in_window += (
            record["event"] == "failed" and record.get("ns") == namespace and t0 <= record["t"] <= t1
        )
    players = [json.loads(line) for line in play_log.read_text().splitlines() if '"stats"' in line]
    players = [p for p in players if t0 <= p["t"] <= t1 + 5]
    wall = t1 - t0
    out: JSON = {
        "studies": n,
        "report_interval_s": report_interval,
        "trials_per_study": per_study,
        "reads": reads,
        "start": start,
        "window_s": round(wall, 1),
    }
    out |= analyse(namespace, (t0, t1), watcher, studies, trials, ends)
    trials_run = max(1, out["trial_pods_created"])
    api = delta(api1, api0)
    mine = delta(operator_requests(op1), operator_requests(op0))
    cpu = {k: round(cpu1[k] - cpu0.get(k, 0), 1) for k in cpu1}
    out |= {
        "running_trial_pods": {"min": min(counts), "median": statistics.median(counts), "max": max(counts)},
        "load_1min": {"mean": round(statistics.mean(loads), 2), "max": round(max(loads), 2)},
        "cpu_seconds": cpu,
        "cpu_fraction": {k: round(v / wall, 3) for k, v in cpu.items()},
        "operator_cpu_fraction": round(cpu["operator"] / wall, 3),
        "operator_rss_mb": {"end": round(rss[-1], 1), "max": round(max(rss), 1)},
        "api_requests_total": round(sum(api.values())),
        "api_requests_per_trial": round(sum(api.values()) / trials_run, 1),
        "api_requests_per_trial_by_verb_resource": {
            f"{v} {r}": round(c / trials_run, 2) for (v, r), c in sorted(api.items(), key=lambda kv: -kv[1])
        },
        "operator_requests_per_trial": round(sum(mine.values()) / trials_run, 1),
        "operator_requests_per_trial_by_verb_resource": {
            f"{v} {r}": round(c / trials_run, 2) for (v, r), c in sorted(mine.items(), key=lambda kv: -kv[1])
        },
        "operator_requests_per_trial_split": split_requests(mine, trials_run),
        "operator_reconciles": reconcile_count(op1) - reconcile_count(op0),
        "operator_requests_per_reconcile_split": split_requests(
            mine, max(1.0, reconcile_count(op1) - reconcile_count(op0))
        ),
        "operator_decision_latency_bucket_s": {
            f"p{int(q * 100)}": histogram_quantile(
                histogram(op0, "hpo_decision_latency_seconds"),
                histogram(op1, "hpo_decision_latency_seconds"),
                q,
            )
            for q in (0.5, 0.9, 0.99)
        },
        "operator_reconcile_seconds_bucket": {
            f"p{int(q * 100)}": histogram_quantile(
                histogram(op0, "hpo_reconcile_duration_seconds"),
                histogram(op1, "hpo_reconcile_duration_seconds"),
                q,
            )
            for q in (0.5, 0.9, 0.99)
        },
        "player": {
            "late_p50_max_s": max((p["late_p50"] or 0) for p in players) if players else None,
            "late_p99_max_s": max((p["late_p99"] or 0) for p in players) if players else None,
            "failed_total": players[-1]["failed"] if players else None,  # since the run began
            "failed_in_window": failed_in_window,
        },
    }
    # Tear down: the studies first (the operator stops starting trials), then the namespace.
    for study in studies:
        kube.delete(f"{GROUP_PATH}/namespaces/{namespace}/hpostudies/{study['metadata']['name']}")
    kube.delete(f"/api/v1/namespaces/{namespace}")
    gone = time.time() + 300
    while time.time() < gone and kube.get_or_none(f"/api/v1/namespaces/{namespace}") is not None:
        time.sleep(2)
    time.sleep(5)
    return out


def split_requests(requests: dict[tuple[str, str], float], per: float) -> JSON:
    """The operator's requests divided by ``per``: lists, gets and writes, each list by resource."""
    lists = {r: c for (v, r), c in requests.items() if v == "list"}
    gets = sum(c for (v, _), c in requests.items() if v == "get")
    writes = sum(c for (v, _), c in requests.items() if v not in READ_VERBS)
    return {
        "list": round(sum(lists.values()) / per, 3),
        "get": round(gets / per, 3),
        "writes": round(writes / per, 3),
        "list_by_resource": {r: round(c / per, 3) for r, c in sorted(lists.items())},
    }


def reconcile_count(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> float:
    return sum(v for (name, _), v in samples.items() if name == "hpo_reconcile_duration_seconds_count")


def ratios(phases: list[JSON]) -> JSON:
    """Each phase against the first (the smallest scale) of the same reads mode in the run; with
    more than one mode, also each ``cache`` phase against the ``api`` phase of the same shape."""
    modes = list(dict.fromkeys(p.get("reads", "cache") for p in phases))
    out = {}
    for mode in modes:
        same = [p for p in phases if p.get("reads", "cache") == mode]
        base = same[0]
        for p in same[1:]:
            key = f"{p['studies']}/{base['studies']} studies"
            if p["trials_per_study"] != base["trials_per_study"]:
                key += f", trials {p['trials_per_study']}/{base['trials_per_study']}"
            if p.get("report_interval_s") != base.get("report_interval_s"):
                key += f", report interval {p.get('report_interval_s'):g}/{base.get('report_interval_s'):g} s"
            if len(modes) > 1:
                key += f", reads {mode}"
            out[key] = compare(base, p)
    if "api" in modes and "cache" in modes:
        api = {shape(p): p for p in phases if p.get("reads") == "api"}
        for p in phases:
            if p.get("reads") == "cache" and shape(p) in api:
                out[f"reads cache/api, {p['studies']}x{p['trials_per_study']}"] = compare(api[shape(p)], p)
    return out


def shape(phase: JSON) -> tuple[int, int, float | None]:
    return phase["studies"], phase["trials_per_study"], phase.get("report_interval_s")


def compare(base: JSON, p: JSON) -> JSON:
    """Ratios of ``p`` to ``base``: latencies' medians, operator CPU and requests, control-plane CPU
    per report."""
    r: JSON = {}
    for metric in ("decision_lag_s", "prune_report_to_deletion_s", "completed_end_to_next_pod_s"):
        a, b = base[metric], p[metric]
        if a.get("n") and b.get("n") and a["median"] > 0:
            r[f"{metric} median"] = round(b["median"] / a["median"], 2)
    r["operator_cpu_fraction"] = (
        round(p["operator_cpu_fraction"] / base["operator_cpu_fraction"], 2)
        if base["operator_cpu_fraction"]
        else None
    )
    r["api_requests_per_trial"] = round(p["api_requests_per_trial"] / base["api_requests_per_trial"], 2)
    if base["operator_requests_per_trial"]:
        r["operator_requests_per_trial"] = round(
            p["operator_requests_per_trial"] / base["operator_requests_per_trial"], 2
        )
    for cost in ("kube-apiserver", "etcd"):
        if base["cpu_seconds"].get(cost) and p["cpu_seconds"].get(cost):
            per_report = [x["cpu_seconds"][cost] / max(1, x["reports"]) for x in (base, p)]
            r[f"{cost} cpu per report"] = round(per_report[1] / per_report[0], 2)
    return r


if __name__ == "__main__":
    main()
