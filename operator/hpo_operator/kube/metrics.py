"""Where the operator reports what each reconcile saw and did, for Prometheus metrics.

The engine calls ``observe`` after every reconcile; ``NullMetrics`` is the default. A Prometheus
implementation plugs in here without touching the reconcile.
"""

from __future__ import annotations

from typing import Protocol

from .reconcile import Outcome, World


class Metrics(Protocol):
    def observe(self, world: World, outcome: Outcome, seconds: float) -> None:
        """One reconcile of a study: its world, its outcome, and how long it took."""

    def failed(self, namespace: str, name: str, error: BaseException) -> None:
        """A reconcile that raised (it is retried)."""


class NullMetrics:
    def observe(self, world: World, outcome: Outcome, seconds: float) -> None:
        pass

    def failed(self, namespace: str, name: str, error: BaseException) -> None:
        pass


def serve(port: int) -> None:
    """Expose the process's default registry on ``port`` (/metrics)."""
    import prometheus_client

    prometheus_client.start_http_server(port)
