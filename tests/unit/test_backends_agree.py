"""One scripted trial history through the three backends: the simulator, `hpo run`'s decision path
and the operator's reconcile make the same decisions and write the same result.

The simulator runs the study on its virtual clock and so scripts the history: when each trial
reports which value, and when its run exits. The same events, in the same order and at the same
times, are then played to `hpo run`'s runner (with no process: a stand-in that exits when told)
and to the operator's reconcile (with an in-memory API: HPOTrials, Jobs and pods as dicts). No
process, no cluster, no wall clock.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hpo_operator import simulate as simulate_module
from hpo_operator.config import study_config_from_spec
from hpo_operator.kube.capacity import Capacity
from hpo_operator.kube.observe import to_rfc3339
from hpo_operator.kube.reconcile import STOP_MARGIN, reconcile
from hpo_operator.kube.verdict import VERDICT_ANNOTATION, verdict_text
from hpo_operator.kube.writes import CreateJob, CreateTrial, DeleteJob, PatchTrialStatus, ScaleJobDown, World
from hpo_operator.local.runner import LocalRunner, RunOptions
from hpo_operator.local.slots import Slot
from hpo_operator.result import StudyResult
from hpo_operator.simulate import simulate
from hpo_operator.study import Action, Decision, Observation, Study
from hpo_operator.trials import Report, TrialPhase

JSON = dict[str, Any]
T0 = 1_800_000_000.0  # the operator's clock at the study's start (the others start at 0)
NAME = "s"
SLOTS = 4  # more than parallelTrials: `hpo run` keeps a stopped trial's slot until its process is reaped


def spec(**changes: Any) -> JSON:
    return {
        "metric": "accuracy",
        "hpSpace": {"x": {"paramType": "uniform", "range": [0, 1]}},
        "minimumResource": 1,
        "maximumResource": 9,
        "reductionFactor": 3,
        "parallelTrials": 2,
        "gpusPerTrial": 0,
        "seed": 7,
        "budget": {"trainTime": "18s", "timeRatio": 5},
        "trialTemplate": {"spec": {"containers": [{"name": "t", "image": "i"}]}},
        **changes,
    }


def value(params: dict[str, Any], resource: int) -> float:
    return round(float(params["x"]) * resource / 9, 6)


def epoch_seconds(params: dict[str, Any]) -> float:
    return 1.0 + round(2 * float(params["x"]))  # whole seconds: the API's times are to the second


# --- the script, from the simulator --------------------------------------------------------------


@dataclass
class Step:
    """One look at the study: at ``now``, after ``report`` (if any) arrived; ``exits``: the trial
    whose run exited 0 with it."""

    now: float
    report: tuple[int, Report] | None
    exits: bool
    actions: list[Action]


@dataclass
class Recorder:
    steps: list[Step] = field(default_factory=list)
    seen: dict[int, int] = field(default_factory=dict)  # reports seen per trial


def simulated(config_spec: JSON, monkeypatch: pytest.MonkeyPatch) -> tuple[list[Step], StudyResult]:
    recorder = Recorder()

    class Recording(Study):
        def decide(self, obs: Observation) -> Decision:
            new = [
                (t.index, t.reports[-1], t.status)
                for t in obs.trials
                if len(t.reports) > recorder.seen.get(t.index, 0)
            ]
            assert len(new) <= 1  # the simulator looks after every report
            for index, _, _ in new:
                recorder.seen[index] = recorder.seen.get(index, 0) + 1
            decision = super().decide(obs)
            report = (new[0][0], new[0][1]) if new else None
            exits = bool(new) and new[0][2] in (TrialPhase.COMPLETED, TrialPhase.PAUSED)
            recorder.steps.append(Step(obs.now, report, exits, decision.actions))
            return decision

    monkeypatch.setattr(simulate_module, "Study", Recording)
    config = study_config_from_spec(config_spec)
    result = simulate(config, SLOTS, value, epoch_seconds, stop_margin=STOP_MARGIN)
    return recorder.steps, result.result(NAME)


# --- `hpo run`'s decision path, with no process -------------------------------------------------


class StandInProcess:
    """What the runner asks of a trial's process: its pid, and whether it exited."""

    pid = 0

    def __init__(self) -> None:
        self.code: int | None = None

    def poll(self) -> int | None:
        return self.code


