"""Hostile files through the real command line: `hpo validate`, `hpo manifest`, `hpo sample`, `hpo plan`
and `hpo run`, each in a process with an address-space limit and a timeout (billion laughs, deep
nesting, non-UTF-8, huge numbers, 100,000 parameters, a 10 MB choice list, dates, !!binary, .nan,
overflowing ranges): exit 2, one line of reason (validate: one line a problem), no traceback.

tests/unit/test_fuzz_inputs.py generates configs and specs in this process.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hpo_operator.config import (
    MAX_PROBLEM_CHARS,
    MAX_PROBLEMS,
)

JSON = dict[str, Any]

# --- hostile files through the real command line --------------------------------------------------

MEMORY_LIMIT = 512 * 2**20  # address space: the commands need ~100 MiB; the billion laughs took 3 GB
TIME_LIMIT = 20.0  # seconds per command; each takes well under one here


def _laughs(levels: int) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _uniform(name: str = "x", low: str = "0", high: str = "1") -> str:
    return f"hp_space:\n  {name}: {{param_type: uniform, range: [{low}, {high}]}}\n"


def _choice(values: str) -> str:
    return f"hp_space:\n  x: {{param_type: choice, range: [{values}]}}\n"


HOSTILE: dict[str, str | bytes] = {
    "billion-laughs-space": _laughs(10) + "hp_space: *l9\n",
    "billion-laughs-metric": _laughs(10) + "metric: *l9\n" + _uniform(),
    "deep-flow": _choice("[" * 3000 + "]" * 3000),
    "deep-block": "- " * 3000 + "x\n",
    "non-utf8": _choice("caf\xe9").encode("latin-1"),
    "utf16": _uniform().encode("utf-16"),
    "huge-int": _uniform(high="1" + "0" * 5000),
    "huge-float": _uniform(high="1" + "0" * 5000 + ".0"),
    "huge-seed": "seed: " + "9" * 5000 + "\n" + _uniform(),
    "params-100k": "hp_space:\n"
    + "".join(f"  p{i}: {{param_type: uniform, range: [0, 1]}}\n" for i in range(100_000)),
    "params-100k-compact": "hp_space: {"
    + ",".join(f"p{i}: {{param_type: choice, range: [1]}}" for i in range(100_000))
    + "}\n",
    "choices-10mb": _choice(",".join(str(i) for i in range(1_500_000))),
    "choices-3mb": _choice(",".join(str(i) for i in range(500_000))),
    "string-3mb": _choice("a" * 3_000_000),
    "date-choice": _choice("2020-01-01, 1"),
    "impossible-date": _choice("2020-13-45"),
    "binary-choice": _choice("!!binary aGVsbG8=, 1"),
    "set-choice": _choice("!!set {a, b}"),
    "nan-choice": _choice(".nan, 1"),
    "inf-bound": _uniform(high=".inf"),
    "overflow-range": _uniform(low="-1.0e+308", high="1.0e+308"),
    "near-max-range": _uniform(low="1.0e+308", high="1.7e+308"),
    "tiny-step": "hp_space:\n  x: {param_type: quniform, range: [0, 1.0e+300, 1.0e-300]}\n",
    "fine-grid": "hp_space:\n  x: {param_type: quniform, range: [0, 1000000, 1.0e-9]}\n",
    "huge-log": "hp_space:\n  x: {param_type: loguniform, range: [1.0e-300, 1.7976931348623157e+308]}\n",
    "tiny-resource": "minimum_resource: 1.0e-300\n" + _uniform(),
    "huge-resource": "maximum_resource: 1.0e+300\n" + _uniform(),
    "huge-eta": "reduction_factor: " + "9" * 50 + "\n" + _uniform(),
    "nul-metric": 'metric: "a\\0b"\n' + _uniform(),
    "python-tag": "hp_space: !!python/object/apply:os.system [echo]\n",
    "duplicate-key": _uniform() + "  x: {param_type: uniform, range: [0, 2]}\n",
    "both-type-keys": "hp_space:\n  x: {param_type: uniform, paramType: uniform, range: [0, 1]}\n",
    "not-a-mapping": "- 1\n- 2\n",
    "empty": "",
    "two-documents": _uniform() + "---\n" + _uniform(),
    "long-name": _uniform(name="n" * 3_000_000),
    "control-characters-in-name": _uniform(name='"a\\nb\\r\\u001b[31m"', low="1", high="0"),
    "control-characters-in-values": 'metric: "x\\ny"\n' + _choice('"a\\nb", .nan'),
}


def commands(path: Path, out: Path) -> list[list[str]]:
    """Every command that reads a config; `hpo run` would start `true` were the file accepted."""
    return [
        ["validate", str(path)],
        ["sample", str(path), "-n", "3"],
        ["manifest", str(path), "--name", "s", "--image", "i"],
        ["plan", str(path), "--train-time", "10m"],
        ["run", str(path), "--budget", "10s", "--gpus", "0", "--out", str(out), "--", "true"],
    ]


# Runs each command through the `hpo` entry point in one process (one start instead of three); an
# exception that escapes a command ends it with a traceback, as it would end `hpo`.
DRIVER = """
import json, sys
from hpo_operator.cli import main
codes = []
for args in json.loads(sys.argv[1]):
    print("--- hpo " + args[0], file=sys.stderr, flush=True)
    try:
        main.main(args, prog_name="hpo")
    except SystemExit as stop:
        codes.append(stop.code)
    else:
        codes.append(0)
print(json.dumps(codes))
"""


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _hpo(*commands: list[str]) -> tuple[list[Any], list[str], str]:
    """Exit codes, each command's stderr, and stdout, of the commands run in one limited process."""
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(commands)],
        capture_output=True,
        text=True,
        timeout=TIME_LIMIT * len(commands),
        preexec_fn=_limited,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    *output, codes = result.stdout.splitlines() or [""]
    errors = result.stderr.split("--- hpo ")[1:]
    return json.loads(codes), [e.partition("\n")[2] for e in errors], "\n".join(output)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_file_exits_2_with_a_short_reason(tmp_path: Path, name: str) -> None:
    content = HOSTILE[name]
    path = tmp_path / "hpo_config.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    runs = commands(path, tmp_path / "out")
    codes, errors, output = _hpo(*runs)
    assert codes == [2] * len(runs), (codes, errors)
    assert output == "" and not (tmp_path / "out").exists()
    for command, error in zip(runs, errors, strict=True):
        assert error.startswith(("error: ", f"{path}: ")), error[:500]
        if command[0] != "validate":  # validate lists the problems, one a line
            assert error.count("\n") == 1, error[:2000]
        # Bounded: never the expanded document, the 3 MB string or the 5,000 digits.
        assert len(error) <= (MAX_PROBLEMS + 2) * (MAX_PROBLEM_CHARS + 8) + 2 * len(str(path)), len(error)


def test_the_bounds_of_the_limits_still_run(tmp_path: Path) -> None:
    """A file just inside every limit validates and samples quickly, within the same memory."""
    path = tmp_path / "hpo_config.yaml"
    choices = ", ".join(str(i) for i in range(90))
    path.write_text(
        "hp_space:\n"
        + "".join(f"  p{i}: {{param_type: choice, range: [{choices}]}}\n" for i in range(999))
        + "  q: {param_type: quniform, range: [-1000000000000000, 1000000000000000, 2000]}\n"
    )
    codes, errors, output = _hpo(["validate", str(path)], ["sample", str(path), "-n", "3"])
    assert codes == [0, 0], errors
    samples = output.splitlines()[-3:]
    assert all(len(json.loads(line)) == 1000 for line in samples)
