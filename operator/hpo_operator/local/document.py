"""study.json and best.json: what `hpo run` learned, typed, and written so that no reader (and no
crash) ever sees half a file.

``StudyFile`` is the result document (result.py) as `hpo run` writes it: the parts both backends
share (plan, counts, best) built by the same functions as the operator's status, and what belongs
to this machine (the command, the slots, the runner process, every trial's record with its
reports, refusals, processes and log).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from ..atomic import write_text_atomic
from ..result import BestStatus, Number, PlanStatus, ResultModel, TrialCounts
from ..trials import furthest_level, to_report

if TYPE_CHECKING:
    from .runner import LocalRunner
    from .supervision import LocalTrial

STUDY_FILE = "study.json"
BEST_FILE = "best.json"
FORMAT_VERSION = 1


class ResultsError(Exception):
    """The results folder cannot be written (read-only, full, gone)."""

    def __init__(self, path: Path, err: OSError) -> None:
        super().__init__(f"cannot write {path}: {err.strerror or err}")
        self.path = path


class BestFile(BestStatus):
    """The best, with the metric and the mode it was compared by (study.json is read alone)."""

    metric: str
    mode: str


class FinalFile(ResultModel):
    """With final training: the trial trained to R and where its model is."""

    trial: str
    index: int
    value: Number | None
    resource: Number
    checkpoint_dir: str


class BudgetFile(ResultModel):
    """The budget in seconds on this machine's clock."""

    seconds: Number | None
    used_seconds: Number
    stop_margin_seconds: Number
    finished_inside_seconds: Number | None


class PrunedFile(ResultModel):
    rung: int
    resource: Number
    value: Number | None
    cutoff: Number | None


class TrialFile(ResultModel):
    """One trial: its configuration, its runs' process and outcome, its reports."""

    index: int
    name: str
    status: str
    reason: str | None
    params: dict[str, Any]
    slot: dict[str, Any]
    started_at: Number
    ended_at: Number | None
    pid: int | None
    exit_code: int | None
    killed: bool
    runs: int
    final: bool
    command: list[str]
    rung: int | None
    pruned: PrunedFile | None
    reports: list[dict[str, Any]]
    refused_reports: int
    refused: list[dict[str, Any]]
    processes: list[int]
    log: str
    log_tail: str | None
    start_from: Number = 0
    stop_at: Number | None = None
    reports_read: int = 0  # bytes of its report file read: a resumed study reads on from there
    discarded_reports: list[dict[str, Any]] = Field(default_factory=list)
    interruptions: list[dict[str, Any]] = Field(default_factory=list)


class SessionFile(ResultModel):
    """A span in which `hpo run` ran the study; ``ended_at`` None while it runs (or if it was killed)."""

    started_at: Number
    ended_at: Number | None


class StudyFile(ResultModel):
    """study.json."""

    format: int
    name: str
    state: str
    reason: str
    message: str
    error: str | None
    config: dict[str, Any]
    command: list[str]
    slots: list[dict[str, Any]]
    grace_seconds: Number
    runner: dict[str, Any] | None
    started_at: Number
    deadline: Number | None
    finished_at: Number | None
    updated_at: Number
    plan: PlanStatus | None
    budget: BudgetFile
    counts: TrialCounts
    best: BestFile | None
    final: FinalFile | None
    trials: list[TrialFile]
    sessions: list[SessionFile] = Field(default_factory=list)


def study_file(runner: LocalRunner) -> StudyFile:
    """The runner's study as study.json says it, now."""
    options, config = runner.options, runner.study.config
    now = runner.clock()
    end = runner.finished_at if runner.finished_at is not None else now
    trials = sorted(runner.trials.values(), key=lambda t: t.index)
    finished_inside = None
    if runner.deadline is not None and runner.finished_at is not None:
        finished_inside = _round(runner.deadline - runner.finished_at)
    best = None
    if runner.best is not None:
        trial = runner.trials.get(runner.best.index)
        name = trial.name if trial else f"{options.name}-{runner.best.index}"
        shared = BestStatus.of(runner.best, name).model_dump() | {"value": _finite(runner.best.value)}
        best = BestFile(**shared, metric=config.metric, mode=config.mode)
    rungs = runner.plan.rungs if runner.plan else ()
    return StudyFile(
        format=FORMAT_VERSION,
        name=options.name,
        state=runner.state,
        reason=runner.reason,
        message=runner.message,
        error=runner.error,
        config=dict(options.config_summary),
        command=list(options.command),
        slots=[s.as_dict() for s in options.slots],
        grace_seconds=options.grace,
        runner=runner.runner,
        started_at=_round(runner.started_at),
        deadline=None if runner.deadline is None else _round(runner.deadline),
        finished_at=None if runner.finished_at is None else _round(runner.finished_at),
        updated_at=_round(now),
        plan=PlanStatus.of(runner.plan) if runner.plan else None,
        budget=BudgetFile(
            # On the study's clock, which leaves out the time between sessions (resume.Timeline).
            seconds=None
            if runner.deadline is None
            else _round(runner.deadline - runner.timeline.offset - runner.started_at),
            used_seconds=_round(runner.timeline.used(end)),
            stop_margin_seconds=_round(options.stop_margin),
            finished_inside_seconds=finished_inside,
        ),
        counts=TrialCounts.of(t.status for t in trials),
        best=best,
        final=_final_file(runner),
        trials=[_trial_file(runner, t, rungs) for t in trials],
        sessions=[
            SessionFile(
                started_at=_round(s.started_at), ended_at=None if s.ended_at is None else _round(s.ended_at)
            )
            for s in runner.timeline.sessions
        ],
    )


