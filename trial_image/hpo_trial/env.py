"""The trial's configuration, read from the environment the study gives it (docs/architecture.md)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

HPO_STUDY = "HPO_STUDY"
HPO_TRIAL = "HPO_TRIAL"
HPO_NAMESPACE = "HPO_NAMESPACE"
HPO_HYPERPARAMETERS = "HPO_HYPERPARAMETERS"
HPO_METRIC = "HPO_METRIC"
HPO_MAX_RESOURCE = "HPO_MAX_RESOURCE"
HPO_CHECKPOINT_DIR = "HPO_CHECKPOINT_DIR"
HPO_REPORT_FILE = "HPO_REPORT_FILE"
HPO_START_RESOURCE = "HPO_START_RESOURCE"
HPO_STOP_RESOURCE = "HPO_STOP_RESOURCE"

#: Where checkpoints go when no study gives a folder, relative to the working directory.
LOCAL_CHECKPOINT_ROOT = Path("runs") / "checkpoints"


def _environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def _get(name: str, environ: Mapping[str, str] | None) -> str | None:
    """The variable's value, with an empty value treated as unset (as Kubernetes env often has)."""
    value = _environ(environ).get(name, "").strip()
    return value or None


def hyperparameters(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The trial's hyper-parameters, dotted names kept; ``{}`` outside a study.

    Raises ValueError when ``HPO_HYPERPARAMETERS`` is not a JSON object: a trial must not train
    silently with defaults when its configuration is garbled.
    """
    raw = _get(HPO_HYPERPARAMETERS, environ)
    if raw is None:
        return {}
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{HPO_HYPERPARAMETERS} is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise ValueError(f"{HPO_HYPERPARAMETERS} must be a JSON object, got {type(parsed).__name__}")
    return parsed


def _int_var(name: str, environ: Mapping[str, str] | None) -> int | None:
    raw = _get(name, environ)
    if raw is None:
        return None
    try:
        number = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {raw!r}") from None
    if not number.is_integer() or number < 0:
        raise ValueError(f"{name} must be a whole number >= 0, got {raw!r}")
    return int(number)


def max_resource(environ: Mapping[str, str] | None = None) -> int | None:
    """The resource (epochs) of one full training, or None outside a study."""
    return _int_var(HPO_MAX_RESOURCE, environ)


def start_resource(environ: Mapping[str, str] | None = None) -> int | None:
    """The resource to resume from (a promoted trial's rung), or None when not set."""
    return _int_var(HPO_START_RESOURCE, environ)


def stop_resource(environ: Mapping[str, str] | None = None) -> int | None:
    """The resource to stop at in this run (the next rung of a pausing trial), or None: train to
    ``max_resource()``. The learning-rate schedule still spans the full training."""
    return _int_var(HPO_STOP_RESOURCE, environ)


def trial_name(environ: Mapping[str, str] | None = None) -> str | None:
    """The trial's name (``<study>-<index>``), or None outside a study."""
    return _get(HPO_TRIAL, environ)


def study_name(environ: Mapping[str, str] | None = None) -> str | None:
    """The study's name, or None outside a study."""
    return _get(HPO_STUDY, environ)


def namespace(environ: Mapping[str, str] | None = None) -> str | None:
    """The study's namespace (cluster only), or None."""
    return _get(HPO_NAMESPACE, environ)


def metric_name(environ: Mapping[str, str] | None = None) -> str | None:
    """The metric the study optimises, or None outside a study."""
    return _get(HPO_METRIC, environ)


def checkpoint_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The folder for this trial's checkpoints, created if missing.

    Outside a study it is ``runs/checkpoints/<trial or "standalone">`` under the working directory,
    so a standalone run keeps its checkpoints next to where it was started.
    """
    raw = _get(HPO_CHECKPOINT_DIR, environ)
    path = Path(raw) if raw is not None else LOCAL_CHECKPOINT_ROOT / (trial_name(environ) or "standalone")
    path = path.expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
