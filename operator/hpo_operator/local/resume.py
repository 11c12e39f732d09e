"""`hpo run --resume DIR`: a local study continued after an interruption (Ctrl-C, SIGKILL of
`hpo run`, a machine restart), or extended once finished.

What a study folder holds for it: ``study.json`` (every trial's record, the sessions `hpo run`
ran in, the budget), ``run.json`` (how the study was started: name, command, working directory,
flags) and ``hpo_config.yaml`` (a copy of the config), all written atomically (atomic.py).

The decision core keeps no state of its own, so it is rebuilt from the recorded trials: the same
config (same seed) and the same history give the same proposals and verdicts. What this module
decides, and the runner then does:

- **Ended trials** (Completed, Pruned, Failed, Stopped by a decision) stay as they are; their
  reports and verdicts are kept and they never run again. A Paused trial (promote variant) may
  still be promoted, from its checkpoint, unless the finished study discarded its checkpoints.
- **A trial that was running when `hpo run` stopped** (Running in study.json, or Stopped with one
  of the runner's own interruption reasons): with the promote variant, and for the final
  training, it resumes from the checkpoint at its last report (a trainer saves its checkpoint
  before it reports, as the reference trainer does); with the stop variant it runs again from
  scratch under the same index and configuration, the interrupted run's reports kept apart in
  ``discardedReports``. A trial whose last report already reached where its run was to stop is
  counted as Paused or Completed. Each trial's ``interruptions`` in study.json say which.
- **Time** counts only while `hpo run` runs (``Timeline``): the study's clock stops between a
  session's end (its last write of study.json, or the watchdog's record of its death) and the next
  session's start, so the deadline left is the budget less the time used. ``--budget DURATION``
  and ``--time-ratio X`` give a new total budget; ``--budget +30m`` extends the recorded one.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pydantic import ValidationError

from ..atomic import write_text_atomic
from ..config import BudgetSpec, StudyConfig, format_duration
from ..contain import INTERRUPTED_REASON, process_alive, sweep
from ..result import ResultModel
from ..study import PruneTrial, Study, StudyError
from ..trials import TrialPhase, clean_exit_phase, to_report
from .document import STUDY_FILE, ResultsError, StudyFile, TrialFile
from .reports import ReportReader
from .slots import Slot
from .supervision import LocalTrial

if TYPE_CHECKING:
    from .runner import RunOptions

RUN_FILE = "run.json"
CONFIG_COPY = "hpo_config.yaml"
RUN_FORMAT = 1

# The reasons the runner itself gives a trial it stops without a verdict on it (runner.py): such a
# trial was interrupted, and resumes. A trial Stopped for any other reason (the deadline, too many
# failed trials) has ended.
INTERRUPTION_REASONS = frozenset(
    {"interrupted", "the runner failed", "the results cannot be written", INTERRUPTED_REASON}
)

# study.json names for the config's fields, where they differ from the attribute.
_CONFIG_KEYS = {
    "space": "hp_space",
    "max_resource": "maximum_resource",
    "min_resource": "minimum_resource",
    "reduction_factor": "reduction_factor",
    "asha_variant": "asha.variant",
    "priors": "prior_hyper_parameters",
    "parallel_trials": "num_workers",
}
# Not part of what must match: the budget may change on resume, and the ignored keys change nothing.
_NOT_COMPARED = frozenset({"budget", "ignored"})


class ResumeError(ValueError):
    """The study in the folder cannot be resumed as asked; the message says why."""


# --- time: the sessions `hpo run` ran in ----------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """A span of wall-clock time in which `hpo run` ran the study; ``ended_at`` None: still running."""

    started_at: float
    ended_at: float | None = None


@dataclass(frozen=True)
class Timeline:
    """The study's clock: wall-clock time inside the sessions, the gaps between them left out.

    ``study_time(t)`` is the first session's start plus the time spent in sessions up to wall time
    ``t`` (a time in a gap counts as the end of the session before it). Within the last session the
    two clocks differ by ``offset``, so a deadline on the study's clock is ``to_wall`` on this one.
    """

    sessions: tuple[Session, ...] = ()

    def begin(self, at: float) -> Timeline:
        return Timeline((*self.sessions, Session(at)))

    def end(self, at: float) -> Timeline:
        if not self.sessions:
            return self
        last = self.sessions[-1]
        return Timeline((*self.sessions[:-1], replace(last, ended_at=max(at, last.started_at))))

    def study_time(self, wall: float) -> float:
        if not self.sessions:
            return wall
        used = 0.0
        for s in self.sessions:
            if wall < s.started_at:
                break
            end = math.inf if s.ended_at is None else max(s.ended_at, s.started_at)
            if wall <= end:
                return self.sessions[0].started_at + used + (wall - s.started_at)
            used += end - s.started_at
        return self.sessions[0].started_at + used

    def used(self, wall: float) -> float:
        """Seconds of study time from the first session's start to ``wall``."""
        return 0.0 if not self.sessions else self.study_time(wall) - self.sessions[0].started_at

    @property
    def offset(self) -> float:
        """Wall time minus study time in the last session (0 for a study never interrupted)."""
        if not self.sessions:
            return 0.0
        start = self.sessions[-1].started_at
        return start - self.study_time(start)

    def to_wall(self, study: float) -> float:
        return study + self.offset


