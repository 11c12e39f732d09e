"""Models of hpo_config.yaml and of the HPOStudy / HPOTrial resources, and their validation.

``load_config`` (a YAML file) and ``StudySpec.model_validate`` (an HPOStudy spec) both end in a
``StudyConfig``: the validated settings the decision core runs on. Every problem of an input is
collected and reported at once, each naming the field and what is wrong.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from .space import SearchSpace, SpaceError, parse_space

API_GROUP = "hpo.dev"
API_VERSION = "v1alpha1"

DEFAULT_METRIC = "mAP"
DEFAULT_MAX_RESOURCE = 10
DEFAULT_REDUCTION_FACTOR = 3
DEFAULT_TIME_RATIO = 4.0

Mode = Literal["max", "min"]
SamplerName = Literal["random", "qmc", "tpe", "gp"]
AshaVariant = Literal["stop", "promote"]
DEFAULT_SAMPLER: SamplerName = "gp"


class ConfigError(ValueError):
    """An input with one or more problems; ``problems`` names each one."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        self.source = source
        super().__init__(self.summary())

    def summary(self) -> str:
        if len(self.problems) == 1:
            return f"{self.source}: {self.problems[0]}"
        return f"{self.source}: {len(self.problems)} problems: " + "; ".join(self.problems)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str | float | int) -> float:
    """Seconds from a number of seconds or a duration like '20m', '1h30m', '90s', '2h'."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"duration must be a positive, finite number of seconds, got {value}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"duration must be a number of seconds or a string like '20m', got {value!r}")
    text = value.strip().replace(" ", "")
    try:
        return parse_duration(float(text))
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text or total <= 0:
        raise ValueError(f"cannot read duration {value!r}: use e.g. '90s', '20m', '1h30m' or seconds")
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
    max_resource: float = DEFAULT_MAX_RESOURCE
    min_resource: float | None = None
    reduction_factor: int | None = None
    seed: int = 0
    budget: BudgetSpec = field(default_factory=BudgetSpec)
    parallel_trials: int | None = None  # None: as many as free slots allow
    max_failed_trials: int | None = None
    sampler: SamplerName = DEFAULT_SAMPLER
    asha_variant: AshaVariant = "stop"
    final_training: bool = False


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class AshaSettings(_Strict):
    """ASHA's variant: ``stop`` (a trial below its rung's cut-off is stopped, as Ray Tune's
    ASHAScheduler) or ``promote`` (every trial pauses at each rung and the best are resumed from
    their checkpoints, as the ASHA paper and OTX)."""

    variant: AshaVariant = "stop"


class HpoConfigFile(_Strict):
    """hpo_config.yaml as OpenVINO Training Extensions writes it (snake_case keys)."""

    metric: str = DEFAULT_METRIC
    mode: Mode = "max"
    search_algorithm: Literal["asha"] = "asha"
    hp_space: dict[str, Any]
    maximum_resource: float | None = Field(default=None, gt=0, allow_inf_nan=False, strict=True)
    minimum_resource: float | None = Field(default=None, gt=0, allow_inf_nan=False, strict=True)
    reduction_factor: int | None = Field(default=None, ge=2, strict=True)
    seed: int = Field(default=0, strict=True)
    sampler: SamplerName = DEFAULT_SAMPLER
    asha: AshaSettings = Field(default_factory=AshaSettings)


def _pydantic_problems(err: ValidationError, allowed: list[str] | None = None) -> list[str]:
    problems = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            hint = f" (allowed: {', '.join(allowed)})" if allowed and len(e["loc"]) == 1 else ""
            problems.append(f"{loc}: unknown key{hint}")
        elif e["type"] == "missing":
            problems.append(f"{loc}: required")
        elif e["type"] == "literal_error":
            problems.append(f"{loc}: {e['msg'].lower()}, got {e['input']!r}")
        else:
            problems.append(f"{loc}: {e['msg']}, got {e['input']!r}")
    return problems


def _spec_path(problem: str) -> str:
    """A search-space problem ("hp_space.lr: ...", "hp_space: ...") as a path in the HPOStudy spec."""
    return re.sub(r"^hp_space\b", "spec.hpSpace", problem)


def _check_resources(
    max_resource: float | None, min_resource: float | None, names: tuple[str, str]
) -> list[str]:
    if min_resource is not None and min_resource > (max_resource or DEFAULT_MAX_RESOURCE):
        limit = f"{max_resource:g}" if max_resource is not None else f"{DEFAULT_MAX_RESOURCE}, its default"
        return [f"{names[1]} ({min_resource:g}) must not exceed {names[0]} ({limit})"]
    return []


def config_from_mapping(data: Any, source: str = "hpo_config.yaml") -> StudyConfig:
    """Validates a parsed hpo_config.yaml; raises ConfigError naming every problem."""
    if not isinstance(data, Mapping):
        raise ConfigError([f"must be a mapping of keys, got {type(data).__name__}"], source)
    problems: list[str] = []
    model: HpoConfigFile | None = None
    try:
        model = HpoConfigFile.model_validate(dict(data))
    except ValidationError as err:
        allowed = sorted(HpoConfigFile.model_fields)
        problems.extend(p for p in _pydantic_problems(err, allowed) if not p.startswith("hp_space:"))
        if any(e["loc"][:1] == ("hp_space",) for e in err.errors()) and "hp_space" not in data:
            problems.append("hp_space: required (a mapping of parameter names to param_type/range)")
    space: SearchSpace | None = None
    if "hp_space" in data:
        try:
            space = parse_space(data["hp_space"])
        except SpaceError as err:
            problems.extend(err.problems)
    if model is not None:
        problems += _check_resources(
            model.maximum_resource, model.minimum_resource, ("maximum_resource", "minimum_resource")
        )
    if problems or model is None or space is None:
        raise ConfigError(problems, source)
    return StudyConfig(
        space=space,
        metric=model.metric,
        mode=model.mode,
        max_resource=model.maximum_resource or DEFAULT_MAX_RESOURCE,
        min_resource=model.minimum_resource,
        reduction_factor=model.reduction_factor,
        seed=model.seed,
        sampler=model.sampler,
        asha_variant=model.asha.variant,
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: list[Any] = []
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.append(key)
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_config(path: str | Path) -> tuple[StudyConfig, dict[str, Any]]:
    """Reads and validates an hpo_config.yaml; returns the config and the raw mapping."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError([f"cannot read: {err.strerror}"], str(path)) from err
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader underneath
    except yaml.YAMLError as err:
        raise ConfigError([f"not valid YAML: {err}".replace("\n", " ")], str(path)) from err
    return config_from_mapping(data, str(path)), data


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
    asha: AshaSettings = Field(default_factory=AshaSettings)
    final_training: FinalTrainingModel = Field(default_factory=FinalTrainingModel)
    checkpoints: CheckpointsModel | None = None
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
        problems += [
            "spec." + p
            for p in _check_resources(
                self.maximum_resource, self.minimum_resource, ("maximumResource", "minimumResource")
            )
        ]
        problems += self._checkpoint_problems()
        if problems or space is None:
            raise ConfigError(problems, "spec")
        budget = self.budget
        return StudyConfig(
            space=space,
            metric=self.metric,
            mode=self.mode,
            max_resource=self.maximum_resource or DEFAULT_MAX_RESOURCE,
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
            final_training=self.final_training.enabled,
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


def study_config_from_spec(spec: Mapping[str, Any]) -> StudyConfig:
    """Validates an HPOStudy spec as stored in the API; raises ConfigError naming every problem."""
    try:
        model = StudySpec.model_validate(dict(spec))
    except ValidationError as err:
        problems = [
            "spec." + p
            for p in _pydantic_problems(err, sorted(f.alias or n for n, f in StudySpec.model_fields.items()))
        ]
        # The search space's own rules too, so that one round of fixes is enough.
        space = spec.get("hpSpace")
        if isinstance(space, Mapping) and not any(p.startswith("spec.hpSpace") for p in problems):
            raw = {k: dict(v) if isinstance(v, Mapping) else v for k, v in space.items()}
            try:
                parse_space(raw)
            except SpaceError as space_err:
                problems += [_spec_path(e) for e in space_err.problems]
        raise ConfigError(problems, "spec") from err
    return model.to_study_config()
