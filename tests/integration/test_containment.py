"""No process of a local study outlives it: trials whose children leave their process group and
ignore SIGTERM, a runner that is SIGKILLed, and a results folder that cannot be written.

Real processes throughout (tests/fixtures/scripted_trainer.py); what runs is read from /proc.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from hpo_operator import contain
from hpo_operator.config import BudgetSpec, config_from_mapping
from hpo_operator.local.runner import LocalRunner, RunOptions
from hpo_operator.local.slots import Slot
from hpo_operator.study import Study

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not contain.has_proc(), reason="containment is checked from /proc (Linux)"),
]

REPO = Path(__file__).resolve().parents[2]
TRAINER = REPO / "tests" / "fixtures" / "scripted_trainer.py"
HPO = [sys.executable, "-m", "hpo_operator"]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def running(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie runs nothing; its parent reaps it)."""
    return contain.process_alive(pid)


def marked(token_marker: str) -> list[int]:
    """Processes that carry the study's marker in their environment."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if token_marker.encode() in environ and running(int(entry)):
            found.append(int(entry))
    return found


def escaped(out: Path) -> list[int]:
    """The pids the trials' escaping processes wrote."""
    return [int(p.name) for p in out.glob("trials/*/checkpoints/escaped/*") if p.name.isdigit()]


def config(max_resource: int = 4, eta: int = 2, deadline: float = 6.0) -> Any:
    base = config_from_mapping(
        {
            "metric": "score",
            "mode": "max",
            "maximum_resource": max_resource,
            "reduction_factor": eta,
            "hp_space": {"x": {"param_type": "uniform", "range": [0.0, 1.0]}},
        }
    )
    return replace(base, budget=BudgetSpec(deadline=deadline))


def script(**steps: list[Any]) -> str:
    """SCRIPT_REPORTS from keyword arguments: t0=[...] for trial 0, other=[...] for the rest."""
    return json.dumps({("*" if k == "other" else k.removeprefix("t")): v for k, v in steps.items()})


def runner(tmp_path: Path, cfg: Any, slots: int = 2, grace: float = 0.5) -> LocalRunner:
    options = RunOptions(
        name="contained",
        command=(sys.executable, str(TRAINER)),
        out_dir=tmp_path / "out",
        slots=tuple(Slot(i, None, 1) for i in range(slots)),
        grace=grace,
        poll=0.05,
        config_summary={"metric": "score"},
    )
    return LocalRunner(Study(cfg, slots), options)


def hpo_config(tmp_path: Path) -> Path:
    path = tmp_path / "hpo_config.yaml"
    path.write_text(
        "metric: score\nmaximum_resource: 4\nreduction_factor: 2\n"
        "hp_space:\n  x: {param_type: uniform, range: [0.0, 1.0]}\n"
    )
    return path


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HPO_", "SCRIPT_"))}
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env | extra


def test_processes_that_leave_their_trial_and_ignore_sigterm_end_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every trial starts a setsid() child, a double-forked daemon and a process with an empty
    # environment, all ignoring SIGTERM. Trial 0 completes; the others report once and wait, to be
    # pruned (ties go to the first) or stopped at the deadline.
    monkeypatch.setenv("SCRIPT_ESCAPE", "1")
    monkeypatch.setenv("SCRIPT_REPORTS", script(t0=[[1, 0.5], [2, 0.5], [4, 0.5]], other=[[1, 0.4], "hold"]))
    run = runner(tmp_path, config())
    seen: dict[str, list[int]] = {}
    members = run.contain.members

    def spy(trial: str) -> list[int]:  # what study.json's "processes" shows, kept for the checks
        found = members(trial)
        seen.setdefault(trial, [])
        seen[trial] += [pid for pid in found if pid not in seen[trial]]
        return found

    run.contain.members = spy  # type: ignore[method-assign]
    result = run.run()
    doc = result.document
    out = tmp_path / "out"
    pids = escaped(out)
    statuses = {t["status"] for t in doc["trials"]}
    assert {"Completed", "Pruned"} <= statuses, statuses
    for t in doc["trials"]:
        if t["reports"]:  # it started its three escaping processes before its first report
            assert len(list((out / "trials" / t["name"] / "checkpoints" / "escaped").iterdir())) == 3
    # The runner tracked them as the trials' processes while they ran...
    assert set(pids) <= {pid for found in seen.values() for pid in found}
    # ... and none is left once run() returned; nor anything else carrying the study's marker.
    wait_for(lambda: not any(running(pid) for pid in pids), 10, "the escaping processes to go")
    assert not marked(doc["runner"]["marker"])
    assert all(t["processes"] == [] for t in doc["trials"])
    assert not contain.set_child_subreaper(False), "the runner gave the subreaper role back"


