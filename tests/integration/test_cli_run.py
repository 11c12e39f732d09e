"""`hpo run`, `hpo status` and `hpo plot` through the real entry point, with real trials."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import FAKE_TRAINER
from tests.support.hpo_cli import HPO, REPO, environment, hpo, hpo_here, write_fake_config

DEMO_CONFIG = REPO / "examples" / "demo" / "hpo_config.yaml"

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def fake_config(tmp_path: Path) -> Path:
    return write_fake_config(tmp_path)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def read_study(out: Path) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = json.loads((out / "study.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return doc


def delivered(trial: dict[str, Any]) -> list[dict[str, Any]]:
    """A trial's reports in study.json: those that count, then those refused for arriving after
    its verdict (a pruned or stopped trial's last epochs), in the order they were written."""
    late = [r for r in trial["refused"] if r["reason"].startswith("arrived after")]
    assert trial["refusedReports"] == len(late), trial["refused"]
    return [*trial["reports"], *(r["report"] for r in late)]


def test_hpo_run_writes_complete_results_and_prints_the_best(tmp_path: Path, fake_config: Path) -> None:
    out = tmp_path / "run"
    done = hpo(
        "run", str(fake_config), "--budget", "5s", "--grace", "1", "--cpu-slots", "2", "--out", str(out),
        "--name", "cli", "--", sys.executable, str(FAKE_TRAINER),
        env=environment(FAKE_EPOCH_SECONDS="0.1"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    doc = read_study(out)
    assert doc is not None
    best = json.loads((out / "best.json").read_text())
    assert best == {"study": "cli", **doc["best"]}
    # stdout: the best trial and its configuration.
    assert done.stdout.splitlines()[0].startswith(f"best trial {best['trial']}: score {best['value']}")
    assert f"  x: {best['hyperparameters']['x']}" in done.stdout
    # Plain log lines on stderr when it is not a terminal.
    assert "cli-0 started on CPU slot 0: x=0.5" in done.stderr
    assert "\x1b[" not in done.stderr

    assert doc["state"] == "Succeeded" and doc["name"] == "cli"
    assert doc["config"]["metric"] == "score" and doc["config"]["hpSpace"]["x"].startswith("uniform")
    assert doc["config"]["budget"]["deadline"] == 5.0
    assert doc["command"] == [sys.executable, str(FAKE_TRAINER)]
    assert [s["gpu"] for s in doc["slots"]] == [None, None]
    assert doc["plan"]["rungs"] == [1, 2] and doc["plan"]["budgetSeconds"] == 5.0
    assert doc["deadline"] == pytest.approx(doc["startedAt"] + 5.0, abs=1e-3)
    assert 0 < doc["budget"]["finishedInsideSeconds"] < 5
    assert doc["counts"]["total"] == len(doc["trials"]) >= 3
    for t in doc["trials"]:
        assert t["status"] in ("Completed", "Pruned", "Stopped")
        assert t["exitCode"] is not None and t["endedAt"] <= doc["deadline"]
        assert (out / t["log"]).is_file()
        lines = (out / "trials" / t["name"] / "reports.jsonl").read_text().splitlines()
        assert [r["seq"] for r in delivered(t)] == [json.loads(line)["seq"] for line in lines]

    status = hpo_here("status", str(out))
    assert status.exit_code == 0, status.output
    assert "study cli: Succeeded" in status.stdout
    for t in doc["trials"]:
        assert any(line.startswith(t["name"]) and t["status"] in line for line in status.stdout.splitlines())
    assert f"{best['trial']} *" in status.stdout  # the best is starred

    # The same file as a runner killed with its watchdog would leave it: the runner's record says
    # it is gone, and no "is it still running?" hint contradicts that.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = {**doc, "state": "Running", "finishedAt": None, "updatedAt": doc["updatedAt"] - 600}
    stale["runner"] = {**doc["runner"], "pid": gone.pid, "startTime": None}
    (out / "study.json").write_text(json.dumps(stale))
    status = hpo_here("status", str(out))
    assert f"Interrupted (its hpo run (pid {gone.pid}) is no longer running" in status.stdout, status.stdout
    assert "still running?" not in status.stdout
    (out / "study.json").write_text(json.dumps(doc))

    png = tmp_path / "curves.png"
    plot = hpo_here("plot", str(out), "-o", str(png))
    assert plot.exit_code == 0, plot.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_stops_its_trials_and_keeps_every_report(
    tmp_path: Path, fake_config: Path, signum: signal.Signals
) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [*HPO, "run", str(fake_config), "--budget", "60s", "--grace", "2", "--cpu-slots", "2",
         "--out", str(out), "--", sys.executable, str(FAKE_TRAINER)],
        env=environment(FAKE_EPOCH_SECONDS="0.3"),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:

        def two_running_with_reports() -> bool:
            doc = read_study(out)
            if doc is None:
                return False
            running = [t for t in doc["trials"] if t["status"] == "Running"]
            return len(running) == 2 and sum(len(t["reports"]) for t in doc["trials"]) >= 3

        wait_for(two_running_with_reports, 30, "two running trials and three reports in study.json")
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "interrupted: stopping 2 running trial(s)" in stderr
    doc = read_study(out)
    assert doc is not None
    assert doc["state"] == "Interrupted" and doc["finishedAt"] is not None
    stopped = [t for t in doc["trials"] if t["status"] == "Stopped"]
    assert len(stopped) == 2
    for t in doc["trials"]:
        assert t["exitCode"] is not None, t["name"]  # every trial process ended and was reaped
        assert t["reason"] in ("interrupted", "pruned at rung 0", "pruned at rung 1", None)
        with pytest.raises(ProcessLookupError):
            os.kill(t["pid"], 0)
        # Every report a trial wrote, even while it was being stopped, is in study.json (those
        # sent after it was stopped as refused: they do not count).
        written = [json.loads(line) for line in (out / "trials" / t["name"] / "reports.jsonl").open()]
        assert [r["seq"] for r in delivered(t)] == [r["seq"] for r in written]
        assert [r["value"] for r in delivered(t)] == [r["value"] for r in written]
    # What was learned is still summarised: the best so far, on stdout and in best.json.
    assert doc["best"] is not None
    assert json.loads((out / "best.json").read_text())["trial"] == doc["best"]["trial"]
    assert stdout.startswith(f"best trial {doc['best']['trial']}")


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("hpo_trial.train") is None,
    reason="needs torch and the reference trainer",
)
def test_the_reference_trainer_on_digits(tmp_path: Path) -> None:
    out = tmp_path / "run"
    bin_dir = str(Path(sys.executable).parent)
    env = environment(PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    # One epoch, a budget of two trainings as the first trial measures it: that trial fits, and
    # the time left after its report is too short for another.
    done = hpo(
        "run", str(DEMO_CONFIG), "--max-resource", "1", "--time-ratio", "2", "--grace", "1",
        "--out", str(out), "--", "python", "-m", "hpo_trial.train", "--dataset", "digits", "--model", "tiny",
        env=env, timeout=90,
    )  # fmt: skip
    doc = read_study(out)
    assert doc is not None, done.stderr
    assert done.returncode == 0, done.stderr
    first = doc["trials"][0]
    assert first["status"] == "Completed" and first["exitCode"] == 0
    report = first["reports"][0]
    assert report["resource"] == 1 and report["extra"]["val_accuracy"] == report["value"]
    assert 0.0 < doc["best"]["value"] <= 1.0
    assert doc["budget"]["finishedInsideSeconds"] > 0
    assert doc["best"]["trial"] == first["name"]
    assert doc["best"]["hyperparameters"] == first["params"]
    assert "learning_parameters.learning_rate" in first["params"]
