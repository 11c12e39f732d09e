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
from typing import Any, NoReturn, TypeVar

import click
import yaml
from pydantic import ValidationError

from .budget import BudgetTooSmall, make_plan
from .cluster_commands import (
    CommandError,
    NoSuchStudy,
    NotAsked,
    access_of,
    cluster_options,
    plot_study,
    require_matplotlib,
    status_lines,
)
from .config import (
    API_GROUP,
    API_VERSION,
    MAX_PARALLEL_TRIALS,
    ConfigError,
    StudyConfig,
    StudySpec,
    check_max_resource,
    check_time_ratio,
    format_duration,
    ignored_warning,
    load_config,
    parse_duration,
    require_max_resource,
    study_config_from_spec,
)
from .space import SearchSpace, quote

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


class BudgetExtension(float):
    """``--budget +30m``: seconds added to a resumed study's budget."""


class RunBudget(Duration):
    """`hpo run --budget`: a duration, or '+DURATION' to extend a resumed study's budget."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, str) and value.strip().startswith("+"):
            return BudgetExtension(super().convert(value.strip()[1:], param, ctx))
        return super().convert(value, param, ctx)


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
    check_time_ratio(ratio)
    if train_time is None:
        return None, f"{ratio:g} x one training (measured by the first trial)"
    return ratio * train_time, f"{ratio:g} x train time {format_duration(train_time)}"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hpo-operator")
def main() -> None:
    """Hyper-parameter optimisation with ASHA under a time budget, in Kubernetes or on this machine."""


def _warn_ignored(path: Path, study: StudyConfig) -> None:
    warning = ignored_warning(study)
    if warning is not None:
        click.echo(f"warning: {path}: {warning}", err=True)


def _written(raw: dict[str, Any], *names: str) -> str | None:
    """Which of a setting's names (this project's, then OTX's others) the file gives it under."""
    return next((name for name in names if name in raw), None)


def summary_lines(study: StudyConfig, raw: dict[str, Any]) -> list[str]:
    """hpo validate's summary: each setting, the key that set it and the flag that overrides it."""
    lines = [f"metric: {study.metric} ({study.mode})"]
    if study.max_resource_given:
        key = _written(raw, "maximum_resource", "max_iterations")
        resource = f"resource: up to R = {study.max_resource:g} ({key}; --max-resource overrides)"
    else:
        resource = (
            "resource: R is not set: hpo plan, manifest and run need --max-resource R "
            "(or maximum_resource in the config)"
        )
    if study.min_resource is not None:
        resource += (
            f", from r = {study.min_resource:g} ({_written(raw, 'minimum_resource', 'min_iterations')})"
        )
    lines.append(resource)
    if study.reduction_factor is not None:
        lines.append(f"reduction factor: {study.reduction_factor}")
    if study.goal is not None:
        better = ">=" if study.mode == "max" else "<="
        at = "R" if study.goal_resource is None else f"resource {study.goal_resource:g} (goal_resource)"
        lines.append(
            f"goal: stop once a trial reports {study.metric} {better} {study.goal:g} at {at} or beyond"
        )
    if study.max_trials is not None:
        key = _written(raw, "max_trials", "num_trials")
        lines.append(f"trials: at most {study.max_trials} ({key})")
    if "sampler" in raw:
        lines.append(f"sampler: {study.sampler} (sampler)")
    elif raw.get("search_algorithm") == "smbo":
        lines.append(f"sampler: {study.sampler} (search_algorithm smbo: model-based)")
    else:
        lines.append(f"sampler: {study.sampler} (default)")
    ratio = "expected_time_ratio" if "expected_time_ratio" in raw else "default"
    lines.append(f"time ratio: {study.budget.time_ratio:g} ({ratio}; --time-ratio or --budget overrides)")
    if study.parallel_trials is not None:
        lines.append(
            f"trials at once: at most {study.parallel_trials} (num_workers; --gpus, --cpu-slots and "
            "--parallel-trials override)"
        )
    if study.priors:
        key = _written(raw, "prior_hyper_parameters")
        lines.append(f"first trials: {len(study.priors)} prior configuration(s) ({key}), then the sampler")
        lines += [f"prior {i}: {json.dumps(prior)}" for i, prior in enumerate(study.priors)]
        lines += [f"{p.name}: {p.describe()}" for p in study.space.params]
    else:
        lines.append("first trial: the defaults (each parameter's default, else the middle of its range)")
        lines += [f"{p.name}: {p.describe()}, first tried {quote(p.initial())}" for p in study.space.params]
    return lines


