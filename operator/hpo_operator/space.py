"""The search space: five parameter types, their validation and seeded sampling.

Semantics (the same in the CLI, the local backend and the operator):

* ``uniform [min, max]``: a float uniform in [min, max].
* ``quniform [min, max, step]``: uniform over the grid ``min + k*step`` inside [min, max].
* ``loguniform [min, max, (log_base=10)]``: uniform in log space; the base does not change the
  distribution and is accepted for compatibility.
* ``qloguniform [min, max, step, (log_base=10)]``: log-uniform, then rounded to the grid
  ``min + k*step`` and kept inside [min, max].
* ``choice [v1, v2, ...]``: one of the values, each equally likely; values may be any YAML value.

Grid values are computed in decimal arithmetic from the values as written, so ``0.0007 + 3*0.0001``
is ``0.001`` and never ``0.0010000000000000002``; when min, max and step are all integers the values
are ints.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import ROUND_FLOOR, Decimal
from functools import cached_property
from typing import Any

PARAM_TYPES = ("uniform", "quniform", "loguniform", "qloguniform", "choice")

# Range lengths each type accepts (the optional trailing element is log_base).
_RANGE_LENGTHS: dict[str, tuple[int, ...]] = {
    "uniform": (2,),
    "quniform": (3,),
    "loguniform": (2, 3),
    "qloguniform": (3, 4),
}


class SpaceError(ValueError):
    """One or more problems in a search space; ``problems`` lists each as 'name: what is wrong'."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _dec(value: int | float) -> Decimal:
    # repr() of a float is the shortest string that round-trips, i.e. the value as the user wrote it.
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


@dataclass(frozen=True)
class Param:
    """One validated parameter of the search space."""

    name: str
    type: str
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    log_base: float = 10.0
    choices: tuple[Any, ...] = ()
    integer: bool = False
    default: Any = None

    @property
    def quantized(self) -> bool:
        return self.step is not None

    @property
    def log(self) -> bool:
        return self.type in ("loguniform", "qloguniform")

    @cached_property
    def grid_size(self) -> int:
        """Number of grid points of a quantised parameter."""
        assert self.step is not None
        return int(((_dec(self.high) - _dec(self.low)) / _dec(self.step)).to_integral_value(ROUND_FLOOR)) + 1

    def grid_value(self, k: int) -> int | float:
        """The k-th grid point, ``low + k*step``, without float noise."""
        assert self.step is not None
        value = _dec(self.low) + k * _dec(self.step)
        return int(value) if self.integer else float(value)

    def nearest_grid_index(self, x: float) -> int:
        assert self.step is not None
        k = round((x - self.low) / self.step)
        return min(max(k, 0), self.grid_size - 1)

    def sample(self, rng: random.Random) -> Any:
        """Draws one value; the only randomness is ``rng``."""
        if self.type == "choice":
            return self.choices[rng.randrange(len(self.choices))]
        if self.type == "quniform":
            return self.grid_value(rng.randrange(self.grid_size))
        if self.type == "uniform":
            return rng.uniform(self.low, self.high)
        x = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        if self.type == "qloguniform":
            return self.grid_value(self.nearest_grid_index(x))
        return min(max(x, self.low), self.high)

    def middle(self) -> Any:
        """The value tried first when no default is given: the middle of the range (geometric
        middle for log types, snapped to the grid), or the first choice."""
        if self.type == "choice":
            return self.choices[0]
        mid = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        if self.quantized:
            return self.grid_value(self.nearest_grid_index(mid))
        return mid

    def initial(self) -> Any:
        return self.middle() if self.default is None else self.default

    def from_unit(self, u: float) -> Any:
        """The value at position ``u`` in [0, 1) of this parameter's own scale (log scale for log
        types, grid cells of equal width for quantised types, an index for choices)."""
        u = min(max(u, 0.0), math.nextafter(1.0, 0.0))
        if self.type == "choice":
            return self.choices[int(u * len(self.choices))]
        if self.type == "quniform":
            return self.grid_value(int(u * self.grid_size))
        if self.log:
            x = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            x = self.low + u * (self.high - self.low)
        if self.type == "qloguniform":
            return self.grid_value(self.nearest_grid_index(x))
        return min(max(x, self.low), self.high)

    def to_unit(self, value: Any) -> float:
        """The inverse of from_unit: where ``value`` lies in [0, 1) (the middle of its cell)."""
        if self.type == "choice":
            index = next(i for i, c in enumerate(self.choices) if c == value and type(c) is type(value))
            return (index + 0.5) / len(self.choices)
        if self.type == "quniform":
            return (self.nearest_grid_index(float(value)) + 0.5) / self.grid_size
        if self.log:
            span = math.log(self.high) - math.log(self.low)
            return min(max((math.log(float(value)) - math.log(self.low)) / span, 0.0), 1.0)
        return min(max((float(value) - self.low) / (self.high - self.low), 0.0), 1.0)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a value this parameter can take."""
        if self.type == "choice":
            return any(value == c and type(value) is type(c) for c in self.choices)
        if not _is_number(value) or not self.low <= value <= self.high:
            return False
        if self.quantized:
            assert self.step is not None
            k = (_dec(value) - _dec(self.low)) / _dec(self.step)
            return k == k.to_integral_value()
        return True

    def describe(self) -> str:
        if self.type == "choice":
            return f"choice {list(self.choices)}"
        text = f"{self.type} [{self.low}, {self.high}"
        if self.step is not None:
            text += f", step {self.step}"
        return text + "]"


@dataclass(frozen=True)
class SearchSpace:
    """An ordered mapping of validated parameters."""

    params: tuple[Param, ...]

    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def sample(self, rng: random.Random) -> dict[str, Any]:
        return {p.name: p.sample(rng) for p in self.params}

    def from_unit(self, point: list[float]) -> dict[str, Any]:
        return {p.name: p.from_unit(u) for p, u in zip(self.params, point, strict=True)}

    def initial(self) -> dict[str, Any]:
        """The configuration tried first: each parameter's default, or the middle of its range."""
        return {p.name: p.initial() for p in self.params}

    def __len__(self) -> int:
        return len(self.params)


