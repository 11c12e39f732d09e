"""Models of hpo_config.yaml and of the HPOStudy / HPOTrial resources, and their validation.

``load_config`` (a YAML file) and ``study_config_from_spec`` (an HPOStudy spec) both end in a
``StudyConfig``: the validated settings the decision core runs on. Every problem of an input is
collected and reported at once, each naming the field and what is wrong.

Validation is the one gate: whatever it accepts, every command and the operator can run without an
exception, and every configuration it yields is valid JSON. The limits below (and the search space's
in space.py) bound the work and the memory it takes and the length of its messages; docs/security.md
("Input limits") lists them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from .space import MAX_PARAMS, SearchSpace, SpaceError, exponent_hint, parse_space, quote, suggestion

API_GROUP = "hpo.dev"
API_VERSION = "v1alpha1"

DEFAULT_METRIC = "mAP"
# R, the resource of one full training, has no default: a config without it is refused by every
# command that plans (require_max_resource). StudyConfig.max_resource holds this until R is known.
NO_MAX_RESOURCE = 0.0
DEFAULT_REDUCTION_FACTOR = 3
DEFAULT_TIME_RATIO = 4.0

Mode = Literal["max", "min"]
SamplerName = Literal["random", "qmc", "tpe", "gp"]
AshaVariant = Literal["stop", "promote"]
DEFAULT_SAMPLER: SamplerName = "gp"

# --- Input limits (docs/security.md) ---
# A config file: its size, its nesting, its values (nodes, each use of an alias counting its whole
# anchor, so that a "billion laughs" file is refused before it is built), the characters of a number.
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 32
MAX_NODES = 100_000
MAX_NUMBER_CHARS = 100
# Resources (epochs, or steps) and the reduction factor: rungs r * eta^k stay few (at most ~40).
MIN_RESOURCE_LIMIT = 0.001
MAX_RESOURCE_LIMIT = 1e9
MAX_REDUCTION_FACTOR = 100
# Hyperband brackets asked for (asha.brackets, num_brackets); a study runs at most its rungs plus one.
MAX_BRACKETS = 40
# Durations and the budget: deadlines stay within what timestamps can express.
MAX_DURATION_SECONDS = 366 * 86400
MAX_TIME_RATIO = 1000.0
# Trials at once (spec.parallelTrials): one reconcile may start as many, each proposal seeing the others.
MAX_PARALLEL_TRIALS = 1_000
# Prior configurations (prior_hyper_parameters): each one is a trial started before the sampler's.
MAX_PRIORS = 1_000
# The metric reaches each trial in an environment variable (HPO_METRIC).
MAX_METRIC_CHARS = 256
# Integers anywhere in a spec, and the seed: what the Kubernetes API stores (int64).
INT64_MAX = 2**63 - 1
# Messages: problems listed, and the characters of each.
MAX_PROBLEMS = 50
MAX_PROBLEM_CHARS = 500


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _shorten(problem: str) -> str:
    """One line (control characters, as in a parameter's name, escaped) of at most MAX_PROBLEM_CHARS."""
    problem = _CONTROL.sub(lambda m: repr(m.group())[1:-1], problem)
    return problem if len(problem) <= MAX_PROBLEM_CHARS else problem[: MAX_PROBLEM_CHARS - 3] + "..."


class ConfigError(ValueError):
    """An input with one or more problems; ``problems`` names each one (at most MAX_PROBLEMS, each
    at most MAX_PROBLEM_CHARS long, so that a message stays readable whatever the input)."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        shown = [_shorten(p) for p in problems[:MAX_PROBLEMS]]
        if len(problems) > MAX_PROBLEMS:
            shown.append(f"... and {len(problems) - MAX_PROBLEMS:,} more problems")
        self.problems = shown
        self.source = source
        super().__init__(self.summary())

    def summary(self) -> str:
        if len(self.problems) == 1:
            return f"{self.source}: {self.problems[0]}"
        return f"{self.source}: {len(self.problems)} problems: " + "; ".join(self.problems)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_retention(value: str) -> float:
    """Seconds from a duration that may be zero ('0s': nothing is kept), else as parse_duration."""
    if re.fullmatch(r"0+(?:\.0*)?(?:ms|s|m|h|d)?", value.strip()):
        return 0.0
    return parse_duration(value)


def parse_duration(value: str | float | int) -> float:
    """Seconds from a number of seconds or a duration like '20m', '1h30m', '90s', '2h'; at most
    MAX_DURATION_SECONDS (366 days)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        # Compared before float(): float() of a huge int overflows.
        if not (value > 0 and value <= MAX_DURATION_SECONDS):
            raise ValueError(
                f"duration must be a positive number of seconds up to {MAX_DURATION_SECONDS} "
                f"(366 days), got {quote(value)}"
            )
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"duration must be a number of seconds or a string like '20m', got {quote(value)}")
    text = value.strip().replace(" ", "")
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:
        return parse_duration(number)
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text or total <= 0:
        raise ValueError(f"cannot read duration {quote(value)}: use e.g. '90s', '20m', '1h30m' or seconds")
    if not total <= MAX_DURATION_SECONDS:
        raise ValueError(f"duration {quote(value)} is longer than 366 days")
    return total


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    parts = [f"{h}h" if h else "", f"{m}m" if m else "", f"{s}s" if s or not (h or m) else ""]
    return "".join(parts)


@dataclass(frozen=True)
class BudgetSpec:
    """The wall-clock budget: ``deadline`` seconds, or ``time_ratio`` x ``train_time``.

    With neither ``deadline`` nor ``train_time`` the first trial (the defaults) measures the time of
    one full training, and the budget follows from it.
    """

    time_ratio: float = DEFAULT_TIME_RATIO
    train_time: float | None = None
    deadline: float | None = None

    def seconds(self) -> float | None:
        if self.deadline is not None:
            return self.deadline
        if self.train_time is not None:
            return self.time_ratio * self.train_time
        return None