@main.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@bad_input_exits
def validate(config: Path) -> None:
    """Check an hpo_config.yaml and print a summary, or every problem found.

    A file without maximum_resource is valid: R is then given when planning (--max-resource)."""
    try:
        study, raw = load_config(config, require_max_resource=False)
    except ConfigError as err:
        click.echo(f"{config}: {len(err.problems)} problem(s):", err=True)
        for problem in err.problems:
            click.echo(f"  - {problem}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    _warn_ignored(config, study)
    click.echo(f"{config}: valid")
    for line in summary_lines(study, raw):
        click.echo(f"  {line}")


@main.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-n", "count", type=click.IntRange(min=1), default=10, show_default=True, help="How many")
@click.option("--seed", type=int, default=None, help="Seed (default: the config's seed)")
@bad_input_exits
def sample(config: Path, count: int, seed: int | None) -> None:
    """Print N configurations drawn from the search space, one JSON object a line."""
    study, _ = load_config(config, require_max_resource=False)
    _warn_ignored(config, study)
    rng = random.Random(study.seed if seed is None else seed)
    for _ in range(count):
        click.echo(json.dumps(study.space.sample(rng)))


def _plan_options(func: F, budget_type: Duration = DURATION) -> F:
    options = [
        click.option(
            "--train-time", type=DURATION, default=None, help="One full training with the defaults ('20m')"
        ),
        click.option(
            "--time-ratio", type=float, default=None, help="Budget as a multiple of the train time [4]"
        ),
        click.option("--budget", type=budget_type, default=None, help="An absolute budget instead ('2h')"),
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
    check_max_resource(max_resource)
    if config.min_resource is not None and config.min_resource > max_resource:
        fail(
            f"--max-resource ({max_resource:g}) is below the config's minimum_resource "
            f"({config.min_resource:g})"
        )
    if config.goal_resource is not None and config.goal_resource > max_resource:
        fail(
            f"--max-resource ({max_resource:g}) is below the config's goal_resource "
            f"({config.goal_resource:g}): no report lies beyond R"
        )
    return replace(config, max_resource=max_resource)


def load_study(
    config: Path, max_resource: float | None, slots_flag: bool = False
) -> tuple[StudyConfig, dict[str, Any]]:
    """The config of a command that plans (plan, manifest, run): its warning printed once,
    --max-resource applied, and R required, else ConfigError naming the flag and the key (exit 2).
    A flag wins over the config: with ``slots_flag`` (trials at once given by --gpus or
    --cpu-slots) the config's num_workers is set aside."""
    study, raw = load_config(config, require_max_resource=False)
    _warn_ignored(config, study)
    study = _with_max_resource(study, max_resource)
    require_max_resource(study, str(config))
    if slots_flag:
        study = replace(study, parallel_trials=None)
    return study, raw


@main.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@_plan_options
@click.option(
    "--gpus",
    type=click.IntRange(min=1),
    default=None,
    help="Trials at once [the config's num_workers, else 1]",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON")
@bad_input_exits
def plan(
    config: Path,
    train_time: float | None,
    time_ratio: float | None,
    budget: float | None,
    max_resource: float | None,
    gpus: int | None,
    as_json: bool,
) -> None:
    """Show the ASHA plan auto-configured for a time budget."""
    study, _ = load_study(config, max_resource, slots_flag=gpus is not None)
    gpus = (study.parallel_trials or 1) if gpus is None else gpus
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
        max_trials=study.max_trials,
        brackets=study.asha_brackets,
    )
    if as_json:
        click.echo(json.dumps(result.to_status(), indent=2))
        return
    click.echo(f"budget: {format_duration(seconds)} ({source}), {gpus} GPU(s)")
    click.echo(f"ASHA: eta {result.eta}, r {result.min_resource:g}, R {result.max_resource:g}")
    click.echo(f"rungs: {', '.join(f'{r:g}' for r in result.rungs)} (then R = {result.max_resource:g})")
    if study.asha_brackets > 1:
        click.echo(
            f"brackets: {result.brackets}" + (f" ({result.brackets_note})" if result.brackets_note else "")
        )
    capped = f" (max_trials {result.max_trials}; the budget holds more)" if result.max_trials else ""
    click.echo(f"trials: {result.planned_trials}, {result.parallelism} at once{capped}")
    click.echo(
        f"predicted: {format_duration(result.predicted_seconds)} wall clock, "
        f"{format_duration(result.predicted_gpu_seconds)} GPU time"
    )


def _hp_space_spec(space: SearchSpace) -> dict[str, Any]:
    """The search space in the spec's form, paramType and range, whichever OTX form the file used."""
    out: dict[str, Any] = {}
    for p in space.params:
        item: dict[str, Any] = {"paramType": p.type, "range": p.range_values()}
        if p.default is not None:
            item["default"] = p.default
        out[p.name] = item
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
@click.option(
    "--parallel-trials", default=None, help="'auto' or a number [the config's num_workers, else auto]"
)
@click.option("--gpus-per-trial", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--final-training", is_flag=True, help="After HPO, train the best configuration to R")
@click.option("--checkpoint-claim", default=None, help="An existing claim for the trials' checkpoints")
@click.option(
    "--checkpoint-size",
    default=None,
    help="The size of a checkpoint claim the operator creates ('10Gi'); needed by promote or final training",
)
@click.option("--storage-class", default=None, help="The storage class of that claim (unset: the default)")
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
    parallel_trials: str | None,
    gpus_per_trial: int,
    final_training: bool,
    checkpoint_claim: str | None,
    checkpoint_size: str | None,
    storage_class: str | None,
) -> None:
    """Print an HPOStudy manifest for kubectl apply."""
    study, _ = load_study(config, max_resource)
    if time_ratio is not None:
        check_time_ratio(time_ratio)
    budget = budget if budget is not None else deadline
    budget_spec: dict[str, Any] = {}
    if budget is not None:
        if time_ratio is not None:
            fail("give either --budget or --time-ratio, not both")
        budget_spec["deadline"] = format_duration(budget)
    else:
        budget_spec["time_ratio"] = time_ratio if time_ratio is not None else study.budget.time_ratio
        if train_time is not None:
            budget_spec["train_time"] = format_duration(train_time)
    parallel: int | str = study.parallel_trials or "auto"
    if parallel_trials == "auto":
        parallel = parallel_trials
    elif parallel_trials is not None:
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
    _check_references(argv, study, "--command")
    # The spec is the CRD's own model (config.StudySpec), given in its field names: what it
    # prints is what the CRD's schema says, camelCase and all.
    fields: dict[str, Any] = {
        "metric": study.metric,
        "mode": study.mode,
        "search_algorithm": "asha",
        "hp_space": _hp_space_spec(study.space),
        "maximum_resource": study.max_resource,
        "minimum_resource": study.min_resource,
        "reduction_factor": study.reduction_factor,
        "budget": budget_spec,
        "parallel_trials": parallel,
        "gpus_per_trial": gpus_per_trial,
        "seed": study.seed,
        "sampler": study.sampler,
        "prior_hyperparameters": [dict(prior) for prior in study.priors] or None,
        "goal": study.goal,
        "goal_resource": study.goal_resource,
        "max_trials": study.max_trials,
    }
    asha: dict[str, Any] = {"variant": study.asha_variant} if study.asha_variant != "stop" else {}
    if study.asha_brackets != 1:
        asha["brackets"] = study.asha_brackets
    if asha:
        fields["asha"] = asha
    if final_training or study.final_training:
        fields["final_training"] = {"enabled": True}
    checkpoints = {
        "claim_name": checkpoint_claim or None,
        "size": checkpoint_size or None,
        "storage_class_name": storage_class or None,
    }
    if any(checkpoints.values()):
        fields["checkpoints"] = {k: v for k, v in checkpoints.items() if v is not None}
    elif study.asha_variant == "promote" or "final_training" in fields:
        fail(
            "the promote variant and final training keep checkpoints on a volume: give --checkpoint-claim "
            "NAME (an existing claim) or --checkpoint-size SIZE (a claim the operator creates)"
        )
    if study.metrics_collector is not None:
        collector = study.metrics_collector
        options = collector.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True)
        fields["metrics_collector"] = {"kind": collector.kind, **options}
    fields["trial_template"] = {
        "spec": {"restartPolicy": "Never", "containers": [{"name": "trial", "image": image, "command": argv}]}
    }
    # Unset optional fields stay out of the manifest, as a person would write it.
    given = {k: v for k, v in fields.items() if v is not None}
    try:
        spec = StudySpec.model_validate(given).model_dump(by_alias=True, exclude_unset=True, mode="json")
    except ValidationError as err:  # a config that passed its own checks: name the fields anyway
        fail(f"the manifest's spec is not valid: {err}")
    study_config_from_spec(spec)  # the manifest must be one the operator accepts
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    doc = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "HPOStudy", "metadata": metadata, "spec": spec}
    click.echo(yaml.safe_dump(doc, sort_keys=False), nl=False)


