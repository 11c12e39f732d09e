"""Broken HPOStudy specs, generated: each one is refused with a ConfigError naming the field.

The mutations (tests/support/spec_mutations.py) take a valid spec and break one field (wrong type,
out of range, huge, non-finite, empty, unicode, missing). Hypothesis draws them with its own random
source; the e2e test (tests/e2e/test_reliability.py) applies a seeded handful of them to the cluster.
"""

from __future__ import annotations

import copy
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from hpo_operator.config import ConfigError, study_config_from_spec
from hpo_operator.kube.reconcile import reconcile
from hpo_operator.kube.writes import World
from tests.support.spec_mutations import JSON, MUTATIONS, VALID, Mutation, broken


def refuse(spec: JSON) -> ConfigError:
    try:
        study_config_from_spec(spec)
    except ConfigError as err:
        return err
    raise AssertionError(f"accepted: {spec}")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(MUTATIONS), st.randoms(use_true_random=False))
def test_every_broken_spec_is_refused_naming_its_field(mutation: Mutation, rng: random.Random) -> None:
    spec, field = broken(VALID, mutation, rng)
    err = refuse(spec)
    assert err.problems and all(isinstance(p, str) and p for p in err.problems)
    assert any(field in p for p in err.problems), (field, err.problems)
    assert "Traceback" not in str(err)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(MUTATIONS), min_size=2, max_size=4), st.randoms(use_true_random=False))
def test_several_problems_at_once_are_all_refused(mutations: list[Mutation], rng: random.Random) -> None:
    spec = copy.deepcopy(VALID)
    for m in mutations:
        m(spec, rng)
    refuse(spec)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([*sorted(VALID), "parallelTrials", "gpusPerTrial", "seed", "sampler"]),
        st.one_of(
            st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
            st.lists(st.integers(), max_size=3),
            st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        ),
        max_size=5,
    )
)  # fmt: skip
def test_any_garbage_spec_gives_a_config_error_never_a_crash(overrides: JSON) -> None:
    spec = {**copy.deepcopy(VALID), **overrides}
    try:
        study_config_from_spec(spec)
    except ConfigError as err:
        assert err.problems


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(MUTATIONS), st.randoms(use_true_random=False))
def test_the_reconcile_of_a_broken_spec_fails_the_study_and_creates_nothing(
    mutation: Mutation, rng: random.Random
) -> None:
    spec, _ = broken(VALID, mutation, rng)
    study = {
        "apiVersion": "hpo.dev/v1alpha1",
        "kind": "HPOStudy",
        "metadata": {"name": "s", "namespace": "n", "uid": "u", "generation": 1},
        "spec": spec,
    }
    outcome = reconcile(World(study=study), now=1000.0)
    assert outcome.writes == [] and outcome.requeue_after is None
    assert outcome.status is not None and outcome.status["phase"] == "Failed"
    invalid = next(c for c in outcome.status["conditions"] if c["type"] == "Invalid")
    assert invalid["status"] == "True" and invalid["message"]
    # Once Failed, the next reconcile writes nothing more: no loop.
    settled = reconcile(World(study={**study, "status": outcome.status}), now=1001.0)
    assert settled.writes == [] and settled.status is None and settled.events == []