@dataclass(frozen=True)
class StudyConfig:
    """Everything the decision core needs to know about a study."""

    space: SearchSpace
    metric: str = DEFAULT_METRIC
    mode: Mode = "max"
    max_resource: float = NO_MAX_RESOURCE  # R; NO_MAX_RESOURCE until a file, a flag or a spec gives it
    min_resource: float | None = None
    reduction_factor: int | None = None
    seed: int = 0
    budget: BudgetSpec = field(default_factory=BudgetSpec)
    parallel_trials: int | None = None  # None: as many as free slots allow
    max_failed_trials: int | None = None
    sampler: SamplerName = DEFAULT_SAMPLER
    asha_variant: AshaVariant = "stop"
    asha_brackets: int = 1  # asked for; the budget may fit fewer (brackets.py)
    final_training: bool = False
    metrics_collector: MetricsCollector | None = None  # None: trials report with hpo_trial.report()
    # Configurations tried first, in order (trials 0..k-1); without them trial 0 takes the defaults.
    priors: tuple[dict[str, Any], ...] = ()
    # OTX keys the file gives that change nothing here, each "key (why)": one warning names them.
    ignored: tuple[str, ...] = ()
    # Stop conditions besides the budget: the study ends once a report that counts, at goal_resource
    # or beyond (None: R), reaches goal (>= for mode max, <= for min); no trial index reaches max_trials.
    goal: float | None = None
    goal_resource: float | None = None
    max_trials: int | None = None

    @property
    def goal_at(self) -> float:
        """The resource from which a report can reach the goal."""
        return self.goal_resource if self.goal_resource is not None else self.max_resource

    @property
    def max_resource_given(self) -> bool:
        return self.max_resource != NO_MAX_RESOURCE


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class AshaSettings(_Strict):
    """ASHA's variant: ``stop`` (a trial below its rung's cut-off is stopped, as Ray Tune's
    ASHAScheduler) or ``promote`` (every trial pauses at each rung and the best are resumed from
    their checkpoints, as the ASHA paper and OTX); and how many Hyperband brackets run side by side
    (brackets.py)."""

    variant: AshaVariant = "stop"
    brackets: int = Field(
        default=1,
        ge=1,
        le=MAX_BRACKETS,
        strict=True,
        description="Hyperband brackets run side by side: bracket b starts its trials at the b-th rung "
        "and ranks them only against its own; 1 is plain ASHA. A budget too tight for as many runs fewer "
        "(status.plan.brackets says how many)",
    )


CollectorKind = Literal["stdout", "file", "tensorboard"]
# A metrics collector's pattern and names: compiled by the operator and every trial, kept short.
MAX_PATTERN_CHARS = 1000
MAX_COLLECTOR_PATH_CHARS = 4096