# --- the local backend: hpo run | status | plot -------------------------------------------------


def _default_study_name(config: Path) -> str:
    """The config's folder for the conventional name hpo_config.yaml, else the file's stem."""
    import re

    base = config.resolve().parent.name if config.stem == "hpo_config" else config.stem
    name = re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-")
    return name or "study"


def _config_summary(path: Path, study: StudyConfig) -> dict[str, Any]:
    return {
        "path": str(path),
        "metric": study.metric,
        "mode": study.mode,
        "maximumResource": study.max_resource,
        "minimumResource": study.min_resource,
        "reductionFactor": study.reduction_factor,
        "seed": study.seed,
        "hpSpace": {p.name: p.describe() for p in study.space.params},
        "budget": {
            "timeRatio": study.budget.time_ratio,
            "trainTime": study.budget.train_time,
            "deadline": study.budget.deadline,
        },
    }


def _check_command(argv: tuple[str, ...]) -> None:
    import os
    import shutil

    program = argv[0]
    if "/" in program:
        if not (Path(program).is_file() and os.access(program, os.X_OK)):
            fail(f"the trial command {program!r} is not an executable file")
    elif shutil.which(program) is None:
        fail(f"the trial command {program!r} is not on PATH")


def _check_references(
    argv: tuple[str, ...] | list[str], study: StudyConfig, what: str = "the trial command"
) -> None:
    """Exits 2 when a ``${name}`` of the command names no hyper-parameter of the space."""
    from .trial_command import command_problems

    problems = command_problems(argv, [p.name for p in study.space.params], what)
    if problems:
        fail("; ".join(problems))


