"""The operator's process runs kopf again when kopf ends on an error, with growing delays, and
does not wait for ever on a kopf whose exit hangs."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from hpo_operator.kube.main import (
    RESTART_FIRST_SECONDS,
    RESTART_LONGEST_SECONDS,
    RESTART_STABLE_SECONDS,
    KopfStuck,
    LeftBehind,
    run_in_thread,
    supervise,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Runs:
    """A stand-in for kopf.run: each call takes ``seconds[i]`` on the clock, then raises
    ``outcomes[i]`` (None: returns, as kopf does on SIGTERM)."""

    def __init__(self, clock: Clock, outcomes: list[BaseException | None], seconds: list[float]) -> None:
        self.clock, self.outcomes, self.seconds = clock, outcomes, seconds
        self.calls = 0

    def __call__(self) -> None:
        i = self.calls
        self.calls += 1
        self.clock.now += self.seconds[i]
        if self.outcomes[i] is not None:
            raise self.outcomes[i]  # type: ignore[misc]


def supervised(
    outcomes: list[BaseException | None], seconds: list[float] | None = None
) -> tuple[Runs, list[tuple[str, float]], list[float]]:
    clock = Clock()
    runs = Runs(clock, outcomes, seconds or [0.5] * len(outcomes))
    failures: list[tuple[str, float]] = []
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.now += seconds

    supervise(runs, lambda error, delay: failures.append((str(error), delay)), sleep, clock)
    return runs, failures, sleeps


def test_kopf_that_ends_on_an_error_runs_again_until_it_returns() -> None:
    runs, failures, sleeps = supervised([RuntimeError("404 page not found"), OSError("refused"), None])
    assert runs.calls == 3
    assert failures == [("404 page not found", RESTART_FIRST_SECONDS), ("refused", 2 * RESTART_FIRST_SECONDS)]
    assert sleeps == [RESTART_FIRST_SECONDS, 2 * RESTART_FIRST_SECONDS]


def test_the_delay_doubles_up_to_its_longest() -> None:
    _, _, sleeps = supervised([RuntimeError("down")] * 8 + [None])
    assert sleeps == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert (RESTART_FIRST_SECONDS, RESTART_LONGEST_SECONDS) == (1.0, 30.0)


def test_a_run_that_lasted_starts_the_delays_over() -> None:
    error = RuntimeError("down")
    _, _, sleeps = supervised(
        [error, error, error, error, None], [0.5, 0.5, 0.5, RESTART_STABLE_SECONDS, 0.5]
    )
    assert sleeps == [1.0, 2.0, 4.0, 1.0]


def test_an_interrupt_is_not_retried() -> None:
    with pytest.raises(KeyboardInterrupt):
        supervised([KeyboardInterrupt(), None])


# --- kopf in a thread of its own -------------------------------------------------------------------


def kopf_like(
    ending: threading.Event, release: threading.Event, error: Exception | None
) -> Callable[[], None]:
    """Runs its cleanup (sets ``ending``), then hangs until ``release`` as kopf's exit can, then
    raises ``error`` or returns."""

    def run() -> None:
        ending.set()
        release.wait(10)
        if error is not None:
            raise error

    return run


def test_what_ends_kopf_is_raised_in_the_callers_thread() -> None:
    stopping, ending, release = threading.Event(), threading.Event(), threading.Event()
    release.set()
    with pytest.raises(LookupError, match="404 page not found"):
        run_in_thread(kopf_like(ending, release, LookupError("404 page not found")), stopping, ending, 5)


def test_a_kopf_that_hangs_after_its_cleanup_is_left_behind() -> None:
    stopping, ending, release = threading.Event(), threading.Event(), threading.Event()
    try:
        with pytest.raises(KopfStuck, match="within 0 s") as stuck:
            run_in_thread(kopf_like(ending, release, LookupError("gone")), stopping, ending, 0.2)
        assert stuck.value.thread.is_alive()
    finally:
        release.set()
    stuck.value.thread.join(5)
    assert not stuck.value.thread.is_alive()


def test_after_a_stop_a_hanging_kopf_does_not_hold_the_process() -> None:
    stopping, ending, release = threading.Event(), threading.Event(), threading.Event()
    stopping.set()
    try:
        run_in_thread(kopf_like(ending, release, None), stopping, ending, 0.2)  # returns, no error
    finally:
        release.set()


def test_kopf_returning_is_the_end_only_after_a_stop() -> None:
    stopping, ending, release = threading.Event(), threading.Event(), threading.Event()
    release.set()
    with pytest.raises(RuntimeError, match="without being stopped"):
        run_in_thread(kopf_like(ending, release, None), stopping, ending, 5)
    stopping.set()
    ending.clear()
    run_in_thread(kopf_like(ending, release, None), stopping, ending, 5)


def test_too_many_runs_of_kopf_left_hanging_end_the_process() -> None:
    release = threading.Event()
    hanging = [threading.Thread(target=release.wait, args=(10,), daemon=True) for _ in range(3)]
    for thread in hanging:
        thread.start()
    ended = threading.Thread(target=lambda: None)
    ended.start()
    ended.join()
    try:
        left = LeftBehind(limit=2)
        assert left.add(hanging[0]) and left.add(ended) and left.add(hanging[1])
        assert left.alive() == 2
        assert not left.add(hanging[2])  # a third one alive: past the limit
    finally:
        release.set()
    for thread in hanging:
        thread.join(5)
    assert left.alive() == 0


def test_a_stop_while_kopf_starts_up_ends_the_wait_without_a_cleanup() -> None:
    stopping, ending, release = threading.Event(), threading.Event(), threading.Event()

    def starting() -> None:  # a startup handler that waits: no cleanup runs, ``ending`` stays unset
        release.wait(10)

    threading.Timer(0.3, stopping.set).start()
    try:
        run_in_thread(starting, stopping, ending, 0.2)
    finally:
        release.set()
