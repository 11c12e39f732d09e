"""What a study learned, typed: the result document both backends write.

The operator writes it as the HPOStudy's status (kube/status.py, into kube/resources.py's
``StudyStatus``, the CRD's model), `hpo run` as ``study.json`` (local/document.py's
``StudyFile``). Both are built from the parts here, by the same functions, and each adds only
what belongs to its backend (conditions and the observed generation on a cluster; processes, slots
and per-trial records on this machine). ``StudyResult`` is the part they share: read back from
either, the same trial history gives the same one.

Numbers keep their JSON type (``Number``): a resource of 9 is written 9, as the trial reported it,
not 9.0; the schema still says ``number``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

from .budget import Plan
from .study import Best
from .trials import TrialPhase

Number = Annotated[int | float, WithJsonSchema({"type": "number"})]
StudyPhase = Literal["Pending", "Running", "Succeeded", "Failed"]


class ResultModel(BaseModel):
    """camelCase on the wire, snake_case in Python; an unknown field is an error, not dropped."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)

    def document(self) -> dict[str, Any]:
        """As written: camelCase keys, and only the fields that were given (None included)."""
        return self.model_dump(by_alias=True, exclude_unset=True)


class PlanStatus(ResultModel):
    """The ASHA plan auto-configured for the budget; re-planned as epoch times are measured."""

    eta: int
    minimum_resource: Number
    maximum_resource: Number
    rungs: list[Number]
    planned_trials: int
    parallelism: int
    epoch_seconds: Number
    budget_seconds: Number
    predicted_gpu_seconds: Number
    predicted_seconds: Number
    trial_overhead_seconds: Number = 0.0
    max_trials: int | None = Field(
        default=None,
        description="Set when the trial limit (spec.maxTrials) capped plannedTrials below what the budget "
        "holds",
    )
    brackets: int = Field(default=1, description="Hyperband brackets run side by side (1: plain ASHA)")
    brackets_note: str | None = Field(
        default=None, description="Why fewer brackets run than spec.asha.brackets asks for"
    )
    deadline: str | None = Field(default=None, json_schema_extra={"format": "date-time"})

    @classmethod
    def of(cls, plan: Plan, **extra: Any) -> PlanStatus:
        return cls.model_validate(plan.to_status() | extra)


class TrialCounts(ResultModel):
    pending: int = 0
    running: int = 0
    completed: int = 0
    pruned: int = 0
    failed: int = 0
    stopped: int = 0
    paused: int = 0
    total: int = 0

    @classmethod
    def of(cls, phases: Iterable[TrialPhase | str]) -> TrialCounts:
        """How many trials are in each phase, every phase named (0 where none is)."""
        counts = {p.value.lower(): 0 for p in TrialPhase}
        for phase in phases:
            counts[TrialPhase(phase).value.lower()] += 1
        return cls(**counts, total=sum(counts.values()))


class BestStatus(ResultModel):
    """The best configuration so far, compared at the highest resource any trial reached."""

    trial: str
    index: int
    value: Number
    resource: Number
    hyperparameters: dict[str, Any]

    @classmethod
    def of(cls, best: Best, trial: str) -> BestStatus:
        return cls(
            trial=trial,
            index=best.index,
            value=best.value,
            resource=best.resource,
            hyperparameters=dict(best.params),
        )


class StudyResult(ResultModel):
    """The part of the result both backends write: how the study stands, its plan, its trials'
    phases, the best, and the trial that holds the model (the final training's)."""

    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Interrupted"] | None
    plan: PlanStatus | None
    counts: TrialCounts | None
    best: BestStatus | None
    final: int | None

    @classmethod
    def of(
        cls,
        succeeded: bool | None,
        plan: Plan | None,
        phases: Iterable[TrialPhase | str],
        best: Best | None,
        trial_name: Callable[[int], str],
        final: int | None = None,
    ) -> StudyResult:
        """From a backend's own record (``succeeded`` None: still running)."""
        return cls(
            phase="Running" if succeeded is None else "Succeeded" if succeeded else "Failed",
            plan=None if plan is None else PlanStatus.of(plan),
            counts=TrialCounts.of(phases),
            best=None if best is None else BestStatus.of(best, trial_name(best.index)),
            final=final,
        )

    @classmethod
    def of_status(cls, status: Mapping[str, Any]) -> StudyResult:
        """From an HPOStudy's status (the plan without its deadline, which only the status has)."""
        plan = status.get("plan")
        return cls.model_validate(
            {
                "phase": status.get("phase"),
                "plan": None if plan is None else {k: v for k, v in plan.items() if k != "deadline"},
                "counts": status.get("trials"),
                "best": status.get("best"),
                "final": (status.get("final") or {}).get("index"),
            }
        )

    @classmethod
    def of_study_file(cls, document: Mapping[str, Any]) -> StudyResult:
        """From study.json (its best without the metric and mode, which only it names)."""
        best = document.get("best")
        return cls.model_validate(
            {
                "phase": document.get("state"),
                "plan": document.get("plan"),
                "counts": document.get("counts"),
                "best": None if best is None else {k: best[k] for k in best if k not in ("metric", "mode")},
                "final": (document.get("final") or {}).get("index"),
            }
        )
