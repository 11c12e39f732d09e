"""The trial SDK outside the cluster: the environment, the report format, file and null transports."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import hpo_trial
from hpo_trial import env, reporting
from hpo_trial.reporting import Reporter, RetryPolicy, make_report
from hpo_trial.transports import (
    ClusterTransport,
    FileTransport,
    NullTransport,
    SendError,
    transport_from_env,
)

FAST = RetryPolicy(total_seconds=2.0, initial_delay=0.001, max_delay=0.01, request_timeout=1.0)


@pytest.fixture(autouse=True)
def _fresh_default_reporter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test chooses its transport from its own environment."""
    monkeypatch.setattr(reporting, "_default", None)
    for name in [v for k, v in vars(env).items() if k.startswith("HPO_")]:
        monkeypatch.delenv(name, raising=False)


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- the environment -------------------------------------------------------------------------


def test_outside_a_study_everything_is_empty() -> None:
    assert hpo_trial.hyperparameters() == {}
    assert hpo_trial.max_resource() is None
    assert hpo_trial.trial_name() is None
    assert hpo_trial.study_name() is None
    assert hpo_trial.metric_name() is None


def test_hyperparameters_keep_dotted_names(monkeypatch: pytest.MonkeyPatch) -> None:
    params = {"learning_parameters.learning_rate": 0.001, "learning_parameters.batch_size": 64}
    monkeypatch.setenv("HPO_HYPERPARAMETERS", json.dumps(params))
    assert hpo_trial.hyperparameters() == params


@pytest.mark.parametrize("raw", ["[1, 2]", "{not json", '"a string"'])
def test_garbled_hyperparameters_are_an_error_that_names_the_variable(raw: str) -> None:
    with pytest.raises(ValueError, match="HPO_HYPERPARAMETERS"):
        env.hyperparameters({"HPO_HYPERPARAMETERS": raw})


def test_names_and_resources_come_from_the_environment() -> None:
    environ = {
        "HPO_STUDY": "flowers",
        "HPO_TRIAL": "flowers-3",
        "HPO_METRIC": "accuracy",
        "HPO_MAX_RESOURCE": "30",
        "HPO_START_RESOURCE": "9.0",
    }
    assert env.study_name(environ) == "flowers"
    assert env.trial_name(environ) == "flowers-3"
    assert env.metric_name(environ) == "accuracy"
    assert env.max_resource(environ) == 30
    assert env.start_resource(environ) == 9


@pytest.mark.parametrize("raw", ["ten", "2.5", "-1"])
def test_a_bad_max_resource_is_an_error(raw: str) -> None:
    with pytest.raises(ValueError, match="HPO_MAX_RESOURCE"):
        env.max_resource({"HPO_MAX_RESOURCE": raw})


def test_checkpoint_dir_is_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "ckpt" / "trial-0"
    monkeypatch.setenv("HPO_CHECKPOINT_DIR", str(target))
    assert hpo_trial.checkpoint_dir() == target
    assert target.is_dir()


def test_checkpoint_dir_outside_a_study_is_under_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert hpo_trial.checkpoint_dir() == tmp_path / "runs" / "checkpoints" / "standalone"
    monkeypatch.setenv("HPO_TRIAL", "s-1")
    assert hpo_trial.checkpoint_dir() == tmp_path / "runs" / "checkpoints" / "s-1"


# --- the report --------------------------------------------------------------------------------


def test_a_report_has_the_contract_fields() -> None:
    body = make_report(0, 3, 0.5, 1700000000.25, {"loss": 0.1})
    assert body == {"seq": 0, "resource": 3, "value": 0.5, "time": 1700000000.25, "extra": {"loss": 0.1}}


def test_non_finite_numbers_become_null_so_the_report_stays_json() -> None:
    body = make_report(1, 2.5, math.nan, 1.0, {"loss": math.inf, "nested": [1, math.nan]})
    assert body["value"] is None
    assert body["extra"] == {"loss": None, "nested": [1, None]}
    json.dumps(body, allow_nan=False)


def test_scalar_like_values_are_unwrapped() -> None:
    class Scalar:  # the shape of a 0-d numpy array or torch tensor
        def item(self) -> float:
            return 0.75

    assert make_report(0, 1, Scalar(), 1.0, {})["value"] == 0.75  # type: ignore[arg-type]


# --- transports --------------------------------------------------------------------------------


def test_file_transport_appends_one_line_per_report_with_seq_from_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "reports.jsonl"
    monkeypatch.setenv("HPO_REPORT_FILE", str(path))
    assert hpo_trial.report(1, 0.5)
    assert hpo_trial.report(2, 0.625, loss=0.3)
    assert hpo_trial.flush(5)  # report() only queues: the SDK's thread appends
    lines = read_lines(path)
    assert [line["seq"] for line in lines] == [0, 1]
    assert [(line["resource"], line["value"]) for line in lines] == [(1, 0.5), (2, 0.625)]
    assert lines[1]["extra"] == {"loss": 0.3}
    assert all(isinstance(line["time"], float) for line in lines)


