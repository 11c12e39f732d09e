"""Leader election on a coordination.k8s.io/v1 Lease, so that replicas of the operator never
reconcile at once: one leads, the others wait and take over when its Lease expires.

As client-go's leaderelection: a Lease counts as expired when its record (holder and renew time)
has not changed for ``leaseDurationSeconds`` by this replica's own clock, so clocks need not agree
across nodes; every write carries the resourceVersion read, so two candidates never both win. A
leader that cannot renew within ``renew_deadline`` stops leading, and the operator exits: the
Deployment restarts it as a follower, with nothing in memory that the API does not hold.

``decide`` is the pure rule; ``LeaderElector`` reads and writes the Lease around it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .api import Api, ApiError, ns_path

log = logging.getLogger("hpo_operator")
JSON = dict[str, Any]

LEASE_SECONDS = 15.0  # client-go's defaults
RENEW_DEADLINE_SECONDS = 10.0
RETRY_SECONDS = 2.0


def lease_path(namespace: str, name: str = "") -> str:
    return ns_path("coordination.k8s.io", "v1", namespace, "leases", name)


def micro_time(seconds: float) -> str:
    """A Lease's MicroTime: RFC 3339 with microseconds, UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1e6):06d}Z"


@dataclass(frozen=True)
class Observed:
    """The Lease's record as last seen changing, and when by this replica's monotonic clock."""

    record: tuple[Any, ...]
    at: float


def decide(
    spec: JSON | None, me: str, observed: Observed | None, now: float, wall: float, duration: float
) -> tuple[JSON | None, Observed]:
    """The Lease spec to write (None: someone else holds a live Lease) and the record now observed.

    ``now`` is the monotonic clock that times expiry, ``wall`` the time written into the Lease.
    """
    spec = spec or {}
    holder = spec.get("holderIdentity") or None
    record = (holder, spec.get("renewTime"), spec.get("leaseTransitions"))
    if observed is None or observed.record != record:
        observed = Observed(record, now)
    held = holder is not None and holder != me
    if held and observed.at + float(spec.get("leaseDurationSeconds") or duration) > now:
        return None, observed
    stamp = micro_time(wall)
    acquired = spec.get("acquireTime") if holder == me else stamp
    transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == me or holder is None else 1)
    wanted = {
        "holderIdentity": me,
        "leaseDurationSeconds": int(duration),
        "acquireTime": acquired or stamp,
        "renewTime": stamp,
        "leaseTransitions": transitions,
    }
    return wanted, observed


@dataclass
class LeaderElector:
    api: Api
    namespace: str
    name: str
    identity: str
    duration: float = LEASE_SECONDS
    renew_deadline: float = RENEW_DEADLINE_SECONDS
    retry: float = RETRY_SECONDS
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    _observed: Observed | None = field(default=None, init=False)
    _renewed_at: float | None = field(default=None, init=False)

    def try_acquire_or_renew(self) -> bool:
        """One round: True when this replica holds the Lease afterwards."""
        lease = self.api.get_or_none(lease_path(self.namespace, self.name))
        wanted, self._observed = decide(
            None if lease is None else lease.get("spec"),
            self.identity,
            self._observed,
            self.clock(),
            self.wall(),
            self.duration,
        )
        if wanted is None:
            return False
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": wanted,
            }
            if self.api.create(lease_path(self.namespace), body) is None:
                return False  # another replica created it first
        else:
            body = {**lease, "spec": wanted}
            try:
                self.api.request("PUT", lease_path(self.namespace, self.name), body)
            except ApiError as err:
                if err.status == 409:  # changed since read: another replica wrote first
                    return False
                raise
        record = (self.identity, wanted["renewTime"], wanted["leaseTransitions"])
        self._observed = Observed(record, self.clock())
        return True

    def release(self) -> None:
        """Give the Lease up on a clean shutdown, so a follower takes over at once."""
        lease = self.api.get_or_none(lease_path(self.namespace, self.name))
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        spec = {**lease["spec"], "holderIdentity": None, "leaseDurationSeconds": 1}
        try:
            self.api.request("PUT", lease_path(self.namespace, self.name), {**lease, "spec": spec})
        except (ApiError, OSError) as err:
            log.warning("releasing the leader lease failed: %s", err)

    async def run(self, started: Callable[[], None], stopped: Callable[[], None]) -> None:
        """Try every ``retry`` seconds; call ``started`` on winning, ``stopped`` when a leader could
        not renew for ``renew_deadline`` (after which this loop ends)."""
        leading = False
        while True:
            try:
                ok = await asyncio.to_thread(self.try_acquire_or_renew)
            except Exception as err:  # an unreachable API server: try again, the deadline decides
                log.warning("leader election: %s", err)
                ok = False
            now = self.clock()
            if ok:
                self._renewed_at = now
                if not leading:
                    leading = True
                    log.info("leading as %s (lease %s/%s)", self.identity, self.namespace, self.name)
                    started()
            elif leading and self._renewed_at is not None and now - self._renewed_at > self.renew_deadline:
                log.error("lost the leader lease %s/%s: stopping", self.namespace, self.name)
                stopped()
                return
            await asyncio.sleep(self.retry)
