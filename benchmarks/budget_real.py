"""Budget adherence in real time: `hpo run` and the operator, budgets 1x to 8x one training.

    .venv/bin/python -m benchmarks.budget_real --backend local cluster --ratios 1 1.5 2 4 8 --seeds 5

Every run is one study of a trainer whose epochs are sleeps (so the machine's load does not drive
the result) with per-trial start-up and epoch-time noise, so that the budget model has something to
measure. The finish time is compared with the deadline the product computed (``deadline`` in
study.json / ``status.budget``) and with the moment the study was launched plus its budget.

Backends:

* ``local``: ``hpo run --gpus 0 --cpu-slots 2`` as a subprocess, default ``--grace`` and ``--poll``.
  Finished: the ``hpo run`` process exited (it waits for every trial process).
* ``cluster``: the operator (``hpo operator`` with the chart's RBAC, as tests/e2e sets it up) against
  the project's local Kubernetes control plane (tests/cluster), one namespace per study,
  ``parallelTrials: 2``, ``gpusPerTrial: 1`` on 2 nodes x 8 GPUs, so concurrent studies never wait
  for each other's GPUs. Finished: the later of the study's ``status.budget.finishedAt`` and the
  moment the last trial pod ended or was deleted (from a pod watch), the GPUs being free then.

Conditions:

* ``given``: ``trainTime`` given (the mean one training of the trainer, start-up included).
* ``measured``: no ``trainTime``: the first trial measures one training and the budget follows.
* ``promote``: as ``given``, with the promote variant of ASHA (``asha: {variant: promote}``; in
  the cluster with a checkpoint claim the operator creates).
* ``promote-measured``: the promote variant without ``trainTime``.

Several studies run at once (``--concurrency``). Writes ``benchmarks/results/budget_real.json``
(runs of the backends not rerun are kept) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from .metrics import mean_ci

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
HPO = REPO / ".venv" / "bin" / "hpo"
BACKENDS = ("local", "cluster")
CONDITIONS = ("given", "measured", "promote", "promote-measured")


def measured(condition: str) -> bool:
    """No trainTime: trial 0 measures one training."""
    return condition in ("measured", "promote-measured")


RATIOS = (1.0, 1.5, 2.0, 4.0, 8.0)
MAX_RESOURCE = 9
EPOCH_SECONDS = 1.2
STARTUP_RANGE = (0.5, 2.0)  # uniform, seconds, per run of a trial
TRIAL_SIGMA = 0.2  # log-normal speed factor per trial (a batch size or width would do this)
EPOCH_SIGMA = 0.1  # log-normal factor per epoch
SLOTS = 2  # CPU slots locally, parallelTrials in the cluster
CLUSTER_NODES = 2
CLUSTER_GPUS_PER_NODE = 8
GROUP_PATH = "/apis/hpo.dev/v1alpha1"
LOCAL_OPTIONS: dict[str, str] = {}  # extra `hpo run` options (--grace), from the command line

# The trainer: start-up, then one sleep per epoch, reporting a known function of x after each.
# Honours HPO_START_RESOURCE / HPO_STOP_RESOURCE (promote variant), as the reference trainer does.
# SIGTERM ends it at once (Python's default), as most training scripts behave.
TRAINER = """
import math, os, random, time
import hpo_trial
trial = hpo_trial.trial_name() or "standalone"
first = (hpo_trial.start_resource() or 0) + 1
rng = random.Random(f"{os.environ.get('BENCH_SEED', '0')}:{trial}")
speed = math.exp(rng.gauss(0.0, float(os.environ["BENCH_TRIAL_SIGMA"])))
run = random.Random(f"{os.environ.get('BENCH_SEED', '0')}:{trial}:{first}")
lo, hi = (float(v) for v in os.environ["BENCH_STARTUP"].split(","))
time.sleep(run.uniform(lo, hi))
x = float(hpo_trial.hyperparameters().get("x", 0.5))
epochs = hpo_trial.max_resource() or 9
last = min(epochs, hpo_trial.stop_resource() or epochs)
step, sigma = float(os.environ["BENCH_EPOCH_SECONDS"]), float(os.environ["BENCH_EPOCH_SIGMA"])
for epoch in range(first, last + 1):
    time.sleep(step * speed * math.exp(run.gauss(0.0, sigma)))
    hpo_trial.report(epoch, round((1.0 - (x - 0.3) ** 2) * (1.0 - 0.5**epoch), 6))
