"""The `hpo` command line.

Bad input exits with status 2 and a message that names what is wrong, never a traceback.
"""

from __future__ import annotations

import json
import random
import shlex
import sys
from collections.abc import Callable
from dataclasses import replace
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
import yaml

from .budget import BudgetTooSmall, make_plan
from .config import (
    API_GROUP,
    API_VERSION,
    ConfigError,
    StudyConfig,
    format_duration,
    load_config,
    parse_duration,
    study_config_from_spec,
)

F = TypeVar("F", bound=Callable[..., Any])

EXIT_BAD_INPUT = 2


class Duration(click.ParamType):  # type: ignore[type-arg]
    """A duration: seconds, or '90s', '20m', '1h30m'."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_duration(value)
        except ValueError as err:
            self.fail(str(err), param, ctx)


DURATION = Duration()


def fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_BAD_INPUT)


def bad_input_exits(func: F) -> F:
    """Turns the project's input errors into exit status 2 with a one-line reason."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as err:
            fail(err.summary())
        except BudgetTooSmall as err:
            fail(str(err))

    return wrapper  # type: ignore[return-value]


def budget_seconds(
    config: StudyConfig, train_time: float | None, time_ratio: float | None, budget: float | None
) -> tuple[float | None, str]:
    """The budget from the flags, and a sentence saying where it came from."""
    if budget is not None:
        if time_ratio is not None:
            fail("give either --budget or --time-ratio, not both")
        return budget, f"budget {format_duration(budget)}"
    ratio = time_ratio if time_ratio is not None else config.budget.time_ratio
    if ratio <= 0:
        fail(f"--time-ratio must be positive, got {ratio}")
    if train_time is None:
        return None, f"{ratio:g} x one training (measured by the first trial)"
    return ratio * train_time, f"{ratio:g} x train time {format_duration(train_time)}"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hpo-operator")
def main() -> None:
    """Hyper-parameter optimisation with ASHA under a time budget, in Kubernetes or on this machine."""