def _warn_shared_path(study: StudyConfig, slots: int) -> None:
    """Trials of `hpo run` share a working directory: a collector's file read by every trial is
    almost certainly a mistake."""
    collector = study.metrics_collector
    if collector is None or collector.path is None or slots < 2 or "$(HPO_" in collector.path:
        return
    click.echo(
        f"warning: metrics_collector.path {collector.path!r} is the same file for every trial, and "
        f"{slots} run at once: give each trial its own, e.g. $(HPO_CHECKPOINT_DIR)/... (and the "
        "trainer the same folder)",
        err=True,
    )


def _run_options(func: F) -> F:
    return _plan_options(func, budget_type=RunBudget())


@main.command(name="run")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path), required=False)
@_run_options
@click.option(
    "--gpus",
    default=None,
    help="GPUs to use, one trial each: 'auto' (all found), N (the first N), or 0 (CPU slots) [auto]",
)
@click.option(
    "--cpu-slots",
    type=click.IntRange(min=1, max=MAX_PARALLEL_TRIALS),
    default=None,
    help="Trials at once without GPUs [one per core, at most 8]; each gets cores/slots threads",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Results folder [./hpo-runs/NAME-TIMESTAMP]",
)
@click.option("--name", default=None, help="The study's name, prefix of trial names [from the config's path]")
@click.option("--grace", type=DURATION, default=None, help="SIGTERM to SIGKILL for a stopped trial [5s]")
@click.option(
    "--poll", type=click.FloatRange(min=0.01, max=60), default=None, help="Seconds between looks [0.2]"
)
@click.option(
    "--final-training",
    is_flag=True,
    help="After HPO, train the best configuration on to the maximum resource from its checkpoint",
)
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Continue the study in this folder (after an interruption, or to extend it with --budget +30m)",
)
@click.argument("command", nargs=-1, required=False, type=click.UNPROCESSED)
@bad_input_exits
def run_command(
    config: Path | None,
    train_time: float | None,
    time_ratio: float | None,
    budget: float | None,
    max_resource: float | None,
    gpus: str | None,
    cpu_slots: int | None,
    out_dir: Path | None,
    name: str | None,
    grace: float | None,
    poll: float | None,
    final_training: bool,
    resume_dir: Path | None,
    command: tuple[str, ...],
) -> None:
    """Run a study on this machine: each trial is COMMAND (after --) as a subprocess.

    Trials get the trial environment (HPO_HYPERPARAMETERS, HPO_REPORT_FILE, ...) and report with
    hpo_trial.report(). Results go to DIR/study.json, DIR/best.json and DIR/trials/<trial>/log.txt.
    Exit status: 0 with a best configuration, 1 without one, 2 for bad input or a budget too small
    for one training, 130 when interrupted (Ctrl-C or SIGTERM; results are still written).

    hpo run --resume DIR [--budget D|+D | --time-ratio X] continues the study in DIR with the
    config, command and flags it was started with (a CONFIG or COMMAND given must be the same).
    """
    import re
    import time as _time

    from .local.document import ResultsError
    from .local.resume import ResumeError, RunFlags, RunRecord, hold_folder, write_run_record
    from .local.runner import DEFAULT_GRACE_SECONDS, DEFAULT_POLL_SECONDS, RunOptions
    from .local.slots import make_slots
    from .study import Study, StudyError

    if resume_dir is not None:
        flags = {"--train-time": train_time, "--max-resource": max_resource, "--out": out_dir, "--name": name}
        given = [flag for flag, value in flags.items() if value is not None]
        if final_training:
            given.append("--final-training")
        if given:
            fail(f"{', '.join(given)}: a resumed study keeps the settings it was started with")
        if config is not None and not config.is_file():
            fail(
                f"{config}: no such config file (with --resume, a trial command comes after the config: "
                "hpo run --resume DIR CONFIG -- COMMAND)"
            )
        _resume_run(resume_dir, config, command, budget, time_ratio, gpus, cpu_slots, grace, poll)
        return
    if config is None:
        fail("give the study's CONFIG file (or --resume DIR to continue a study)")
        return
    if not command:
        fail("give the trial command after --, e.g. hpo run hpo_config.yaml -- python train.py")
    if isinstance(budget, BudgetExtension):
        fail("--budget +DURATION extends the budget of a resumed study: use it with --resume DIR")
    run_flags = RunFlags(
        max_resource=max_resource,
        train_time=train_time,
        time_ratio=time_ratio,
        budget=budget,
        final_training=final_training,
        gpus=gpus or "auto",
        cpu_slots=cpu_slots,
        grace=DEFAULT_GRACE_SECONDS if grace is None else grace,
        poll=DEFAULT_POLL_SECONDS if poll is None else poll,
    )
    study_config = _run_study_config(config, run_flags)
    _check_command(command)
    _check_references(command, study_config)
    name = name or _default_study_name(config)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        fail(f"--name {name!r}: use letters, digits, '.', '_' and '-', starting with a letter or digit")
    if out_dir is None:
        out_dir = Path("hpo-runs") / f"{name}-{_time.strftime('%Y%m%d-%H%M%S')}"
    if (out_dir / "study.json").exists():
        fail(
            f"{out_dir} already holds a study (study.json): choose another --out, or continue it "
            f"with hpo run --resume {out_dir}"
        )
    try:
        slots = make_slots(run_flags.gpus, cpu_slots)
    except ValueError as err:
        fail(str(err))
    study = Study(study_config, slots=len(slots))
    try:
        study.plan(())  # a budget given up front must hold one training
    except StudyError as err:
        fail(str(err))
    where = ", ".join(s.describe() for s in slots)
    click.echo(f"study {name}: {len(slots)} slot(s) ({where}); results in {out_dir}", err=True)
    options = RunOptions(
        name=name,
        command=command,
        out_dir=out_dir,
        slots=tuple(slots),
        grace=run_flags.grace,
        poll=run_flags.poll,
        config_summary=_config_summary(config, study_config),
        collector=study_config.metrics_collector,
    )
    _warn_shared_path(study_config, len(slots))
    record = RunRecord(
        format=1,
        name=name,
        command=list(command),
        cwd=str(Path.cwd()),
        config_path=str(config),
        flags=run_flags,
    )
    try:  # what --resume needs to continue the study
        write_run_record(out_dir, record, config.read_text())
        lock = hold_folder(out_dir)  # one hpo run a study folder at a time
    except ResultsError as err:
        fail(f"{err}: choose a results folder (--out) that can be written")
    except ResumeError as err:
        fail(str(err))
    with lock:
        _run_study(study, options)


