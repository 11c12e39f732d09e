"""The search space: five parameter types, their validation and seeded sampling.

Semantics (the same in the CLI, the local backend and the operator), as OpenVINO Training
Extensions (OTX) defines them in ``hpo/search_space.py``:

* ``uniform [min, max]``: a float uniform in [min, max].
* ``quniform [min, max, step]``: uniform over the grid ``min + k*step`` inside [min, max].
* ``loguniform [min, max, (log_base)]``: uniform in log space. OTX draws ``log_base ** u`` for ``u``
  uniform in ``[log(min), log(max)]`` to that base, which is the same distribution for every base:
  the base is accepted and changes nothing (OTX's code defaults it to 2, its documentation to 10).
* ``qloguniform [min, max, step, (log_base)]``: log-uniform, then rounded to the grid
  ``min + k*step`` (OTX rounds in real space, after the exponent) and kept inside [min, max].
* ``choice [v1, v2, ...]``: one of the values, each equally likely; values may be any YAML value.

A parameter gives its values as ``range`` (the lists above) or, OTX's recommended form, as keys:
``min``, ``max``, ``step``, ``log_base`` and, for ``choice``, ``choice_list``. Its type is
``param_type`` (OTX 1.x), ``type`` (OTX 2.x) or ``paramType`` (the HPOStudy spec). With ``range``,
OTX 1.x ignores the other value keys, and so does this module; keys a type does not use (a ``step``
of a ``uniform``) OTX ignores too. Such keys are returned to the caller as notes, to be named in
one warning.

Bounds are inclusive. OTX rounds a draw to the nearest grid point, so where ``max`` is not on the
grid it can return the grid point past ``max``, and it gives the end points of a grid half the
chance of the others; here every value lies inside [min, max] and a ``quniform`` grid point is as
likely as any other.

Grid values are computed in decimal arithmetic from the values as written, so ``0.0007 + 3*0.0001``
is ``0.001`` and never ``0.0010000000000000002``; when min, max and step are all integers the values
are ints.

Every configuration a valid space yields is a JSON object of finite numbers, strings, booleans, nulls,
lists and mappings (it reaches each trial as JSON). The limits that guarantee it, and keep validation
linear and its messages short, are the constants below (docs/security.md, "Input limits").
"""

from __future__ import annotations

import difflib
import json
import math
import random
import reprlib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import ROUND_FLOOR, Decimal
from functools import cached_property
from typing import Any

# Parameters in one space, and values in one choice list.
MAX_PARAMS = 1_000
MAX_CHOICES = 10_000
# Every number in hp_space (bounds, steps, log bases, choices, defaults) lies within this magnitude:
# integers up to it are exact as float64 (the JSON numbers of most readers), and no arithmetic on
# bounds (max - min, log, exp, the grid) can overflow.
MAX_MAGNITUDE = 1e15
# A grid's step is at least this share of its largest bound, so that neighbouring grid values are
# distinct float64 numbers (with ~4,500 ulps between them) and a grid has at most 2e12 points.
GRID_RESOLUTION = 1e-12
# Nesting of a choice value (a list or mapping inside a choice counts one level per layer), and
# the parts of one parameter's choices, nested ones included (as a file's or spec's values).
MAX_VALUE_DEPTH = 16
MAX_VALUE_NODES = 100_000
# The largest configuration, as JSON: it reaches each trial in the HPO_HYPERPARAMETERS environment
# variable, and Linux refuses to start a process with one environment string over 128 KiB.
MAX_CONFIGURATION_BYTES = 65_536
# The longest JSON of a number this module can produce (a negative float with exponent).
_NUMBER_JSON_CHARS = 24

PARAM_TYPES = ("uniform", "quniform", "loguniform", "qloguniform", "choice")

# The keys that name a parameter's type: OTX 1.x, OTX 2.x, the HPOStudy spec.
TYPE_KEYS = ("param_type", "type", "paramType")
# OTX's keyed form: the keys each type uses, in the order of its range list; log_base is optional.
FORM_KEYS: dict[str, tuple[str, ...]] = {
    "uniform": ("min", "max"),
    "quniform": ("min", "max", "step"),
    "loguniform": ("min", "max", "log_base"),
    "qloguniform": ("min", "max", "step", "log_base"),
    "choice": ("choice_list",),
}
VALUE_KEYS = ("min", "max", "step", "log_base", "choice_list")

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