def _final_file(runner: LocalRunner) -> FinalFile | None:
    index = runner.finalize.final if runner.finalize is not None else None
    if index is None or index not in runner.trials:
        return None
    trial = runner.trials[index]
    max_resource = runner.study.config.max_resource
    at_r = [r for r in trial.reports if r["resource"] >= max_resource]
    return FinalFile(
        trial=trial.name,
        index=index,
        value=at_r[0]["value"] if at_r else None,
        resource=max_resource,
        checkpoint_dir=str((trial.folder / "checkpoints").relative_to(runner.options.out_dir)),
    )


def _trial_file(runner: LocalRunner, t: LocalTrial, rungs: Sequence[float]) -> TrialFile:
    pruned = t.pruned
    # The highest rung the trial was recorded at: a pruned trial's reports past its rung
    # (sent before SIGTERM took effect) do not count.
    reached = furthest_level([to_report(r) for r in t.reports], rungs)
    rung = pruned.rung if pruned is not None else reached[0] if reached else None
    return TrialFile(
        index=t.index,
        name=t.name,
        status=t.status.value,
        reason=t.reason,
        params=dict(t.params),
        slot=t.slot.as_dict(),
        started_at=_round(t.started_at),
        ended_at=None if t.ended_at is None else _round(t.ended_at),
        pid=t.recorded_pid if t.process is None else t.process.pid,
        exit_code=t.exit_code,
        killed=t.killed,
        runs=t.runs,
        final=t.final,
        command=list(t.argv),
        rung=rung,
        pruned=None
        if pruned is None
        else PrunedFile(
            rung=pruned.rung,
            resource=pruned.resource,
            value=_finite(pruned.value),
            cutoff=_finite(pruned.cutoff),
        ),
        reports=[dict(r) for r in t.reports],  # copies: a document is a snapshot
        refused_reports=t.refused_count,
        refused=[dict(r) for r in t.refused],
        processes=runner.contain.members(t.name),  # as of the last look; ended trials: none
        log=str(t.log_path.relative_to(runner.options.out_dir)),
        log_tail=t.log_tail,
        start_from=t.start_from,
        stop_at=t.stop_at,
        reports_read=t.reader.tail.offset - len(t.reader.tail.partial),
        discarded_reports=[dict(r) for r in t.discarded_reports],
        interruptions=[dict(i) for i in t.interruptions],
    )


def write_results(out_dir: Path, study: str, document: dict[str, Any], last: bool = False) -> None:
    """study.json and best.json, each atomically; raises ResultsError for the first that failed,
    having tried both. ``last``: a study.json that cannot be written atomically is overwritten in
    place (on a full disk the old file's blocks make room for the new one)."""
    best = document["best"]
    failed: ResultsError | None = None
    for name, content in (
        (STUDY_FILE, document),
        (BEST_FILE, None if best is None else {"study": study, **best}),
    ):
        if content is None:
            continue
        path = out_dir / name
        try:
            write_json_atomic(path, content, in_place_fallback=last and name == STUDY_FILE)
        except OSError as err:
            failed = failed or ResultsError(path, err)
    if failed is not None:
        raise failed


def write_json_atomic(path: Path, document: Any, in_place_fallback: bool = False) -> None:
    """Writes JSON to a temporary file beside ``path``, syncs it and renames it over ``path``
    (atomic.py): a reader, a killed process or a machine restart never leaves half a file.
    ``in_place_fallback``: when that fails, ``path`` is rewritten in place, which a full disk may
    still allow; if that fails too, the first error is raised."""
    text = json.dumps(document, indent=2, allow_nan=False, default=_json_default) + "\n"
    try:
        write_text_atomic(path, text)
    except OSError:
        if not in_place_fallback:
            raise
        try:
            path.write_text(text)
        except OSError:
            pass
        else:
            return
        raise


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite(value: float) -> float | None:
    """JSON has no NaN: a non-finite value (the worst) is written as null."""
    return value if math.isfinite(value) else None


def _round(seconds: float) -> float:
    return round(seconds, 3)
