"""Names, labels and the models of what the operator writes: HPOTrial spec, trial and study status.

The HPOStudy spec is ``config.StudySpec``; these models complete the two resources so that their
CRD schemas are generated from one place (crd.py) and the operator writes nothing the schema would
prune.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field

from ..config import API_GROUP, API_VERSION
from ..result import BestStatus, PlanStatus, ResultModel, StudyPhase, TrialCounts
from ..trials import TrialPhase

GROUP = API_GROUP
VERSION = API_VERSION
API = f"{GROUP}/{VERSION}"
STUDY_KIND, STUDY_PLURAL = "HPOStudy", "hpostudies"
TRIAL_KIND, TRIAL_PLURAL = "HPOTrial", "hpotrials"

STUDY_LABEL = f"{GROUP}/study"
TRIAL_LABEL = f"{GROUP}/trial"
RUN_LABEL = f"{GROUP}/run"
GPU = "nvidia.com/gpu"

TERMINAL_STUDY_PHASES = frozenset({"Succeeded", "Failed"})


def trial_name(study: str, index: int) -> str:
    """Deterministic, so that a repeated create is a 409 and never a second trial."""
    return f"{study}-{index}"


def job_name(trial: str, run: int) -> str:
    """The Job of a trial's run: the trial's name for its first run, ``<trial>-run<k>`` for a resume
    (a trial name ends in ``-<index>``, so no run's Job can take another trial's name)."""
    return trial if run == 0 else f"{trial}-run{run}"


def job_trial(job: str) -> str:
    """The trial whose run a Job named ``job`` is (the inverse of job_name)."""
    return re.sub(r"-run\d+$", "", job)


def created_claim_name(study: str) -> str:
    """The checkpoint claim the operator creates for a study (spec.checkpoints.size)."""
    return f"{study}-checkpoints"


def trial_identity_name(trial: str) -> str:
    """The ServiceAccount, Role and RoleBinding one trial's pods report with (the trial's name: a
    ServiceAccount is of another kind, and the names are the operator's already)."""
    return trial


_Model = ResultModel


class Condition(_Model):
    """A condition as in Kubernetes' own objects; lastTransitionTime changes only with status."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(description="CamelCase, machine-readable")
    message: str = ""
    last_transition_time: str = Field(json_schema_extra={"format": "date-time"})


class CheckpointLocation(_Model):
    """Where a trial's checkpoints are: a folder on a PersistentVolumeClaim."""

    claim_name: str
    path: str = Field(description="The folder, relative to the claim's root")


class FinalStatus(_Model):
    """The final training: the best configuration trained on to the maximum resource."""

    trial: str
    index: int
    phase: Literal["Running", "Succeeded", "Failed"] | None = None
    started_at: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    value: float | None = Field(default=None, description="Its value at the maximum resource")
    resource: float | None = None
    checkpoint: CheckpointLocation | None = Field(default=None, description="The trained model's checkpoints")


class BudgetStatus(_Model):
    """Where the study stands against its wall-clock budget (seconds)."""

    started_at: str = Field(
        json_schema_extra={"format": "date-time"}, description="The budget's clock starts here"
    )
    deadline: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    budget_seconds: float | None = None
    used_seconds: float = Field(
        default=0,
        description="Seconds of the budget used, as of the last status write: while the study runs "
        "it is written with every other change and at least every 30 s",
    )
    stop_margin_seconds: float | None = Field(
        default=None, description="Running trials are stopped this long before the deadline"
    )
    finished_at: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    finished_inside_seconds: float | None = Field(
        default=None, description="deadline - finishedAt: how far inside the budget the study ended"
    )
    extended_at: str | None = Field(
        default=None,
        json_schema_extra={"format": "date-time"},
        description="When a raised budget last continued the finished study",
    )
    previous_deadline: str | None = Field(
        default=None,
        json_schema_extra={"format": "date-time"},
        description="The deadline before that extension",
    )


class StudyStatus(_Model):
    """status of an HPOStudy: aggregates only; per-trial history lives on the HPOTrials."""

    phase: StudyPhase | None = None
    message: str | None = None
    progress: str | None = Field(default=None, description="finished/planned trials")
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    plan: PlanStatus | None = None
    trials: TrialCounts | None = None
    best: BestStatus | None = None
    budget: BudgetStatus | None = None
    final: FinalStatus | None = None


class TrialSpec(_Model):
    """spec of an HPOTrial, written by the operator."""

    study: str
    index: int = Field(ge=0)
    hyperparameters: dict[str, Any]
    stop_at: float | None = Field(default=None, description="The first run pauses after this resource")


class ReportModel(_Model):
    """One report as the trial SDK appends it (docs/architecture.md, the trial contract)."""

    seq: int
    resource: float
    value: float | None
    time: float
    extra: dict[str, Any] = Field(default_factory=dict)


class TrialStatusModel(_Model):
    """status of an HPOTrial: the reports (appended by the trial) and the operator's verdict."""

    phase: TrialPhase | None = None
    reports: list[ReportModel] = Field(default_factory=list)
    started_at: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    finished_at: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    resource: float | None = Field(default=None, description="The highest resource reported")
    last_value: float | None = None
    refused_reports: int | None = Field(
        default=None, description="Reports that do not count (a resource outside (0, R], falling, ...)"
    )
    refused_reason: str | None = Field(default=None, description="Why the last of them does not count")
    rung: int | None = Field(default=None, description="The rung a pruned trial stopped at")
    cutoff: float | None = Field(default=None, description="The value it needed to continue")
    reason: str | None = None
    message: str | None = None
    exit_code: int | None = None
    run: int | None = Field(default=None, description="The current run (0, the first, when unset)")
    start_from: float | None = Field(default=None, description="The current run resumed at this resource")
    stop_at: float | None = Field(default=None, description="The current run pauses after this resource")
    final: bool | None = Field(default=None, description="The current run is the final training")
    run_started_at: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
