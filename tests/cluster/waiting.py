"""Waiting on a condition with a deadline, instead of sleeping and hoping."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition did not hold in time; an AssertionError so pytest reports it as a failure."""


def wait_for(
    condition: Callable[[], T | None],
    timeout: float = 30.0,
    interval: float = 0.1,
    message: str | Callable[[], str] = "condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``condition`` until it returns something truthy and return that value.

    ``ignore`` lists exceptions that mean "not yet" (a 404 while an object is being created); the
    last one is shown if the wait times out. ``message`` may be a callable so that it can describe
    the state of the world at the moment of failure.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    last_value: T | None = None
    while True:
        try:
            value = condition()
        except ignore as e:
            last_error = e
        else:
            if value:
                return value
            last_value = value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            detail = f"; last error: {last_error!r}" if last_error is not None else ""
            raise WaitTimeout(
                f"timed out after {timeout:.1f}s waiting for {text} (last value: {last_value!r}{detail})"
            )
        time.sleep(interval)