"""


def trainer_env(seed: int) -> dict[str, str]:
    return {
        "BENCH_SEED": str(seed),
        "BENCH_EPOCH_SECONDS": str(EPOCH_SECONDS),
        "BENCH_EPOCH_SIGMA": str(EPOCH_SIGMA),
        "BENCH_TRIAL_SIGMA": str(TRIAL_SIGMA),
        "BENCH_STARTUP": f"{STARTUP_RANGE[0]},{STARTUP_RANGE[1]}",
    }


def mean_train_seconds() -> float:
    """One training with the defaults, on average: start-up plus R epochs (E[lognormal] included)."""
    speed = math.exp(TRIAL_SIGMA**2 / 2) * math.exp(EPOCH_SIGMA**2 / 2)
    return statistics.fmean(STARTUP_RANGE) + MAX_RESOURCE * EPOCH_SECONDS * speed


# --- one run, locally ------------------------------------------------------------------------


def run_local(condition: str, ratio: float, seed: int, work: Path) -> dict[str, Any]:
    name = f"{condition}-{ratio:g}x-{seed}".replace(".", "p")
    folder = work / "local" / name
    folder.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "metric": "accuracy",
        "mode": "max",
        "maximum_resource": MAX_RESOURCE,
        "reduction_factor": 3,
        "seed": seed,
        "hp_space": {"x": {"param_type": "uniform", "range": [0.0, 1.0]}},
    }
    if condition.startswith("promote"):
        config["asha"] = {"variant": "promote"}
    (folder / "hpo_config.yaml").write_text(yaml.safe_dump(config))
    train = mean_train_seconds()
    cmd = [str(HPO), "run", str(folder / "hpo_config.yaml"), "--gpus", "0", "--cpu-slots", str(SLOTS)]
    cmd += ["--out", str(folder / "out"), "--name", "b", "--time-ratio", f"{ratio:g}"]
    for option, value in LOCAL_OPTIONS.items():
        cmd += [f"--{option}", value]
    if not measured(condition):
        cmd += ["--train-time", f"{train:.3f}s"]
    cmd += ["--", sys.executable, "-c", TRAINER]
    row: dict[str, Any] = {"backend": "local", "condition": condition, "ratio": ratio, "seed": seed}
    row.update(LOCAL_OPTIONS)
    env = {**os.environ, **trainer_env(seed)}
    launched = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=folder, timeout=3600)
    exited = time.time()
    (folder / "hpo.log").write_text(done.stdout + done.stderr)
    if done.returncode == 2:
        return {**row, "refused": (done.stderr.strip().splitlines() or ["(no output)"])[-1]}
    doc = json.loads((folder / "out" / "study.json").read_text())
    budget = float(doc["budget"]["seconds"])
    deadline = float(doc["deadline"])
    finished = float(doc["finishedAt"])
    plan = doc.get("plan") or {}
    return {
        **row,
        "exit_code": done.returncode,
        "state": doc["state"],
        "reason": doc["reason"],
        "budget": budget,
        "train_time": budget / ratio if measured(condition) else train,
        # the product's own clock: deadline = its start + budget
        "overrun": finished - deadline,
        # the user's: the command launched, the command exited
        "overrun_launch": exited - (launched + budget),
        "start_lag": float(doc["startedAt"]) - launched,
        "budget_used": (exited - launched) / budget,
        "trials": doc["counts"]["total"],
        "completed": doc["counts"].get("completed", 0),
        "stopped_at_deadline": doc["counts"].get("stopped", 0),
        "planned_trials": plan.get("plannedTrials"),
        "stop_margin": doc["budget"]["stopMarginSeconds"],
    }


# --- one run, in the cluster -------------------------------------------------------------------


class ClusterBackend:
    """The local cluster, the chart's CRDs and RBAC, and the operator as a subprocess."""

    def __init__(self) -> None:
        from tests.cluster.cluster import ClusterSpec, LocalCluster

        self.cluster = LocalCluster(ClusterSpec(nodes=CLUSTER_NODES, gpus_per_node=CLUSTER_GPUS_PER_NODE))
        self.operator: Any = None

    def up(self) -> None:
        from tests.support.operator_process import OperatorProcess, install_chart_without_operator

        started = time.monotonic()
        self.cluster.up()
        c = self.cluster
        kubeconfig = install_chart_without_operator(c)
        self.operator = OperatorProcess(kubeconfig, c.log_dir / "hpo-operator.log")
        self.operator.start()
        print(f"cluster and operator up in {time.monotonic() - started:.1f}s at {c.root}", file=sys.stderr)

    def down(self, keep: bool) -> None:
        if self.operator is not None:
            self.operator.stop()
        self.cluster.down()
        if not keep:
            self.cluster.remove()

    def manifest(self, name: str, condition: str, ratio: float, seed: int) -> dict[str, Any]:
        budget: dict[str, Any] = {"timeRatio": ratio}
        if not measured(condition):
            budget["trainTime"] = f"{mean_train_seconds():.3f}s"
        env = [{"name": k, "value": v} for k, v in trainer_env(seed).items()]
        spec: dict[str, Any] = {
            "metric": "accuracy",
            "mode": "max",
            "hpSpace": {"x": {"paramType": "uniform", "range": [0.0, 1.0]}},
            "maximumResource": MAX_RESOURCE,
            "reductionFactor": 3,
            "budget": budget,
            "parallelTrials": SLOTS,
            "gpusPerTrial": 1,
            "seed": seed,
            "trialTemplate": {
                "spec": {
                    "containers": [
                        {
                            "name": "trial",
                            "image": "hpo-bench-trainer:local",
                            "command": ["python", "-c", TRAINER],
                            "env": env,
                        }
                    ]
                }
            },
        }
        if condition.startswith("promote"):
            spec["asha"] = {"variant": "promote"}
            spec["checkpoints"] = {"size": "1Gi", "storageClassName": "standard"}
        return {
            "apiVersion": "hpo.dev/v1alpha1",
            "kind": "HPOStudy",
            "metadata": {"name": name},
            "spec": spec,
        }

    def run_study(self, condition: str, ratio: float, seed: int) -> dict[str, Any]:
        from tests.support.e2e_study import PodWatch

        kube = self.cluster.admin()
        ns = f"b-{condition}-{ratio:g}x-{seed}-{random.randrange(16**4):04x}".replace(".", "p")
        kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        wait_until(
            lambda: (kube.get_or_none(f"/api/v1/namespaces/{ns}/serviceaccounts/default") or {}).get(
                "secrets"
            ),
            60,
        )
        row: dict[str, Any] = {"backend": "cluster", "condition": condition, "ratio": ratio, "seed": seed}
        train = mean_train_seconds()
        try:
            with PodWatch(kube, ns) as watch:
                created = time.time()
                kube.create(
                    f"{GROUP_PATH}/namespaces/{ns}/hpostudies", self.manifest("s", condition, ratio, seed)
                )
                limit = ratio * train * (3 if condition == "measured" else 1) + 180
                study = wait_until(lambda: _terminal(kube, ns), limit)
                status = study["status"]
                invalid: dict[str, Any] = next(
                    (c for c in status.get("conditions") or [] if c["type"] == "Invalid"), {}
                )
                if invalid.get("status") == "True":
                    return {**row, "refused": f"{invalid.get('reason')}: {invalid.get('message')}"}

                def pods_done() -> bool:
                    pods = list(watch.pods.values())
                    return all(p.ended is not None or p.gone is not None for p in pods)

                wait_until(pods_done, 120)
                pods = list(watch.pods.values())
            budget = status["budget"]
            from hpo_operator.kube.observe import to_timestamp

            started = to_timestamp(budget["startedAt"])
            finished = to_timestamp(budget["finishedAt"])
            assert started is not None and finished is not None
            seconds = float(budget["budgetSeconds"])
            deadline = started + seconds
            last_pod = max((p.holds_gpu_until() for p in pods), default=finished)
            end = max(finished, last_pod)
            trials = status.get("trials") or {}
            plan = status.get("plan") or {}
            return {
                **row,
                "state": status["phase"],
                "reason": status.get("message"),
                "budget": seconds,
                "train_time": seconds / ratio if measured(condition) else train,
                "overrun": end - deadline,
                "overrun_status": finished - deadline,
                "overrun_pods": last_pod - deadline,
                "overrun_launch": end - (created + seconds),
                "start_lag": started - created,
                "budget_used": (end - created) / seconds,
                "trials": trials.get("total", 0),
                "completed": trials.get("completed", 0),
                "stopped_at_deadline": trials.get("stopped", 0),
                "planned_trials": plan.get("plannedTrials"),
                "pods": len(pods),
                "pods_ended_after_deadline": sum(1 for p in pods if p.holds_gpu_until() > deadline),
            }
        finally:
            with contextlib.suppress(Exception):
                kube.delete(f"/api/v1/namespaces/{ns}")
                kube.delete(f"/api/v1/namespaces/{ns}/pods")


