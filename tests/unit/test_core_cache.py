"""A decision core kept between reconciles decides exactly as a core built afresh for each one.

Histories are recorded with the simulator (which keeps one core for a whole study) for several
samplers and both ASHA variants, then replayed, with trials rewritten, reset and deleted in
between, through one long-lived core and through a fresh core per observation.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest

from hpo_operator.config import AshaVariant, BudgetSpec, SamplerName, StudyConfig, config_from_mapping
from hpo_operator.kube.core_cache import CoreCache
from hpo_operator.kube.reconcile import reconcile
from hpo_operator.simulate import simulate
from hpo_operator.study import Decision, Observation, Study, TrialView
from hpo_operator.trials import Report, TrialPhase
from tests.support.kube_world import T0, running, study, trial, world

SLOTS = 4


def config(sampler: SamplerName, variant: AshaVariant, measured: bool) -> StudyConfig:
    base = config_from_mapping(
        {
            "metric": "loss",
            "mode": "min",
            "maximum_resource": 9,
            "hp_space": {
                "lr": {"param_type": "loguniform", "range": [0.0001, 0.1]},
                "width": {"param_type": "quniform", "range": [16, 112, 16]},
            },
        }
    )
    # 9 s a training, a budget of about 40 trainings on 4 slots: some 30 trials, enough for tpe and gp
    # to fit their models. ``measured``: no train time, trial 0 times the budget.
    budget = BudgetSpec(time_ratio=12.0) if measured else BudgetSpec(train_time=9.0, time_ratio=12.0)
    return replace(base, budget=budget, sampler=sampler, asha_variant=variant, seed=7)


def objective(params: dict[str, Any], epoch: int) -> float:
    return float((math.log10(params["lr"]) + 2.5) ** 2 + abs(params["width"] - 64) / 64 + 1.0 / epoch)


def record(cfg: StudyConfig) -> list[Observation]:
    seen: list[Observation] = []
    simulate(cfg, SLOTS, objective, 1.0, start_seconds=0.5, observe=lambda o, _d: seen.append(o))
    return seen


def rewritten(obs: Observation, step: int) -> Observation | None:
    """The observation with one trial changed in a way a reconcile may see and a kept core did not
    cause, or None when it has no trial to change: (0) an early report's value rewritten, the
    count and the last report unchanged; (1) its reports reset, as a new pod that has not reported
    yet, started later; (2) the trial deleted."""
    reported = [t for t in obs.trials if len(t.reports) >= 2]
    if not reported:
        return None
    target = reported[step % len(reported)]
    kind = step % 3
    trials: list[TrialView] = []
    for t in obs.trials:
        if t.index != target.index:
            trials.append(t)
        elif kind == 0:
            first = t.reports[0]
            # Far from what it was: the worst value for mode min (or the best, were it the worst).
            value = -1e6 if first.value > 0 else 1e6
            trials.append(replace(t, reports=(Report(first.resource, value, first.time), *t.reports[1:])))
        elif kind == 1:
            start = (t.started_at or 0.0) + 0.25
            trials.append(replace(t, status=TrialPhase.RUNNING, reports=(), started_at=start))
    return replace(obs, trials=tuple(trials))


def replay(cfg: StudyConfig, observations: list[Observation]) -> int:
    """Asserts one long-lived core decides as a fresh core at every observation; returns how many."""
    kept = Study(cfg, SLOTS)
    for k, obs in enumerate(observations):
        fresh: Decision = Study(cfg, SLOTS).decide(obs)
        assert kept.decide(obs) == fresh, f"observation {k} of {len(observations)}"
    return len(observations)


@pytest.mark.parametrize(
    ("sampler", "variant", "measured"),
    [
        ("random", "stop", False),
        ("qmc", "promote", False),
        ("tpe", "stop", True),
        ("tpe", "promote", False),
        ("gp", "stop", False),
        ("gp", "promote", True),
    ],
)
def test_a_kept_core_decides_as_a_fresh_core_on_recorded_histories(
    sampler: SamplerName, variant: AshaVariant, measured: bool
) -> None:
    cfg = config(sampler, variant, measured)
    history = record(cfg)
    assert max(len(o.trials) for o in history) >= 20  # the model-based samplers fitted their models
    # The history as recorded, then with a trial changed behind the core's back every few steps (and
    # changed back at the next step, as the API would show it once the change is undone).
    mixed: list[Observation] = []
    for k, obs in enumerate(history):
        mixed.append(obs)
        changed = rewritten(obs, k // 7) if k % 7 == 3 else None
        if changed is not None:
            mixed.append(changed)
    assert len(mixed) > len(history)
    assert replay(cfg, mixed) == len(mixed)


def test_a_trial_rewritten_behind_the_core_is_not_served_its_old_summary() -> None:
    cfg = config("random", "stop", False)
    core = Study(cfg, SLOTS)
    reports = (Report(1, 0.5, 2.0), Report(2, 0.4, 3.0), Report(3, 0.3, 4.0))
    before = TrialView(0, TrialPhase.RUNNING, reports, 0.5)
    assert core.summary(before).records[0].value == 0.5
    # The same count and the same last report, another value at the first rung.
    after = replace(before, reports=(Report(1, 0.9, 2.0), *reports[1:]))
    assert core.summary(after).records[0].value == 0.9
    assert core.summary(after) == Study(cfg, SLOTS).summary(after)


# --- the cache in the reconcile ------------------------------------------------------------------


def test_the_reconcile_keeps_a_study_core_until_its_generation_config_or_slots_change() -> None:
    cores = CoreCache()
    t0 = trial(0, (1, 0.5, 2), phase="Running")
    s = study()
    first = reconcile(world(s, t0, **running(t0)), T0 + 3, cores=cores)
    again = reconcile(world(s, t0, **running(t0)), T0 + 4, cores=cores)
    assert cores.built == 1 and len(cores) == 1
    # Kept or not, the outcome is the same.
    assert again.writes == reconcile(world(s, t0, **running(t0)), T0 + 4).writes
    assert first.decision is not None and again.decision is not None
    kept = cores.core("u", 1, config_of(s), SLOTS)
    assert cores.built == 1
    # A new generation of the spec: a fresh core, even with an equal config.
    s2 = study()
    s2["metadata"]["generation"] = 2
    reconcile(world(s2, t0, **running(t0)), T0 + 5, cores=cores)
    assert cores.built == 2
    assert cores.core("u", 2, config_of(s2), SLOTS) is not kept
    # Another config under the same generation (as an operator that reads a spec it parses anew).
    s3 = study(parallelTrials=2)
    s3["metadata"]["generation"] = 2
    reconcile(world(s3, t0, **running(t0)), T0 + 6, cores=cores)
    assert cores.built == 3
    # The cluster's capacity changed the slots: fresh again.
    w = world(s3, t0, **running(t0))
    reconcile(replace(w, capacity=replace(w.capacity, total=8)), T0 + 7, cores=cores)
    assert cores.built == 4
    # Another study (another uid) under the same cache does not share it.
    other = study()
    other["metadata"]["uid"] = "v"
    reconcile(world(other, t0, **running(t0)), T0 + 8, cores=cores)
    assert cores.built == 5 and len(cores) == 2


def test_a_finished_study_drops_its_core_and_the_cache_stays_bounded() -> None:
    cores = CoreCache(max_studies=2)
    t0 = trial(0, (1, 0.5, 2), phase="Running")
    for uid in ("a", "b", "c"):
        s = study()
        s["metadata"]["uid"] = uid
        reconcile(world(s, t0, **running(t0)), T0 + 3, cores=cores)
    assert len(cores) == 2
    done = study(status={"phase": "Succeeded", "observedGeneration": 1})
    done["metadata"]["uid"] = "c"
    reconcile(world(done, t0), T0 + 9, cores=cores)
    assert len(cores) == 1


def config_of(s: dict[str, Any]) -> StudyConfig:
    from hpo_operator.config import study_config_from_spec

    return study_config_from_spec(s["spec"])