class MetricsCollector(BaseModel):
    """How trials that do not call hpo_trial.report() report: a wrapper around the trial command
    (``python -m hpo_trial.collect``) reads the metric from the command's output (``stdout``), from
    a file it appends to (``file``: CSV or JSON lines) or from TensorBoard event files
    (``tensorboard``), and reports it as the SDK would (docs/byo-trainer.md)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel, frozen=True)

    kind: CollectorKind = Field(description="stdout, file or tensorboard")
    pattern: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_PATTERN_CHARS,
        description="stdout: a Python regular expression; groups 'name' and 'value' make one pair per "
        "match, and every other named group is a metric of its name. Unset: name=value or name: value",
    )
    path: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_COLLECTOR_PATH_CHARS,
        description="file: the CSV or JSON-lines file (a glob) the trainer appends to; tensorboard: the "
        "folder of its event files. Relative to the trial's working directory; $(VAR) is expanded",
    )
    format: Literal["csv", "jsonl"] | None = Field(
        default=None, description="file: csv or jsonl; unset: csv for a .csv path, else jsonl"
    )
    resource_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_METRIC_CHARS,
        description="The key (column, tag) that holds the resource; unset: epoch, else step (tensorboard: "
        "the event's step)",
    )
    resource_offset: float = Field(
        default=0,
        allow_inf_nan=False,
        strict=True,
        ge=-MAX_RESOURCE_LIMIT,
        le=MAX_RESOURCE_LIMIT,
        description="Added to the resource read, e.g. 1 where epochs count from 0 (Lightning, Keras)",
    )

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            compiled = re.compile(value)
        except re.error as err:
            raise ValueError(f"not a Python regular expression: {err}") from None
        groups = set(compiled.groupindex)
        if not groups:
            raise ValueError(
                "names no group: name a group after each metric, (?P<accuracy>...), or use groups "
                "(?P<name>...) and (?P<value>...)"
            )
        if ("name" in groups) != ("value" in groups):
            raise ValueError("groups 'name' and 'value' go together")
        return value

    @model_validator(mode="after")
    def _options_of_kind(self) -> MetricsCollector:
        if self.kind in ("file", "tensorboard") and self.path is None:
            what = "the file the trainer writes" if self.kind == "file" else "the folder of its event files"
            raise ValueError(f"kind {self.kind} needs path ({what})")
        if self.kind != "stdout" and self.pattern is not None:
            raise ValueError(f"pattern is for kind stdout, not {self.kind}")
        if self.kind == "stdout" and self.path is not None:
            raise ValueError("path is for kinds file and tensorboard, not stdout")
        if self.kind != "file" and self.format is not None:
            raise ValueError(f"format is for kind file, not {self.kind}")
        return self


# --- hpo_config.yaml as OpenVINO Training Extensions (OTX) reads it ------------------------------
#
# OTX 0.x (through the hpopt library), 1.x and 2.x (its HpoConfig) read these keys; docs/architecture.md
# ("OTX configs") says what each does here. A key none of them reads is an error.

# Keys under an older or newer OTX name: the name here, which the rest of the module uses.
OTX_RENAMED = {
    "search_space": "hp_space",  # 2.x
    "metric_name": "metric",  # 2.x
    "max_iterations": "maximum_resource",  # 0.x: "max training epochs for each trial"
    "min_iterations": "minimum_resource",  # 0.x: ASHA's minimum epochs
    # 0.x ran this many trials (hpopt's "how many trainings to conduct"); 1.x and 2.x keep it unused.
    # Here an upper bound: the budget may end the study first.
    "num_trials": "max_trials",
}
# Keys OTX reads that have no equivalent here, and why ignoring them changes nothing.
OTX_IGNORED = {
    "early_stop": "ASHA's rungs stop trials",
    "num_init_trials": "the sampler starts with its own quasi-random trials",
    "subset_ratio": "the trainer chooses its data",
    "resume": "a study starts anew; hpo run --resume DIR continues a local one",
    "save_path": "results go where hpo run --out or the HPOStudy says",
    "acceptable_additional_time_ratio": "the deadline is hard",
    "adapt_bs_search_space_max_val": "the search space is used as written",
    "callbacks_to_exclude": "the trainer chooses its callbacks",
}


class HpoConfigFile(_Strict):
    """hpo_config.yaml under the names above (OTX_RENAMED mapped, OTX_IGNORED removed)."""

    metric: str = DEFAULT_METRIC
    mode: Mode = "max"
    # smbo (OTX 0.x's Gaussian-process Bayesian optimisation): a model-based sampler, gp by default.
    search_algorithm: Literal["asha", "smbo"] = "asha"
    hp_space: dict[str, Any]
    maximum_resource: float | None = Field(default=None, gt=0, allow_inf_nan=False, strict=True)
    minimum_resource: float | None = Field(default=None, gt=0, allow_inf_nan=False, strict=True)
    reduction_factor: int | None = Field(default=None, ge=2, strict=True)
    expected_time_ratio: float | None = Field(default=None, gt=0, allow_inf_nan=False, strict=True)
    num_workers: int | None = Field(default=None, ge=1, strict=True)
    prior_hyper_parameters: Any = None  # judged against the search space (prior_configurations)
    asynchronous_sha: bool = Field(default=True, strict=True)
    num_brackets: int | None = Field(default=None, ge=1, le=MAX_BRACKETS, strict=True)  # asha.brackets
    asynchronous_bracket: bool = Field(default=True, strict=True)
    seed: int = Field(default=0, strict=True)
    sampler: SamplerName = DEFAULT_SAMPLER
    asha: AshaSettings = Field(default_factory=AshaSettings)
    metrics_collector: MetricsCollector | None = None
    goal: float | None = Field(default=None, allow_inf_nan=False, strict=True)
    goal_resource: float | None = Field(default=None, gt=0, allow_inf_nan=False, strict=True)
    max_trials: int | None = Field(default=None, ge=1, strict=True)


FILE_KEYS = sorted({*HpoConfigFile.model_fields, *OTX_RENAMED, *OTX_IGNORED})


def _loc_text(loc: tuple[Any, ...]) -> str:
    parts = [str(p) if len(str(p)) <= 80 else str(p)[:77] + "..." for p in loc]
    return ".".join(parts) or "(top level)"


def _pydantic_problems(
    err: ValidationError, allowed: list[str] | None = None, names: Mapping[str, str] | None = None
) -> list[str]:
    """One line per error; ``names`` maps a top-level field to the key the input wrote it under."""
    problems = []
    for e in err.errors():
        where = e["loc"]
        if names and where and isinstance(where[0], str):
            where = (names.get(where[0], where[0]), *where[1:])
        loc = _loc_text(where)
        if e["type"] == "extra_forbidden":
            hint = ""
            if allowed and len(e["loc"]) == 1:
                hint = suggestion(e["loc"][0], allowed) or f" (allowed: {', '.join(allowed)})"
            problems.append(f"{loc}: unknown key{hint}")
        elif e["type"] == "missing":
            problems.append(f"{loc}: required")
        elif e["type"] == "literal_error":
            problems.append(f"{loc}: {e['msg'].lower()}, got {quote(e['input'])}")
        else:
            problems.append(f"{loc}: {e['msg']}, got {quote(e['input'])}{exponent_hint(e['input'])}")
    return problems


def _spec_path(problem: str) -> str:
    """A search-space problem ("hp_space.lr: ...", "hp_space: ...") as a path in the HPOStudy spec."""
    return re.sub(r"^hp_space\b", "spec.hpSpace", problem)


def _number(value: Any) -> float | int | None:
    """``value`` if it is an int or a finite float (not a bool): the fields whose type is wrong are
    reported by the models, the limits below only judge numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _limit_problems(values: Mapping[str, Any], names: Mapping[str, str]) -> list[str]:
    """Problems of the study settings beyond their types: resources, reduction factor, seed, metric.

    ``values`` holds the settings under the names of the input (snake_case in a file, camelCase in a
    spec); ``names`` maps each setting (max_resource, min_resource, reduction_factor, seed, metric,
    and time_ratio and parallel_trials where the input has them) to that name. Fields of the wrong
    type are skipped: the models report those.
    """
    problems: list[str] = []
    max_r = _number(values.get(names["max_resource"]))
    min_r = _number(values.get(names["min_resource"]))
    for key, value in ((names["max_resource"], max_r), (names["min_resource"], min_r)):
        # An int is compared as an int: float() of a huge one overflows.
        if value is not None and value > 0 and not MIN_RESOURCE_LIMIT <= value <= MAX_RESOURCE_LIMIT:
            problems.append(
                f"{key} ({quote(value)}) must lie between {MIN_RESOURCE_LIMIT:g} and {MAX_RESOURCE_LIMIT:g}"
            )
    # Without R the flag that gives it is checked against the minimum (cli._with_max_resource).
    if not problems and min_r is not None and min_r > 0 and max_r is not None and max_r > 0 and min_r > max_r:
        problems.append(
            f"{names['min_resource']} ({min_r:g}) must not exceed {names['max_resource']} ({max_r:g})"
        )
    eta = values.get(names["reduction_factor"])
    if isinstance(eta, int) and not isinstance(eta, bool) and eta > MAX_REDUCTION_FACTOR:
        problems.append(f"{names['reduction_factor']} ({quote(eta)}) must be at most {MAX_REDUCTION_FACTOR}")
    seed = values.get(names["seed"])
    if isinstance(seed, int) and not isinstance(seed, bool) and abs(seed) > INT64_MAX:
        problems.append(f"{names['seed']} ({quote(seed)}) must lie within ±(2^63 - 1)")
    parallel = values.get(names["parallel_trials"]) if "parallel_trials" in names else None
    if isinstance(parallel, int) and not isinstance(parallel, bool) and parallel > MAX_PARALLEL_TRIALS:
        problems.append(
            f"{names['parallel_trials']} ({quote(parallel)}) must be at most {MAX_PARALLEL_TRIALS:,}"
        )
    ratio = _number(values.get(names["time_ratio"])) if "time_ratio" in names else None
    if ratio is not None and ratio > MAX_TIME_RATIO:
        problems.append(f"{names['time_ratio']} ({quote(ratio)}) must be at most {MAX_TIME_RATIO:g}")
    problems += _stop_problems(values, names, max_r)
    metric = values.get(names["metric"])
    if isinstance(metric, str) and not (0 < len(metric) <= MAX_METRIC_CHARS and metric.isprintable()):
        problems.append(
            f"{names['metric']}: 1 to {MAX_METRIC_CHARS} printable characters, got {quote(metric)}"
        )
    return problems


