"""Trial processes whose reports are still queued when they end: the SDK sends them on a normal exit
and on SIGTERM, against a small API server that applies JSON patches as Kubernetes does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_kube_api import FakeApi, make_sa_dir, serving

# Reports 1 to 4 of 5. With an hour's interval and no rung levels the first two (they size the
# budget) go out at once, and 3 and 4 are still queued when the process ends.
TRAINER = """
import os, sys, time, hpo_trial
for resource in (1, 2, 3, 4):
    hpo_trial.report(resource, resource / 10)
    if resource == 2:
        hpo_trial.flush(10)
print("reported", flush=True)
if sys.argv[1] == "wait":
    time.sleep(60)
"""


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def api_url(api: FakeApi) -> Iterator[str]:
    with serving(api) as url:
        yield url


def start(api_url: str, tmp_path: Path, how: str, **more: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "HPO_TRIAL": "flowers-2",
        "HPO_NAMESPACE": "team-a",
        "HPO_API_URL": api_url,
        "HPO_SA_DIR": str(make_sa_dir(tmp_path)),
        "HPO_MAX_RESOURCE": "5",
        "HPO_REPORT_INTERVAL_SECONDS": "3600",
        **more,
    }
    return subprocess.Popen(
        [sys.executable, "-c", TRAINER, how],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_queued_reports_are_sent_when_the_process_exits(api: FakeApi, api_url: str, tmp_path: Path) -> None:
    proc = start(api_url, tmp_path, "exit")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert [r["resource"] for r in api.reports] == [1, 2, 3, 4]


def test_queued_reports_are_sent_on_sigterm_and_the_process_still_dies_of_it(
    api: FakeApi, api_url: str, tmp_path: Path
) -> None:
    proc = start(api_url, tmp_path, "wait")
    assert proc.stdout is not None and proc.stdout.readline().strip() == "reported"
    assert [r["resource"] for r in api.reports] == [1, 2]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, err
    assert [r["resource"] for r in api.reports] == [1, 2, 3, 4]


@pytest.mark.parametrize("how", ["exit", "wait"])
def test_the_last_report_held_back_from_the_status_is_written_at_exit_and_on_sigterm(
    api: FakeApi, api_url: str, tmp_path: Path, how: str
) -> None:
    ckpt = tmp_path / "ckpt"
    # One point over a maximum resource of 5: after the two sizing reports only one 5 beyond the
    # last written would be, so 3 and 4 are thinned; 4, the last, is held and written at the end.
    proc = start(api_url, tmp_path, how, HPO_STATUS_POINTS="1", HPO_CHECKPOINT_DIR=str(ckpt))
    if how == "wait":
        assert proc.stdout is not None and proc.stdout.readline().strip() == "reported"
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (0 if how == "exit" else -signal.SIGTERM), err
    assert [(r["seq"], r["resource"]) for r in api.reports] == [(0, 1), (1, 2), (3, 4)]
    journal = [json.loads(line) for line in (ckpt / "reports.jsonl").read_text().splitlines()]
    assert [(r["seq"], r["resource"]) for r in journal] == [(0, 1), (1, 2), (2, 3), (3, 4)]