def _terminal(kube: Any, ns: str) -> dict[str, Any] | None:
    study: dict[str, Any] = kube.get(f"{GROUP_PATH}/namespaces/{ns}/hpostudies/s")
    return study if (study.get("status") or {}).get("phase") in ("Succeeded", "Failed") else None


def wait_until(condition: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise TimeoutError(f"not within {timeout:.0f}s")
        time.sleep(interval)


# --- many runs -----------------------------------------------------------------------------------


def jobs(conditions: Sequence[str], ratios: Sequence[float], seeds: int) -> list[tuple[str, float, int]]:
    """Longest first, so that concurrent slots finish together."""
    out = [(c, r, s) for c in conditions for r in ratios for s in range(seeds)]
    return sorted(out, key=lambda j: (-j[1], j[2], j[0]))


def run_backend(
    backend: str, conditions: Sequence[str], ratios: Sequence[float], seeds: int, concurrency: int, keep: bool
) -> list[dict[str, Any]]:
    todo = jobs(conditions, ratios, seeds)
    work = Path(tempfile.mkdtemp(prefix=f"budget-real-{backend}-"))
    lock = threading.Lock()
    rows: list[dict[str, Any]] = []
    cluster: ClusterBackend | None = None
    if backend == "cluster":
        cluster = ClusterBackend()
        cluster.up()

    def one(job: tuple[str, float, int]) -> None:
        condition, ratio, seed = job
        try:
            if cluster is not None:
                row = cluster.run_study(condition, ratio, seed)
            else:
                row = run_local(condition, ratio, seed, work)
        except Exception as err:  # one broken run must not lose the others
            row = {"backend": backend, "condition": condition, "ratio": ratio, "seed": seed}
            row["error"] = f"{type(err).__name__}: {err}"
        with lock:
            rows.append(row)
            print(describe(row), file=sys.stderr, flush=True)

    try:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, todo))
    finally:
        if cluster is not None:
            cluster.down(keep)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}", file=sys.stderr)
    return rows