def _stop_problems(values: Mapping[str, Any], names: Mapping[str, str], max_r: float | None) -> list[str]:
    """Problems of the goal and the trial limit beyond their types (the models judge those)."""
    problems: list[str] = []
    goal_r = _number(values.get(names["goal_resource"]))
    if goal_r is not None and goal_r > 0:
        if not MIN_RESOURCE_LIMIT <= goal_r <= MAX_RESOURCE_LIMIT:
            problems.append(
                f"{names['goal_resource']} ({quote(goal_r)}) must lie between {MIN_RESOURCE_LIMIT:g} "
                f"and {MAX_RESOURCE_LIMIT:g}"
            )
        elif max_r is not None and max_r > 0 and goal_r > max_r:
            problems.append(
                f"{names['goal_resource']} ({goal_r:g}) must not exceed {names['max_resource']} ({max_r:g}): "
                "no report lies beyond R"
            )
    if values.get(names["goal_resource"]) is not None and values.get(names["goal"]) is None:
        goal = names["goal"]
        problems.append(
            f"{names['goal_resource']}: the resource at which {goal} counts, but {goal} is not set"
        )
    limit = values.get(names["max_trials"])
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > INT64_MAX:
        problems.append(f"{names['max_trials']} ({quote(limit)}) must be at most 2^63 - 1")
    return problems


_FILE_NAMES = {
    "max_resource": "maximum_resource",
    "min_resource": "minimum_resource",
    "reduction_factor": "reduction_factor",
    "seed": "seed",
    "metric": "metric",
    "time_ratio": "expected_time_ratio",
    "parallel_trials": "num_workers",
    "goal": "goal",
    "goal_resource": "goal_resource",
    "max_trials": "max_trials",
}
_SPEC_NAMES = {
    "max_resource": "maximumResource",
    "min_resource": "minimumResource",
    "reduction_factor": "reductionFactor",
    "seed": "seed",
    "metric": "metric",
    "time_ratio": "budget.timeRatio",
    "parallel_trials": "parallelTrials",
    "goal": "goal",
    "goal_resource": "goalResource",
    "max_trials": "maxTrials",
}


def check_max_resource(value: float, name: str = "--max-resource") -> None:
    """Raises ConfigError unless ``value`` is a maximum resource the limits allow."""
    if _number(value) is None or not MIN_RESOURCE_LIMIT <= value <= MAX_RESOURCE_LIMIT:
        raise ConfigError(
            [f"must lie between {MIN_RESOURCE_LIMIT:g} and {MAX_RESOURCE_LIMIT:g}, got {quote(value)}"], name
        )


def check_time_ratio(value: float, name: str = "--time-ratio") -> None:
    """Raises ConfigError unless ``value`` is a positive, finite time ratio up to MAX_TIME_RATIO."""
    if _number(value) is None or not 0 < value <= MAX_TIME_RATIO:
        raise ConfigError([f"must be positive and at most {MAX_TIME_RATIO:g}, got {quote(value)}"], name)


def _bracket_problems(model: HpoConfigFile) -> list[str]:
    """num_brackets (OTX) and asha.brackets name one setting."""
    if model.num_brackets is not None and "brackets" in model.asha.model_fields_set:
        return ["num_brackets, asha.brackets: two names of one setting (brackets); give one"]
    return []


MISSING_MAX_RESOURCE = (
    "R, the epochs (or steps) of one full training, is not set: give --max-resource R, or "
    "maximum_resource: R in the config"
)


def ignored_warning(config: StudyConfig) -> str | None:
    """The one warning that names every OTX key the config gives to no effect, or None."""
    if not config.ignored:
        return None
    return "OTX settings with no use here, ignored: " + "; ".join(config.ignored)


def require_max_resource(config: StudyConfig, source: str) -> None:
    """Raises ConfigError naming the flag and the key unless ``config`` has R: nothing plans on a
    guess."""
    if not config.max_resource_given:
        raise ConfigError([MISSING_MAX_RESOURCE], source)


