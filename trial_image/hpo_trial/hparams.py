"""The reference trainer's hyper-parameters: the study's values over the command line's defaults."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("hpo_trial.train")

# Each hyper-parameter under its OTX name first, then its plain name.
ALIASES: dict[str, tuple[str, ...]] = {
    "learning_rate": ("learning_parameters.learning_rate", "learning_rate"),
    "batch_size": ("learning_parameters.batch_size", "batch_size"),
    "weight_decay": ("learning_parameters.weight_decay", "weight_decay"),
}


@dataclass(frozen=True)
class HParams:
    learning_rate: float
    batch_size: int
    weight_decay: float


def _lookup(params: Mapping[str, Any], key: str) -> Any | None:
    found = [(name, params[name]) for name in ALIASES[key] if name in params]
    if len(found) > 1 and found[0][1] != found[1][1]:
        log.warning("both %s=%r and %s=%r are given; using the first", *found[0], *found[1])
    return found[0][1] if found else None


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"hyper-parameter {name} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"hyper-parameter {name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"hyper-parameter {name} must be finite, got {value!r}")
    return number


def resolve(params: Mapping[str, Any], defaults: HParams) -> HParams:
    """The study's hyper-parameters where given, ``defaults`` (the command line's) elsewhere.

    A batch size given as a float (32.0, as a quantised search space may produce) becomes an int.
    Names the trainer does not use are logged, since a typo would otherwise go unnoticed.
    """
    known = {name for names in ALIASES.values() for name in names}
    unused = sorted(set(params) - known)
    if unused:
        log.warning("hyper-parameters not used by this trainer: %s", ", ".join(unused))

    lr_raw = _lookup(params, "learning_rate")
    learning_rate = defaults.learning_rate if lr_raw is None else _number("learning_rate", lr_raw)
    if learning_rate <= 0:
        raise ValueError(f"hyper-parameter learning_rate must be > 0, got {learning_rate}")

    bs_raw = _lookup(params, "batch_size")
    batch_size = defaults.batch_size if bs_raw is None else round(_number("batch_size", bs_raw))
    if batch_size < 1:
        raise ValueError(f"hyper-parameter batch_size must be >= 1, got {bs_raw!r}")

    wd_raw = _lookup(params, "weight_decay")
    weight_decay = defaults.weight_decay if wd_raw is None else _number("weight_decay", wd_raw)
    if weight_decay < 0:
        raise ValueError(f"hyper-parameter weight_decay must be >= 0, got {weight_decay}")
    return HParams(learning_rate=learning_rate, batch_size=batch_size, weight_decay=weight_decay)