# --- the budget of a resumed study ------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetChange:
    """What the resuming command asks of the budget: a new total (``total`` seconds, or
    ``time_ratio`` x one training), an extension by ``extend`` seconds, or nothing (what was left)."""

    total: float | None = None
    extend: float | None = None
    time_ratio: float | None = None


def resumed_budget(recorded: BudgetSpec, total_seconds: float | None, change: BudgetChange) -> BudgetSpec:
    """The budget spec the resumed study runs under. ``total_seconds``: the total budget study.json
    recorded (None while the first trial was still timing one training)."""
    if change.total is not None:
        return BudgetSpec(time_ratio=recorded.time_ratio, deadline=change.total)
    if change.time_ratio is not None:
        return BudgetSpec(time_ratio=change.time_ratio, train_time=recorded.train_time)
    if change.extend is not None:
        if total_seconds is None:
            raise ResumeError(
                "--budget +DURATION extends the study's budget, which is not known yet (its first trial "
                "was still timing one training): give a total, --budget DURATION or --time-ratio X"
            )
        return BudgetSpec(time_ratio=recorded.time_ratio, deadline=total_seconds + change.extend)
    return recorded


def budget_left(total_seconds: float | None, used_seconds: float) -> float | None:
    """Seconds of budget left after ``used_seconds`` of study time (None: not known yet)."""
    return None if total_seconds is None else max(0.0, total_seconds - used_seconds)


# --- the config must be the same ------------------------------------------------------------------


def config_differences(recorded: StudyConfig, given: StudyConfig) -> list[str]:
    """Each setting of ``given`` that differs from ``recorded``, named as in the config file, with
    both values (the budget may differ: it has flags of its own on resume)."""
    out: list[str] = []
    for f in fields(StudyConfig):
        if f.name in _NOT_COMPARED:
            continue
        mine, theirs = getattr(given, f.name), getattr(recorded, f.name)
        if mine == theirs:
            continue
        key = _CONFIG_KEYS.get(f.name, f.name)
        if f.name == "space":
            out += _space_differences(recorded, given)
        else:
            out.append(f"{key}: {_shown(mine)} given, {_shown(theirs)} in the study")
    return out


def _space_differences(recorded: StudyConfig, given: StudyConfig) -> list[str]:
    old = {p.name: p for p in recorded.space.params}
    new = {p.name: p for p in given.space.params}
    out = [f"hp_space: {n} is not in the study" for n in new if n not in old]
    out += [f"hp_space: {n} is missing" for n in old if n not in new]
    for name in (n for n in new if n in old and new[n] != old[n]):
        out.append(f"hp_space.{name}: {new[name].describe()} given, {old[name].describe()} in the study")
    if not out:
        out.append("hp_space: the parameters' order differs")
    return out