def prior_configurations(
    raw: Any, space: SearchSpace, key: str
) -> tuple[tuple[dict[str, Any], ...], list[str]]:
    """OTX's ``prior_hyper_parameters`` (a configuration, or a list of them) checked against the
    space: each gives every parameter a value of its range, and nothing else; problems name ``key``.
    Returns the configurations in order, their parameters in the space's order."""
    if raw is None:
        return (), []
    items = [raw] if isinstance(raw, Mapping) else raw
    if not isinstance(items, list):
        return (), [f"{key}: a configuration (parameter names to values) or a list of them, got {quote(raw)}"]
    if len(items) > MAX_PRIORS:
        return (), [f"{key}: {len(items):,} configurations, at most {MAX_PRIORS:,}"]
    params = {p.name: p for p in space.params}
    priors: list[dict[str, Any]] = []
    problems: list[str] = []
    for i, item in enumerate(items):
        where = key if isinstance(raw, Mapping) else f"{key}[{i}]"
        if not isinstance(item, Mapping):
            problems.append(f"{where}: must map parameter names to values, got {quote(item)}")
            continue
        before = len(problems)
        for name, value in item.items():
            param = params.get(name) if isinstance(name, str) else None
            if param is None:
                hint = suggestion(name, list(params))
                problems.append(f"{where}: {quote(name)} is not a parameter of the search space{hint}")
            elif not param.contains(value):
                problems.append(f"{where}.{name}: {quote(value)} is not a value of {param.describe()}")
        missing = [name for name in params if name not in item]
        if missing:
            problems.append(
                f"{where}: no value for {', '.join(missing)} (a prior configuration sets every parameter)"
            )
        if len(problems) == before:
            priors.append({name: item[name] for name in params})
    return tuple(priors), problems


def _otx_keys(data: Mapping[Any, Any]) -> tuple[dict[Any, Any], dict[str, str], list[str], list[str]]:
    """The file under this module's names: (mapping, name here -> key in the file, ignored keys each
    as "key (why)", problems of a setting given under two names)."""
    out: dict[Any, Any] = {}
    written: dict[str, str] = {}
    ignored: list[str] = []
    problems: list[str] = []
    for key, value in data.items():
        if key in OTX_IGNORED:
            ignored.append(f"{key} ({OTX_IGNORED[key]})")
            continue
        name = OTX_RENAMED.get(key, key) if isinstance(key, str) else key
        if name in out:
            problems.append(f"{written[name]}, {key}: two names of one setting ({name}); give one")
            continue
        out[name] = value
        if isinstance(name, str):
            written[name] = key
    return out, written, ignored, problems


def config_from_mapping(
    data: Any, source: str = "hpo_config.yaml", require_max_resource: bool = True
) -> StudyConfig:
    """Validates a parsed hpo_config.yaml, in any of OTX's forms; raises ConfigError naming every
    problem. Without ``require_max_resource`` a file without R loads (hpo validate, hpo sample) and
    its ``max_resource`` is NO_MAX_RESOURCE."""
    if not isinstance(data, Mapping):
        raise ConfigError([f"must be a mapping of keys, got {type(data).__name__}"], source)
    given = data
    data, written, ignored, problems = _otx_keys(given)
    model: HpoConfigFile | None = None
    try:
        model = HpoConfigFile.model_validate(data)
    except ValidationError as err:
        # hp_space is parse_space's to judge, with messages that name the parameter.
        problems.extend(
            p
            for p in _pydantic_problems(err, FILE_KEYS, written)
            if not p.startswith(("hp_space:", "hp_space."))
        )
        if any(e["loc"][:1] == ("hp_space",) for e in err.errors()) and "hp_space" not in data:
            problems.append("hp_space: required (a mapping of parameter names to param_type and range)")
    space: SearchSpace | None = None
    notes: list[str] = []
    if "hp_space" in data:
        try:
            space = parse_space(data["hp_space"], notes)
        except SpaceError as err:
            problems.extend(err.problems)
    problems += _limit_problems(given, {k: written.get(v, v) for k, v in _FILE_NAMES.items()})
    priors: tuple[dict[str, Any], ...] = ()
    if space is not None:
        key = written.get("prior_hyper_parameters", "prior_hyper_parameters")
        priors, found = prior_configurations(data.get("prior_hyper_parameters"), space, key)
        problems += found
    sampler = model.sampler if model is not None else DEFAULT_SAMPLER
    if model is not None and model.search_algorithm == "smbo" and sampler not in ("gp", "tpe"):
        problems.append(f"search_algorithm smbo is model-based: sampler must be gp or tpe, got {sampler}")
    if model is not None and not model.asynchronous_sha:
        ignored.append("asynchronous_sha (successive halving here is always asynchronous)")
    if model is not None and not model.asynchronous_bracket:
        ignored.append("asynchronous_bracket (brackets here always run side by side)")
    if model is not None:
        problems += _bracket_problems(model)
    if problems or model is None or space is None:
        raise ConfigError(problems, source)
    # Not a problem of the file (hpo validate accepts it) but of planning with it: asked for last.
    if require_max_resource and model.maximum_resource is None:
        raise ConfigError([MISSING_MAX_RESOURCE], source)
    return StudyConfig(
        space=space,
        metric=model.metric,
        mode=model.mode,
        max_resource=model.maximum_resource or NO_MAX_RESOURCE,
        min_resource=model.minimum_resource,
        reduction_factor=model.reduction_factor,
        seed=model.seed,
        budget=BudgetSpec(time_ratio=model.expected_time_ratio or DEFAULT_TIME_RATIO),
        parallel_trials=model.num_workers,
        sampler=sampler,
        asha_variant=model.asha.variant,
        asha_brackets=model.num_brackets or model.asha.brackets,
        metrics_collector=model.metrics_collector,
        priors=priors,
        ignored=(*ignored, *notes),
        goal=model.goal,
        goal_resource=model.goal_resource,
        max_trials=model.max_trials,
    )


# --- Reading a file ------------------------------------------------------------------------------

_LOADER_BASE: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built


class _Loader(_LOADER_BASE):  # type: ignore[valid-type,misc]
    """A SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last), numbers
    longer than MAX_NUMBER_CHARS (int() of thousands of digits is slow, then refused by Python) and
    dates that do not exist; each as a YAML error with the line."""


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG:
            continue  # "<<": merged keys may be overridden, as YAML specifies
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:
            continue  # unhashable: construct_mapping refuses it with its line
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {quote(key)}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


