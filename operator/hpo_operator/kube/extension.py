"""A finished study whose spec changed: whether its new budget continues it, and what to say.

``status.observedGeneration`` is the generation the study's last status was computed for, so a
finished study (Succeeded or Failed) whose ``metadata.generation`` moved past it has a spec the
operator has not looked at yet. The new budget counts from the study's original start
(``status.budget.startedAt``): ``deadline: 2h`` means two hours in all, the time the study stood
finished included. The study runs again when that budget is larger than the one it finished with
and still ends after the stop margin from now; otherwise it stays as it is, and the ``Extended``
condition and a ``NotExtended`` event say why. Either way the status written records the new
generation, so the decision is made once, whatever restarts come between.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import StudyConfig, parse_retention
from .builders import checkpoint_claim, cleanup_job_name
from .observe import to_rfc3339, to_timestamp
from .writes import World

JSON = dict[str, Any]
# A budget must grow by more than this to count as raised (status.budget.budgetSeconds is rounded).
RAISED_BY_SECONDS = 0.01


@dataclass(frozen=True)
class Extension:
    """What a finished study's new spec does: ``extend`` it, or not, for ``reason`` (CamelCase)."""

    extend: bool
    reason: str
    message: str
    previous_deadline: str | None = None
    deadline: str | None = None

    @property
    def warning(self) -> bool:
        """Not extended although the user may have meant to (anything but an unchanged budget)."""
        return not self.extend and self.reason != "BudgetNotRaised"


def spec_changed(study: Mapping[str, Any]) -> bool:
    """A finished study's spec changed since its status was last written."""
    generation = study["metadata"].get("generation")
    observed = (study.get("status") or {}).get("observedGeneration")
    return generation is not None and observed is not None and generation != observed


def checkpoints_expire_at(study: Mapping[str, Any]) -> float | None:
    """When a finished study's checkpoints are deleted (spec.checkpoints.keepFor after its end);
    None: they are kept until the study is deleted, or there are none."""
    ckpt = (study.get("spec") or {}).get("checkpoints") or {}
    keep = ckpt.get("keepFor")
    if checkpoint_claim(study) is None or keep is None:
        return None
    finished = to_timestamp(((study.get("status") or {}).get("budget") or {}).get("finishedAt"))
    return (finished or 0.0) + parse_retention(str(keep))


def refused_early(world: World, config: StudyConfig, now: float) -> Extension | None:
    """Why the study cannot continue whatever its budget, or None."""
    study = world.study
    status = study.get("status") or {}
    invalid = next(
        (
            c
            for c in status.get("conditions") or []
            if c.get("type") == "Invalid" and c.get("status") == "True"
        ),
        None,
    )
    if invalid is not None:
        return Extension(
            False,
            "FailedInvalid",
            f"the study failed as invalid ({invalid.get('reason')}): it does not continue; create it again "
            "with a valid spec",
        )
    needs_checkpoints = config.asha_variant == "promote" or config.final_training
    expires = checkpoints_expire_at(study)
    name = study["metadata"]["name"]
    if needs_checkpoints and (
        cleanup_job_name(name) in world.jobs or (expires is not None and now >= expires)
    ):
        return Extension(
            False,
            "CheckpointsDeleted",
            "the trials' checkpoints were deleted after the study ended (spec.checkpoints.keepFor): "
            "its trials cannot be resumed, so the study does not continue",
        )
    return None


def judge(study: Mapping[str, Any], budget: float | None, stop_margin: float, now: float) -> Extension:
    """Whether the new ``budget`` (seconds from the study's start; None: not known) continues it."""
    status = study.get("status") or {}
    recorded = status.get("budget") or {}
    started = to_timestamp(recorded.get("startedAt")) or now
    old = recorded.get("budgetSeconds")
    previous = recorded.get("deadline")
    phase = status.get("phase", "finished")
    if budget is None:
        return Extension(
            False, "BudgetUnknown", f"the new budget cannot be sized (no measured training): it stays {phase}"
        )
    deadline = to_rfc3339(started + budget)
    if old is not None and budget <= float(old) + RAISED_BY_SECONDS:
        return Extension(
            False,
            "BudgetNotRaised",
            f"the budget ({budget:g}s) is not larger than the {float(old):g}s the study ended with: "
            f"it stays {phase}",
            previous,
            deadline,
        )
    used = now - started
    if started + budget - stop_margin <= now:
        return Extension(
            False,
            "BudgetUsed",
            f"the new budget of {budget:g}s ends at {deadline}, but {used:.0f}s of it are used already "
            f"(it counts from the study's start at {recorded.get('startedAt')}): it stays {phase}",
            previous,
            deadline,
        )
    was = f"{float(old):g}s (deadline {previous})" if old is not None else "unknown"
    return Extension(
        True,
        "BudgetRaised",
        f"budget raised from {was} to {budget:g}s (deadline {deadline}), counted from the study's start; "
        f"{used:.0f}s are used: the study runs again",
        previous,
        deadline,
    )