def _shown(value: Any) -> str:
    return json.dumps(value, default=str) if not isinstance(value, str) else repr(value)


# --- how the study was started: run.json and the config's copy --------------------------------------


class RunFlags(ResultModel):
    """The `hpo run` flags the study's config and slots were built from."""

    max_resource: float | None = None
    train_time: float | None = None
    time_ratio: float | None = None
    budget: float | None = None
    final_training: bool = False
    gpus: str = "auto"
    cpu_slots: int | None = None
    grace: float
    poll: float


class RunRecord(ResultModel):
    """run.json."""

    format: int
    name: str
    command: list[str]
    cwd: str
    config_path: str
    flags: RunFlags


def write_run_record(out_dir: Path, record: RunRecord, config_text: str) -> None:
    """run.json and the config's copy, before any trial starts. Raises ResultsError."""
    for path, text in (
        (out_dir / CONFIG_COPY, config_text),
        (out_dir / RUN_FILE, json.dumps(record.model_dump(by_alias=True), indent=2) + "\n"),
    ):
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, text)
        except OSError as err:
            raise ResultsError(path, err) from err


def read_run_record(folder: Path) -> RunRecord:
    path = folder / RUN_FILE
    try:
        return RunRecord.model_validate_json(path.read_text())
    except FileNotFoundError as err:
        raise ResumeError(
            f"{folder} holds no {RUN_FILE}: not a study folder written by hpo run (or one written before "
            "studies could be resumed)"
        ) from err
    except OSError as err:
        raise ResumeError(f"{path}: cannot read: {err.strerror or err}") from err
    except ValidationError as err:
        raise ResumeError(f"{path}: not a run record written by hpo run: {err.errors()[0]['msg']}") from err


def read_study_file(folder: Path) -> StudyFile:
    path = folder / STUDY_FILE
    try:
        return StudyFile.model_validate_json(path.read_text())
    except FileNotFoundError as err:
        raise ResumeError(f"{folder} holds no {STUDY_FILE}: no study to resume there") from err
    except OSError as err:
        raise ResumeError(f"{path}: cannot read: {err.strerror or err}") from err
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ResumeError(f"{path}: not a study.json written by hpo run ({where}: {first['msg']})") from err


LOCK_FILE = ".hpo-run.lock"


def hold_folder(folder: Path) -> IO[bytes]:
    """Locks the study folder for this process (flock: released when the process ends, however it
    ends); the open file must be kept. Raises ResumeError when another `hpo run` holds it."""
    try:
        handle = (folder / LOCK_FILE).open("ab")
    except OSError as err:
        raise ResumeError(f"cannot lock {folder / LOCK_FILE}: {err.strerror or err}") from err
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        handle.close()
        raise ResumeError(f"another hpo run is running the study in {folder}") from err
    return handle


def check_not_running(doc: StudyFile) -> None:
    """Refuses a study whose `hpo run` still runs on this machine, and ends what is left of an
    earlier run's trials (a watchdog still at work, or one that died with its runner)."""
    runner = doc.runner or {}
    pid, start = runner.get("pid"), runner.get("startTime")
    here = runner.get("host") == socket.gethostname()
    if (
        doc.state == "Running"
        and isinstance(pid, int)
        and here
        and pid != os.getpid()
        and process_alive(pid, start if isinstance(start, int) else None)
    ):
        raise ResumeError(f"the study is still running (hpo run, pid {pid}): stop it first")
    marker = runner.get("marker")
    if isinstance(marker, str) and "=" in marker:
        sweep(marker.split("=", 1)[1], (), (), seconds=5.0)


# --- the trials, rebuilt ------------------------------------------------------------------------


