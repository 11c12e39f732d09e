"""Where the operator keeps its verdict on a trial: an annotation on the HPOTrial, which trials
cannot write.

A trial reports by patching its HPOTrial's status, so anything in that status may have been written
by the trial (or by anyone else who may patch it). The operator's own fields (phase, run, reason,
...) are therefore kept in the annotation ``hpo.dev/verdict`` and only mirrored into the status for
``kubectl get``; the operator reads them from the annotation alone, and a forged status field is
overwritten by the next reconcile. ``reportsCounted`` fixes how many reports a settled run had when
its verdict was made: reports appended after it never count.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .resources import GROUP

JSON = dict[str, Any]

VERDICT_ANNOTATION = f"{GROUP}/verdict"
# Status fields computed from the reports on every reconcile: display only, never read back.
DERIVED_FIELDS = frozenset({"resource", "lastValue", "refusedReports", "refusedReason"})
# The status fields the operator writes besides the derived ones: the mirror of the record.
RECORDED_FIELDS = frozenset(
    {
        "phase",
        "startedAt",
        "finishedAt",
        "rung",
        "cutoff",
        "reason",
        "message",
        "exitCode",
        "run",
        "startFrom",
        "stopAt",
        "final",
        "runStartedAt",
    }
)
# Kept in the annotation only: how many of status.reports the settled run counts.
REPORTS_COUNTED = "reportsCounted"


def has_verdict(trial: Mapping[str, Any]) -> bool:
    return VERDICT_ANNOTATION in ((trial.get("metadata") or {}).get("annotations") or {})


def verdict_of(trial: Mapping[str, Any]) -> JSON:
    """The operator's fields of the trial, as it last recorded them."""
    annotations = (trial.get("metadata") or {}).get("annotations") or {}
    text = annotations.get(VERDICT_ANNOTATION)
    if text is None:
        # An HPOTrial of an operator that kept its verdict in the status: the fields that operator
        # wrote are trusted until the first reconcile copies them into the annotation (never
        # reportsCounted, which only the annotation holds).
        status = trial.get("status") or {}
        return {k: v for k, v in status.items() if k in RECORDED_FIELDS and v is not None}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def verdict_text(verdict: Mapping[str, Any]) -> str:
    return json.dumps(
        {k: v for k, v in verdict.items() if v is not None}, sort_keys=True, separators=(",", ":")
    )


def counted_reports(trial: Mapping[str, Any]) -> list[Any]:
    """The raw reports that count: all of them while the run goes on, and after a verdict only
    those the verdict was made on."""
    raw = (trial.get("status") or {}).get("reports") or []
    if not isinstance(raw, list):
        return []
    counted = verdict_of(trial).get(REPORTS_COUNTED)
    if isinstance(counted, int) and not isinstance(counted, bool) and counted >= 0:
        return raw[:counted]
    return raw
