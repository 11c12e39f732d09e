"""`hpo run --resume`'s pure parts: the study's clock across sessions, the budget left, the config
check, what becomes of an interrupted trial, and a core rebuilt from the recorded trials deciding as
the uninterrupted one (tests/integration/test_local_resume.py kills and resumes real studies)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import pytest

from hpo_operator import simulate as simulate_module
from hpo_operator.config import BudgetSpec, SamplerName, StudyConfig, config_from_mapping
from hpo_operator.local.resume import (
    BudgetChange,
    ResumeError,
    Session,
    Timeline,
    after_interruption,
    budget_left,
    config_differences,
    hold_folder,
    interrupted,
    restore,
    resumed_budget,
)
from hpo_operator.sampler import startup_trials
from hpo_operator.simulate import simulate
from hpo_operator.study import Decision, Observation, StartTrial, Study
from hpo_operator.trials import TrialPhase
from tests.support.local_study import study_doc, trial_file

# --- the study's clock --------------------------------------------------------------------------


def test_time_between_sessions_is_left_out_of_the_study_clock() -> None:
    # Ran 100..130, stopped, resumed at 200 and runs on.
    timeline = Timeline((Session(100.0, 130.0), Session(200.0)))
    assert timeline.study_time(100.0) == 100.0
    assert timeline.study_time(120.0) == 120.0
    assert timeline.study_time(160.0) == 130.0  # in the gap: where the first session ended
    assert timeline.study_time(200.0) == 130.0
    assert timeline.study_time(215.0) == 145.0
    assert timeline.used(215.0) == 45.0
    assert timeline.offset == 70.0
    # A deadline of the core (study clock) on this machine's clock, for the stops.
    assert timeline.to_wall(190.0) == 260.0
    assert timeline.end(240.0).used(1000.0) == 70.0


def test_a_study_never_interrupted_has_one_clock() -> None:
    timeline = Timeline().begin(50.0)
    assert timeline.study_time(75.5) == 75.5 and timeline.offset == 0.0
    assert Timeline().study_time(12.0) == 12.0


# --- the budget -----------------------------------------------------------------------------------


def test_the_budget_left_is_the_total_less_the_time_used() -> None:
    assert budget_left(600.0, 250.0) == 350.0
    assert budget_left(600.0, 700.0) == 0.0
    assert budget_left(None, 30.0) is None


def test_the_budget_flags_of_a_resumed_study() -> None:
    measured = BudgetSpec(time_ratio=4.0)
    given = BudgetSpec(time_ratio=3.0, train_time=100.0)
    # Nothing asked: what was recorded, whose deadline the core rebuilds (what was left).
    assert resumed_budget(given, 300.0, BudgetChange()) == given
    # A new total.
    assert resumed_budget(given, 300.0, BudgetChange(total=900.0)).seconds() == 900.0
    # A new ratio: of the given train time, or of the training trial 0 measured.
    assert resumed_budget(given, 300.0, BudgetChange(time_ratio=5.0)).seconds() == 500.0
    assert resumed_budget(measured, 80.0, BudgetChange(time_ratio=6.0)) == BudgetSpec(time_ratio=6.0)
    # +30m extends the recorded total, measured or given.
    assert resumed_budget(measured, 80.0, BudgetChange(extend=1800.0)).seconds() == 1880.0
    assert resumed_budget(given, 300.0, BudgetChange(extend=60.0)).seconds() == 360.0
    with pytest.raises(ResumeError, match="not known yet"):
        resumed_budget(measured, None, BudgetChange(extend=60.0))


# --- the config -----------------------------------------------------------------------------------


def _config(**changes: Any) -> StudyConfig:
    data: dict[str, Any] = {
        "metric": "score",
        "mode": "max",
        "maximum_resource": 8,
        "reduction_factor": 2,
        "hp_space": {
            "x": {"param_type": "uniform", "range": [0.0, 1.0]},
            "lr": {"param_type": "loguniform", "range": [0.001, 0.1]},
        },
    }
    data.update(changes)
    return config_from_mapping(data)


def test_a_different_config_is_named_setting_by_setting() -> None:
    recorded = _config()
    assert config_differences(recorded, _config()) == []
    # The budget has its own flags on resume.
    assert config_differences(recorded, replace(recorded, budget=BudgetSpec(deadline=60.0))) == []
    space = {
        "x": {"param_type": "uniform", "range": [0.0, 2.0]},
        "wd": {"param_type": "uniform", "range": [0, 1]},
    }
    found = config_differences(recorded, _config(metric="loss", mode="min", hp_space=space))
    assert "metric: 'loss' given, 'score' in the study" in found
    assert "mode: 'min' given, 'max' in the study" in found
    assert any(d.startswith("hp_space.x: ") and "2" in d for d in found), found
    assert "hp_space: wd is not in the study" in found
    assert "hp_space: lr is missing" in found
    assert config_differences(recorded, _config(maximum_resource=9)) == [
        "maximum_resource: 9.0 given, 8.0 in the study"
    ]


# --- an interrupted trial ---------------------------------------------------------------------------


def test_which_trials_were_interrupted() -> None:
    assert interrupted(trial_file("Running", [1]))
    assert interrupted(trial_file("Stopped", [1], reason="the runner died"))  # the watchdog's mark
    assert interrupted(trial_file("Stopped", [1], reason="interrupted"))  # Ctrl-C
    assert not interrupted(trial_file("Stopped", [1], reason="deadline"))
    assert not interrupted(trial_file("Pruned", [1], reason="pruned at rung 0"))
    assert not interrupted(trial_file("Completed", [1, 2, 4]))
    assert not interrupted(trial_file("Paused", [1]))


def test_an_interrupted_trial_resumes_from_its_checkpoint_or_runs_again_from_scratch() -> None:
    running = trial_file("Running", [1, 2, 3], startFrom=1, stopAt=4)
    phase, restart = after_interruption(running, "promote", 8)
    assert phase is TrialPhase.RUNNING and restart is not None
    assert (restart.start_from, restart.stop_at) == (3, 4)
    phase, restart = after_interruption(trial_file("Running", [1, 2, 3]), "stop", 8)
    assert restart is not None and restart.start_from == 0 and restart.stop_at is None
    # The final training resumes from its checkpoint whatever the variant.
    final = trial_file("Running", [1, 2, 3, 4, 5], final=True, startFrom=4, stopAt=8)
    _, restart = after_interruption(final, "stop", 8)
    assert restart is not None and restart.final and restart.start_from == 5
    # A run that had reported where it was to stop is counted so, not run again.
    assert after_interruption(trial_file("Running", [1, 2], stopAt=2), "promote", 8) == (
        TrialPhase.PAUSED,
        None,
    )
    assert after_interruption(trial_file("Running", list(range(1, 9))), "stop", 8) == (
        TrialPhase.COMPLETED,
        None,
    )


def test_restore_reads_what_the_killed_run_wrote_after_the_last_write(tmp_path: Path) -> None:
    folder = tmp_path / "trials" / "s-3"
    folder.mkdir(parents=True)
    known = {"seq": 0, "resource": 1, "value": 0.1, "time": 11.0, "extra": {}}
    late = {"seq": 1, "resource": 2, "value": 0.2, "time": 12.0, "extra": {}}
    first = json.dumps(known) + "\n"
    # One report counted before the kill, one written after the last write, half a line after that.
    (folder / "reports.jsonl").write_text(first + json.dumps(late) + "\n" + '{"seq": 2, "reso')
    record = trial_file("Stopped", [1], reason="the runner died", reportsRead=len(first), endedAt=40.0)
    ended = trial_file("Completed", [1, 2, 4], index=1, name="s-1")
    resumed = restore(tmp_path, study_doc([ended, record]), _config(), now=100.0)
    trial = next(t for t in resumed.trials if t.index == 3)
    assert [r["resource"] for r in trial.reports] == [1, 2]
    assert trial.status is TrialPhase.RUNNING and trial.ended_at is None
    assert trial.refused_count == 1  # the half line, kept with why
    assert (folder / "reports.jsonl").read_text().endswith("\n")  # the next run starts a line
    assert [(r.index, r.start_from) for r in resumed.restarts] == [(3, 0.0)]  # stop variant: from scratch
    assert trial.interruptions == [{"at": 100.0, "action": "interrupted: run again from scratch"}]
    kept = next(t for t in resumed.trials if t.index == 1)
    assert kept.status is TrialPhase.COMPLETED and [r["resource"] for r in kept.reports] == [1, 2, 4]
    # The killed session ended at the watchdog's record of it; time counts on from there.
    assert resumed.timeline.sessions == (Session(10.0, 40.0),)


# --- a rebuilt core decides as the uninterrupted one ---------------------------------------------------


class _Compared:
    """Counts the decisions compared, and the trials they started."""

    decisions: ClassVar[int] = 0
    started: ClassVar[list[int]] = []


def _checking_study(every: int) -> type[Study]:
    class Checked(Study):
        """The uninterrupted core (its caches and its incremental stop-rule replay warm); every
        ``every``-th decision, a core built afresh from the same config, given the recorded trials,
        must decide the same, as `hpo run --resume` rebuilds it."""

        calls = 0

        def decide(self, obs: Observation) -> Decision:
            decision = super().decide(obs)
            Checked.calls += 1
            if Checked.calls % every == 0:
                rebuilt = Study(self.config, self.slots).decide(obs)
                assert rebuilt == decision, f"decision {Checked.calls} differs"
                _Compared.decisions += 1
                _Compared.started += [a.index for a in decision.actions if isinstance(a, StartTrial)]
            return decision

    return Checked


@pytest.mark.parametrize("variant", ["stop", "promote"])
@pytest.mark.parametrize("sampler", ["random", "qmc", "tpe", "gp"])
def test_a_core_rebuilt_from_the_recorded_trials_proposes_and_decides_the_same(
    monkeypatch: pytest.MonkeyPatch, sampler: SamplerName, variant: str
) -> None:
    config = replace(
        _config(asha={"variant": variant}, sampler=sampler, seed=7),
        budget=BudgetSpec(train_time=80.0, time_ratio=6),
    )
    _Compared.decisions, _Compared.started = 0, []
    monkeypatch.setattr(simulate_module, "Study", _checking_study(every=3))

    def objective(params: dict[str, Any], resource: int) -> float:
        return (1 - (params["x"] - 0.3) ** 2) * (1 - 0.5**resource) + 0.01 * math.log10(params["lr"])

    result = simulate(config, 3, objective, epoch_seconds=10.0, start_seconds=1.0)
    assert result.finalize.best is not None
    assert _Compared.decisions >= 10
    # Proposals well past the samplers' start-up (tpe and gp model the history after it) were compared.
    compared_after = [i for i in _Compared.started if i >= startup_trials(config.space)]
    assert len(compared_after) >= 5, _Compared.started


def test_one_hpo_run_at_a_time_holds_a_study_folder(tmp_path: Path) -> None:
    held = hold_folder(tmp_path)
    with pytest.raises(ResumeError, match="another hpo run is running the study"):
        hold_folder(tmp_path)
    held.close()  # as when its process ends, however it ends
    hold_folder(tmp_path).close()