class _ShortRepr(reprlib.Repr):
    """reprlib's bounded repr, also for integers too long for repr() (over 4,300 digits)."""

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 4 * self.maxlong:
            return f"<an integer of about {int(x.bit_length() * math.log10(2))} digits>"
        return super().repr_int(x, level)


_SHORT = _ShortRepr()
_SHORT.maxstring = 60
_SHORT.maxother = 60
_SHORT.maxlong = 40
_SHORT.maxlevel = 3


def quote(value: Any) -> str:
    """repr() cut to a few dozen characters, for messages: the cost and the length do not grow with
    the value (a list of a million items, a string of megabytes, a 5,000-digit integer)."""
    return _SHORT.repr(value)


def number_problem(value: Any) -> str | None:
    """Why ``value`` is not a number hp_space accepts (a finite int or float within MAX_MAGNITUDE,
    not a bool), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{quote(value)} is not a number{exponent_hint(value)}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{quote(value)} is not finite"
    # An int is compared as an int: float() of a huge one overflows.
    if abs(value) > MAX_MAGNITUDE:
        return f"{quote(value)} exceeds {MAX_MAGNITUDE:g} in magnitude"
    return None


def exponent_hint(value: Any) -> str:
    """A note for a string that Python reads as a number with an exponent ('1e-4'): YAML 1.1, which
    PyYAML implements, reads it as a string; '' for anything else."""
    if not isinstance(value, str) or len(value) > 100 or "e" not in value.lower():
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    return " (YAML reads an exponent without a dot as a string: write 1.0e-4, not 1e-4)"


def _is_number(value: Any) -> bool:
    return number_problem(value) is None


def json_value_problem(value: Any, max_values: int = MAX_VALUE_NODES) -> tuple[str | None, int]:
    """Why ``value`` is not a plain JSON value (string, number accepted by number_problem, bool,
    null, list, mapping with string keys, at most MAX_VALUE_DEPTH deep, at most ``max_values``
    parts), or None; and the parts visited. Iterative, so no nesting exhausts the stack, and
    bounded, so that a list holding itself many times over ends too."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    visited = 0
    while stack:
        item, depth = stack.pop()
        visited += 1
        if visited > max_values:
            return f"more than {MAX_VALUE_NODES:,} values in the choices", visited
        if depth > MAX_VALUE_DEPTH:
            return f"nested more than {MAX_VALUE_DEPTH} levels deep", visited
        if item is None or isinstance(item, str | bool):
            continue
        if isinstance(item, int | float):
            problem = number_problem(item)
            if problem is not None:
                return problem, visited
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, dict):
            for key, v in item.items():
                if not isinstance(key, str):
                    return f"a mapping key is not a string: {quote(key)}", visited
                stack.append((v, depth + 1))
        else:
            return f"{quote(item)} ({type(item).__name__}) is not a JSON value", visited
    return None, visited


def _json_chars(value: Any) -> int:
    """Characters of ``value`` in json.dumps with its defaults, as the trial adapters write it."""
    return len(json.dumps(value))


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
    log_base: float | None = None  # as given; it changes no value
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
        if self.log:
            product = self.low * self.high
            # sqrt of the product where it is a normal float; of each bound where it would underflow.
            if product >= sys.float_info.min:
                mid = math.sqrt(product)
            else:
                mid = math.sqrt(self.low) * math.sqrt(self.high)
        else:
            mid = (self.low + self.high) / 2  # bounds within MAX_MAGNITUDE: the sum cannot overflow
        if self.quantized:
            return self.grid_value(self.nearest_grid_index(mid))
        return min(max(mid, self.low), self.high)

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
            # The grid point nearest in decimal, then compared as a number: a large grid value has
            # more digits than its shortest repr (2**46 + 12.125 prints as ...676.12).
            k = int(((_dec(value) - _dec(self.low)) / _dec(self.step)).to_integral_value())
            return 0 <= k < self.grid_size and self.grid_value(k) == value
        return True

    def range_values(self) -> list[Any]:
        """The parameter as a ``range`` list (the form of the HPOStudy spec), log_base if given."""
        if self.type == "choice":
            return list(self.choices)
        values: list[Any] = [self.low, self.high]
        if self.step is not None:
            values.append(self.step)
        if self.log and self.log_base is not None:
            values.append(self.log_base)
        return values

    def describe(self) -> str:
        if self.type == "choice":
            return f"choice {quote(list(self.choices))}"
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