def _run_study_config(config: Path, flags: Any) -> StudyConfig:
    """The study's config: the file with the flags of `hpo run` applied (a RunFlags)."""
    from .config import BudgetSpec

    slots_flag = flags.cpu_slots is not None or flags.gpus != "auto"
    study_config = load_study(config, flags.max_resource, slots_flag=slots_flag)[0]
    if flags.budget is not None and flags.train_time is not None:
        fail("give either --budget or --train-time (with --time-ratio), not both")
    budget_seconds(study_config, flags.train_time, flags.time_ratio, flags.budget)  # checks the combination
    return replace(
        study_config,
        budget=BudgetSpec(
            time_ratio=flags.time_ratio if flags.time_ratio is not None else study_config.budget.time_ratio,
            train_time=flags.train_time,
            deadline=flags.budget,
        ),
        final_training=flags.final_training or study_config.final_training,
    )


def _resume_run(
    folder: Path,
    config: Path | None,
    command: tuple[str, ...],
    budget: float | None,
    time_ratio: float | None,
    gpus: str | None,
    cpu_slots: int | None,
    grace: float | None,
    poll: float | None,
) -> None:
    """`hpo run --resume DIR`: the study in DIR continued (local/resume.py says how)."""
    from .local import resume
    from .local.slots import make_slots

    if budget is not None and time_ratio is not None:
        fail("give either --budget or --time-ratio, not both")
    if time_ratio is not None:
        check_time_ratio(time_ratio)
    try:
        prepared = resume.prepare(
            folder,
            build_config=_run_study_config,
            config=config,
            command=command,
            change=resume.BudgetChange(
                total=None if isinstance(budget, BudgetExtension) else budget,
                extend=budget if isinstance(budget, BudgetExtension) else None,
                time_ratio=time_ratio,
            ),
            slots=lambda flags: make_slots(gpus or flags.gpus, cpu_slots or flags.cpu_slots),
            grace=grace,
            poll=poll,
        )
    except (resume.ResumeError, ValueError) as err:
        fail(f"cannot resume {folder}: {err}")
        return
    for line in prepared.lines:
        click.echo(line, err=True)
    with prepared.lock:
        _run_study(prepared.study, prepared.options, prepared.resumed)


