"""The SDK's background sender: reports queued at once, coalesced between the ones that matter,
never dropped while the process lives, flushed on exit and on SIGTERM."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpo_trial.journal import ReportJournal
from hpo_trial.reporting import Reporter, RetryPolicy
from hpo_trial.sending import BackgroundReporter, Goal, Thinning, Urgency, interval_from_env
from hpo_trial.transports import SendError
from tests.cluster.waiting import wait_for

FAST = RetryPolicy(total_seconds=2.0, initial_delay=0.001, max_delay=0.01, request_timeout=1.0)


class RecordingTransport:
    """Records each request (a list of reports); can hold requests until released, or fail."""

    def __init__(self, *, failures: int = 0, retryable: bool = True) -> None:
        self.requests: list[list[Mapping[str, Any]]] = []
        self.failures = failures
        self.retryable = retryable
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Event()

    def send(self, report: Mapping[str, Any], *, timeout: float) -> None:
        self.send_many([report], timeout=timeout)

    def send_many(self, reports: Sequence[Mapping[str, Any]], *, timeout: float) -> None:
        if not self.gate.is_set():
            self.waiting.set()
            assert self.gate.wait(10), "the test never released the transport"
        if self.failures > 0:
            self.failures -= 1
            raise SendError("down", retryable=self.retryable)
        self.requests.append(list(reports))

    def describe(self) -> str:
        return "recording"

    @property
    def seqs(self) -> list[int]:
        return [r["seq"] for request in self.requests for r in request]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def background(
    transport: RecordingTransport, *, interval: float = 0.0, urgency: Urgency | None = None, **kw: Any
) -> BackgroundReporter:
    return BackgroundReporter(Reporter(transport, FAST), interval=interval, urgent=urgency, **kw)


def test_report_returns_before_the_delivery_and_flush_waits_for_it() -> None:
    transport = RecordingTransport()
    transport.gate.clear()
    sender = background(transport)
    assert sender.report(1, 0.5) is True  # the transport is still holding: report() did not wait
    assert transport.waiting.wait(5)
    assert transport.requests == [] and sender.pending == 1
    transport.gate.set()
    assert sender.flush(5)
    assert transport.seqs == [0] and sender.pending == 0


def test_reports_that_cannot_change_a_decision_go_out_together() -> None:
    clock = FakeClock()
    transport = RecordingTransport()
    urgency = Urgency(rung_levels=[3, 9], last_resource=10)
    sender = background(transport, interval=60.0, urgency=urgency, clock=clock)
    # The first two size the budget: out at once, each on its own.
    for resource in (1, 2):
        sender.report(resource, 0.1 * resource)
        wait_for(lambda resource=resource: len(transport.seqs) == resource, 5, 0.01, "a sizing report")  # type: ignore[misc]
    sender.report(3, 0.3)  # reaches rung 3: at once
    wait_for(lambda: transport.seqs == [0, 1, 2], 5, 0.01, "the rung report")
    for resource in (4, 5, 6):
        sender.report(resource, 0.1 * resource)  # held: the interval has not passed
    assert sender.pending == 3 and transport.seqs == [0, 1, 2]
    sender.report(9, 0.9)  # rung 9: sends it with the three held, in one request
    wait_for(lambda: len(transport.requests) == 4, 5, 0.01, "the batch")
    assert [r["seq"] for r in transport.requests[-1]] == [3, 4, 5, 6]
    assert [r["resource"] for r in transport.requests[-1]] == [4, 5, 6, 9]


def test_a_held_report_goes_out_once_the_interval_has_passed() -> None:
    clock = FakeClock()
    transport = RecordingTransport()
    sender = background(transport, interval=0.2, urgency=Urgency(), clock=clock)
    sender.report(1, 0.1)
    sender.report(2, 0.2)
    wait_for(lambda: transport.seqs == [0, 1], 5, 0.01, "the sizing reports")
    sender.report(3, 0.3)
    assert sender.pending == 1
    clock.now += 0.2
    wait_for(lambda: transport.seqs == [0, 1, 2], 5, 0.01, "the held report after the interval")


def test_the_last_report_and_a_stop_resource_are_urgent() -> None:
    urgency = Urgency(rung_levels=[1, 3], last_resource=5)
    assert [urgency(r) for r in (1, 2, 2.5, 3, 4, 5)] == [True, True, False, True, False, True]
    resumed = Urgency.from_env(
        {"HPO_RUNG_LEVELS": "1,3,9", "HPO_MAX_RESOURCE": "27", "HPO_STOP_RESOURCE": "9"}
    )
    assert resumed.rung_levels == [1, 3, 9] and resumed.last_resource == 9
    # A trial resumed at 4 crosses rungs 1 and 3 with its first report, then only 9 and its stop.
    assert [resumed(r) for r in (4, 5, 6, 7, 8, 9)] == [True, True, False, False, False, True]


def test_the_interval_comes_from_the_environment() -> None:
    assert interval_from_env(2.0, {}) == 2.0
    assert interval_from_env(2.0, {"HPO_REPORT_INTERVAL_SECONDS": "0"}) == 0.0
    assert interval_from_env(2.0, {"HPO_REPORT_INTERVAL_SECONDS": "soon"}) == 2.0
    assert interval_from_env(2.0, {"HPO_REPORT_INTERVAL_SECONDS": "-1"}) == 2.0


def test_a_failing_batch_is_retried_whole_and_in_order() -> None:
    transport = RecordingTransport(failures=3)
    sender = background(transport)
    for resource in range(1, 6):
        sender.report(resource, 0.5)
    assert sender.flush(5)
    assert transport.seqs == [0, 1, 2, 3, 4]


def test_a_full_queue_makes_report_wait_instead_of_dropping() -> None:
    transport = RecordingTransport()
    transport.gate.clear()
    sender = background(transport, max_pending=2)
    sender.report(1, 0.1)
    assert transport.waiting.wait(5)  # seq 0 is being sent: the queue is empty again
    sender.report(2, 0.2)
    sender.report(3, 0.3)  # the queue holds two now
    blocked = threading.Thread(target=sender.report, args=(4, 0.4))
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive(), "report() returned although the queue was full"
    transport.gate.set()
    blocked.join(5)
    assert not blocked.is_alive()
    assert sender.flush(5)
    assert transport.seqs == [0, 1, 2, 3]


def test_a_report_given_up_makes_flush_say_so_and_later_ones_still_go() -> None:
    transport = RecordingTransport(failures=1, retryable=False)
    sender = background(transport)
    sender.report(1, 0.1)
    assert sender.flush(5) is False  # seq 0 was given up (logged)
    sender.report(2, 0.2)
    sender.flush(5)
    assert transport.seqs == [1]


def test_a_report_that_cannot_be_made_is_dropped_not_raised() -> None:
    transport = RecordingTransport()
    sender = background(transport)
    assert sender.report(1, "high") is False  # type: ignore[arg-type]
    assert sender.report(2, 0.5) is True
    assert sender.flush(5)
    assert transport.seqs == [1]


@pytest.mark.parametrize("count", [1, 250])
def test_flush_sends_everything_queued_in_batches_of_at_most_100(count: int) -> None:
    transport = RecordingTransport()
    sender = background(transport, interval=3600.0, urgency=lambda resource: False)
    for i in range(count):
        sender.report(i + 1, 0.5)
    assert sender.flush(10)
    assert transport.seqs == list(range(count))
    assert max(len(r) for r in transport.requests) <= 100


# --- thinning: what reaches the HPOTrial status --------------------------------------------------

RUNGS = [1, 3, 9, 27, 81]


def thinning_sender(
    transport: RecordingTransport, max_resource: float, points: int, **kw: Any
) -> BackgroundReporter:
    return background(
        transport,
        urgency=Urgency(rung_levels=RUNGS, last_resource=max_resource),
        thinning=Thinning(spacing=max_resource / points),
        **kw,
    )


def test_many_fast_reports_write_a_bounded_number_and_the_last_one_at_flush() -> None:
    transport = RecordingTransport()
    sender = thinning_sender(transport, 90, 32, interval=0.5)
    steps = 10_000
    for k in range(1, steps):  # up to just below 90: the last report is an ordinary one
        assert sender.report(90 * k / steps, 1 - 1 / k)
    assert sender.flush(10)
    seqs = transport.seqs
    assert len(seqs) <= 32 + len(RUNGS) + 3
    assert seqs == sorted(set(seqs))  # in seq order, none twice
    assert seqs[-1] == steps - 2  # the latest, held back and written at flush
    assert transport.requests[-1][-1]["value"] == pytest.approx(1 - 1 / (steps - 1))


def test_the_first_report_that_reaches_the_goal_is_written_however_thin_the_status() -> None:
    # Per-step reports whose value wobbles: the one that reaches the goal (0.9 at resource 50 or
    # beyond) falls between two spaced ones, and the next ones fall back below the goal.
    transport = RecordingTransport()
    goal = Goal(value=0.9, resource=50.0, mode="max")
    sender = thinning_sender(transport, 90, 8, goal=goal)
    values = {k: 0.95 for k in (2000, 7001)}  # below resource 50 (k < 5556) it does not count
    steps = 10_000
    for k in range(1, steps):
        sender.report(90 * k / steps, values.get(k, 0.5))
    assert sender.flush(10)
    written = {r["seq"]: r for request in transport.requests for r in request}
    assert 7000 in written and written[7000]["value"] == 0.95  # seq = k - 1
    assert 1999 not in written  # reaching the value below the goal's resource is no goal
    # Without the goal the same report is thinned away: what the test rests on.
    plain = RecordingTransport()
    other = thinning_sender(plain, 90, 8)
    for k in range(1, steps):
        other.report(90 * k / steps, values.get(k, 0.5))
    assert other.flush(10)
    assert 7000 not in plain.seqs


def test_the_goal_comes_from_the_environment() -> None:
    assert Goal.from_env({}) is None
    assert Goal.from_env({"HPO_GOAL": "high"}) is None
    goal = Goal.from_env({"HPO_GOAL": "0.2", "HPO_MODE": "min", "HPO_MAX_RESOURCE": "30"})
    assert goal == Goal(value=0.2, resource=30.0, mode="min")
    assert goal.reached(30, 0.1) and not goal.reached(29, 0.1) and not goal.reached(30, 0.3)
    assert not goal.reached(30, None)  # a value that is not finite reaches nothing
    at = Goal.from_env({"HPO_GOAL": "0.9", "HPO_GOAL_RESOURCE": "5", "HPO_MAX_RESOURCE": "30"})
    assert at == Goal(value=0.9, resource=5.0, mode="max") and at.reached(5, 0.9)


def test_a_held_report_is_written_at_flush_and_dropped_once_a_later_one_is_written() -> None:
    transport = RecordingTransport()
    sender = background(transport, thinning=Thinning(spacing=10.0))
    for resource in (1, 2, 4, 5):  # the first two are urgent; 4 is held, then superseded by 5
        sender.report(resource, 0.1)
    assert sender.flush(5)
    assert transport.seqs == [0, 1, 3]
    for resource in (14, 15, 16):  # 14 is within 10 of 5 (written at the flush): held; 15 is not
        sender.report(resource, 0.2)
    assert sender.flush(5)
    assert transport.seqs == [0, 1, 3, 5, 6]  # 15, then 16 held and written at this flush
    assert sender.flush(5) and transport.seqs == [0, 1, 3, 5, 6]  # nothing twice


def test_every_report_is_logged_or_written_and_all_go_to_the_journal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    transport = RecordingTransport()
    journal = ReportJournal(tmp_path / "ckpt" / "reports.jsonl", interval=3600.0)
    sender = background(transport, thinning=Thinning(spacing=1.0), journal=journal)
    resources = [0.25 * k for k in range(1, 21)]
    with caplog.at_level(logging.INFO, logger="hpo_trial"):
        for resource in resources:
            sender.report(resource, resource / 10)
        assert sender.flush(5)
    logged = [
        json.loads(r.getMessage().split(": ", 1)[1])["seq"]
        for r in caplog.records
        if r.getMessage().startswith("report (not written to the status)")
    ]
    assert sorted(set(logged) | set(transport.seqs)) == list(range(len(resources)))
    assert len(transport.seqs) < len(resources) / 2
    lines = [json.loads(line) for line in journal.path.read_text().splitlines()]
    assert [line["seq"] for line in lines] == list(range(len(resources)))
    assert [line["resource"] for line in lines] == resources


def test_a_journal_that_cannot_be_written_is_logged_once_and_reports_still_go(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_text("not a folder")
    transport = RecordingTransport()
    journal = ReportJournal(tmp_path / "file" / "reports.jsonl", interval=0.0)
    sender = background(transport, journal=journal)
    with caplog.at_level(logging.WARNING, logger="hpo_trial"):
        for resource in range(1, 6):
            assert sender.report(resource, 0.5)
            assert sender.flush(5)  # each report's line is written (and fails) on its own
    assert transport.seqs == [0, 1, 2, 3, 4]
    assert journal.failed == 5
    assert len([r for r in caplog.records if "report journal" in r.getMessage()]) == 1


def test_a_full_journal_drops_lines_instead_of_waiting() -> None:
    # The writer waits up to an hour for more lines: these five stay queued, as on a stuck volume.
    journal = ReportJournal(Path("/nonexistent-unused"), interval=3600.0, max_lines=3)
    for seq in range(5):
        journal.append({"seq": seq})
    assert journal.dropped == 2


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(st.integers(1, 1000), min_size=1, max_size=300),
    max_resource=st.integers(1, 500),
    points=st.integers(1, 64),
)
def test_any_run_writes_its_urgent_reports_and_its_last_and_a_bounded_number(
    steps: list[int], max_resource: int, points: int
) -> None:
    resources = [max_resource * s / 1000 for s in sorted(steps)]  # non-decreasing, in (0, R]
    transport = RecordingTransport()
    sender = thinning_sender(transport, max_resource, points, interval=3600.0)
    for resource in resources:
        sender.report(resource, 0.5)
    assert sender.flush(10)
    urgency = Urgency(rung_levels=RUNGS, last_resource=max_resource)
    urgent = {i for i, r in enumerate(resources) if urgency(r)}
    written = transport.seqs
    assert written == sorted(set(written))
    assert urgent <= set(written)
    assert written[-1] == len(resources) - 1
    assert len(written) <= points + len([lv for lv in RUNGS if lv <= max_resource]) + 3