_NAME_CHARS = 80  # of a parameter's name in messages


def _where(name: str) -> str:
    shown = name if len(name) <= _NAME_CHARS else name[: _NAME_CHARS - 3] + "..."
    return f"hp_space.{shown}"


def _numeric_problems(ptype: str, values: list[Any], where: str) -> list[str]:
    """Problems of a numeric range whose values are all numbers within MAX_MAGNITUDE."""
    problems: list[str] = []
    low, high = values[0], values[1]
    step = values[2] if ptype in ("quniform", "qloguniform") else None
    if low >= high:
        problems.append(f"{where}: min ({low}) must be smaller than max ({high})")
    if step is not None:
        if step <= 0:
            problems.append(f"{where}: step ({step}) must be positive")
        elif low < high and _dec(step) > _dec(high) - _dec(low):
            problems.append(f"{where}: step ({step}) is larger than max - min ({high} - {low})")
        elif step < GRID_RESOLUTION * max(abs(low), abs(high)):
            finest = GRID_RESOLUTION * max(abs(low), abs(high))
            problems.append(
                f"{where}: step ({step}) is too fine for bounds as large as {max(abs(low), abs(high))}: "
                f"neighbouring grid values would not be distinct numbers (use a step of at least {finest:g})"
            )
    if ptype in ("loguniform", "qloguniform"):
        if low <= 0 or high <= 0:
            problems.append(f"{where}: {ptype} bounds must be positive, got [{low}, {high}]")
        if len(values) == max(_RANGE_LENGTHS[ptype]) and values[-1] <= 1:
            problems.append(f"{where}: log_base ({values[-1]}) must be greater than 1")
    return problems


def suggestion(key: Any, known: Sequence[str]) -> str:
    """' (did you mean X?)' for the known key closest to a misspelt ``key``, or ''."""
    if not isinstance(key, str) or len(key) > 100:
        return ""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


_PARAM_KEYS = (*TYPE_KEYS, "range", *VALUE_KEYS, "default")


def _given_values(
    ptype: str, spec: dict[str, Any], where: str, problems: list[str], notes: list[str]
) -> tuple[list[Any], bool] | None:
    """The parameter's values in range order, and whether they came as ``range``; None after a
    problem. Value keys that OTX ignores (all of them beside ``range``, those a type does not use)
    become notes."""
    keyed = [k for k in VALUE_KEYS if k in spec]
    if "range" in spec:
        if keyed:
            notes.append(f"{where}: {', '.join(keyed)} (range is used)")
        values = spec["range"]
        if not isinstance(values, list):
            problems.append(f"{where}: range must be a list, got {quote(values)}")
            return None
        return values, True
    form = FORM_KEYS[ptype]
    unused = [k for k in keyed if k not in form]
    if unused:
        notes.append(f"{where}: {', '.join(unused)} (not used by {ptype})")
    required = [k for k in form if k != "log_base"]
    missing = [k for k in required if k not in spec]
    if missing:
        problems.append(
            f"{where}: {ptype} needs range, or {' and '.join(required)}; missing {', '.join(missing)}"
        )
        return None
    if ptype == "choice":
        choices = spec["choice_list"]
        if not isinstance(choices, list):
            problems.append(f"{where}: choice_list must be a list, got {quote(choices)}")
            return None
        return choices, False
    for key in form:
        problem = number_problem(spec[key]) if key in spec else None
        if problem is not None:
            problems.append(f"{where}: {key} must be a finite number within ±{MAX_MAGNITUDE:g}; {problem}")
            return None
    return [spec[k] for k in form if k in spec], False


