"""The embedded backend: a study's trials as processes on this machine (`hpo run`).

A thin adapter around the decision core. It starts each trial as a subprocess with the trial
environment of docs/architecture.md, one per slot (a GPU, via ``CUDA_VISIBLE_DEVICES``, or a share
of the CPU), reads the JSON-lines reports the trials append to their report files, and asks the core
what to do on every change and at least every ``poll`` seconds. A pruned or stopped trial gets
SIGTERM, then, after ``grace`` seconds, SIGKILL; either goes to its process group and to every
process it started (contain.py: no process of a trial outlives it, nor the runner).

A report counts when it passes the trial layer's ``report_refusal`` (trials.py) and arrives while
its trial runs; the others are refused, counted and kept in study.json with the reason, and never
reach the core. A run that exits 0 without a report that counts beyond where it started is Failed,
never Completed: a trainer whose metric nobody saw has no result.

Each trial's command is the study's with its hyper-parameters substituted (trial_command.py), run by
the metrics collector (``python -m hpo_trial.collect``) when the config names one.

The deadline is hard: the core decides ``stop_margin`` seconds ahead of the real clock (the
observation's ``StopMargin``), so it stops trials early enough that their SIGTERM (at most 1 s
before SIGKILL there, whatever the grace) and the reaping end before the real deadline; a trial
stopped earlier whose grace would run past the deadline is killed before it.

Everything learned is written to ``DIR/study.json`` (atomically, after every change and at least
every HEARTBEAT_SECONDS, so that a study resumed after a machine restart knows when it stopped) and
``DIR/best.json``; each trial's output goes to ``DIR/trials/<trial>/log.txt``.

A resumed study (resume.py) starts from the recorded trials: the interrupted ones run again first,
in the slots the core leaves them, and the core sees every time on the study's clock
(``resume.Timeline``), which leaves out the time between `hpo run`'s sessions.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..asha import tie_note
from ..budget import Plan
from ..config import MetricsCollector
from ..contain import Containment, runner_record
from ..study import (
    Best,
    Decision,
    Finalize,
    Observation,
    PruneTrial,
    ResumeTrial,
    StartTrial,
    StopTrial,
    Study,
    StudyError,
    TrialView,
)
from ..trial_command import describe_collector, substitute, wrap
from ..trials import Report, StopMargin, TrialPhase, clean_exit_phase, model_trial, to_report
from .document import STUDY_FILE, ResultsError, study_file, write_results
from .progress import Progress, SilentProgress
from .reports import ReportReader
from .resume import Restart, Resumed, Timeline
from .slots import Slot
from .supervision import (
    REFUSED_LOGGED,
    LocalTrial,
    describe_exit,
    interrupts,
    kill_at,
    read_log_tail,
    resource_text,
    start_process,
    trial_environment,
)

DEFAULT_GRACE_SECONDS = 5.0
DEFAULT_POLL_SECONDS = 0.2
# Added to the stop margin: a loaded machine delays the loop (a decision, a write, a slow kill).
STOP_SLACK_SECONDS = 0.5
# The longest a trial stopped at the deadline gets between SIGTERM and SIGKILL.
DEADLINE_GRACE_SECONDS = 1.0
# study.json is rewritten at least this often: its updatedAt tells a resumed study when a session
# that left no other record (a machine restart) ended.
HEARTBEAT_SECONDS = 1.0

EXIT_OK = 0
EXIT_NO_RESULT = 1
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class RunOptions:
    """How `hpo run` runs a study; every duration in seconds."""

    name: str
    command: tuple[str, ...]
    out_dir: Path
    slots: tuple[Slot, ...]
    grace: float = DEFAULT_GRACE_SECONDS
    """SIGTERM to SIGKILL: time a trial gets to stop on its own."""
    poll: float = DEFAULT_POLL_SECONDS
    """Longest pause between two looks at the trials."""
    config_summary: Mapping[str, Any] = field(default_factory=dict)
    """The config as study.json records it."""
    cwd: Path | None = None
    """The trials' working directory (None: this process's)."""
    collector: MetricsCollector | None = None
    """Run each trial's command under ``python -m hpo_trial.collect`` with these options."""

    @property
    def deadline_grace(self) -> float:
        """SIGTERM to SIGKILL for a trial stopped at the deadline: the grace, at most
        DEADLINE_GRACE_SECONDS. Trials stop in well under a second (their reports are written as
        they go), and a margin kept for the full grace is budget no trial trains in."""
        return min(self.grace, DEADLINE_GRACE_SECONDS)

    @property
    def stop_margin(self) -> float:
        """How far ahead of the deadline trials are stopped: the deadline's grace, three polls (to
        notice the deadline, escalate to SIGKILL, reap) and a slack for a busy machine's delays."""
        return self.deadline_grace + 3 * self.poll + STOP_SLACK_SECONDS

    @property
    def kill_lead(self) -> float:
        """How far ahead of the deadline a trial given SIGTERM before it is killed, whatever its
        grace: two polls (escalate, reap) and the slack."""
        return 2 * self.poll + STOP_SLACK_SECONDS