def _run_study(study: Any, options: Any, resumed: Any = None) -> None:
    """Runs the study (a Study, with its RunOptions and, resumed, the resume.Resumed) and prints the
    best; exits with the run's status."""
    from .local.document import ResultsError
    from .local.progress import LineProgress, TerminalProgress
    from .local.runner import LocalRunner
    from .study import StudyError

    progress = TerminalProgress(sys.stderr) if sys.stderr.isatty() else LineProgress(sys.stderr)
    study_config, out_dir = study.config, options.out_dir
    try:
        result = LocalRunner(study, options, progress, resumed=resumed).run()
    except StudyError as err:
        fail(f"{err} (results so far in {out_dir})")
    except ResultsError as err:  # raised before any trial starts
        fail(f"{err}: choose a results folder (--out) that can be written")
    if result.results_error is not None:
        click.echo(f"error: {result.results_error}; the study stopped", err=True)
    best = result.document["best"]
    if best is None:
        click.echo(f"no trial reported a usable {study_config.metric}; see {out_dir}/study.json", err=True)
    else:
        where = f"at resource {best['resource']:g}"
        click.echo(f"best trial {best['trial']}: {best['metric']} {best['value']} {where}")
        for key, value in best["hyperparameters"].items():
            click.echo(f"  {key}: {value}")
    files = "study.json and best.json" if best is not None else "study.json"
    click.echo(f"results: {out_dir}/{files}; hpo status|plot {out_dir}", err=True)
    sys.exit(result.exit_code)


def _load_local_study(target: Path) -> dict[str, Any]:
    path = target / "study.json" if target.is_dir() else target
    try:
        doc = json.loads(path.read_text())
    except OSError as err:
        fail(f"{path}: cannot read: {err.strerror}")
    except json.JSONDecodeError as err:
        fail(f"{path}: not a study.json: {err}")
    if not isinstance(doc, dict) or "trials" not in doc or "startedAt" not in doc:
        fail(f"{path}: not a study.json written by hpo run")
    return dict(doc)