def _short_number(construct: Any) -> Any:
    def checked(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
        if len(node.value) > MAX_NUMBER_CHARS:
            raise yaml.constructor.ConstructorError(
                None, None, f"a number of {len(node.value):,} characters (at most {MAX_NUMBER_CHARS})",
                node.start_mark,
            )  # fmt: skip
        return construct(loader, node)

    return checked


def _timestamp(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    try:
        return yaml.constructor.SafeConstructor.construct_yaml_timestamp(loader, node)
    except (ValueError, OverflowError) as err:
        raise yaml.constructor.ConstructorError(
            None, None, f"not a date: {quote(node.value)} ({err})", node.start_mark
        ) from err


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)
_Loader.add_constructor(
    "tag:yaml.org,2002:int", _short_number(yaml.constructor.SafeConstructor.construct_yaml_int)
)
_Loader.add_constructor(
    "tag:yaml.org,2002:float", _short_number(yaml.constructor.SafeConstructor.construct_yaml_float)
)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp)


def _line(event: yaml.Event) -> str:
    return f"line {event.start_mark.line + 1}" if event.start_mark is not None else "the file"


class _TooLarge(ValueError):
    """A document beyond MAX_DEPTH or MAX_NODES."""


def _check_shape(text: str) -> None:
    """Refuses a document nested deeper than MAX_DEPTH or holding more than MAX_NODES values once its
    aliases are expanded, from its parse events (linear, flat), before anything is built from it:
    building and printing are where deep nesting and aliases of aliases cost. Raises _TooLarge."""
    anchors: dict[str, tuple[int, int]] = {}  # anchor -> (values, depth) of what it names
    open_: list[tuple[str | None, int, int]] = []  # per open collection: anchor, values before, deepest
    total = 0
    events: Iterator[yaml.Event] = yaml.parse(text, Loader=_Loader)
    for event in events:
        if isinstance(event, yaml.CollectionStartEvent):
            total += 1
            open_.append((event.anchor, total, len(open_) + 1))
            if len(open_) > MAX_DEPTH:
                raise _TooLarge(f"nested more than {MAX_DEPTH} levels deep ({_line(event)})")
        elif isinstance(event, yaml.CollectionEndEvent) and open_:
            anchor, before, deepest = open_.pop()
            if anchor is not None:
                anchors[anchor] = (total - before + 1, deepest - len(open_))
            if open_:
                parent = open_[-1]
                open_[-1] = (parent[0], parent[1], max(parent[2], deepest))
        elif isinstance(event, yaml.ScalarEvent):
            total += 1
            if event.anchor is not None:
                anchors[event.anchor] = (1, 0)
        elif isinstance(event, yaml.AliasEvent):
            # An unknown anchor is left to the composer, which names it.
            values, depth = anchors.get(event.anchor or "", (1, 0))
            total += values
            if len(open_) + depth > MAX_DEPTH:
                raise _TooLarge(
                    f"nested more than {MAX_DEPTH} levels deep once aliases are expanded ({_line(event)})"
                )
            if open_:
                parent = open_[-1]
                open_[-1] = (parent[0], parent[1], max(parent[2], len(open_) + depth))
        if total > MAX_NODES:
            raise _TooLarge(f"more than {MAX_NODES:,} values, aliases counted at each use ({_line(event)})")


def read_text(path: Path) -> str:
    """The file's text: at most MAX_FILE_BYTES, strictly UTF-8 (a byte-order mark is allowed).
    Raises ConfigError naming the file."""
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise ConfigError([f"cannot read: {err.strerror or err}"], str(path)) from err
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(
            [f"larger than {MAX_FILE_BYTES // 2**20} MiB, the limit of a config file"], str(path)
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(
            [f"not UTF-8 text: byte {data[err.start]:#04x} at offset {err.start} cannot be decoded"],
            str(path),
        ) from err


def load_config(path: str | Path, require_max_resource: bool = True) -> tuple[StudyConfig, dict[str, Any]]:
    """Reads and validates an hpo_config.yaml; returns the config and the raw mapping. Without
    ``require_max_resource`` a file without R loads, its max_resource NO_MAX_RESOURCE."""
    path = Path(path)
    text = read_text(path)
    try:
        _check_shape(text)
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader underneath
    except _TooLarge as err:
        raise ConfigError([str(err)], str(path)) from err
    except yaml.YAMLError as err:
        raise ConfigError([f"not valid YAML: {_yaml_message(err)}"], str(path)) from err
    except (ValueError, TypeError, OverflowError) as err:  # a constructor's own error: still bad input
        raise ConfigError([f"cannot read a value: {err}"], str(path)) from err
    return config_from_mapping(data, str(path), require_max_resource), data


def _yaml_message(err: yaml.YAMLError) -> str:
    """PyYAML's message on one line, with the line and column of the problem."""
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return "; ".join(p for p in (err.context, err.problem) if p) + where
    return " ".join(str(err).replace('in "<unicode string>", ', "").split())


# --- The HPOStudy and HPOTrial resources -------------------------------------------------------


class _Camel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)


class ParamSpecModel(_Camel):
    """One hyper-parameter: ``paramType`` and ``range`` as in hpo_config.yaml."""

    param_type: Literal["uniform", "quniform", "loguniform", "qloguniform", "choice"]
    range: list[Any] = Field(description="[min, max], [min, max, step] (+ log base), or choice values")
    default: Any = Field(default=None, description="The value tried first; the middle of the range if unset")


class BudgetModel(_Camel):
    """The study's wall-clock budget: ``timeRatio`` x ``trainTime``, or an absolute ``deadline``."""

    time_ratio: float = Field(
        default=DEFAULT_TIME_RATIO,
        gt=0,
        allow_inf_nan=False,
        strict=True,
        description="Budget as a multiple of trainTime",
    )
    train_time: str | None = Field(
        default=None,
        description="One full training with the defaults ('20m'); measured by the first trial if unset",
    )
    deadline: str | None = Field(default=None, description="An absolute budget from the study's start ('2h')")

    @field_validator("train_time", "deadline")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value


class TrialTemplate(_Camel):
    """The trial pod: metadata and a Pod spec; the operator adds the trial environment."""

    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: dict[str, Any]


