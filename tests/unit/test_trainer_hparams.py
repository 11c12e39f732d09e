"""The reference trainer's hyper-parameters: OTX or plain names over the command line's defaults."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from hpo_trial.hparams import HParams, resolve

DEFAULTS = HParams(learning_rate=0.01, batch_size=32, weight_decay=1e-4)


def test_absent_hyperparameters_keep_the_defaults() -> None:
    assert resolve({}, DEFAULTS) == DEFAULTS


def test_otx_names_are_read() -> None:
    params = {"learning_parameters.learning_rate": 0.0049, "learning_parameters.batch_size": 64}
    assert resolve(params, DEFAULTS) == HParams(0.0049, 64, 1e-4)


def test_plain_names_are_read() -> None:
    params = {"learning_rate": 0.1, "batch_size": 16, "weight_decay": 0}
    assert resolve(params, DEFAULTS) == HParams(0.1, 16, 0)


@pytest.mark.parametrize(("given", "expected"), [(48.0, 48), (47.6, 48), ("24", 24)])
def test_batch_size_is_an_int_even_when_given_as_a_float(given: Any, expected: int) -> None:
    batch_size = resolve({"learning_parameters.batch_size": given}, DEFAULTS).batch_size
    assert batch_size == expected
    assert isinstance(batch_size, int)


def test_the_otx_name_wins_over_the_plain_one(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        hp = resolve({"learning_parameters.learning_rate": 0.2, "learning_rate": 0.3}, DEFAULTS)
    assert hp.learning_rate == 0.2
    assert "both" in caplog.text


def test_unused_names_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        resolve({"learning_parameters.learnig_rate": 0.2}, DEFAULTS)
    assert "learning_parameters.learnig_rate" in caplog.text


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"learning_rate": 0}, "learning_rate must be > 0"),
        ({"learning_rate": "fast"}, "learning_rate must be a number"),
        ({"learning_rate": float("nan")}, "learning_rate must be finite"),
        ({"batch_size": 0.4}, "batch_size must be >= 1"),
        ({"batch_size": True}, "batch_size must be a number"),
        ({"weight_decay": -1}, "weight_decay must be >= 0"),
    ],
)
def test_bad_values_are_errors_that_name_the_parameter(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve(params, DEFAULTS)
