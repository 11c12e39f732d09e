"""Faults decided by the core and the reconcile: failed trials, unschedulable studies, bad numbers."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from types import SimpleNamespace
from typing import Any, cast

import pytest
import urllib3

from hpo_operator.config import (
    BudgetSpec,
    ConfigError,
    config_from_mapping,
    parse_duration,
    study_config_from_spec,
)
from hpo_operator.kube.capacity import Capacity, gpu_capacity
from hpo_operator.kube.engine import Engine, EngineSettings
from hpo_operator.kube.reconcile import reconcile
from hpo_operator.kube.world import Cluster
from hpo_operator.kube.writes import DeleteJob, World
from hpo_operator.study import Observation, StopTrial, Study, TrialView
from hpo_operator.trials import TrialPhase

SPACE = {"x": {"param_type": "uniform", "range": [0, 1]}}


def study_core(**kw: Any) -> Study:
    base = config_from_mapping({"maximum_resource": 9, "hp_space": SPACE})
    return Study(replace(base, budget=BudgetSpec(train_time=90.0), **kw), slots=4)


def trials(**counts: int) -> tuple[TrialView, ...]:
    out: list[TrialView] = []
    for phase, n in counts.items():
        out += [TrialView(len(out) + i, TrialPhase[phase.upper()], started_at=0.0) for i in range(n)]
    return tuple(out)


@pytest.mark.parametrize(
    ("counts", "stops"),
    [
        ({"failed": 2}, False),  # fewer than three failures never stop a study by default
        ({"failed": 3}, True),
        ({"failed": 3, "completed": 3}, True),  # half of the ended trials
        ({"failed": 3, "pruned": 4}, False),  # fewer than half
        ({"failed": 5, "completed": 2, "running": 3}, True),  # running trials are not "ended"
    ],
)
def test_unset_max_failed_trials_stops_at_three_failures_that_are_half_of_the_ended(
    counts: dict[str, int], stops: bool
) -> None:
    core = study_core()
    views = trials(**counts)
    assert (core.too_many_failed(views) is not None) is stops
    decision = core.decide(Observation(started_at=0.0, now=20.0, free_slots=0, trials=views))
    final = decision.finalize
    assert (final is not None and not final.succeeded and "maxFailedTrials" in final.reason) is stops
    if stops:
        running = [t.index for t in views if t.status is TrialPhase.RUNNING]
        assert [a.index for a in decision.actions if isinstance(a, StopTrial)] == running


def test_a_set_max_failed_trials_counts_failures_only() -> None:
    core = study_core(max_failed_trials=1)
    assert core.too_many_failed(trials(completed=5)) is None
    assert core.too_many_failed(trials(completed=5, failed=1)) == "1 trials failed (maxFailedTrials is 1)"
    lenient = study_core(max_failed_trials=10)
    assert lenient.too_many_failed(trials(failed=9)) is None


def study_object(gpus: int) -> dict[str, Any]:
    return {
        "apiVersion": "hpo.dev/v1alpha1",
        "kind": "HPOStudy",
        "metadata": {"name": "s", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": {
            "hpSpace": {"x": {"paramType": "uniform", "range": [0, 1]}},
            "maximumResource": 9,
            "budget": {"deadline": "60s"},
            "gpusPerTrial": gpus,
            "trialTemplate": {"spec": {"containers": [{"name": "t", "image": "i"}]}},
        },
    }


def node(name: str, gpus: int, ready: bool = True) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {},
        "status": {
            "allocatable": {"nvidia.com/gpu": str(gpus)},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def test_the_largest_node_counts_nodes_that_are_not_ready_too() -> None:
    capacity = gpu_capacity([node("a", 2), node("b", 8, ready=False)], [])
    assert (capacity.total, capacity.largest) == (2, 8)
    assert gpu_capacity([], []).largest == 0


def test_more_gpus_per_trial_than_any_node_has_fails_the_study_at_once() -> None:
    world = World(study=study_object(3), capacity=Capacity(total=4, used=0, largest=2))
    outcome = reconcile(world, now=1000.0)
    assert outcome.writes == [] and outcome.status is not None
    assert outcome.status["phase"] == "Failed"
    ready = next(c for c in outcome.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "Unschedulable")
    assert "spec.gpusPerTrial: 3 GPUs per trial, but no node has more than 2" in ready["message"]


def test_a_study_that_fits_one_node_or_whose_nodes_are_not_counted_goes_on() -> None:
    fits = reconcile(World(study=study_object(2), capacity=Capacity(4, 0, largest=2)), now=1000.0)
    unknown = reconcile(World(study=study_object(3), capacity=Capacity(4, 0)), now=1000.0)
    for outcome in (fits, unknown):
        assert outcome.status is None or outcome.status.get("phase") != "Failed"


@pytest.mark.parametrize("value", ["1e400", float("inf"), float("nan"), "0s", -3, "soon"])
def test_a_duration_must_be_positive_and_finite(value: Any) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"maximum_resource": float("inf")}, "maximum_resource"),
        ({"maximum_resource": True}, "maximum_resource"),
        ({"maximum_resource": "10"}, "maximum_resource"),
        ({"reduction_factor": 2.5}, "reduction_factor"),
        ({"seed": True}, "seed"),
        (
            {"minimum_resource": 100, "maximum_resource": 10},
            "minimum_resource (100) must not exceed maximum_resource (10)",
        ),
        ({"minimum_resource": 1}, "R, the epochs (or steps) of one full training, is not set"),
    ],
)
def test_hpo_config_numbers_are_numbers_finite_and_in_range(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_mapping({"hp_space": SPACE, **overrides})
    assert any(field in p for p in err.value.problems), err.value.problems


def test_a_search_space_problem_is_named_by_its_spec_path() -> None:
    spec = {"hpSpace": {"": {"paramType": "uniform", "range": [0, 1]}}, "trialTemplate": {"spec": {}}}
    with pytest.raises(ConfigError) as err:
        study_config_from_spec(spec)
    assert err.value.problems[0].startswith("spec.hpSpace: parameter names must be non-empty"), (
        err.value.problems
    )


class _FlakyApi:
    """An API whose listings fail as an unreachable server does, then answer."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def list_page(self, path: str, **_: Any) -> dict[str, Any]:
        self.calls += 1
        if self.calls <= self.failures:
            raise urllib3.exceptions.NewConnectionError(None, "Connection refused")  # type: ignore[arg-type]
        return {"items": [{"metadata": {"namespace": "ns", "name": "s"}}]}