class StandInContainment:
    """The containment's calls, with no process to contain: a stop ends the process at once."""

    def __init__(self, runner: LocalRunner) -> None:
        self.runner = runner

    def _process(self, name: str) -> StandInProcess:
        trial = next(t for t in self.runner.trials.values() if t.name == name)
        assert isinstance(trial.process, StandInProcess)
        return trial.process

    def add(self, name: str, pid: int) -> None:
        pass

    def terminate(self, name: str) -> None:
        self._process(name).code = -15

    def kill(self, name: str) -> None:
        process = self._process(name)
        process.code = -9 if process.code is None else process.code

    def members(self, name: str) -> list[int]:
        return []

    def scan(self) -> bool:
        return False

    def environment(self) -> dict[str, str]:
        return {}


class ScriptedRunner(LocalRunner):
    def __init__(self, study: Study, options: RunOptions) -> None:
        self.now = 0.0
        super().__init__(study, options, clock=lambda: self.now)
        self.contain = StandInContainment(self)  # type: ignore[assignment]
        self.actions: list[list[Action]] = []

    def _launch(self, trial: Any, extra: Any, log_mode: str) -> bool:
        trial.process = StandInProcess()
        return True

    def _observe(self, now: float, free_slots: int) -> Decision:
        decision = super()._observe(now, free_slots)
        self.actions.append(decision.actions)
        return decision


def run_locally(config_spec: JSON, steps: list[Step], out: Path) -> tuple[list[list[Action]], StudyResult]:
    config = study_config_from_spec(config_spec)
    slots = tuple(Slot(i, None, 1) for i in range(SLOTS))
    runner = ScriptedRunner(Study(config, SLOTS), RunOptions(NAME, ("train",), out, slots))
    runner.margin = STOP_MARGIN  # the operator's margin, as the simulator was given
    (out / "trials").mkdir(parents=True)
    for step in steps:
        runner.now = step.now
        if step.report is not None:
            index, report = step.report
            trial = runner.trials[index]
            seq = len(trial.reports)
            entry = {"seq": seq, "resource": report.resource, "value": report.value, "time": report.time}
            assert trial.take(entry | {"extra": {}}, config.max_resource) is None
            if step.exits:
                assert isinstance(trial.process, StandInProcess)
                trial.process.code = 0
        runner._poll(step.now)
        runner._decide(step.now)
    return runner.actions, StudyResult.of_study_file(runner.document())


# --- the operator's reconcile, with an in-memory API --------------------------------------------


def merge(target: JSON, patch: JSON) -> None:
    """A JSON merge patch (RFC 7386): None removes a key, objects merge."""
    for key, new in patch.items():
        if new is None:
            target.pop(key, None)
        elif isinstance(new, dict) and isinstance(target.get(key), dict):
            merge(target[key], new)
        else:
            target[key] = copy.deepcopy(new)


