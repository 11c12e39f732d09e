"""`hpo status STUDY`: a study and its trials, read from the API, as lines of text."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

JSON = dict[str, Any]


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float | int) else str(value)


def render_study(study: Mapping[str, Any], trials: Sequence[Mapping[str, Any]]) -> list[str]:
    meta, spec, status = study["metadata"], study.get("spec") or {}, study.get("status") or {}
    lines = [f"HPOStudy {meta['namespace']}/{meta['name']}: {status.get('phase') or 'Pending'}"]
    if status.get("message"):
        lines.append(f"  {status['message']}")
    for c in status.get("conditions") or []:
        lines.append(f"  condition {c['type']}={c['status']} ({c['reason']}): {c.get('message', '')}")
    plan = status.get("plan")
    if plan:
        rungs = ", ".join(_num(r) for r in plan["rungs"])
        lines.append(
            f"  plan: {plan['plannedTrials']} trials, {plan['parallelism']} at once, eta {plan['eta']}, "
            f"rungs {rungs or '-'}, R {_num(plan['maximumResource'])}"
        )
    budget = status.get("budget") or {}
    if budget:
        line = f"  budget: used {_num(budget.get('usedSeconds'))}s of {_num(budget.get('budgetSeconds'))}s"
        if budget.get("finishedInsideSeconds") is not None:
            line += f", finished {_num(budget['finishedInsideSeconds'])}s inside"
        lines.append(line)
    best = status.get("best")
    if best:
        lines.append(
            f"  best: {best['trial']} {spec.get('metric', 'value')} {_num(best['value'])} "
            f"at resource {_num(best['resource'])}"
        )
        lines += [f"    {k}: {v}" for k, v in sorted(best["hyperparameters"].items())]
    final = status.get("final")
    if final:
        line = f"  final training: {final['trial']} {final.get('phase', '')}"
        if final.get("value") is not None:
            metric = spec.get("metric", "value")
            line += f", {metric} {_num(final['value'])} at resource {_num(final.get('resource'))}"
        checkpoint = final.get("checkpoint")
        if checkpoint:
            line += f"; model in claim {checkpoint['claimName']}, path {checkpoint['path']}"
        lines.append(line)
    if trials:
        lines.append(f"  {'TRIAL':<28} {'PHASE':<10} {'RESOURCE':>8} {'VALUE':>10}  NOTE")
    for t in sorted(trials, key=lambda t: int(t["spec"]["index"])):
        ts = t.get("status") or {}
        note = ts.get("message") or ""
        lines.append(
            f"  {t['metadata']['name']:<28} {ts.get('phase') or 'Pending':<10} "
            f"{_num(ts.get('resource')):>8} {_num(ts.get('lastValue')):>10}  {note}"
        )
    return lines + _extra_lines(trials)


EXTRA_SHOWN = 8


def _extra_lines(trials: Sequence[Mapping[str, Any]]) -> list[str]:
    """The other metrics of each trial's last report (a collector's, or report(**extra)): shown, never
    used for decisions."""
    lines = []
    for t in sorted(trials, key=lambda t: int(t["spec"]["index"])):
        reports = (t.get("status") or {}).get("reports")
        last = reports[-1] if isinstance(reports, list) and reports else None
        extra = last.get("extra") if isinstance(last, Mapping) else None
        if not isinstance(extra, Mapping) or not extra or last is None:
            continue
        shown = " ".join(f"{k}={_num(v)}" for k, v in list(extra.items())[:EXTRA_SHOWN])
        more = f" (+{len(extra) - EXTRA_SHOWN} more)" if len(extra) > EXTRA_SHOWN else ""
        lines.append(f"    {t['metadata']['name']} at {_num(last.get('resource'))}: {shown}{more}")
    return ["  other metrics, at each trial's last report:", *lines] if lines else []