def describe(row: dict[str, Any]) -> str:
    head = f"{row['backend']} {row['condition']} {row['ratio']:g}x seed {row['seed']}"
    if "refused" in row:
        return f"{head}: refused: {row['refused']}"
    if "error" in row:
        return f"{head}: ERROR {row['error']}"
    return (
        f"{head}: budget {row['budget']:.1f}s, overrun {row['overrun']:+.2f}s "
        f"(from launch {row['overrun_launch']:+.2f}s), used {row['budget_used']:.3f}, "
        f"{row['trials']} trials, {row['state']}: {row['reason']}"
    )


# --- summary -------------------------------------------------------------------------------------


def stats(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["backend"], r["condition"], r["ratio"]), []).append(r)
    out = []
    for (backend, condition, ratio), rs in sorted(
        groups.items(), key=lambda g: (BACKENDS.index(g[0][0]), CONDITIONS.index(g[0][1]), g[0][2])
    ):
        ran = [r for r in rs if "refused" not in r and "error" not in r]
        s: dict[str, Any] = {
            "backend": backend,
            "condition": condition,
            "ratio": ratio,
            "seeds": len(rs),
            "runs": len(ran),
            "refused": sum(1 for r in rs if "refused" in r),
            "errors": sum(1 for r in rs if "error" in r),
        }
        if ran:
            used, used_half = mean_ci([r["budget_used"] for r in ran])
            worst = max(ran, key=lambda r: r["overrun"])
            worst_launch = max(ran, key=lambda r: r["overrun_launch"])
            s.update(
                past_deadline=sum(1 for r in ran if r["overrun"] > 0),
                overrun_max=worst["overrun"],
                overrun_max_pct=100 * worst["overrun"] / worst["budget"],
                overrun_mean=statistics.fmean(r["overrun"] for r in ran),
                past_launch_deadline=sum(1 for r in ran if r["overrun_launch"] > 0),
                overrun_launch_max=worst_launch["overrun_launch"],
                overrun_launch_max_pct=100 * worst_launch["overrun_launch"] / worst_launch["budget"],
                start_lag_max=max(r["start_lag"] for r in ran),
                budget_mean=statistics.fmean(r["budget"] for r in ran),
                budget_used_mean=used,
                budget_used_ci95=used_half,
                trials_mean=statistics.fmean(r["trials"] for r in ran),
                completed_mean=statistics.fmean(r["completed"] for r in ran),
                failed=sum(1 for r in ran if r["state"] != "Succeeded"),
            )
            if backend == "cluster":
                s.update(
                    overrun_status_max=max(r["overrun_status"] for r in ran),
                    overrun_pods_max=max(r["overrun_pods"] for r in ran),
                    pods_after_deadline=sum(r["pods_ended_after_deadline"] for r in ran),
                )
        out.append(s)
    return out