class FinalTrainingModel(_Camel):
    """After HPO, one training of the best configuration to the maximum resource, from its checkpoint."""

    enabled: bool = Field(default=False, strict=True)


class CheckpointsModel(_Camel):
    """The volume for the trials' checkpoints: an existing claim (``claimName``), or a claim the
    operator creates and the study owns (``size``, and ``storageClassName`` or the default class)."""

    claim_name: str | None = Field(default=None, min_length=1, description="An existing claim")
    storage_class_name: str | None = Field(
        default=None, description="The class of the claim the operator creates; unset: the default class"
    )
    size: str | None = Field(
        default=None, min_length=1, description="The size of the claim the operator creates"
    )
    access_modes: list[str] = Field(
        default_factory=lambda: ["ReadWriteMany"],
        description="The access modes of the claim the operator creates (trials run on several nodes)",
    )
    keep_for: str | None = Field(
        default=None,
        description="How long after the study ends every trial's checkpoints are kept, so that a raised "
        "budget can resume its paused trials ('2h'; '0s': deleted at the end); then all but the model's "
        "are deleted and the budget can no longer be raised. Unset: kept until the study is deleted",
    )

    @field_validator("keep_for")
    @classmethod
    def _keep_for(cls, value: str | None) -> str | None:
        if value is not None:
            parse_retention(value)
        return value


SPEC_MISSING_MAX_RESOURCE = (
    "spec.maximumResource: required: R, the epochs (or steps) of one full training "
    "(hpo manifest writes it from --max-resource or the config's maximum_resource)"
)


class StudySpec(_Camel):
    """spec of an HPOStudy."""

    metric: str = Field(default=DEFAULT_METRIC, min_length=1)
    mode: Mode = "max"
    search_algorithm: Literal["asha"] = "asha"
    hp_space: dict[str, ParamSpecModel] = Field(min_length=1)
    minimum_resource: float | None = Field(default=None, gt=0, allow_inf_nan=False, strict=True)
    maximum_resource: float | None = Field(default=None, gt=0, allow_inf_nan=False, strict=True)
    reduction_factor: int | None = Field(default=None, ge=2, strict=True)
    budget: BudgetModel = Field(default_factory=BudgetModel)
    parallel_trials: int | Literal["auto"] = Field(
        default="auto", description="Trials at once: 'auto' (as many as free GPUs allow) or a number"
    )
    gpus_per_trial: int = Field(default=1, ge=0, strict=True)
    max_failed_trials: int | None = Field(
        default=None,
        ge=1,
        strict=True,
        description="The study fails once this many trials failed; unset: once at least 3 failed and "
        "failures are at least half of the ended trials",
    )
    seed: int = Field(default=0, strict=True)
    sampler: SamplerName = Field(
        default=DEFAULT_SAMPLER, description="random, qmc (Latin hypercube), tpe or gp (model-based)"
    )
    prior_hyperparameters: list[dict[str, Any]] | None = Field(
        default=None,
        description="Configurations tried first, in order (trials 0, 1, ...), each giving every parameter "
        "of hpSpace; unset: trial 0 takes each parameter's default, or the middle of its range",
    )
    asha: AshaSettings = Field(default_factory=AshaSettings)
    final_training: FinalTrainingModel = Field(default_factory=FinalTrainingModel)
    checkpoints: CheckpointsModel | None = None
    goal: float | None = Field(
        default=None,
        allow_inf_nan=False,
        strict=True,
        description="The study succeeds once a trial reports this value or better (>= for mode max, <= "
        "for min) at goalResource or beyond; its running trials are stopped. Unset: no goal",
    )
    goal_resource: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        strict=True,
        description="The resource (epochs) from which a report can reach the goal; unset: maximumResource",
    )
    max_trials: int | None = Field(
        default=None,
        ge=1,
        strict=True,
        description="At most this many trials: the plan is capped at it, no further trial starts, and "
        "the study ends once they all ended; unset: as many as the budget holds",
    )
    metrics_collector: MetricsCollector | None = Field(
        default=None,
        description="Trials that do not call hpo_trial.report(): how a wrapper around the first "
        "container's command reads their metric (its image needs python3 with hpo_trial)",
    )
    trial_template: TrialTemplate

    @field_validator("parallel_trials")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be 'auto' or at least 1")
        return value

    def to_study_config(self) -> StudyConfig:
        """The core's config; raises ConfigError naming every problem of the search space."""
        problems: list[str] = []
        raw_space = {
            name: {
                "param_type": p.param_type,
                "range": p.range,
                **({"default": p.default} if p.default is not None else {}),
            }
            for name, p in self.hp_space.items()
        }
        space: SearchSpace | None = None
        try:
            space = parse_space(raw_space)
        except SpaceError as err:
            problems.extend(_spec_path(e) for e in err.problems)
        settings = {
            "maximumResource": self.maximum_resource,
            "minimumResource": self.minimum_resource,
            "reductionFactor": self.reduction_factor,
            "seed": self.seed,
            "metric": self.metric,
            "budget.timeRatio": self.budget.time_ratio,
            "parallelTrials": self.parallel_trials,
            "goal": self.goal,
            "goalResource": self.goal_resource,
            "maxTrials": self.max_trials,
        }
        problems += ["spec." + p for p in _limit_problems(settings, _SPEC_NAMES)]
        problems += self._checkpoint_problems()
        priors: tuple[dict[str, Any], ...] = ()
        if space is not None:
            priors, found = prior_configurations(
                self.prior_hyperparameters, space, "spec.priorHyperparameters"
            )
            problems += found
        if self.maximum_resource is None:
            problems.append(SPEC_MISSING_MAX_RESOURCE)
        if problems or space is None or self.maximum_resource is None:
            raise ConfigError(problems, "spec")
        budget = self.budget
        return StudyConfig(
            space=space,
            metric=self.metric,
            mode=self.mode,
            max_resource=self.maximum_resource,
            min_resource=self.minimum_resource,
            reduction_factor=self.reduction_factor,
            seed=self.seed,
            budget=BudgetSpec(
                time_ratio=budget.time_ratio,
                train_time=parse_duration(budget.train_time) if budget.train_time else None,
                deadline=parse_duration(budget.deadline) if budget.deadline else None,
            ),
            parallel_trials=None if self.parallel_trials == "auto" else int(self.parallel_trials),
            max_failed_trials=self.max_failed_trials,
            sampler=self.sampler,
            asha_variant=self.asha.variant,
            asha_brackets=self.asha.brackets,
            final_training=self.final_training.enabled,
            metrics_collector=self.metrics_collector,
            priors=priors,
            goal=self.goal,
            goal_resource=self.goal_resource,
            max_trials=self.max_trials,
        )

    def _checkpoint_problems(self) -> list[str]:
        ckpt = self.checkpoints
        needs = self.asha.variant == "promote" or self.final_training.enabled
        if ckpt is None:
            if needs:
                return [
                    "spec.checkpoints: required with asha.variant promote or finalTraining enabled "
                    "(claimName of an existing claim, or size and storageClassName for a new one)"
                ]
            return []
        if ckpt.claim_name is not None and (ckpt.size is not None or ckpt.storage_class_name is not None):
            return [
                "spec.checkpoints: claimName (an existing claim) or size/storageClassName "
                "(a new one), not both"
            ]
        if ckpt.claim_name is None and ckpt.size is None:
            return ["spec.checkpoints: claimName (an existing claim) or size (a claim the operator creates)"]
        return []