def test_a_sigkilled_runner_leaves_no_process_and_its_study_says_interrupted(tmp_path: Path) -> None:
    out = tmp_path / "run"
    # Two trials that start their escaping processes and wait: nothing is pruned or ends.
    env = environment(SCRIPT_ESCAPE="1", SCRIPT_REPORTS=script(other=["hold"]))
    proc = subprocess.Popen(
        [*HPO, "run", str(hpo_config(tmp_path)), "--budget", "120s", "--cpu-slots", "2", "--out", str(out),
         "--poll", "0.05", "--", sys.executable, str(TRAINER)],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:

        def both_trials_tracked() -> bool:
            # study.json lists each trial's processes as the runner found them: every escaping
            # process is known (and told to the watchdog) before the runner dies.
            doc = json.loads((out / "study.json").read_text()) if (out / "study.json").exists() else None
            if doc is None or len(doc["trials"]) < 2:
                return False
            tracked = {pid for t in doc["trials"] for pid in t["processes"]}
            pids = escaped(out)
            return len(pids) == 6 and set(pids) <= tracked

        wait_for(both_trials_tracked, 30, "two trials and their six escaping processes in study.json")
        doc = json.loads((out / "study.json").read_text())
        trial_pids = [t["pid"] for t in doc["trials"]]
        watchdog = doc["runner"]["watchdogPid"]
        assert running(watchdog)
        proc.kill()
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    everything = [*trial_pids, *escaped(out)]
    wait_for(lambda: not any(running(pid) for pid in everything), 15, "every process of the study to go")
    assert not marked(doc["runner"]["marker"])

    def marked_interrupted() -> bool:
        return bool(json.loads((out / "study.json").read_text())["state"] == "Interrupted")

    wait_for(marked_interrupted, 15, "the watchdog to mark the study interrupted")
    wait_for(lambda: not running(watchdog), 15, "the watchdog to end")
    final = json.loads((out / "study.json").read_text())
    assert final["reason"] == contain.INTERRUPTED_REASON and final["finishedAt"] is not None
    assert [t["status"] for t in final["trials"]] == ["Stopped", "Stopped"]
    assert final["counts"]["stopped"] == 2 and final["counts"]["running"] == 0
    status = subprocess.run(
        [*HPO, "status", str(out)], env=environment(), cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert f"Interrupted ({contain.INTERRUPTED_REASON})" in status.stdout, status.stdout


def test_status_says_interrupted_when_the_runner_and_its_watchdog_are_gone(tmp_path: Path) -> None:
    # A study.json left at Running by a runner that no longer runs (the watchdog died too).
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    doc: dict[str, Any] = {"state": "Running", "runner": {"pid": gone.pid, "host": socket.gethostname()}}
    assert contain.runner_gone(doc) == f"its hpo run (pid {gone.pid}) is no longer running"
    alive: dict[str, Any] = {"state": "Running", "runner": {"pid": os.getpid(), "host": socket.gethostname()}}
    assert contain.runner_gone(alive) is None
    reused = {**alive, "runner": {**alive["runner"], "startTime": -1}}  # same pid, another process
    assert contain.runner_gone(reused) is not None
    assert contain.runner_gone({**doc, "state": "Succeeded"}) is None
    assert contain.runner_gone({**doc, "runner": {**doc["runner"], "host": "elsewhere"}}) is None


@pytest.mark.parametrize("kind", ["read-only", "full"])
def test_a_results_folder_that_cannot_be_written_exits_2_before_any_trial(tmp_path: Path, kind: str) -> None:
    if kind == "read-only":
        if not Path("/sys/kernel").is_dir():
            pytest.skip("needs /sys, which refuses new entries even to root")
        out, reason = Path("/sys/hpo-run-test"), "Operation not permitted"
        if os.geteuid() != 0:
            reason = "Permission denied"
    else:
        out, reason = tmp_path / "full", "No space left on device"
        out.mkdir()
        (out / ".study.json.tmp").symlink_to("/dev/full")  # every write there: ENOSPC
    started = tmp_path / "started"
    done = subprocess.run(
        [*HPO, "run", str(hpo_config(tmp_path)), "--budget", "60s", "--out", str(out), "--",
         sys.executable, "-c", f"open({str(started)!r}, 'w').close()"],
        env=environment(), cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert str(out) in done.stderr and reason in done.stderr, done.stderr
    assert not started.exists(), "no trial started"


def test_results_that_fail_mid_study_stop_it_cleanly_with_what_could_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCRIPT_REPORTS", script(other=[[1, 0.5], "hold"]))
    run = runner(tmp_path, config(deadline=60.0))
    out = tmp_path / "out"

    def break_the_folder() -> None:
        def one_report() -> bool:
            doc = json.loads((out / "study.json").read_text()) if (out / "study.json").exists() else None
            return doc is not None and any(t["reports"] for t in doc["trials"])

        wait_for(one_report, 30, "a report in study.json")
        # From now on the atomic write's temporary file cannot be created.
        wait_for(lambda: _make_dir(out / ".study.json.tmp"), 10, "the temporary file to be free")

    breaker = threading.Thread(target=break_the_folder)
    breaker.start()
    started = time.monotonic()
    result = run.run()
    breaker.join()
    assert time.monotonic() - started < 30, "stopped at once, not at the deadline"
    assert result.state == "Failed" and result.exit_code == 1
    assert result.results_error is not None and "study.json" in result.results_error
    assert "Is a directory" in result.results_error
    # The last write goes in place: study.json says how the study ended, and best.json is there.
    doc = json.loads((out / "study.json").read_text())
    assert doc["state"] == "Failed" and doc["reason"] == "the results cannot be written"
    assert doc["error"] == result.results_error
    statuses = [t["status"] for t in doc["trials"]]
    assert "Stopped" in statuses and set(statuses) <= {"Stopped", "Pruned"}, statuses  # a tie prunes
    assert json.loads((out / "best.json").read_text())["trial"] == doc["best"]["trial"]
    assert not any(running(t["pid"]) for t in doc["trials"])


def _make_dir(path: Path) -> bool:
    try:
        path.mkdir()
    except FileExistsError:
        return path.is_dir()
    return True


def test_the_watchdog_marks_a_running_study_interrupted_and_leaves_a_finished_one(tmp_path: Path) -> None:
    study = tmp_path / "study.json"
    doc = {
        "state": "Running",
        "startedAt": 100.0,
        "deadline": 200.0,
        "updatedAt": 130.0,
        # A resumed study: 20 s of an earlier session, then this one since 120.
        "sessions": [{"startedAt": 100.0, "endedAt": 120.0}, {"startedAt": 125.0, "endedAt": None}],
        "budget": {"usedSeconds": 25.0, "finishedInsideSeconds": None},
        "counts": {"running": 1, "completed": 1, "stopped": 0, "total": 2},
        "trials": [{"status": "Running"}, {"status": "Completed"}],
    }
    study.write_text(json.dumps(doc))
    assert contain.mark_interrupted(study, 4242, 150.0)
    marked_doc = json.loads(study.read_text())
    assert marked_doc["state"] == "Interrupted" and "pid 4242" in marked_doc["message"]
    assert [t["status"] for t in marked_doc["trials"]] == ["Stopped", "Completed"]
    assert marked_doc["counts"] == {"running": 0, "completed": 1, "stopped": 1, "total": 2}
    # Time used counts on from the last write (130): 25 + 20.
    assert marked_doc["budget"] == {"usedSeconds": 45.0, "finishedInsideSeconds": 50.0}
    assert marked_doc["sessions"][-1] == {"startedAt": 125.0, "endedAt": 150.0}
    assert not contain.mark_interrupted(study, 4242, 160.0)  # no longer Running: left alone
    assert json.loads(study.read_text()) == marked_doc


def test_a_process_name_with_spaces_and_parentheses_is_read_right() -> None:
    # /proc/PID/stat's second field is the command name in parentheses, which may hold both.
    name = "a) b (c"
    code = f"import sys\nopen('/proc/self/comm', 'w').write({name!r})\nprint(flush=True)\nsys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        child.stdout.readline()  # renamed
        assert Path(f"/proc/{child.pid}/comm").read_text().strip() == name
        proc = contain.read_proc(child.pid)
        assert proc is not None and proc.ppid == os.getpid() and not proc.zombie
        assert proc.start == contain.start_time(child.pid) and proc.start > 0
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()
    assert contain.read_proc(child.pid) is None


@pytest.mark.parametrize("done", [False, True])
def test_the_watchdog_kills_what_it_was_told_of_and_marks_only_a_runner_that_did_not_finish(
    tmp_path: Path, done: bool
) -> None:
    # A process without the marker (its environment cleared), known to the watchdog only because
    # the runner told it; a stale line names a pid with another start time, which must be spared.
    child = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(60)"], env={})
    try:
        start = contain.start_time(child.pid)
        study = tmp_path / "study.json"
        study.write_text(json.dumps({"state": "Running", "trials": []}))
        lines = [f"process {child.pid} {start}\n".encode(), f"process {os.getpid()} 1\n".encode()]
        contain.watch("no-such-token", 4242, study, [*lines, *([b"done\n"] if done else [])])
        assert child.wait(timeout=10) == -9
        assert json.loads(study.read_text())["state"] == ("Running" if done else "Interrupted")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