def test_the_periodic_resync_survives_an_unreachable_api_server(caplog: pytest.LogCaptureFixture) -> None:
    api = _FlakyApi(failures=2)
    engine = Engine(
        cast(Cluster, SimpleNamespace(api=api, caches=None)), settings=EngineSettings(resync_seconds=0.01)
    )

    async def run() -> None:
        task = asyncio.create_task(engine._resync())
        for _ in range(500):
            if api.calls > 2:
                break
            await asyncio.sleep(0.01)
        assert not task.done(), task.exception()
        task.cancel()

    asyncio.run(run())
    assert api.calls > 2 and ("ns", "s") in engine._queued
    assert "listing studies failed" in caplog.text and "Traceback" not in caplog.text


def test_a_pruned_trial_whose_job_went_without_its_pod_gets_its_pod_deleted() -> None:
    # An API outage between deleting the Job and deleting its pod: the Job is gone, the pod runs.
    from tests.support.kube_world import T0, pod, study, trial, world

    t1 = trial(1, (1, 0.5, 3), phase="Pruned", rung=0, cutoff=0.9, resource=1, lastValue=0.5)
    t0 = trial(0, (1, 0.9, 2))
    w = world(study(parallelTrials=2), t0, t1, jobs=[], pods={"s-1": [pod("s-1")]})
    outcome = reconcile(w, T0 + 4)
    assert DeleteJob("s-1", ("s-1-pod",)) in outcome.writes
    # A finished pod, or one already being deleted, is left alone.
    done = world(study(parallelTrials=2), t0, t1, jobs=[], pods={"s-1": [pod("s-1", "Succeeded")]})
    assert not any(isinstance(x, DeleteJob) for x in reconcile(done, T0 + 4).writes)


def test_a_finished_study_deletes_a_pod_whose_job_is_already_gone() -> None:
    from tests.support.kube_world import T0, pod, study, trial, world

    t0 = trial(0, (1, 0.9, 2), phase="Stopped")
    finished = study({"phase": "Succeeded"})
    outcome = reconcile(world(finished, t0, jobs=[], pods={"s-0": [pod("s-0")]}), T0 + 100)
    assert outcome.writes == [DeleteJob("s-0", ("s-0-pod",))]