# Top-level fields whose values the model and _limit_problems judge; the walk only sizes them.
_JUDGED_ELSEWHERE = frozenset(
    {"hpSpace", "maximumResource", "minimumResource", "reductionFactor", "seed", "metric", "parallelTrials"}
) | {"goal", "goalResource", "maxTrials"}


def _path_text(path: tuple[Any, ...]) -> str:
    """("spec", ("a", "b")...) as spec.a.b[3]: a path is (parent path, key) pairs, built only on need."""
    parts: list[str] = []
    while path:
        path, key = path
        parts.append(
            f"[{key}]" if isinstance(key, int) else "." + (key if len(key) <= 80 else key[:77] + "...")
        )
    return "spec" + "".join(reversed(parts))


def _spec_shape_problems(spec: Mapping[str, Any]) -> list[str]:
    """Problems of the spec as JSON, in one iterative pass: more than MAX_NODES values or MAX_DEPTH
    levels ends the pass (a ConfigError of its own); otherwise every value that is not JSON the
    API can store (a non-finite float, an integer beyond int64, a non-string key, another type),
    outside the fields judged elsewhere."""
    problems: list[str] = []
    # (value, path, depth, judge): the path is (parent path, key), rendered only for a problem.
    stack: list[tuple[Any, tuple[Any, ...], int, bool]] = [(dict(spec), (), 0, True)]
    count = 0
    while stack:
        value, path, depth, judge = stack.pop()
        if depth > MAX_DEPTH:
            raise ConfigError([f"{_path_text(path)}: nested more than {MAX_DEPTH} levels deep"], "spec")
        if isinstance(value, dict | list):
            items = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
            count += len(items)
            if count > MAX_NODES:
                raise ConfigError([f"more than {MAX_NODES:,} values"], "spec")
            for key, child in items:
                if isinstance(value, dict) and not isinstance(key, str):
                    problems.append(f"{_path_text(path)}: a key is not a string: {quote(key)}")
                    continue
                judged = judge and not (depth == 0 and key in _JUDGED_ELSEWHERE)
                stack.append((child, (path, key), depth + 1, judged))
        elif not judge or value is None or isinstance(value, str | bool):
            continue
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{_path_text(path)}: {quote(value)} is not a finite number")
        elif isinstance(value, int) and abs(value) > INT64_MAX:
            problems.append(f"{_path_text(path)}: {quote(value)} is beyond ±(2^63 - 1), what the API stores")
        elif not isinstance(value, int | float):
            problems.append(
                f"{_path_text(path)}: {quote(value)} ({type(value).__name__}) is not a JSON value"
            )
    return problems


def study_config_from_spec(spec: Mapping[str, Any]) -> StudyConfig:
    """Validates an HPOStudy spec as stored in the API; raises ConfigError naming every problem.

    This is the operator's one check of a spec: a spec it accepts can be run, and every trial
    configuration sampled from it is valid JSON.
    """
    if not isinstance(spec, Mapping):
        raise ConfigError([f"must be a mapping of keys, got {type(spec).__name__}"], "spec")
    space = spec.get("hpSpace")
    if isinstance(space, Mapping) and len(space) > MAX_PARAMS:  # before walking or building them
        raise ConfigError([f"spec.hpSpace: {len(space):,} parameters, at most {MAX_PARAMS:,}"], "spec")
    shape = _spec_shape_problems(spec)
    try:
        model = StudySpec.model_validate(dict(spec))
    except ValidationError as err:
        problems = shape + [
            "spec." + p
            for p in _pydantic_problems(err, sorted(f.alias or n for n, f in StudySpec.model_fields.items()))
        ]
        # The search space's own rules and the limits too, so that one round of fixes is enough.
        if isinstance(space, Mapping) and not any(p.startswith("spec.hpSpace") for p in problems):
            raw = {k: dict(v) if isinstance(v, Mapping) else v for k, v in space.items()}
            try:
                parse_space(raw)
            except SpaceError as space_err:
                problems += [_spec_path(e) for e in space_err.problems]
        budget = spec.get("budget")
        settings = {
            **spec,
            "budget.timeRatio": budget.get("timeRatio") if isinstance(budget, Mapping) else None,
        }
        problems += ["spec." + p for p in _limit_problems(settings, _SPEC_NAMES)]
        if spec.get("maximumResource") is None:
            problems.append(SPEC_MISSING_MAX_RESOURCE)
        raise ConfigError(problems, "spec") from err
    try:
        config = model.to_study_config()
    except ConfigError as err:
        raise ConfigError(shape + err.problems, "spec") from err
    if shape:
        raise ConfigError(shape, "spec")
    return config