@dataclass(frozen=True)
class Restart:
    """An interrupted trial to run again: from the checkpoint at ``start_from``, or from scratch
    (``start_from`` 0), to ``stop_at`` (None: to R)."""

    index: int
    start_from: float
    stop_at: float | None
    final: bool = False

    def describe(self) -> str:
        if self.start_from > 0:
            return f"resumed from its checkpoint at {self.start_from:g}"
        return "run again from scratch"


def interrupted(trial: TrialFile) -> bool:
    """Whether the trial was running when `hpo run` stopped (as opposed to ended by a decision)."""
    phase = TrialPhase(trial.status)
    return phase.active or (phase is TrialPhase.STOPPED and trial.reason in INTERRUPTION_REASONS)


def after_interruption(
    trial: TrialFile, variant: str, max_resource: float
) -> tuple[TrialPhase, Restart | None]:
    """What becomes of an interrupted trial: its phase now and how it runs again (None: it does
    not, for its last report reached where its run was to stop)."""
    reports = [to_report(r) for r in trial.reports]
    reached = max((r.resource for r in reports), default=0.0)
    target = max_resource if trial.stop_at is None else min(trial.stop_at, max_resource)
    if reports and reached >= target:
        done = clean_exit_phase(reports, trial.start_from, trial.stop_at, max_resource)
        if done is not None and done is not TrialPhase.FAILED:
            return done, None
    if variant == "promote" or trial.final:
        start = max(reached, trial.start_from)
        return TrialPhase.RUNNING, Restart(trial.index, start, trial.stop_at, trial.final)
    return TrialPhase.RUNNING, Restart(trial.index, 0.0, trial.stop_at, trial.final)


@dataclass(frozen=True)
class Resumed:
    """Where the runner continues from: the trials as recorded (interrupted ones Running), those to
    run again, the sessions so far, and what to tell the user."""

    started_at: float
    timeline: Timeline
    trials: tuple[LocalTrial, ...]
    restarts: tuple[Restart, ...]
    final_index: int | None
    notes: tuple[str, ...]
    previous_state: str


def restore(folder: Path, doc: StudyFile, config: StudyConfig, now: float) -> Resumed:
    """The study of ``doc`` as the runner continues it at wall time ``now``."""
    timeline = Timeline(tuple(Session(s.started_at, s.ended_at) for s in doc.sessions))
    if not timeline.sessions:  # a study.json from before sessions were recorded
        timeline = Timeline((Session(doc.started_at),))
    if timeline.sessions[-1].ended_at is None:
        # Killed: the watchdog recorded when (finishedAt); a machine restart left the last write.
        end = doc.finished_at if doc.finished_at is not None else doc.updated_at
        timeline = timeline.end(end)
    trials: list[LocalTrial] = []
    restarts: list[Restart] = []
    notes: list[str] = []
    for record in doc.trials:
        trial = _local_trial(folder, record)
        trials.append(trial)
        if interrupted(record):
            # Reports the killed run wrote after the last write of study.json: they arrived while it ran.
            trial.status = TrialPhase.RUNNING
            for report in trial.reader.read(final=True):
                trial.take(report, config.max_resource)
            for line in trial.reader.rejected:
                trial.refuse("not a report", line=line)
            _end_last_line(trial.reader.path)
            now_recorded = _with_reports(record, trial)
            phase, restart = after_interruption(now_recorded, config.asha_variant, config.max_resource)
            trial.status, trial.reason, trial.ended_at, trial.exit_code = phase, None, None, None
            trial.killed, trial.term_sent_at = False, None
            if restart is None:
                trial.ended_at = record.ended_at or doc.updated_at
                note = f"interrupted after its last report: counted as {phase.value}"
            else:
                restarts.append(restart)
                note = f"interrupted: {restart.describe()}"
            trial.interruptions.append({"at": round(now, 3), "action": note})
            notes.append(f"{trial.name} {note}")
        elif record.status == TrialPhase.PAUSED.value and not _has_checkpoints(trial):
            # A finished study keeps only the model's checkpoints: this trial can no longer be promoted.
            trial.status = TrialPhase.STOPPED
            trial.reason = "paused, and its checkpoints were discarded when the study finished"
            trial.interruptions.append({"at": round(now, 3), "action": trial.reason})
            notes.append(f"{trial.name} {trial.reason}")
    final = next((r.index for r in restarts if r.final), None)
    return Resumed(
        started_at=doc.started_at,
        timeline=timeline,
        trials=tuple(trials),
        restarts=tuple(restarts),
        final_index=final,
        notes=tuple(notes),
        previous_state=doc.state,
    )