def _parse_param(name: str, spec: Any, problems: list[str], notes: list[str]) -> Param | None:
    where = _where(name)
    if not isinstance(spec, Mapping):
        problems.append(f"{where}: must be a mapping with param_type and range, got {quote(spec)}")
        return None
    spec = dict(spec)
    type_keys = [k for k in TYPE_KEYS if k in spec]
    if len(type_keys) > 1:
        problems.append(
            f"{where}: give {' or '.join(type_keys)}, not {'both' if len(type_keys) == 2 else 'all'}"
        )
        return None
    ptype = spec[type_keys[0]] if type_keys else None
    default = spec.get("default")
    for key in spec:
        if key not in _PARAM_KEYS:
            problems.append(
                f"{where}: unknown key {quote(key)}{suggestion(key, _PARAM_KEYS)} (allowed: param_type "
                "or type, range or min/max/step/log_base/choice_list, default)"
            )
    if ptype is None:
        problems.append(f"{where}: param_type is missing (one of {', '.join(PARAM_TYPES)})")
        return None
    if ptype not in PARAM_TYPES:
        problems.append(f"{where}: unknown param_type {quote(ptype)} (one of {', '.join(PARAM_TYPES)})")
        return None
    given = _given_values(ptype, spec, where, problems, notes)
    if given is None:
        return None
    values, as_range = given
    if ptype == "choice":
        where_values = "range" if as_range else "choice_list"
        if not values:
            problems.append(f"{where}: choice needs at least one value in {where_values}")
            return None
        if len(values) > MAX_CHOICES:
            problems.append(f"{where}: choice has {len(values):,} values, at most {MAX_CHOICES:,}")
            return None
        left = MAX_VALUE_NODES
        for i, value in enumerate(values):
            problem, visited = json_value_problem(value, left)
            left -= visited
            if problem is not None:
                problems.append(
                    f"{where}: choice values must be JSON values (strings, numbers, booleans, null, "
                    f"lists, mappings with string keys); value {i}: {problem}"
                )
                return None
        param = Param(name=name, type=ptype, choices=tuple(values))
    else:
        lengths = _RANGE_LENGTHS[ptype]
        shape = " or ".join(str(n) for n in lengths)
        if len(values) not in lengths:
            problems.append(f"{where}: {ptype} range needs {shape} values, got {len(values)}")
            return None
        for value in values:
            problem = number_problem(value)
            if problem is not None:
                problems.append(
                    f"{where}: range values must be finite numbers within ±{MAX_MAGNITUDE:g}; {problem}"
                )
                return None
        found = _numeric_problems(ptype, values, where)
        if found:
            problems.extend(found)
            return None
        low, high = values[0], values[1]
        quantized = ptype in ("quniform", "qloguniform")
        step = values[2] if quantized else None
        log_base = (
            values[-1] if ptype in ("loguniform", "qloguniform") and len(values) == max(lengths) else None
        )
        integer = quantized and all(isinstance(v, int) for v in (low, high, step))
        param = Param(
            name=name, type=ptype, low=low, high=high, step=step, log_base=log_base, integer=integer
        )
    if default is not None:
        if not param.contains(default):
            problems.append(f"{where}: default {quote(default)} is not a value of {param.describe()}")
            return None
        param = replace(param, default=default)
    return param


def _largest_json(param: Param) -> int:
    """Characters of the longest value ``param`` can take, as JSON."""
    if param.type == "choice":
        return max(_json_chars(c) for c in param.choices)
    return _NUMBER_JSON_CHARS


def parse_space(raw: Any, notes: list[str] | None = None) -> SearchSpace:
    """Validates a raw ``hp_space`` mapping; raises SpaceError listing every problem found.

    Keys OTX accepts and ignores (see the module's docstring) are appended to ``notes``, one
    ``hp_space.<name>: <keys> (<why>)`` per parameter."""
    notes = [] if notes is None else notes
    problems: list[str] = []
    if not isinstance(raw, Mapping) or not raw:
        raise SpaceError([f"hp_space: must be a non-empty mapping of parameter names, got {quote(raw)}"])
    if len(raw) > MAX_PARAMS:
        raise SpaceError([f"hp_space: {len(raw):,} parameters, at most {MAX_PARAMS:,}"])
    params: list[Param] = []
    for name, spec in raw.items():
        if not isinstance(name, str) or not name.strip():
            problems.append(f"hp_space: parameter names must be non-empty strings, got {quote(name)}")
            continue
        param = _parse_param(name, spec, problems, notes)
        if param is not None:
            params.append(param)
    if problems:
        raise SpaceError(problems)
    # {"name": value, ...}: each name and value, ": " between them, ", " between items, the braces.
    size = sum(_json_chars(p.name) + 2 + _largest_json(p) for p in params) + 2 * len(params)
    if size > MAX_CONFIGURATION_BYTES:
        raise SpaceError([
            f"hp_space: a configuration can take {size:,} characters of JSON, at most "
            f"{MAX_CONFIGURATION_BYTES:,} (each trial gets it in one environment variable)"
        ])  # fmt: skip
    return SearchSpace(tuple(params))
