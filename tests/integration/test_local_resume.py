"""`hpo run --resume`: studies of the fake trainer killed with SIGKILL at moments drawn from a seeded
generator, in every phase (the first trial timing one training, trials running, just after a
verdict, near the deadline, the final training), and resumed each time until they finish.

Half the kills of one study also kill the watchdog and every trial process at once, as a machine
restart would: study.json then still says Running and its last write is all that is known.
After each kill the ended trials are noted; the finished study must hold every trial index once,
each noted trial's reports and verdict unchanged, every report its trials wrote, and it must have
finished inside its budget (time counting only while `hpo run` ran). Real processes: run under the
shared lock (tests/README.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hpo_operator import contain
from hpo_operator.local.document import StudyFile
from hpo_operator.local.resume import interrupted
from tests.fixtures import FAKE_TRAINER
from tests.support.hpo_cli import HPO, REPO, environment

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(not contain.has_proc(), reason="a machine restart is simulated from /proc (Linux)"),
]

SEED = 20261206
ENDED = {"Completed", "Pruned", "Failed", "Stopped"}


@dataclass(frozen=True)
class Case:
    name: str
    config: str  # the hpo_config.yaml
    flags: tuple[str, ...]
    phases: tuple[str, ...]  # the kill points, in order; one that does not come is skipped
    restart: bool = False  # half the kills (alternately) are machine restarts
    final_training: bool = False


STOP = (
    "metric: score\nmaximum_resource: 6\nreduction_factor: 2\n"
    "hp_space:\n  x: {param_type: uniform, range: [0.0, 1.0]}\n"
)
PROMOTE = STOP.replace("reduction_factor: 2\n", "reduction_factor: 2\nasha: {variant: promote}\n")
# R beyond what the budget lets any trial reach: the final training trains the best on to R.
PROMOTE_LONG = PROMOTE.replace("maximum_resource: 6", "maximum_resource: 40")

CASES = (
    Case(
        "stop-measured",
        STOP,
        ("--time-ratio", "7"),
        ("timing", "running", "verdict", "running", "verdict", "near_end"),
    ),
    Case(
        "stop-restarts",
        STOP,
        ("--budget", "9s"),
        ("running", "verdict", "running", "verdict", "running", "near_end"),
        restart=True,
    ),
    Case(
        "promote-measured",
        PROMOTE,
        ("--time-ratio", "7"),
        ("timing", "running", "verdict", "near_end", "running"),
    ),
    Case(
        "promote-final",
        PROMOTE_LONG,
        ("--budget", "5s", "--final-training"),
        ("running", "verdict", "near_end", "final", "final", "final"),
        final_training=True,
    ),
)


@dataclass
class Kills:
    done: list[str] = field(default_factory=list)


def read(out: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((out / "study.json").read_text())
    except FileNotFoundError:
        return None
    assert isinstance(doc, dict)  # never half a file: every write is atomic
    return doc


def phase_reached(phase: str, start: dict[str, Any] | None) -> Callable[[dict[str, Any]], bool]:
    """When a kill point's phase has come, from study.json (``start``: as the session began)."""

    def verdicts(doc: dict[str, Any]) -> int:
        return sum(1 for t in doc["trials"] if t["status"] in ("Pruned", "Paused", "Completed"))

    before = verdicts(start) if start else 0

    def reached(doc: dict[str, Any]) -> bool:
        running = [t for t in doc["trials"] if t["status"] == "Running"]
        if phase == "timing":
            return doc["deadline"] is None and any(t["index"] == 0 for t in running)
        if phase == "running":
            return bool(running) and doc["deadline"] is not None
        if phase == "verdict":  # just after a trial was pruned, paused or completed
            return verdicts(doc) > before
        if phase == "near_end":
            seconds = doc["budget"]["seconds"]
            return seconds is not None and doc["budget"]["usedSeconds"] >= 0.8 * seconds
        if phase == "final":
            return any(t["final"] for t in running)
        raise AssertionError(phase)

    return reached