@dataclass(frozen=True)
class RunResult:
    state: str  # Succeeded | Failed | Interrupted
    exit_code: int
    best: Best | None
    document: dict[str, Any]
    results_error: str | None = None  # why the results folder could not be written to the end


class LocalRunner:
    """Runs one study on this machine. ``run()`` returns when it is over."""

    def __init__(
        self,
        study: Study,
        options: RunOptions,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.time,
        resumed: Resumed | None = None,
    ) -> None:
        self.study = study
        self.options = options
        self.progress: Progress = progress or SilentProgress()
        self.clock = clock
        self.trials: dict[int, LocalTrial] = {}
        self.started_at = 0.0
        self.finished_at: float | None = None
        self.state = "Running"
        self.reason = ""
        self.message = ""
        self.error: str | None = None
        self.plan: Plan | None = None
        self.deadline: float | None = None
        self.best: Best | None = None
        self.finalize: Finalize | None = None
        self.final_index: int | None = None  # the trial resumed for the final training
        self.interrupts = 0
        self._last_update = 0.0
        self._announced_plan: tuple[int, int] | None = None
        self.contain = Containment()
        self.margin = StopMargin(options.stop_margin)  # how far ahead of the deadline trials stop
        self.runner: dict[str, Any] | None = None  # study.json's record of this process
        self.results_error: str | None = None
        self.resumed = resumed
        self.timeline = Timeline()  # the sessions of `hpo run`; the study's clock (resume.py)
        self._restarts: list[Restart] = []  # interrupted trials waiting to run again
        self._last_write = 0.0

    # --- the loop ------------------------------------------------------------------------------

    def run(self) -> RunResult:
        """Runs the study. Raises ResultsError, before any trial starts, when the results folder
        cannot be written."""
        out = self.options.out_dir
        try:
            (out / "trials").mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ResultsError(out / "trials", err) from err
        if self.resumed is not None:
            self._restore(self.resumed)
        else:
            self.started_at = self.clock()
        self.timeline = self.timeline.begin(self.clock() if self.resumed else self.started_at)
        self._write()
        self.contain.start(out / STUDY_FILE)
        self.runner = runner_record(self.contain)
        try:
            with interrupts(self._interrupted):
                try:
                    self._loop()
                except ResultsError as err:
                    self._results_failed(err)
                except BaseException as err:
                    # Whatever went wrong, no trial outlives the runner and what was learned is kept.
                    self.state = "Failed"
                    self.error = self.error or f"{type(err).__name__}: {err}"
                    self._stop_all("the runner failed", TrialPhase.STOPPED)
                    self._drain(escalate_now=isinstance(err, KeyboardInterrupt))
                    self._conclude()
                    raise
            self._conclude()
        finally:
            left = self.contain.close()
            if left:
                self.progress.log(f"processes of the study that would not end: {left}")
        result = RunResult(self.state, self._exit_code(), self.best, self.document(), self.results_error)
        return result

    def _results_failed(self, err: ResultsError) -> None:
        """The results folder failed mid-study: stop, keeping whatever can still be written."""
        self.state = "Failed"
        self.reason = "the results cannot be written"
        self.error = self.results_error = str(err)
        self.progress.log(f"{err}: stopping the study")
        self._stop_all("the results cannot be written", TrialPhase.STOPPED)
        self._drain()

    def _loop(self) -> None:
        while True:
            now = self.clock()
            changed = self._poll(now)
            if self.interrupts and self.state == "Running":
                self.state = "Interrupted"
                self.reason = "interrupted"
                running = self._stop_all("interrupted", TrialPhase.STOPPED)
                self.progress.log(f"interrupted: stopping {running} running trial(s)")
                changed = True
            if self.interrupts > 1:
                self._kill_all()
            if self.state == "Running":
                changed |= self._decide(now)
                changed |= self._relaunch()
            if self.state != "Running" and not any(t.alive for t in self.trials.values()):
                return
            if changed or now - self._last_write >= HEARTBEAT_SECONDS:
                self._write()
            if changed or now - self._last_update >= 1.0:
                self._last_update = now
                self.progress.update(self.document())
            time.sleep(self.options.poll)

    def _conclude(self) -> None:
        """Final reads, the best from every report, and the last write."""
        now = self.clock()
        for trial in self.trials.values():
            self._read_reports(trial, final=True)
        self.finished_at = now
        self.timeline = self.timeline.end(now)
        for trial in self.trials.values():
            if trial.status.active and not trial.alive:  # waited to run again, and the study ended
                trial.status, trial.ended_at = TrialPhase.STOPPED, now
                ended = self.reason or self.state
                trial.reason = trial.reason or f"the study ended ({ended}) before it ran again"
        try:
            final = self._observe(now, free_slots=0)
            self.best = final.best
            self.plan = final.plan or self.plan
            self.deadline = final.deadline if final.deadline is not None else self.deadline
        except StudyError:
            pass  # keep the last best decided
        if self.state == "Running":  # the loop ended without a decision to finalize
            self.state = "Failed"
        self._discard_checkpoints()
        try:
            self._write(last=True)
        except ResultsError as err:
            self.results_error = self.results_error or str(err)
            self.error = self.error or str(err)
        self.progress.update(self.document())
        self.progress.close()

    def _exit_code(self) -> int:
        if self.state == "Interrupted":
            return EXIT_INTERRUPTED
        return EXIT_OK if self.state == "Succeeded" else EXIT_NO_RESULT

    def _interrupted(self) -> None:
        """SIGINT or SIGTERM: the first stops the study cleanly, a second kills the trials at once."""
        self.interrupts += 1

    # --- looking at the trials -------------------------------------------------------------------

    def _poll(self, now: float) -> bool:
        changed = self.contain.scan()  # new processes show in study.json
        for trial in self.trials.values():
            if not trial.alive:
                continue
            changed |= self._read_reports(trial)
            assert trial.process is not None
            code = trial.process.poll()
            if code is not None:
                self._ended(trial, code, self.clock())
                changed = True
            elif (
                trial.term_sent_at is not None
                and not trial.killed
                and now >= self._kill_at(trial.term_sent_at)
            ):
                self.contain.kill(trial.name)
                trial.killed = True
        return changed

    def _kill_at(self, term_sent_at: float) -> float:
        return kill_at(term_sent_at, self.options.grace, self.deadline, self.options.kill_lead)

    def _read_reports(self, trial: LocalTrial, final: bool = False) -> bool:
        rejected = len(trial.reader.rejected)
        new = trial.reader.read(final=final)
        for line in trial.reader.rejected[rejected:]:
            trial.refuse("not a report", line=line)
            self._log_refusal(trial, f"ignored a report line: {line}")
        for report in new:
            value = "null" if report["value"] is None else f"{report['value']:.4g}"
            said = f"{trial.name} reported {self.study.config.metric} {value} at {report['resource']:g}"
            reason = trial.take(report, self.study.config.max_resource)
            if reason is None:
                self.progress.log(said)
            else:
                self._log_refusal(trial, f"{said}: refused, {reason}")
        return bool(new) or len(trial.reader.rejected) > rejected

    def _log_refusal(self, trial: LocalTrial, message: str) -> None:
        if trial.refused_count <= REFUSED_LOGGED:
            self.progress.log(message if message.startswith(trial.name) else f"{trial.name}: {message}")
        if trial.refused_count == REFUSED_LOGGED:
            self.progress.log(f"{trial.name}: further refused reports are only counted (study.json)")

    def _ended(self, trial: LocalTrial, code: int, now: float) -> None:
        self._read_reports(trial, final=True)
        trial.exit_code = code
        trial.ended_at = now
        # Children the trial left behind (data loaders, shells, daemons) must not outlive it.
        self.contain.kill(trial.name)
        if trial.status is TrialPhase.RUNNING:
            phase = (
                clean_exit_phase(
                    [to_report(r) for r in trial.reports],
                    trial.start_from,
                    trial.stop_at,
                    self.study.config.max_resource,
                )
                if code == 0
                else None
            )
            if phase is TrialPhase.FAILED:
                trial.status = TrialPhase.FAILED
                trial.reason = self._no_reports(trial)
                trial.log_tail = read_log_tail(trial.log_path)
                self.progress.log(f"{trial.name} failed: {trial.reason}")
            elif phase is TrialPhase.PAUSED:
                trial.status = TrialPhase.PAUSED
                self.progress.log(f"{trial.name} paused at {trial.stop_at:g}")
            elif phase is TrialPhase.COMPLETED:
                trial.status = TrialPhase.COMPLETED
                self.progress.log(f"{trial.name} completed")
            else:
                trial.status = TrialPhase.FAILED
                trial.reason = describe_exit(code)
                trial.log_tail = read_log_tail(trial.log_path)
                last = trial.log_tail.splitlines()[-1] if trial.log_tail else "(no output)"
                self.progress.log(f"{trial.name} failed ({trial.reason}): {last}")
        elif trial.killed:
            trial.log_tail = read_log_tail(trial.log_path)

    def _no_reports(self, trial: LocalTrial) -> str:
        """Why a run that exited 0 has no result: nothing reported, or nothing that counts."""
        metric = self.study.config.metric
        refused = trial.refused_count - trial.run_refused_from
        if refused:
            reason = f"exited 0 without a report of {metric} that counts ({refused} refused"
            kept = len(trial.refused) > trial.run_refused_from  # the first REFUSED_KEPT are kept
            reason += f", the last: {trial.refused[-1]['reason']})" if kept else ")"
        else:
            reason = f"exited 0 without reporting {metric}"
        if trial.start_from > 0:
            reason += f" beyond resource {trial.start_from:g}, where it resumed"
        if self.options.collector is not None:
            reason += f"; the collector looked for {describe_collector(self.options.collector, metric)}"
        return reason

    def _observe(self, now: float, free_slots: int) -> Decision:
        # The core decides stop_margin ahead, so its deadline stops leave time to stop. It sees
        # the study's clock; its deadline comes back on this machine's.
        observation = Observation(
            started_at=self.started_at,
            now=self.timeline.study_time(now),
            free_slots=free_slots,
            trials=tuple(self._view(t) for t in self.trials.values()),
            final_index=self.final_index,
            stop_margin=self.margin,
        )
        decision = self.study.decide(observation)
        if decision.deadline is None or len(self.timeline.sessions) < 2:
            return decision
        return replace(decision, deadline=self.timeline.to_wall(decision.deadline))

    def _view(self, trial: LocalTrial) -> TrialView:
        view = trial.view()
        if len(self.timeline.sessions) < 2:
            return view  # one session: the two clocks are the same
        at = self.timeline.study_time
        return TrialView(
            view.index,
            view.status,
            tuple(Report(r.resource, r.value, at(r.time)) for r in view.reports),
            at(view.started_at) if view.started_at is not None else None,
            params=view.params,
        )

    # --- deciding --------------------------------------------------------------------------------

    def _free_slots(self) -> list[Slot]:
        busy = {t.slot.number for t in self.trials.values() if t.alive}
        return [s for s in self.options.slots if s.number not in busy]

    def _decide(self, now: float) -> bool:
        free = self._free_slots()[len(self._restarts) :]  # interrupted trials have theirs first
        try:
            decision = self._observe(now, len(free))
        except StudyError as err:
            self.error = str(err)
            self.state = "Failed"
            self.reason = str(err)
            self._stop_all("the study cannot continue", TrialPhase.STOPPED)
            raise
        changed = (decision.plan, decision.deadline, decision.best, decision.message) != (
            self.plan,
            self.deadline,
            self.best,
            self.message,
        )
        self.plan, self.deadline, self.best, self.message = (
            decision.plan,
            decision.deadline,
            decision.best,
            decision.message,
        )
        self._announce_plan()
        for action in decision.actions:
            changed = True
            if isinstance(action, PruneTrial):
                self._prune(action)
            elif isinstance(action, StopTrial):
                self._stop(self.trials[action.index], action.reason, TrialPhase.STOPPED)
            elif isinstance(action, StartTrial | ResumeTrial):
                if not free:
                    # The slot of a trial still stopping: the core asks again once it is free.
                    continue
                if isinstance(action, StartTrial):
                    self._start(action, free.pop(0))
                else:
                    self._resume(action, free.pop(0))
            elif isinstance(action, Finalize):
                self.finalize = action
                self.state = "Succeeded" if action.succeeded else "Failed"
                self.reason = action.reason
                self.best = action.best
                self.progress.log(f"study over: {action.reason}")
        return changed

    def _announce_plan(self) -> None:
        plan = self.plan
        if plan is None or self.deadline is None:
            return
        key = (plan.planned_trials, len(plan.rungs))
        if key == self._announced_plan:
            return
        self._announced_plan = key
        rungs = ", ".join(f"{r:g}" for r in plan.rungs) or "none"
        capped = " (the trial limit)" if plan.max_trials is not None else ""
        self.progress.log(
            f"plan: {plan.planned_trials} trials{capped}, {plan.parallelism} at once, eta {plan.eta}, "
            f"rungs {rungs}, R {plan.max_resource:g}; budget {plan.budget_seconds:.0f}s "
            f"(epoch {plan.epoch_seconds:.2f}s)"
        )

    def _prune(self, action: PruneTrial) -> None:
        trial = self.trials[action.index]
        if not trial.status.active:
            return
        trial.pruned = action
        self.progress.log(
            f"{trial.name} pruned at rung {action.rung} (resource {action.resource:g}): "
            f"{self.study.config.metric} {action.value:.4g}, cut-off {action.cutoff:.4g}"
            f"{tie_note(action.value, action.cutoff)}"
        )
        self._stop(trial, f"pruned at rung {action.rung}", TrialPhase.PRUNED)

    def _stop(self, trial: LocalTrial, reason: str, status: TrialPhase) -> None:
        if not trial.status.active:
            return
        trial.status = status
        trial.reason = reason
        if trial.alive:
            if status is TrialPhase.STOPPED:
                self.progress.log(f"{trial.name} stopped: {reason}")
            trial.term_sent_at = self.clock()
            self.contain.terminate(trial.name)

    def _stop_all(self, reason: str, status: TrialPhase) -> int:
        running = [t for t in self.trials.values() if t.status.active]
        for trial in running:
            self._stop(trial, reason, status)
        return len(running)

    def _kill_all(self) -> None:
        for trial in self.trials.values():
            if trial.alive and not trial.killed:
                self.contain.kill(trial.name)
                trial.killed = True

    def _drain(self, escalate_now: bool = False) -> None:
        """Waits for every process to end, escalating to SIGKILL after the grace period."""
        if escalate_now:
            self._kill_all()
        while any(t.alive for t in self.trials.values()):
            self._poll(self.clock())
            time.sleep(min(self.options.poll, 0.05))

    # --- starting ------------------------------------------------------------------------------

    def trial_environment(
        self, name: str, params: Mapping[str, Any], slot: Slot, folder: Path
    ) -> dict[str, str]:
        """This process's environment, with the trial contract's variables and the slot's limits."""
        config = self.study.config
        env = trial_environment(
            self.options.name, name, params, config.metric, config.max_resource, slot, folder
        )
        return env | self.contain.environment()  # the study's marker (contain.py)

    def _start(self, action: StartTrial, slot: Slot) -> None:
        name = f"{self.options.name}-{action.index}"
        folder = self.options.out_dir / "trials" / name
        reports = folder / "reports.jsonl"
        try:
            (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
            reports.write_bytes(b"")
        except OSError as err:
            raise ResultsError(folder, err) from err
        trial = LocalTrial(
            index=action.index,
            name=name,
            params=dict(action.params),
            slot=slot,
            folder=folder,
            reader=ReportReader(reports),
            started_at=self.clock(),
            stop_at=action.stop_at,
        )
        self.trials[action.index] = trial
        extra = {} if action.stop_at is None else {"HPO_STOP_RESOURCE": resource_text(action.stop_at)}
        if self._launch(trial, extra, "wb"):
            params = ", ".join(f"{k}={v}" for k, v in action.params.items())
            self.progress.log(f"{name} started on {slot.describe()}: {params}")

    def _resume(self, action: ResumeTrial, slot: Slot, what: str = "") -> None:
        """Runs a paused (or, for the final training, any ended) trial again from its checkpoint."""
        trial = self.trials[action.index]
        trial.slot, trial.stop_at, trial.runs = slot, action.stop_at, trial.runs + 1
        trial.status, trial.reason, trial.exit_code, trial.ended_at = TrialPhase.RUNNING, None, None, None
        trial.term_sent_at, trial.killed, trial.pruned, trial.log_tail = None, False, None, None
        trial.start_from = action.start_from
        if action.final:
            trial.final, self.final_index = True, action.index
        extra = {
            "HPO_START_RESOURCE": resource_text(action.start_from),
            "HPO_STOP_RESOURCE": resource_text(action.stop_at),
        }
        if self._launch(trial, extra, "ab"):
            what = what or ("final training" if action.final else "promoted")
            span = f"{action.start_from:g} to {action.stop_at:g}"
            self.progress.log(f"{trial.name} {what}: resumed at {span} on {slot.describe()}")

    # --- a resumed study ------------------------------------------------------------------------

    def _restore(self, resumed: Resumed) -> None:
        """The recorded study, as resume.restore rebuilt it."""
        self.started_at = resumed.started_at
        self.timeline = resumed.timeline
        self.trials = {t.index: t for t in resumed.trials}
        self._restarts = list(resumed.restarts)
        self.final_index = resumed.final_index
        for note in resumed.notes:
            self.progress.log(note)

    def _relaunch(self) -> bool:
        """Runs the interrupted trials again as slots allow: from their checkpoint, or from scratch."""
        if not self._restarts:
            return False
        free = self._free_slots()
        waiting = []
        for restart in self._restarts:
            trial = self.trials[restart.index]
            if not trial.status.active:  # a decision ended it first (the deadline)
                trial.ended_at = trial.ended_at or self.clock()
            elif not free:
                waiting.append(restart)
            elif restart.start_from > 0:
                stop_at = self.study.config.max_resource if restart.stop_at is None else restart.stop_at
                action = ResumeTrial(
                    trial.index, trial.params, restart.start_from, stop_at, final=restart.final
                )
                self._resume(action, free.pop(0), what="interrupted, resumed from its checkpoint")
            else:
                self._rerun(trial, restart, free.pop(0))
        self._restarts = waiting
        return True

    def _rerun(self, trial: LocalTrial, restart: Restart, slot: Slot) -> None:
        """Runs an interrupted trial again from scratch, its earlier reports kept apart."""
        trial.discarded_reports += trial.reports
        trial.reports = []
        trial.slot, trial.stop_at, trial.runs, trial.start_from = slot, restart.stop_at, trial.runs + 1, 0.0
        trial.status, trial.reason, trial.exit_code, trial.ended_at = TrialPhase.RUNNING, None, None, None
        trial.term_sent_at, trial.killed, trial.pruned, trial.log_tail = None, False, None, None
        trial.started_at = self.clock()
        try:
            (trial.folder / "checkpoints").mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ResultsError(trial.folder, err) from err
        # From scratch: HPO_START_RESOURCE 0, not the interrupted run's latest checkpoint.
        extra = {"HPO_START_RESOURCE": "0"}
        if restart.stop_at is not None:
            extra["HPO_STOP_RESOURCE"] = resource_text(restart.stop_at)
        if self._launch(trial, extra, "ab"):
            self.progress.log(f"{trial.name} interrupted, run again from scratch on {slot.describe()}")

    def _launch(self, trial: LocalTrial, extra: Mapping[str, str], log_mode: str) -> bool:
        """Starts the trial's process; False (and the trial Failed) when it cannot start."""
        env = self.trial_environment(trial.name, trial.params, trial.slot, trial.folder) | dict(extra)
        command = [substitute(arg, trial.params, env) for arg in self.options.command]
        # The collector is this package's own module, so it runs with this interpreter.
        trial.argv = wrap(command, self.options.collector, sys.executable)
        trial.run_refused_from = trial.refused_count
        try:
            log = trial.log_path.open(log_mode)
        except OSError as err:
            raise ResultsError(trial.log_path, err) from err
        with log:
            try:
                trial.process = start_process(trial.argv, env, self.options.cwd, log)
            except OSError as err:
                log.write(f"cannot start {trial.argv[0]}: {err}\n".encode())
                trial.status = TrialPhase.FAILED
                trial.exit_code = 127 if isinstance(err, FileNotFoundError) else 126
                trial.ended_at = self.clock()
                trial.reason = f"cannot start: {err.strerror or err}"
                self.progress.log(f"{trial.name} failed: {trial.reason}")
                return False
        self.contain.add(trial.name, trial.process.pid)
        return True

    # --- results -------------------------------------------------------------------------------

    def document(self) -> dict[str, Any]:
        """study.json: the config, the plan, every trial with its reports and outcome, the best."""
        return study_file(self).document()

    def _discard_checkpoints(self) -> None:
        """Promote variant: once the study is over no paused trial can be promoted again, so only
        the model's checkpoints are kept (trials.model_trial)."""
        if self.study.config.asha_variant != "promote" or self.state != "Succeeded":
            return
        keep = model_trial(
            self.best.index if self.best else None, self.finalize.final if self.finalize else None
        )
        for trial in self.trials.values():
            if trial.index != keep:
                shutil.rmtree(trial.folder / "checkpoints", ignore_errors=True)

    def _write(self, last: bool = False) -> None:
        """study.json and best.json (document.write_results)."""
        self._last_write = self.clock()
        write_results(self.options.out_dir, self.options.name, self.document(), last)