@main.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@bad_input_exits
def validate(config: Path) -> None:
    """Check an hpo_config.yaml and print a summary, or every problem found."""
    try:
        study, _ = load_config(config)
    except ConfigError as err:
        click.echo(f"{config}: {len(err.problems)} problem(s):", err=True)
        for problem in err.problems:
            click.echo(f"  - {problem}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    click.echo(f"{config}: valid")
    click.echo(f"  metric: {study.metric} ({study.mode})")
    click.echo(
        f"  resource: up to {study.max_resource:g}"
        + (f", from {study.min_resource:g}" if study.min_resource else "")
    )
    for p in study.space.params:
        click.echo(f"  {p.name}: {p.describe()}, first tried {p.initial()!r}")


@main.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-n", "count", type=click.IntRange(min=1), default=10, show_default=True, help="How many")
@click.option("--seed", type=int, default=None, help="Seed (default: the config's seed)")
@bad_input_exits
def sample(config: Path, count: int, seed: int | None) -> None:
    """Print N configurations drawn from the search space, one JSON object a line."""
    study, _ = load_config(config)
    rng = random.Random(study.seed if seed is None else seed)
    for _ in range(count):
        click.echo(json.dumps(study.space.sample(rng)))


def _plan_options(func: F) -> F:
    options = [
        click.option(
            "--train-time", type=DURATION, default=None, help="One full training with the defaults ('20m')"
        ),
        click.option(
            "--time-ratio", type=float, default=None, help="Budget as a multiple of the train time [4]"
        ),
        click.option("--budget", type=DURATION, default=None, help="An absolute budget instead ('2h')"),
        click.option(
            "--max-resource", type=float, default=None, help="Override the config's maximum_resource"
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _with_max_resource(config: StudyConfig, max_resource: float | None) -> StudyConfig:
    if max_resource is None:
        return config
    if max_resource <= 0:
        fail(f"--max-resource must be positive, got {max_resource}")
    return replace(config, max_resource=max_resource)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@_plan_options
@click.option("--gpus", type=click.IntRange(min=1), default=1, show_default=True, help="Trials at once")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON")
@bad_input_exits
def plan(
    config: Path,
    train_time: float | None,
    time_ratio: float | None,
    budget: float | None,
    max_resource: float | None,
    gpus: int,
    as_json: bool,
) -> None:
    """Show the ASHA plan auto-configured for a time budget."""
    study = _with_max_resource(load_config(config)[0], max_resource)
    if train_time is None:
        fail("--train-time is needed to plan: it gives the time of one epoch")
    assert train_time is not None
    seconds, source = budget_seconds(study, train_time, time_ratio, budget)
    assert seconds is not None
    result = make_plan(
        budget_seconds=seconds,
        slots=gpus,
        epoch_seconds=train_time / study.max_resource,
        max_resource=study.max_resource,
        min_resource=study.min_resource,
        eta=study.reduction_factor,
    )
    if as_json:
        click.echo(json.dumps(result.to_status(), indent=2))
        return
    click.echo(f"budget: {format_duration(seconds)} ({source}), {gpus} GPU(s)")
    click.echo(f"ASHA: eta {result.eta}, r {result.min_resource:g}, R {result.max_resource:g}")
    click.echo(f"rungs: {', '.join(f'{r:g}' for r in result.rungs)} (then R = {result.max_resource:g})")
    click.echo(f"trials: {result.planned_trials}, {result.parallelism} at once")
    click.echo(
        f"predicted: {format_duration(result.predicted_seconds)} wall clock, "
        f"{format_duration(result.predicted_gpu_seconds)} GPU time"
    )


def _hp_space_spec(raw: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, spec in raw["hp_space"].items():
        item = {"paramType": spec["param_type"], "range": spec["range"]}
        if "default" in spec:
            item["default"] = spec["default"]
        out[name] = item
    return out


@main.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="The HPOStudy's name")
@click.option("--namespace", default=None, help="The HPOStudy's namespace")
@click.option("--image", required=True, help="The trial container image")
@click.option(
    "--command",
    "command",
    default="python -m hpo_trial.train",
    show_default=True,
    help="The trial container's command (one string, split like a shell)",
)
@_plan_options
@click.option("--deadline", type=DURATION, default=None, help="Alias of --budget")
@click.option("--parallel-trials", default="auto", show_default=True, help="'auto' or a number")
@click.option("--gpus-per-trial", type=click.IntRange(min=0), default=1, show_default=True)
@bad_input_exits
def manifest(
    config: Path,
    name: str,
    namespace: str | None,
    image: str,
    command: str,
    train_time: float | None,
    time_ratio: float | None,
    budget: float | None,
    max_resource: float | None,
    deadline: float | None,
    parallel_trials: str,
    gpus_per_trial: int,
) -> None:
    """Print an HPOStudy manifest for kubectl apply."""
    study, raw = load_config(config)
    budget = budget if budget is not None else deadline
    budget_spec: dict[str, Any] = {}
    if budget is not None:
        if time_ratio is not None:
            fail("give either --budget or --time-ratio, not both")
        budget_spec["deadline"] = format_duration(budget)
    else:
        budget_spec["timeRatio"] = time_ratio if time_ratio is not None else study.budget.time_ratio
        if train_time is not None:
            budget_spec["trainTime"] = format_duration(train_time)
    parallel: int | str = parallel_trials
    if parallel_trials != "auto":
        try:
            parallel = int(parallel_trials)
        except ValueError:
            fail(f"--parallel-trials must be 'auto' or a number, got {parallel_trials!r}")
    try:
        argv = shlex.split(command)
    except ValueError as err:
        fail(f"--command: {err}")
    if not argv:
        fail("--command is empty")
    spec: dict[str, Any] = {
        "metric": study.metric,
        "mode": study.mode,
        "searchAlgorithm": "asha",
        "hpSpace": _hp_space_spec(raw),
        "maximumResource": max_resource if max_resource is not None else study.max_resource,
    }
    if study.min_resource is not None:
        spec["minimumResource"] = study.min_resource
    if study.reduction_factor is not None:
        spec["reductionFactor"] = study.reduction_factor
    spec |= {
        "budget": budget_spec,
        "parallelTrials": parallel,
        "gpusPerTrial": gpus_per_trial,
        "seed": study.seed,
        "trialTemplate": {
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "trial", "image": image, "command": argv}],
            }
        },
    }
    study_config_from_spec(spec)  # the manifest must be one the operator accepts
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    doc = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "HPOStudy", "metadata": metadata, "spec": spec}
    click.echo(yaml.safe_dump(doc, sort_keys=False), nl=False)
