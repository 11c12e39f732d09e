"""The metrics collector (`python -m hpo_trial.collect`) around real commands: their output, exit status
and signals, and real Lightning, Hugging Face and TensorBoard loggers.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hpo_trial.collect import (
    Collector,
    Options,
    UsageError,
    parse_args,
)
from tests.cluster.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)


def test_stdout_reports_pass_the_output_through_and_keep_the_exit_status(tmp_path: Path) -> None:
    done, reports = collect(
        tmp_path, "--kind", "stdout", "--", sys.executable, str(PLAIN), "--x", "0.3", "--epochs", "3"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "training with x=0.3 for 3 epochs",
        "epoch=1 score=0.5 loss=0.5",
        "epoch=2 score=0.75 loss=0.25",
        "epoch=3 score=0.875 loss=0.125",
    ]
    assert "finished epoch 3" in done.stderr
    assert [(r["seq"], r["resource"], r["value"], r["extra"]) for r in reports] == [
        (0, 1, 0.5, {"loss": 0.5}),
        (1, 2, 0.75, {"loss": 0.25}),
        (2, 3, 0.875, {"loss": 0.125}),
    ]
    # Each report is stamped when its line was read: in order, an epoch apart.
    times = [r["time"] for r in reports]
    assert times == sorted(times) and times[2] - times[0] >= 0.09
    failing = "print('epoch=1 score=0.2'); import sys; sys.exit(3)"
    done, reports = collect(tmp_path, "--kind", "stdout", "--", sys.executable, "-c", failing)
    assert done.returncode == 3 and len(reports) == 4  # the same file: one more report


def test_a_printed_dict_as_hugging_face_logs_it(tmp_path: Path) -> None:
    done, reports = collect(
        tmp_path,
        "--kind",
        "stdout",
        "--",
        sys.executable,
        str(PLAIN),
        "--x",
        "0.3",
        "--epochs",
        "2",
        "--dict",
    )
    assert done.returncode == 0, done.stderr
    assert [(r["resource"], r["value"]) for r in reports] == [(1.0, 0.5), (2.0, 0.75)]


def test_a_lightning_csv_file(tmp_path: Path) -> None:
    done, reports = collect(
        tmp_path,
        "--kind", "file", "--path", "$(LOGS)/metrics.csv", "--resource-offset", "1", "--metric", "val_score",
        "--", sys.executable, str(PLAIN), "--x", "0.3", "--epochs", "3", "--log", "csv",
        "--log-dir", "run/logs",
        env={"LOGS": "run/logs"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [(r["resource"], r["value"], r["extra"]) for r in reports] == [
        (1.0, 0.5, {"step": 1}),
        (2.0, 0.75, {"step": 3}),
        (3.0, 0.875, {"step": 5}),
    ]


@pytest.mark.skipif(importlib.util.find_spec("lightning") is None, reason="lightning is not installed")
@pytest.mark.timeout(180)
def test_a_real_lightning_script_with_its_csv_logger(tmp_path: Path) -> None:
    done, reports = collect(
        tmp_path,
        "--kind", "file", "--path", "logs/*/metrics.csv", "--resource-offset", "1", "--metric", "val_acc",
        "--", sys.executable, str(LIGHTNING), "--lr", "0.1", "--epochs", "3", "--logger", "csv",
        "--log-dir", "logs",
        timeout=170,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["resource"] for r in reports] == [1.0, 2.0, 3.0], reports
    assert all(0.0 <= r["value"] <= 1.0 and "val_loss" in r["extra"] for r in reports), reports


@pytest.mark.skipif(importlib.util.find_spec("lightning") is None, reason="lightning is not installed")
@pytest.mark.timeout(180)
def test_a_real_lightning_script_with_its_tensorboard_logger(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    done, reports = collect(
        tmp_path,
        "--kind", "tensorboard", "--path", "logs", "--resource-key", "epoch", "--resource-offset", "1",
        "--metric", "val_acc",
        "--", sys.executable, str(LIGHTNING), "--lr", "0.1", "--epochs", "3", "--logger", "tensorboard",
        "--log-dir", "logs",
        timeout=170,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["resource"] for r in reports] == [1.0, 2.0, 3.0], reports


def test_tensorboard_event_files_of_torchs_summary_writer(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    pytest.importorskip("torch.utils.tensorboard")
    done, reports = collect(
        tmp_path,
        "--kind", "tensorboard", "--path", "tb",
        "--", sys.executable, str(PLAIN), "--x", "0.3", "--epochs", "3", "--log", "tensorboard",
        "--log-dir", "tb",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # float32 in the file, read back as the shortest text of that float32: the value logged.
    assert [(r["resource"], r["value"], r["extra"]) for r in reports] == [
        (1.0, 0.5, {"loss": 0.5}),
        (2.0, 0.75, {"loss": 0.25}),
        (3.0, 0.875, {"loss": 0.125}),
    ]


def test_nothing_reported_says_what_it_looked_for_and_the_last_lines(tmp_path: Path) -> None:
    termination = tmp_path / "termination-log"
    termination.write_text("")
    done, reports = collect(
        tmp_path, "--kind", "stdout", "--termination-log", str(termination),
        "--", sys.executable, str(PLAIN), "--x", "0.3", "--epochs", "2", "--log", "none",
    )  # fmt: skip
    assert done.returncode == 0 and reports == []
    message = termination.read_text()
    assert "reported nothing: looked for score with epoch or step in output lines" in message
    assert "finished epoch 2" in message.splitlines()[-1]
    assert "hpo_trial.collect: the command exited 0 and reported nothing" in done.stderr
    # Not a Kubernetes container: no termination log file is created.
    done, _ = collect(tmp_path, "--kind", "stdout", "--termination-log", str(tmp_path / "none"), "--", "true")
    assert done.returncode == 0 and not (tmp_path / "none").exists()


def test_usage_errors_and_a_missing_command(tmp_path: Path) -> None:
    done, _ = collect(tmp_path, "--kind", "file", "--", "true")
    assert done.returncode == 2 and "--kind file needs --path" in done.stderr
    done, _ = collect(tmp_path, "--kind", "stdout", "true")
    assert done.returncode == 2 and "usage" in done.stderr
    done, _ = collect(tmp_path, "--kind", "stdout", "--pattern", "(", "--", "true")
    assert done.returncode == 2 and "not a Python regular expression" in done.stderr
    done, _ = collect(tmp_path, "--kind", "stdout", "--", "no-such-trainer-here")
    assert done.returncode == 127 and "cannot start 'no-such-trainer-here'" in done.stderr
    with pytest.raises(UsageError, match="no metric"):
        parse_args(["--kind", "stdout", "--", "true"], environ={})


def test_sigterm_is_forwarded_and_the_collector_ends_as_the_command_did(tmp_path: Path) -> None:
    term_file = tmp_path / "term"
    environ = {**os.environ, "HPO_METRIC": "score", "HPO_REPORT_FILE": str(tmp_path / "r.jsonl")}
    # The collector alone gets SIGTERM (as Kubernetes signals a container's first process): the
    # trainer hears it only through the collector.
    proc = subprocess.Popen(
        [*COLLECT, "--kind", "stdout", "--", sys.executable, str(PLAIN), "--x", "0.3", "--epochs", "1000",
         "--epoch-seconds", "0.05", "--term-file", str(term_file)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=environ, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith(b"training with")
    os.kill(proc.pid, signal.SIGTERM)
    sent = time.monotonic()
    assert proc.wait(timeout=10) == 0  # the trainer's handler exits 0
    assert time.monotonic() - sent < 2.0
    assert term_file.exists()
    proc.stdout.close()
    # A trainer killed by the signal: the collector ends by that signal too.
    proc = subprocess.Popen(
        [*COLLECT, "--kind", "stdout", "--", sys.executable, "-c",
         "import time; print('up', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, env=environ, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=10) == -signal.SIGTERM
    proc.stdout.close()


def test_the_command_dies_with_the_collector(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    proc = subprocess.Popen(
        [*COLLECT, "--kind", "stdout", "--metric", "m", "--", sys.executable, "-c", script],
        env={k: v for k, v in os.environ.items() if not k.startswith("HPO_")},
    )
    wait_for(lambda: pid_file.exists() and pid_file.read_text(), 10, 0.02, "the command's pid file")
    child = int(pid_file.read_text())
    proc.kill()
    proc.wait(10)

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        # A zombie until its new parent reaps it: gone as far as work goes.
        return Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"

    wait_for(gone, 10, 0.02, f"command {child} gone after its collector was killed")


def test_a_slow_api_does_not_hold_up_the_output(tmp_path: Path) -> None:
    """The reports go through the SDK's Reporter on a thread of their own: a transport that takes
    its time delays the reports, not the command's output or its end."""

    class Slow:
        def __init__(self) -> None:
            self.sent: list[dict[str, Any]] = []

        def send(self, report: Any, *, timeout: float) -> None:
            time.sleep(0.3)
            self.sent.append(dict(report))

        def describe(self) -> str:
            return "slow"

    transport = Slow()
    read_fd, write_fd = os.pipe()
    script = "for e in range(1, 6): print(f'epoch={e} score={e / 10}')"
    collector = Collector(
        Options(kind="stdout", command=[sys.executable, "-c", script], metric="score"),
        transport=transport,
        stdout_fd=write_fd,
    )
    started = time.monotonic()
    assert collector.run() == 0
    os.close(write_fd)
    with os.fdopen(read_fd) as out:
        assert out.read().count("epoch=") == 5
    assert [r["value"] for r in transport.sent] == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert [r["seq"] for r in transport.sent] == [0, 1, 2, 3, 4]
    # Stamped when read, not when the slow transport got to them.
    assert transport.sent[-1]["time"] - transport.sent[0]["time"] < 0.5
    assert time.monotonic() - started >= 1.5


def collect(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    reports = tmp_path / "reports.jsonl"
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith("HPO_")},
        "HPO_METRIC": "score",
        "HPO_REPORT_FILE": str(reports),
        **(env or {}),
    }
    done = subprocess.run(
        [*COLLECT, *args], capture_output=True, text=True, env=environ, timeout=timeout, cwd=tmp_path
    )
    lines = reports.read_text().splitlines() if reports.exists() else []
    return done, [json.loads(line) for line in lines]


PLAIN = REPO / "tests" / "fixtures" / "plain_trainer.py"


LIGHTNING = REPO / "tests" / "fixtures" / "lightning_trainer.py"


COLLECT = [sys.executable, "-m", "hpo_trial.collect"]