EXTRA_SHOWN = 8


def _extra_lines(trials: list[dict[str, Any]]) -> list[str]:
    """The other metrics of each trial's last report (a collector's, or report(**extra)): shown, never
    used for decisions."""
    from .local.progress import value_text

    lines = []
    for trial in trials:
        last = trial["reports"][-1] if trial.get("reports") else None
        extra = last.get("extra") if last else None
        if last is None or not extra or not isinstance(extra, dict):
            continue
        shown = [f"{k}={value_text(v)}" for k, v in list(extra.items())[:EXTRA_SHOWN]]
        more = f" (+{len(extra) - EXTRA_SHOWN} more in study.json)" if len(extra) > EXTRA_SHOWN else ""
        lines.append(f"  {trial['name']} at {last['resource']:g}: {' '.join(shown)}{more}")
    return ["", "other metrics, at each trial's last report:", *lines] if lines else []


@main.command(name="status")
@click.argument("target")
@cluster_options
def status_command(target: str, namespace: str | None, context: str | None, kubeconfig: str | None) -> None:
    """Show a study: TARGET is a local study's folder (hpo run --out) or its study.json, else the
    name of an HPOStudy in the cluster (-n, --context and --kubeconfig pick it as kubectl does)."""
    import time as _time

    from .local.progress import render

    path = Path(target)
    if not _is_local(path):
        try:
            lines = status_lines(target, access_of(namespace, context, kubeconfig))
        except CommandError as err:
            _not_found(target, err)
        for line in lines:
            click.echo(line)
        return
    doc = _load_local_study(path)
    now = _time.time()
    for line in render(doc, now):
        click.echo(line)
    # A study.json with the runner's record says itself whether its hpo run is gone (render); an
    # older one gets the hint that it may be.
    quiet = now - float(doc.get("updatedAt", now)) > 30
    if doc.get("finishedAt") is None and quiet and "runner" not in doc:
        click.echo(f"(last updated {now - float(doc['updatedAt']):.0f}s ago: is its hpo run still running?)")
    for line in _extra_lines(doc["trials"]):
        click.echo(line)
    for trial in doc["trials"]:
        if trial["status"] == "Failed" and trial.get("logTail"):
            click.echo(f"\n{trial['name']} ({trial.get('reason')}), last lines of {trial['log']}:")
            for line in str(trial["logTail"]).splitlines():
                click.echo(f"  {line}")


@main.command(name="plot")
@click.argument("target")
@cluster_options
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The PNG [DIR/study.png for a local study, ./STUDY.png for a cluster study]",
)
def plot_command(
    target: str, namespace: str | None, context: str | None, kubeconfig: str | None, output: Path | None
) -> None:
    """Draw a study's learning curves and its trials over time to a PNG: TARGET is a local study's
    folder (hpo run --out) or its study.json, else the name of an HPOStudy in the cluster."""
    path = Path(target)
    if not _is_local(path):
        try:
            written = plot_study(target, access_of(namespace, context, kubeconfig), output)
        except CommandError as err:
            _not_found(target, err)
        click.echo(str(written))
        return
    doc = _load_local_study(path)
    try:
        require_matplotlib()
    except CommandError as err:
        fail(str(err))
    from .curves import StudyCurves
    from .plot import save_plot

    folder = path if path.is_dir() else path.parent
    click.echo(str(save_plot(StudyCurves.of_study_file(doc), output or folder / "study.png")))


def _is_local(path: Path) -> bool:
    """A local study is a folder or a study.json; any other name is an HPOStudy's."""
    return path.is_dir() or path.name == "study.json"


def _not_found(target: str, err: CommandError) -> NoReturn:
    """Exits 2 for a TARGET that is no folder here: the cluster has no such study, cannot be asked,
    or the study cannot be drawn."""
    if isinstance(err, NoSuchStudy):
        fail(f"{target}: no such study folder, nor HPOStudy in namespace {err.namespace}")
    if isinstance(err, NotAsked):
        fail(f"{target}: no such study folder, and {err}")
    fail(f"{target}: {err}")
    raise AssertionError("unreachable")


# The operator's own commands: `hpo operator`, `hpo crds`.
from .kube.commands import register as _register_kube_commands  # noqa: E402

_register_kube_commands(main)