def _parse_param(name: str, spec: Any, problems: list[str]) -> Param | None:
    where = f"hp_space.{name}"
    if not isinstance(spec, Mapping):
        problems.append(f"{where}: must be a mapping with param_type and range, got {spec!r}")
        return None
    start = len(problems)
    spec = dict(spec)
    ptype = spec.pop("param_type", spec.pop("paramType", None))
    rng_values = spec.pop("range", None)
    default = spec.pop("default", None)
    for key in spec:
        problems.append(f"{where}: unknown key {key!r} (allowed: param_type, range, default)")
    if ptype is None:
        problems.append(f"{where}: param_type is missing (one of {', '.join(PARAM_TYPES)})")
        return None
    if ptype not in PARAM_TYPES:
        problems.append(f"{where}: unknown param_type {ptype!r} (one of {', '.join(PARAM_TYPES)})")
        return None
    if not isinstance(rng_values, list):
        problems.append(f"{where}: range must be a list, got {rng_values!r}")
        return None
    if ptype == "choice":
        if not rng_values:
            problems.append(f"{where}: choice needs at least one value in range")
            return None
        param = Param(name=name, type=ptype, choices=tuple(rng_values))
    else:
        lengths = _RANGE_LENGTHS[ptype]
        shape = " or ".join(str(n) for n in lengths)
        if len(rng_values) not in lengths:
            problems.append(f"{where}: {ptype} range needs {shape} values, got {len(rng_values)}")
            return None
        bad = [v for v in rng_values if not _is_number(v)]
        if bad:
            problems.append(f"{where}: range values must be finite numbers, got {bad[0]!r}")
            return None
        low, high = rng_values[0], rng_values[1]
        quantized = ptype in ("quniform", "qloguniform")
        step = rng_values[2] if quantized else None
        log_base = 10.0
        if ptype in ("loguniform", "qloguniform") and len(rng_values) == max(lengths):
            log_base = float(rng_values[-1])
        if low >= high:
            problems.append(f"{where}: min ({low}) must be smaller than max ({high})")
        if step is not None and step <= 0:
            problems.append(f"{where}: step ({step}) must be positive")
        elif step is not None and low < high and _dec(step) > _dec(high) - _dec(low):
            problems.append(f"{where}: step ({step}) is larger than max - min ({high} - {low})")
        if ptype in ("loguniform", "qloguniform"):
            if low <= 0 or high <= 0:
                problems.append(f"{where}: {ptype} bounds must be positive, got [{low}, {high}]")
            if log_base <= 1:
                problems.append(f"{where}: log_base ({rng_values[-1]}) must be greater than 1")
        if len(problems) > start:
            return None
        integer = quantized and all(isinstance(v, int) for v in (low, high, step))
        param = Param(
            name=name, type=ptype, low=low, high=high, step=step, log_base=log_base, integer=integer
        )
    if default is not None:
        if not param.contains(default):
            problems.append(f"{where}: default {default!r} is not a value of {param.describe()}")
            return None
        param = replace(param, default=default)
    return param


def parse_space(raw: Any) -> SearchSpace:
    """Validates a raw ``hp_space`` mapping; raises SpaceError listing every problem found."""
    problems: list[str] = []
    if not isinstance(raw, Mapping) or not raw:
        raise SpaceError([f"hp_space: must be a non-empty mapping of parameter names, got {raw!r}"])
    params: list[Param] = []
    for name, spec in raw.items():
        if not isinstance(name, str) or not name.strip():
            problems.append(f"hp_space: parameter names must be non-empty strings, got {name!r}")
            continue
        param = _parse_param(name, spec, problems)
        if param is not None:
            params.append(param)
    if problems:
        raise SpaceError(problems)
    return SearchSpace(tuple(params))
