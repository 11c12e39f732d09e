"""The trial's command line: hyper-parameters substituted into it, and the metrics collector wrapped
around it. Pure functions, shared by `hpo run` (local/runner.py) and the operator (kube/builders.py).

``${name}`` in an argument is the value of the hyper-parameter ``name`` (a key of hp_space, dotted
names included: ``${learning_parameters.learning_rate}``), written as it was sampled: a float as its
shortest repr (0.3, 1e-05), an int as an int, a string as itself, any other choice as compact JSON
(true, null, [1,2]). Only names of the space are substituted; any other ``${...}`` is an error, so
a misspelt name never reaches a trainer as literal text. ``$${`` is a literal ``${`` (for a shell's
``${HOME}`` in ``sh -c '...'``); every other ``$`` is left alone, so ``$HOME`` reaches a shell as is.

``$(HPO_TRIAL)``, ``$(HPO_CHECKPOINT_DIR)`` and the other variables of the trial contract: in the
cluster Kubernetes expands ``$(VAR)`` in a container's command and args itself; `hpo run` expands
the trial contract's variables the same way, so one command line works in both.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from .config import MetricsCollector

# Leftmost first: the escape, a reference, a reference left open, and (hpo run only) $(HPO_...).
_TOKEN = re.compile(r"\$\$\{|\$\{([^}]*)\}|(\$\{)|\$\((HPO_[A-Z0-9_]+)\)")
COLLECTOR_MODULE = "hpo_trial.collect"
# The interpreter a trial image runs the collector with: python3 is in every image with Python 3
# (Debian's and Ubuntu's have no `python` without python-is-python3).
IMAGE_PYTHON = "python3"
# Kubernetes' default terminationMessagePath: where the collector leaves why a trial reported nothing.
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
_NAMES_SHOWN = 10


def format_value(value: Any) -> str:
    """A hyper-parameter's value as a command-line argument."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not isinstance(value, bool):
        return repr(value)  # the shortest text that reads back as the same float
    return json.dumps(value, separators=(",", ":"))


def _names_text(names: Collection[str]) -> str:
    shown = sorted(names)[:_NAMES_SHOWN]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def reference_problems(arg: str, names: Collection[str], where: str) -> list[str]:
    """Why ``arg`` cannot be substituted from a space with parameters ``names``: unknown names and a
    ``${`` left open, each naming ``where`` the argument is."""
    problems: list[str] = []
    for match in _TOKEN.finditer(arg):
        name = match.group(1)
        if match.group(2) is not None:
            problems.append(f"{where}: '${{' without its closing '}}' ({arg!r}); '$${{' is a literal '${{'")
        elif name is not None and name not in names:
            problems.append(
                f"{where}: ${{{name}}} is not a hyper-parameter (hp_space: {_names_text(names)}); "
                "'$${' is a literal '${'"
            )
    return problems


def command_problems(
    argv: Sequence[str], names: Collection[str], what: str = "the trial command"
) -> list[str]:
    """Problems of every argument of a trial command (`hpo run`, `hpo manifest --command`)."""
    problems: list[str] = []
    for i, arg in enumerate(argv):
        problems += reference_problems(arg, names, f"{what}, argument {i + 1}")
    return problems


def template_problems(spec: Mapping[str, Any]) -> list[str]:
    """Problems of an HPOStudy spec's trial command lines: each ``${name}`` in the containers'
    command and args must name a parameter of spec.hpSpace, and a metrics collector needs a command
    in the first container to wrap (an image's entrypoint cannot be read from the spec)."""
    names = set((spec.get("hpSpace") or {}).keys()) if isinstance(spec.get("hpSpace"), Mapping) else set()
    template = spec.get("trialTemplate")
    pod = template.get("spec") if isinstance(template, Mapping) else None
    containers = pod.get("containers") if isinstance(pod, Mapping) else None
    if not isinstance(containers, list):
        containers = []
    problems: list[str] = []
    for i, container in enumerate(containers):
        if not isinstance(container, Mapping):
            continue
        for key in ("command", "args"):
            items = container.get(key)
            if not isinstance(items, list):
                continue
            for j, arg in enumerate(items):
                if isinstance(arg, str):
                    where = f"spec.trialTemplate.spec.containers[{i}].{key}[{j}]"
                    problems += reference_problems(arg, names, where)
    if spec.get("metricsCollector") is not None:
        first = containers[0] if containers and isinstance(containers[0], Mapping) else {}
        if not first.get("command"):
            problems.append(
                "spec.metricsCollector: the first container of spec.trialTemplate needs a command for the "
                "collector to wrap (an image's entrypoint cannot be read from the spec)"
            )
    return problems


def substitute(
    arg: str, params: Mapping[str, Any], environ: Mapping[str, str] | None = None, *, kube: bool = False
) -> str:
    """``arg`` with each ``${name}`` replaced by the value of ``params[name]`` and ``$${`` by ``${``.

    ``environ`` (`hpo run`): ``$(HPO_...)`` is replaced by its value there, as Kubernetes does.
    ``kube``: values go into a container's command, whose ``$`` Kubernetes reads as its own
    (``$$`` and ``$(VAR)``), so each ``$`` of a value is written ``$$``. A reference to a name not
    in ``params`` raises KeyError (reference_problems finds them first).
    """

    def replace(match: re.Match[str]) -> str:
        text = match.group(0)
        if text == "$${":
            return "${"
        if match.group(1) is not None:
            value = format_value(params[match.group(1)])
            return value.replace("$", "$$") if kube else value
        variable = match.group(3)
        if variable is not None and environ is not None and not kube and variable in environ:
            return environ[variable]
        return text

    return _TOKEN.sub(replace, arg)


def collector_args(collector: MetricsCollector) -> list[str]:
    """The options of ``python -m hpo_trial.collect`` for ``collector``."""
    args = ["--kind", collector.kind]
    for flag, value in (
        ("--pattern", collector.pattern),
        ("--path", collector.path),
        ("--format", collector.format),
        ("--resource-key", collector.resource_key),
    ):
        if value is not None:
            args += [flag, value]
    if collector.resource_offset:
        args += ["--resource-offset", repr(collector.resource_offset)]
    return args


def wrap(
    command: Sequence[str],
    collector: MetricsCollector | None,
    python: str,
    termination_log: str | None = None,
) -> list[str]:
    """``command`` run by the collector (``python -m hpo_trial.collect OPTIONS -- command``), or
    ``command`` itself without one."""
    if collector is None:
        return list(command)
    extra = [] if termination_log is None else ["--termination-log", termination_log]
    return [python, "-m", COLLECTOR_MODULE, *collector_args(collector), *extra, "--", *command]


def kube_literal(arg: str) -> str:
    """``arg`` as Kubernetes passes it on unchanged: its ``$(VAR)`` expansion reads ``$$`` as ``$``."""
    return arg.replace("$", "$$")


def describe_collector(collector: MetricsCollector, metric: str) -> str:
    """What the collector looks for, for a trial that reported nothing."""
    keys = (
        f"{collector.resource_key}"
        if collector.resource_key
        else ("the event's step" if collector.kind == "tensorboard" else "epoch (or step)")
    )
    if collector.kind == "stdout":
        if collector.pattern is not None:
            return f"output lines matching {collector.pattern!r} with {metric} and {keys}"
        return f"output lines with {metric}=<number> (or {metric}: <number>) and {keys}"
    if collector.kind == "file":
        return f"records of {collector.path} with {metric} and {keys}"
    return f"scalars tagged {metric} in the event files under {collector.path}, at {keys}"