def test_a_report_file_keeps_every_report_however_many(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "reports.jsonl"
    monkeypatch.setenv("HPO_REPORT_FILE", str(path))
    monkeypatch.setenv("HPO_MAX_RESOURCE", "10")
    monkeypatch.setenv("HPO_STATUS_POINTS", "2")  # thins the cluster's reports only
    monkeypatch.setenv("HPO_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    for k in range(1, 101):
        assert hpo_trial.report(k / 10, 0.5)
    assert hpo_trial.flush(5)
    assert [line["seq"] for line in read_lines(path)] == list(range(100))
    assert not (tmp_path / "ckpt" / "reports.jsonl").exists()  # the report file is the full curve


def test_null_transport_logs_the_report_and_sends_nothing(caplog: pytest.LogCaptureFixture) -> None:
    assert isinstance(transport_from_env({}), NullTransport)
    with caplog.at_level(logging.INFO, logger="hpo_trial"):
        assert hpo_trial.report(4, 0.9)
        assert hpo_trial.flush(5)
    messages = [r.getMessage() for r in caplog.records if r.name == "hpo_trial"]
    assert any('"resource": 4' in m and '"value": 0.9' in m for m in messages)


def test_the_report_file_wins_over_the_cluster(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t")
    environ = {
        "HPO_REPORT_FILE": str(tmp_path / "r.jsonl"),
        "HPO_TRIAL": "s-0",
        "HPO_NAMESPACE": "ns",
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
        "HPO_SA_DIR": str(tmp_path),
    }
    assert isinstance(transport_from_env(environ), FileTransport)


def test_in_cluster_needs_the_trial_the_namespace_the_api_and_a_token(tmp_path: Path) -> None:
    environ = {
        "HPO_TRIAL": "s-0",
        "HPO_NAMESPACE": "ns",
        "KUBERNETES_SERVICE_HOST": "fd00::1",
        "KUBERNETES_SERVICE_PORT": "443",
        "HPO_SA_DIR": str(tmp_path),
    }
    assert isinstance(transport_from_env(environ), NullTransport)  # no token yet
    (tmp_path / "token").write_text("t")
    transport = transport_from_env(environ)
    assert isinstance(transport, ClusterTransport)
    assert (
        transport.status_url
        == "https://[fd00::1]:443/apis/hpo.dev/v1alpha1/namespaces/ns/hpotrials/s-0/status"
    )
    assert isinstance(transport_from_env({**environ, "HPO_NAMESPACE": ""}), NullTransport)


# --- retries ------------------------------------------------------------------------------------


class FlakyTransport:
    """Fails the first ``failures`` sends, then records what it receives."""

    def __init__(self, failures: int, *, retryable: bool = True) -> None:
        self.failures = failures
        self.retryable = retryable
        self.attempts: list[Mapping[str, Any]] = []
        self.delivered: list[Mapping[str, Any]] = []

    def send(self, report: Mapping[str, Any], *, timeout: float) -> None:
        self.attempts.append(report)
        if len(self.attempts) <= self.failures:
            raise SendError("down", retryable=self.retryable)
        self.delivered.append(report)

    def describe(self) -> str:
        return "flaky"


def test_a_failed_report_is_retried_with_growing_delays_and_the_same_body() -> None:
    transport = FlakyTransport(failures=3)
    sleeps: list[float] = []
    policy = RetryPolicy(total_seconds=60, initial_delay=0.5, max_delay=1.5)
    reporter = Reporter(transport, policy, sleep=sleeps.append)
    assert reporter.report(1, 0.5)
    assert sleeps == [0.5, 1.0, 1.5]
    assert len(transport.attempts) == 4
    assert all(a == transport.delivered[0] for a in transport.attempts)


def test_retries_stop_at_the_time_bound_and_do_not_raise() -> None:
    transport = FlakyTransport(failures=10**9)
    reporter = Reporter(transport, RetryPolicy(total_seconds=0.2, initial_delay=0.01, max_delay=0.02))
    assert reporter.report(1, 0.5) is False
    assert 2 <= len(transport.attempts) < 100


def test_a_permanent_failure_is_not_retried() -> None:
    transport = FlakyTransport(failures=1, retryable=False)
    assert Reporter(transport, FAST).report(1, 0.5) is False
    assert len(transport.attempts) == 1


def test_a_report_that_cannot_be_built_is_dropped_not_raised() -> None:
    transport = FlakyTransport(failures=0)
    reporter = Reporter(transport, FAST)
    assert reporter.report(1, "high") is False  # type: ignore[arg-type]
    assert reporter.report(2, 0.5)
    assert [d["seq"] for d in transport.delivered] == [1]


def test_retry_bound_comes_from_the_environment() -> None:
    assert RetryPolicy.from_env({"HPO_REPORT_RETRY_SECONDS": "5"}).total_seconds == 5
    assert RetryPolicy.from_env({}).total_seconds == 60
    assert RetryPolicy.from_env({"HPO_REPORT_RETRY_SECONDS": "soon"}).total_seconds == 60