def _with_reports(record: TrialFile, trial: LocalTrial) -> TrialFile:
    return record.model_copy(update={"reports": list(trial.reports)})


def _has_checkpoints(trial: LocalTrial) -> bool:
    folder = trial.folder / "checkpoints"
    return folder.is_dir() and any(folder.iterdir())


def _end_last_line(path: Path) -> None:
    """A killed trial may leave half a line: the next run's first report must start a line of its own."""
    try:
        with path.open("rb+") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() == 0:
                return
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                handle.write(b"\n")
    except OSError:
        pass


def _local_trial(folder: Path, t: TrialFile) -> LocalTrial:
    trial_folder = folder / "trials" / t.name
    reader = ReportReader(trial_folder / "reports.jsonl")
    reader.tail.offset = t.reports_read
    for report in [*t.reports, *t.discarded_reports]:
        reader.keys.first(report)
    for refused in t.refused:
        if isinstance(refused.get("report"), dict) and "seq" in refused["report"]:
            reader.keys.first(refused["report"])
    pruned = t.pruned
    return LocalTrial(
        index=t.index,
        name=t.name,
        params=dict(t.params),
        slot=Slot(int(t.slot["number"]), t.slot.get("gpu"), int(t.slot.get("threads", 1))),
        folder=trial_folder,
        reader=reader,
        started_at=t.started_at,
        status=TrialPhase(t.status),
        ended_at=t.ended_at,
        exit_code=t.exit_code,
        reason=t.reason,
        pruned=None
        if pruned is None
        else PruneTrial(t.index, pruned.rung, pruned.resource, _number(pruned.value), _number(pruned.cutoff)),
        killed=t.killed,
        log_tail=t.log_tail,
        stop_at=t.stop_at,
        runs=t.runs,
        final=t.final,
        start_from=t.start_from,
        argv=list(t.command),
        reports=[dict(r) for r in t.reports],
        refused=[dict(r) for r in t.refused],
        refused_count=t.refused_reports,
        recorded_pid=t.pid,
        discarded_reports=[dict(r) for r in t.discarded_reports],
        interruptions=[dict(i) for i in t.interruptions],
    )


def _number(value: float | None) -> float:
    return math.nan if value is None else float(value)


def describe_budget(total: float | None, used: float) -> str:
    left = budget_left(total, used)
    if total is None or left is None:
        return f"{format_duration(used)} used; the budget is measured by the first trial"
    return f"budget {format_duration(total)}, {format_duration(used)} used, {format_duration(left)} left"


# --- the command: what `hpo run --resume DIR` runs ----------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """The resumed study, ready to run: its core, its options, its restored state, and what to say."""

    study: Study
    options: RunOptions
    resumed: Resumed
    lines: tuple[str, ...]
    lock: IO[bytes]  # held while the study runs (hold_folder)


def prepare(
    folder: Path,
    *,
    build_config: Callable[[Path, RunFlags], StudyConfig],
    config: Path | None,
    command: Sequence[str],
    change: BudgetChange,
    slots: Callable[[RunFlags], Sequence[Slot]],
    grace: float | None,
    poll: float | None,
) -> Prepared:
    """Reads the study in ``folder`` and checks what the command gave against it. ``build_config``
    applies run flags to a config file as `hpo run` does; ``slots`` makes the slots from the flags
    (the command's own, else the recorded ones). Raises ResumeError (or ValueError for slots)."""
    if not folder.is_dir():
        raise ResumeError(f"no such study folder: {folder}")
    record = read_run_record(folder)
    lock = hold_folder(folder)
    try:
        return _prepare(folder, record, lock, build_config, config, command, change, slots, grace, poll)
    except BaseException:
        lock.close()  # refused: the folder is free again
        raise


