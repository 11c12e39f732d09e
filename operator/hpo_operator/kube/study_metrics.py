"""Where the operator reports what each reconcile saw and did, for Prometheus metrics.

The engine calls ``observe`` after every reconcile, ``failed`` when one raised, ``forget`` when a
study is gone and ``heartbeat`` while it works; the cluster calls ``written`` after each write that
changed something. ``NullMetrics`` is the default; ``PrometheusMetrics`` feeds
:class:`hpo_operator.kube.prometheus.OperatorMetrics`.

What counts, so that a trial is counted once however often its study is reconciled:

* a trial started: its Job was created by this process (a 409 "exists" is not a start);
* a trial finished: a status patch that moved the trial into a terminal phase, once per trial;
* decision latency: for a prune, from the pruned trial's newest report (its ``time``, stamped by the
  trial) to the moment the verdict was written; for a start, from the end of a trial whose verdict
  the same reconcile wrote (its newest report) to the moment the next trial's Job was created.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..trials import ENDED_PHASE_NAMES
from .observe import reports_of, to_timestamp
from .prometheus import OperatorMetrics, TrialOutcome
from .writes import CreateJob, CreateTrial, Outcome, PatchTrialStatus, World, Write

Key = tuple[str, str]  # (namespace, study name)

OUTCOMES: Mapping[str, TrialOutcome] = {
    "Completed": "completed",
    "Pruned": "pruned",
    "Failed": "failed",
    "Stopped": "stopped",
}


class Metrics(Protocol):
    def observe(self, world: World, outcome: Outcome, seconds: float) -> None:
        """One reconcile of a study: its world, its outcome, and how long it took."""

    def failed(self, namespace: str, name: str, error: BaseException) -> None:
        """A reconcile that raised (it is retried)."""

    def written(self, world: World, write: Write, at: float) -> None:
        """One write of a reconcile that changed something, done at ``at`` (Unix seconds)."""

    def forget(self, namespace: str, name: str) -> None:
        """The study is gone."""

    def heartbeat(self) -> None:
        """The engine is working."""


class NullMetrics:
    def observe(self, world: World, outcome: Outcome, seconds: float) -> None:
        pass

    def failed(self, namespace: str, name: str, error: BaseException) -> None:
        pass

    def written(self, world: World, write: Write, at: float) -> None:
        pass

    def forget(self, namespace: str, name: str) -> None:
        pass

    def heartbeat(self) -> None:
        pass


def key_of(world: World) -> Key:
    meta = world.study["metadata"]
    return meta["namespace"], meta["name"]


def newest_report_time(trial: Mapping[str, Any]) -> float | None:
    return max((r.time for r in reports_of(trial)), default=None)


def merged_status(world: World, outcome: Outcome) -> dict[str, Any]:
    """The study's status as it is after the reconcile's writes (merge patches of top-level keys)."""
    status = dict(world.study.get("status") or {})
    for patch in (outcome.first_status, outcome.status):
        for name, value in (patch or {}).items():
            if value is None:
                status.pop(name, None)
            elif isinstance(value, dict) and isinstance(status.get(name), dict):
                status[name] = {**status[name], **value}
            else:
                status[name] = value
    return status


def budget_ratio(status: Mapping[str, Any], now: float) -> float | None:
    """Used over budget seconds; while the study runs, the time used is measured up to ``now``."""
    budget = status.get("budget") or {}
    total = budget.get("budgetSeconds")
    if not total:
        return None
    started = to_timestamp(budget.get("startedAt"))
    if budget.get("finishedAt") or started is None:
        used = float(budget.get("usedSeconds") or 0.0)
    else:
        used = max(0.0, now - started)
    return used / float(total)


@dataclass
class PrometheusMetrics:
    """The seam on top of :class:`OperatorMetrics`; thread-safe (one reconcile per study at a time)."""

    metrics: OperatorMetrics
    clock: Callable[[], float] = time.time
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    # Trials of each study whose end this process counted: a verdict written twice counts once.
    _finished: dict[Key, set[str]] = field(default_factory=dict, init=False)
    # Ends (newest report times) of the trials whose verdicts the running reconcile wrote, oldest
    # first; each start the same reconcile writes takes one.
    _ends: dict[Key, list[float]] = field(default_factory=dict, init=False)

    def observe(self, world: World, outcome: Outcome, seconds: float) -> None:
        namespace, name = key = key_of(world)
        with self._lock:
            self._ends.pop(key, None)
        self.metrics.observe_reconcile(seconds)
        status = merged_status(world, outcome)
        counts = {
            k: int(v) for k, v in (status.get("trials") or {}).items() if k != "total" and v is not None
        }
        spec = world.study.get("spec") or {}
        running = counts.get("running", 0)
        best = (status.get("best") or {}).get("value")
        self.metrics.observe_study(
            namespace,
            name,
            str(status.get("phase") or "Pending"),
            running,
            float(running * int(spec.get("gpusPerTrial", 1))),
            None if best is None else float(best),
            budget_ratio(status, self.clock()),
            metric=str(spec.get("metric") or ""),
            trials=counts,
        )

    def failed(self, namespace: str, name: str, error: BaseException) -> None:
        with self._lock:
            self._ends.pop((namespace, name), None)
        self.metrics.reconcile_error(namespace, name)

    def written(self, world: World, write: Write, at: float) -> None:
        namespace, name = key = key_of(world)
        if isinstance(write, PatchTrialStatus):
            phase = write.patch.get("phase")
            if phase not in ENDED_PHASE_NAMES:
                return
            trial = next((t for t in world.trials if t["metadata"]["name"] == write.trial), None)
            before = ((trial or {}).get("status") or {}).get("phase")
            if before in ENDED_PHASE_NAMES:
                return
            with self._lock:
                counted = self._finished.setdefault(key, set())
                if write.trial in counted:
                    return
                counted.add(write.trial)
                end = None if trial is None else newest_report_time(trial)
                if end is not None:
                    bisect.insort(self._ends.setdefault(key, []), end)
            self.metrics.trial_finished(namespace, name, OUTCOMES[str(phase)])
            if phase == "Pruned" and end is not None:
                self.metrics.observe_decision_latency(at - end)
        elif (isinstance(write, CreateTrial) and write.job is not None) or (
            # A trial's first Job (made after the trial where its account waited for a token); a
            # resumed run's Job is the same trial going on.
            isinstance(write, CreateJob) and write.job["metadata"]["name"] == write.trial
        ):
            with self._lock:
                ends = self._ends.get(key)
                end = ends.pop(0) if ends else None
            self.metrics.trial_started(namespace, name)
            if end is not None:
                self.metrics.observe_decision_latency(at - end)

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._finished.pop((namespace, name), None)
            self._ends.pop((namespace, name), None)
        self.metrics.forget_study(namespace, name)

    def heartbeat(self) -> None:
        self.metrics.heartbeat()