def markdown_table(summary: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| backend | condition | ratio | runs | refused up front | past deadline | overrun max (s) "
        "| overrun max (% budget) | past launch + budget | from launch max (s) | budget used mean ± CI "
        "| budget (s) | trials | completed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in summary:
        head = f"| {s['backend']} | {s['condition']} | {s['ratio']:g}x | {s['runs']} | {s['refused']}"
        if not s["runs"]:
            lines.append(head + " | | | | | | | | | |" + (f" errors: {s['errors']}" if s["errors"] else ""))
            continue
        lines.append(
            f"{head} | {s['past_deadline']} | {s['overrun_max']:+.2f} | {s['overrun_max_pct']:+.1f}% "
            f"| {s['past_launch_deadline']} | {s['overrun_launch_max']:+.2f} "
            f"| {s['budget_used_mean']:.3f} ± {s['budget_used_ci95']:.3f} | {s['budget_mean']:.0f} "
            f"| {s['trials_mean']:.1f} | {s['completed_mean']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    parser.add_argument("--ratios", nargs="+", type=float, default=list(RATIOS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=6, help="studies at once")
    parser.add_argument("--keep", action="store_true", help="keep the work folders and the cluster's state")
    parser.add_argument("--grace", default=None, help="`hpo run --grace` (local; default: its own)")
    parser.add_argument("--out", type=Path, default=RESULTS / "budget_real.json")
    parser.add_argument(
        "--runs", nargs="+", type=Path, default=None, help="summarise the runs of these result files instead"
    )
    args = parser.parse_args(argv)
    if args.grace is not None:
        LOCAL_OPTIONS["grace"] = args.grace

    started = time.time()
    rows: list[dict[str, Any]] = []
    if args.runs:
        for path in args.runs:
            rows += json.loads(path.read_text())["runs"]
    else:
        for backend in args.backend:
            rows += run_backend(
                backend, args.conditions, args.ratios, args.seeds, args.concurrency, args.keep
            )
    # Keep what other backends measured before, so each backend can be rerun alone.
    if args.out.exists() and not args.runs:
        old = json.loads(args.out.read_text()).get("runs", [])
        rows = [r for r in old if r["backend"] not in args.backend] + rows
    summary = stats(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "settings": {
                    "max_resource": MAX_RESOURCE,
                    "epoch_seconds": EPOCH_SECONDS,
                    "startup_range": STARTUP_RANGE,
                    "trial_sigma": TRIAL_SIGMA,
                    "epoch_sigma": EPOCH_SIGMA,
                    "mean_train_seconds": mean_train_seconds(),
                    "slots": SLOTS,
                    "seeds": args.seeds,
                    "concurrency": args.concurrency,
                    "took_seconds": time.time() - started,
                },
                "summary": summary,
                "runs": rows,
            },
            indent=1,
            default=str,
        )
        + "\n"
    )
    print(markdown_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