def _prepare(
    folder: Path,
    record: RunRecord,
    lock: IO[bytes],
    build_config: Callable[[Path, RunFlags], StudyConfig],
    config: Path | None,
    command: Sequence[str],
    change: BudgetChange,
    slots: Callable[[RunFlags], Sequence[Slot]],
    grace: float | None,
    poll: float | None,
) -> Prepared:
    from .runner import RunOptions

    doc = read_study_file(folder)
    check_not_running(doc)
    recorded = build_config(folder / CONFIG_COPY, record.flags)
    if config is not None:
        differences = config_differences(recorded, build_config(config, record.flags))
        if differences:
            raise ResumeError(f"{config} differs from the study's config: {'; '.join(differences)}")
    if command and list(command) != record.command:
        raise ResumeError(
            f"the trial command differs from the study's: {_shown(list(command))} given, "
            f"{_shown(record.command)} in the study"
        )
    used = Timeline(tuple(Session(s.started_at, s.ended_at) for s in doc.sessions)).used(
        doc.finished_at if doc.finished_at is not None else doc.updated_at
    )
    used = used if doc.sessions else doc.budget.used_seconds
    if change.total is not None and change.total <= used:
        raise ResumeError(
            f"--budget {format_duration(change.total)} is not more than the {format_duration(used)} "
            "the study has used: give a larger total, or +DURATION to add time"
        )
    spec = resumed_budget(recorded.budget, doc.budget.seconds, change)
    study_config = replace(recorded, budget=spec)
    made = tuple(slots(record.flags))
    study = Study(study_config, len(made))
    try:
        study.plan(())  # a total given must still hold one training
    except StudyError as err:
        raise ResumeError(str(err)) from err
    flags = record.flags.model_copy(
        update={
            # The flags `hpo run` would have been given for this budget.
            "budget": spec.deadline,
            "train_time": None if spec.deadline is not None else spec.train_time,
            "time_ratio": None if spec.deadline is not None else spec.time_ratio,
            "grace": record.flags.grace if grace is None else grace,
            "poll": record.flags.poll if poll is None else poll,
        }
    )
    try:  # a later --resume starts from this budget
        write_text_atomic(
            folder / RUN_FILE,
            record.model_copy(update={"flags": flags}).model_dump_json(by_alias=True, indent=2) + "\n",
        )
    except OSError as err:
        raise ResumeError(f"cannot write {folder / RUN_FILE}: {err.strerror or err}") from err
    summary = dict(doc.config)
    summary["budget"] = {
        "timeRatio": spec.time_ratio,
        "trainTime": spec.train_time,
        "deadline": spec.deadline,
    }
    options = RunOptions(
        name=record.name,
        command=tuple(record.command),
        out_dir=folder,
        slots=made,
        grace=flags.grace,
        poll=flags.poll,
        config_summary=summary,
        cwd=Path(record.cwd),
        collector=study_config.metrics_collector,
    )
    resumed = restore(folder, doc, study_config, time.time())
    kept = sum(1 for t in resumed.trials if t.status.ended or t.status is TrialPhase.PAUSED)
    total = spec.seconds() if change != BudgetChange() else doc.budget.seconds
    where = ", ".join(s.describe() for s in made)
    lines = (
        f"resuming study {record.name} in {folder} ({doc.state}): {kept} trial(s) kept, "
        f"{len(resumed.restarts)} to run again; {describe_budget(total, used)}; "
        f"{len(made)} slot(s) ({where})",
    )
    return Prepared(study, options, resumed, lines, lock)