def kill_everything(proc: subprocess.Popen[bytes], doc: dict[str, Any]) -> None:
    """A machine restart: the runner, its watchdog and every trial process end at once."""
    proc.kill()
    runner = doc["runner"] or {}
    if runner.get("watchdogPid"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(runner["watchdogPid"], signal.SIGKILL)
    token = runner["marker"].encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if token in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                    os.kill(int(entry), signal.SIGKILL)
            except OSError:
                pass


def session(
    args: list[str], out: Path, phase: str | None, delay: float, restart: bool, kills: Kills
) -> int | None:
    """Runs `hpo run` until it ends, or kills it once ``phase`` has come and ``delay`` passed:
    the exit status, or None when killed."""
    start = read(out)
    env = environment(FAKE_EPOCH_SECONDS="0.12")
    proc = subprocess.Popen(
        [*HPO, *args], env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        if phase is not None:
            reached = phase_reached(phase, start)
            until = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < until:
                doc = read(out)
                # The session's own runner record: a doc still showing the previous session is no sign.
                if doc and doc["runner"] and doc["runner"]["pid"] == proc.pid and reached(doc):
                    time.sleep(delay)
                    if proc.poll() is not None:
                        break
                    if restart:
                        kill_everything(proc, doc)
                    else:
                        proc.kill()
                    proc.wait(timeout=10)
                    kills.done.append(f"{phase}{' (restart)' if restart else ''}")
                    return None
                time.sleep(0.02)
        _, err = proc.communicate(timeout=90)
        assert proc.returncode in (0, 1), err.decode()[-2000:]
        return proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_until_settled(out: Path, restart: bool) -> dict[str, Any]:
    """After a kill: the watchdog's mark (a plain SIGKILL), and no process of the study left."""
    deadline = time.monotonic() + 20
    while True:
        doc = read(out)
        assert doc is not None
        marker = (doc["runner"] or {}).get("marker", "").encode()
        left = [
            e
            for e in os.listdir("/proc")
            if e.isdigit() and _carries(e, marker) and contain.process_alive(int(e))
        ]
        if (restart or doc["state"] != "Running") and not left:
            return doc
        assert time.monotonic() < deadline, f"the study did not settle: {doc['state']}, processes {left}"
        time.sleep(0.05)


def _carries(pid: str, marker: bytes) -> bool:
    try:
        return bool(marker) and marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def file_reports(out: Path, name: str) -> set[tuple[int, float]]:
    keys = set()
    path = out / "trials" / name / "reports.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # half a line a killed trial left: refused, kept as a line
        keys.add((r["seq"], r["time"]))
    return keys


def test_studies_killed_at_random_moments_resume_to_a_complete_result(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    kills = Kills()
    for case in CASES:
        out = tmp_path / case.name
        config = tmp_path / f"{case.name}.yaml"
        config.write_text(case.config)
        first = ["run", str(config), *case.flags, "--cpu-slots", "2", "--poll", "0.05", "--grace", "0.3",
                 "--out", str(out), "--", sys.executable, str(FAKE_TRAINER)]  # fmt: skip
        noted: dict[int, dict[str, Any]] = {}  # ended trials as recorded after a kill
        code = None
        for k, phase in enumerate((*case.phases, None)):
            restart = case.restart and k % 2 == 1
            args = first if k == 0 else ["run", "--resume", str(out)]
            code = session(args, out, phase, rng.uniform(0.0, 0.4), restart, kills)
            if code is not None:
                break  # finished before that phase came: the study is done
            doc = wait_until_settled(out, restart)
            StudyFile.model_validate(doc)
            for t in StudyFile.model_validate(doc).trials:
                if t.status in ENDED and not interrupted(t):
                    noted.setdefault(t.index, {"status": t.status, "reports": t.reports})
        assert code == 0, f"{case.name}: the last session exited {code}"
        final = read(out)
        assert final is not None
        doc = StudyFile.model_validate(final)
        assert doc.state == "Succeeded", (case.name, doc.reason)
        # Every index once, none lost.
        assert [t.index for t in doc.trials] == list(range(len(doc.trials))), case.name
        by_index = {t.index: t for t in doc.trials}
        for index, was in noted.items():
            now = by_index[index]
            assert (now.status, now.reports) == (was["status"], was["reports"]), (case.name, now.name)
        for t in doc.trials:
            # Every report a trial wrote is counted, kept from an interrupted run, or refused with why.
            kept = {(r["seq"], r["time"]) for r in [*t.reports, *t.discarded_reports]}
            kept |= {(r["report"]["seq"], r["report"]["time"]) for r in t.refused if r.get("report")}
            lines = sum(1 for r in t.refused if "line" in r)
            assert len(file_reports(out, t.name) - kept) <= lines, (case.name, t.name)
            assert t.status not in ("Running", "Pending"), (case.name, t.name)
        # Time counts only while hpo run ran: the sessions add up to the time used, inside the budget.
        sessions = [s.ended_at - s.started_at for s in doc.sessions if s.ended_at is not None]
        assert len(sessions) == len(doc.sessions) >= 2, case.name
        assert doc.budget.seconds is not None
        assert sum(sessions) == pytest.approx(doc.budget.used_seconds, abs=0.05)
        if not case.final_training:
            assert doc.budget.used_seconds <= doc.budget.seconds, case.name
            assert doc.budget.finished_inside_seconds is not None and doc.budget.finished_inside_seconds > 0
        else:  # the final training may run past the HPO deadline; every HPO trial ended before it
            assert doc.deadline is not None
            assert all(
                t.ended_at is not None and t.ended_at <= doc.deadline for t in doc.trials if not t.final
            )
        assert any(t.interruptions for t in doc.trials), case.name
    print(f"{len(kills.done)} kills: {kills.done}")  # shown with pytest -s
    assert len(kills.done) >= 20, kills.done
    phases = {k.split(" ")[0] for k in kills.done}
    assert {"timing", "running", "verdict", "near_end", "final"} <= phases, kills.done


def test_a_finished_study_extended_with_more_budget_runs_new_trials_with_what_it_learnt(
    tmp_path: Path,
) -> None:
    out = tmp_path / "extended"
    config = tmp_path / "hpo_config.yaml"
    config.write_text(STOP)
    first = ["run", str(config), "--budget", "5s", "--cpu-slots", "2", "--poll", "0.05", "--grace", "0.3",
             "--out", str(out), "--", sys.executable, str(FAKE_TRAINER)]  # fmt: skip
    assert session(first, out, None, 0.0, False, Kills()) == 0
    before = StudyFile.model_validate(read(out))
    assert before.state == "Succeeded" and before.best is not None
    # The same config may be given; the budget grows by 4 s.
    again = ["run", "--resume", str(out), str(config), "--budget", "+4s"]
    assert session(again, out, None, 0.0, False, Kills()) == 0
    after = StudyFile.model_validate(read(out))
    assert after.state == "Succeeded"
    assert after.budget.seconds == pytest.approx(before.budget.seconds + 4.0, abs=1e-3)
    assert after.budget.used_seconds <= after.budget.seconds
    assert len(after.sessions) == 2
    # The earlier trials as they were, new ones after them, each index once.
    assert [t.model_dump() for t in after.trials[: len(before.trials)]] == [
        t.model_dump() for t in before.trials
    ]
    assert len(after.trials) > len(before.trials)
    assert [t.index for t in after.trials] == list(range(len(after.trials)))
    # The best moves only to something better (mode max).
    assert after.best is not None and after.best.value is not None and before.best.value is not None
    assert after.best.value >= before.best.value
    if after.best.index != before.best.index:
        assert after.best.index >= len(before.trials) and after.best.value > before.best.value