class InMemoryApi:
    def __init__(self, config_spec: JSON) -> None:
        self.study: JSON = {
            "apiVersion": "hpo.dev/v1alpha1",
            "kind": "HPOStudy",
            "metadata": {"name": NAME, "namespace": "ns", "uid": "u", "generation": 1},
            "spec": config_spec,
            "status": {"budget": {"startedAt": to_rfc3339(T0, micro=True)}},
        }
        self.trials: dict[str, JSON] = {}
        self.jobs: dict[str, JSON] = {}
        self.pods: dict[str, list[JSON]] = {}
        self.current: dict[str, str] = {}  # each trial's current run's Job
        self.actions: list[list[Action]] = []

    def world(self) -> World:
        return World(
            study=copy.deepcopy(self.study),
            trials=tuple(copy.deepcopy(t) for t in self.trials.values()),
            jobs=copy.deepcopy(self.jobs),
            pods={k: tuple(copy.deepcopy(v)) for k, v in self.pods.items()},
            capacity=Capacity(0, 0),
        )

    def run_job(self, trial: str, job: JSON, now: float) -> None:
        """The Job's pod starts at once."""
        name = job["metadata"]["name"]
        self.jobs[name], self.current[trial] = job, name
        started = {"running": {"startedAt": to_rfc3339(T0 + now)}}
        labels = job["spec"]["template"]["metadata"]["labels"]  # the run's label among them
        self.pods[trial] = [
            {
                "metadata": {
                    "name": f"{name}-pod",
                    "labels": labels,
                    "creationTimestamp": to_rfc3339(T0 + now),
                },
                "status": {"phase": "Running", "containerStatuses": [{"state": started}]},
            }
        ]

    def exit_zero(self, trial: str, now: float) -> None:
        job = self.jobs[self.current[trial]]
        job.setdefault("status", {})["conditions"] = [{"type": "Complete", "status": "True"}]
        pod = self.pods[trial][0]
        ended = {"exitCode": 0, "finishedAt": to_rfc3339(T0 + now), "startedAt": to_rfc3339(T0)}
        pod["status"] = {"phase": "Succeeded", "containerStatuses": [{"state": {"terminated": ended}}]}

    def reconcile(self, now: float) -> None:
        outcome = reconcile(self.world(), T0 + now)
        assert outcome.decision is not None
        self.actions.append(outcome.decision.actions)
        for write in outcome.writes:
            if isinstance(write, CreateTrial):
                name = write.trial["metadata"]["name"]
                self.trials[name] = copy.deepcopy(write.trial) | {"status": {}}
                if write.job is not None:
                    self.run_job(name, write.job, now)
            elif isinstance(write, CreateJob):
                self.run_job(write.trial, write.job, now)
            elif isinstance(write, PatchTrialStatus):
                trial = self.trials[write.trial]
                merge(trial.setdefault("status", {}), write.patch)
                if write.verdict is not None:
                    annotations = trial["metadata"].setdefault("annotations", {})
                    annotations[VERDICT_ANNOTATION] = verdict_text(write.verdict)
            elif isinstance(write, ScaleJobDown | DeleteJob):
                # The Job controller stops the pod at once.
                trial = next(t for t in self.trials if write.name.startswith(t))
                self.jobs.pop(write.name, None)
                self.pods.pop(trial, None)
        for status in (outcome.first_status, outcome.status):
            if status:
                merge(self.study["status"], status)


def run_on_a_cluster(config_spec: JSON, steps: list[Step]) -> tuple[list[list[Action]], StudyResult]:
    api = InMemoryApi(config_spec)
    for step in steps:
        if step.report is not None:
            index, report = step.report
            name = f"{NAME}-{index}"
            reports = api.trials[name]["status"].setdefault("reports", [])
            reports.append(
                {
                    "seq": len(reports),
                    "resource": report.resource,
                    "value": report.value,
                    "time": T0 + report.time,
                    "extra": {},
                }
            )
            if step.exits:
                api.exit_zero(name, step.now)
        api.reconcile(step.now)
    return api.actions, StudyResult.of_status(api.study["status"])


# --- the test ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        # The stop variant: starts, prunes, stops at the deadline.
        ({"mode": "max"}, {"StartTrial", "PruneTrial", "StopTrial", "Finalize"}),
        ({"mode": "min"}, {"StartTrial", "PruneTrial", "StopTrial", "Finalize"}),
        # The promote variant: trials pause at rungs and are resumed; then the final training.
        (
            {
                "asha": {"variant": "promote"},
                "finalTraining": {"enabled": True},
                "checkpoints": {"size": "1Gi"},
            },
            {"StartTrial", "ResumeTrial", "Finalize"},
        ),
    ],
    ids=["stop-max", "stop-min", "promote-final"],
)
def test_the_simulator_hpo_run_and_the_operator_decide_alike_and_write_the_same_result(
    changes: JSON, expected: set[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_spec = spec(**changes)
    steps, simulated_result = simulated(config_spec, monkeypatch)
    actions = [s.actions for s in steps]
    assert any(s.report for s in steps) and steps[-1].actions  # the script has a history and an end
    kinds = {type(a).__name__ for step in actions for a in step}
    assert expected <= kinds, kinds

    local_actions, local_result = run_locally(config_spec, steps, tmp_path)
    cluster_actions, cluster_result = run_on_a_cluster(config_spec, steps)

    assert local_actions == actions
    assert cluster_actions == actions
    assert simulated_result.phase == "Succeeded" and simulated_result.best is not None
    assert local_result == simulated_result
    assert cluster_result == simulated_result
