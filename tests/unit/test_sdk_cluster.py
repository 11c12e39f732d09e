"""The SDK's cluster transport against a small API server that applies JSON patches as Kubernetes does."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpo_trial import reporting
from hpo_trial.reporting import Reporter, RetryPolicy
from hpo_trial.sending import BackgroundReporter
from hpo_trial.transports import transport_from_env
from tests.support.fake_kube_api import (
    FakeApi,
    cluster_reporter,
    make_sa_dir,
    serving,
)


@pytest.fixture
def sa_dir(tmp_path: Path) -> Path:
    return make_sa_dir(tmp_path)


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def api_url(api: FakeApi) -> Iterator[str]:
    with serving(api) as url:
        yield url


def test_reports_are_appended_to_the_trial_status(api: FakeApi, api_url: str, sa_dir: Path) -> None:
    reporter = cluster_reporter(api_url, sa_dir)
    assert reporter.report(1, 0.5, loss=1.2)
    assert reporter.report(2, 0.75)
    assert [(r["seq"], r["resource"], r["value"]) for r in api.reports] == [(0, 1, 0.5), (1, 2, 0.75)]
    assert api.reports[0]["extra"] == {"loss": 1.2}
    last = api.requests[-1]
    assert last["headers"]["content-type"] == "application/json-patch+json"
    assert last["headers"]["authorization"] == "Bearer token-1"
    assert json.loads(last["body"]) == [{"op": "add", "path": "/status/reports/-", "value": api.reports[1]}]


def test_reports_sent_together_are_one_patch_that_appends_them_in_order(
    api: FakeApi, api_url: str, sa_dir: Path
) -> None:
    reporter = cluster_reporter(api_url, sa_dir)
    sender = BackgroundReporter(reporter, interval=3600.0, urgent=lambda resource: False)
    sender.report(1, 0.1)  # nothing sent for an interval: out at once
    assert sender.flush(5)
    sent = len(api.requests)
    for resource in (2, 3, 4):
        sender.report(resource, resource / 10)
    assert len(api.requests) == sent  # held: none of them may change a decision
    assert sender.flush(5)
    assert [(r["seq"], r["resource"]) for r in api.reports] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert len(api.requests) == sent + 1
    assert [op["value"]["seq"] for op in json.loads(api.requests[-1]["body"])] == [1, 2, 3]


def test_a_missing_status_is_created_with_a_guarded_init_then_the_report_appended(
    api: FakeApi, api_url: str, sa_dir: Path
) -> None:
    assert "status" not in api.obj
    assert cluster_reporter(api_url, sa_dir).report(1, 0.5)
    assert [r["seq"] for r in api.reports] == [0]
    bodies = [json.loads(r["body"]) for r in api.requests]
    assert [b[0]["op"] for b in bodies] == ["add", "test", "test", "add"]  # 422, 422, init, append
    assert bodies[2] == [
        {"op": "test", "path": "/status", "value": None},
        {"op": "add", "path": "/status", "value": {"reports": []}},
    ]


def test_an_existing_status_without_reports_gets_the_list(api: FakeApi, api_url: str, sa_dir: Path) -> None:
    api.obj["status"] = {"phase": "Running"}
    assert cluster_reporter(api_url, sa_dir).report(1, 0.5)
    assert api.obj["status"]["phase"] == "Running"
    assert [r["seq"] for r in api.reports] == [0]
    assert json.loads(api.requests[1]["body"]) == [
        {"op": "test", "path": "/status/reports", "value": None},
        {"op": "add", "path": "/status/reports", "value": []},
    ]


def test_an_init_racing_with_another_writer_keeps_its_reports(
    api: FakeApi, api_url: str, sa_dir: Path
) -> None:
    # The list appears between the failed append and the init: the guarded init must not wipe it.
    earlier = {"seq": 0, "resource": 1, "value": 0.1, "time": 1.0, "extra": {}}
    original = api.handle

    def racing(method: str, path: str, headers: dict[str, str], body: bytes) -> int:
        ops = json.loads(body)
        if ops[0]["op"] == "test" and "status" not in api.obj:
            api.obj["status"] = {"reports": [earlier]}
        return original(method, path, headers, body)

    api.handle = racing  # type: ignore[method-assign]
    assert cluster_reporter(api_url, sa_dir).report(2, 0.5)
    assert [r["value"] for r in api.reports] == [0.1, 0.5]


def test_transient_failures_are_retried_with_the_same_report(
    api: FakeApi, api_url: str, sa_dir: Path
) -> None:
    api.obj["status"] = {"reports": []}
    api.fail_next = [503, 500, 429]
    assert cluster_reporter(api_url, sa_dir).report(1, 0.5)
    assert len(api.reports) == 1
    bodies = [r["body"] for r in api.requests]
    assert len(bodies) == 4
    assert len(set(bodies)) == 1  # identical retries: same seq and time


def test_a_path_not_served_for_a_while_is_retried_but_a_deleted_trial_is_not(
    api: FakeApi, api_url: str, sa_dir: Path
) -> None:
    api.obj["status"] = {"reports": []}
    api.not_served_next = 2
    assert cluster_reporter(api_url, sa_dir).report(1, 0.5)
    assert len(api.requests) == 3 and [r["value"] for r in api.reports] == [0.5]
    api.fail_next = [404]  # a Status: the HPOTrial itself is gone
    assert cluster_reporter(api_url, sa_dir).report(2, 0.6) is False
    assert len(api.requests) == 4


def test_a_forbidden_report_after_a_delivered_one_is_retried(
    api: FakeApi, api_url: str, sa_dir: Path
) -> None:
    api.obj["status"] = {"reports": []}
    reporter = cluster_reporter(api_url, sa_dir)
    assert reporter.report(1, 0.5)
    api.fail_next = [403, 403]  # a restarted API server whose authorizer has not loaded RBAC yet
    assert reporter.report(2, 0.6)
    assert [r["value"] for r in api.reports] == [0.5, 0.6] and len(api.requests) == 4


def test_a_first_report_forbidden_by_a_server_that_just_came_back_is_delivered(
    api: FakeApi, api_url: str, sa_dir: Path
) -> None:
    # The process started while the server was away; it answers 403 until it has loaded RBAC.
    api.obj["status"] = {"reports": []}
    api.fail_next = [503, 403, 403]
    assert cluster_reporter(api_url, sa_dir).report(1, 0.5)
    assert [r["value"] for r in api.reports] == [0.5] and len(api.requests) == 4


def test_a_forbidden_report_is_given_up_after_the_grace_and_later_ones_at_once(
    api: FakeApi, api_url: str, sa_dir: Path
) -> None:
    api.obj["status"] = {"reports": []}
    policy = RetryPolicy(total_seconds=5.0, initial_delay=0.01, max_delay=0.01, forbidden_grace=0.2)
    reporter = cluster_reporter(api_url, sa_dir, policy)
    api.fail_next = [403] * 1000  # the trial lacks the right
    started = time.monotonic()
    assert reporter.report(1, 0.5) is False
    assert 0.2 <= time.monotonic() - started < 5.0  # the grace, not the whole retry window
    assert len(api.requests) > 2
    before = len(api.requests)
    assert reporter.report(2, 0.6) is False
    assert len(api.requests) == before + 1  # given up at once: one grace per process
    api.fail_next = []  # the right is granted; a later 403 is a server changing its mind again
    assert reporter.report(3, 0.7)
    api.fail_next = [403, 403]
    assert reporter.report(4, 0.8)
    assert [r["value"] for r in api.reports] == [0.7, 0.8]


def test_the_token_is_read_again_for_every_request(api: FakeApi, api_url: str, sa_dir: Path) -> None:
    api.obj["status"] = {"reports": []}
    reporter = cluster_reporter(api_url, sa_dir)
    assert reporter.report(1, 0.5)
    (sa_dir / "token").write_text("token-2")
    api.token = "token-2"
    assert reporter.report(2, 0.6)
    assert [r["headers"]["authorization"] for r in api.requests] == ["Bearer token-1", "Bearer token-2"]


def test_an_unreachable_api_is_given_up_after_the_bound(sa_dir: Path) -> None:
    environ = {"HPO_TRIAL": "t-0", "HPO_NAMESPACE": "ns", "HPO_API_URL": "http://127.0.0.1:9"}
    transport = transport_from_env({**environ, "HPO_SA_DIR": str(sa_dir)})
    policy = RetryPolicy(total_seconds=0.3, initial_delay=0.01, max_delay=0.05, request_timeout=0.2)
    assert Reporter(transport, policy).report(1, 0.5) is False


def test_a_status_written_by_the_operator_during_the_init_does_not_lose_the_report(
    api: FakeApi, api_url: str, sa_dir: Path
) -> None:
    # The append fails (no status), the list init fails (no status), and just before the status
    # init the operator writes a status without the list: the report must still land.
    original = api.handle

    def racing(method: str, path: str, headers: dict[str, str], body: bytes) -> int:
        ops = json.loads(body)
        if ops[0] == {"op": "test", "path": "/status", "value": None} and "status" not in api.obj:
            api.obj["status"] = {"phase": "Running"}
        return original(method, path, headers, body)

    api.handle = racing  # type: ignore[method-assign]
    assert cluster_reporter(api_url, sa_dir).report(1, 0.5)
    assert [r["seq"] for r in api.reports] == [0]
    assert api.obj["status"]["phase"] == "Running"


def test_the_process_reporter_thins_the_status_and_keeps_the_full_curve_in_the_journal(
    api: FakeApi, api_url: str, sa_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reporting, "_default", None)
    environ = {
        "HPO_TRIAL": "flowers-2",
        "HPO_NAMESPACE": "team-a",
        "HPO_API_URL": api_url,
        "HPO_SA_DIR": str(sa_dir),
        "HPO_MAX_RESOURCE": "10",
        "HPO_STATUS_POINTS": "2",  # written 5 apart
        "HPO_REPORT_INTERVAL_SECONDS": "0",
        "HPO_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
    }
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HPO_REPORT_FILE", raising=False)
    monkeypatch.delenv("HPO_RUNG_LEVELS", raising=False)
    resources = [0.5 * k for k in range(1, 20)]  # 0.5 .. 9.5
    for resource in resources:
        assert reporting.report(resource, resource / 10)
    assert reporting.flush(10)
    # The two sizing reports, the first 5 beyond 1.0, and the last one (held, written at flush).
    assert [(r["seq"], r["resource"]) for r in api.reports] == [(0, 0.5), (1, 1.0), (11, 6.0), (18, 9.5)]
    journal = (tmp_path / "ckpt" / "reports.jsonl").read_text().splitlines()
    assert [json.loads(line)["resource"] for line in journal] == resources
