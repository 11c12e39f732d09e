"""Leader election: the pure rule, two electors racing on one Lease, and an engine that waits."""

from __future__ import annotations

import asyncio
import copy
from typing import Any, cast

from hpo_operator.kube.api import Api, ApiError
from hpo_operator.kube.engine import Engine, EngineSettings
from hpo_operator.kube.leader import LeaderElector, Observed, decide, lease_path
from hpo_operator.kube.world import Cluster

JSON = dict[str, Any]
PATH = lease_path("ops", "hpo-operator")


def test_a_missing_or_released_lease_is_taken_at_once() -> None:
    wanted, _ = decide(None, "a", None, now=0, wall=100, duration=15)
    assert wanted is not None
    assert (wanted["holderIdentity"], wanted["leaseTransitions"], wanted["leaseDurationSeconds"]) == (
        "a",
        0,
        15,
    )
    released = {"holderIdentity": None, "renewTime": "t", "leaseTransitions": 3, "leaseDurationSeconds": 1}
    wanted, _ = decide(released, "b", None, now=0, wall=100, duration=15)
    assert wanted is not None and wanted["holderIdentity"] == "b" and wanted["leaseTransitions"] == 3


def test_another_holders_lease_expires_by_this_replicas_clock_only_while_it_is_not_renewed() -> None:
    held = {"holderIdentity": "a", "renewTime": "t1", "leaseTransitions": 0, "leaseDurationSeconds": 15}
    wanted, seen = decide(held, "b", None, now=1000, wall=0, duration=15)
    # The renew time may be far in the past by the wall clock: expiry counts from when b saw it.
    assert wanted is None and seen == Observed(("a", "t1", 0), 1000)
    wanted, seen = decide(held, "b", seen, now=1014, wall=0, duration=15)
    assert wanted is None
    renewed = {**held, "renewTime": "t2"}
    wanted, seen = decide(renewed, "b", seen, now=1016, wall=0, duration=15)
    assert wanted is None and seen.at == 1016  # a renewal restarts the count
    wanted, seen = decide(renewed, "b", seen, now=1032, wall=0, duration=15)
    assert wanted is not None
    assert (wanted["holderIdentity"], wanted["leaseTransitions"]) == ("b", 1)
    assert wanted["acquireTime"] == wanted["renewTime"]


def test_the_holder_renews_and_keeps_its_acquire_time() -> None:
    mine = {
        "holderIdentity": "a",
        "acquireTime": "2026-01-01T00:00:00.000000Z",
        "renewTime": "x",
        "leaseTransitions": 2,
        "leaseDurationSeconds": 15,
    }
    wanted, _ = decide(mine, "a", None, now=5, wall=1_800_000_000.25, duration=15)
    assert wanted is not None
    assert wanted["acquireTime"] == "2026-01-01T00:00:00.000000Z" and wanted["leaseTransitions"] == 2
    assert wanted["renewTime"] == "2027-01-15T08:00:00.250000Z"


class LeaseStore:
    """One Lease behind create/get/PUT with resourceVersion checks, as the API server keeps it."""

    def __init__(self) -> None:
        self.lease: JSON | None = None
        self.version = 0
        self.reachable = True

    def _check(self) -> None:
        if not self.reachable:
            raise OSError("connection refused")

    def get_or_none(self, path: str) -> JSON | None:
        self._check()
        assert path == PATH
        return copy.deepcopy(self.lease)

    def create(self, path: str, body: JSON) -> JSON | None:
        self._check()
        if self.lease is not None:
            return None
        self.version += 1
        self.lease = {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.version)}}
        return copy.deepcopy(self.lease)

    def request(self, method: str, path: str, body: JSON) -> JSON:
        self._check()
        assert (method, path) == ("PUT", PATH) and self.lease is not None
        if body["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
            raise ApiError(409, method, path, "the object has been modified")
        self.version += 1
        self.lease = {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.version)}}
        return copy.deepcopy(self.lease)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def elector(store: LeaseStore, identity: str, clock: Clock) -> LeaderElector:
    return LeaderElector(
        cast(Api, store), "ops", "hpo-operator", identity, clock=clock, wall=lambda: 1_800_000_000 + clock.now
    )


def test_two_replicas_one_leader_and_a_takeover_after_the_lease_runs_out() -> None:
    store, clock = LeaseStore(), Clock()
    a, b = elector(store, "a", clock), elector(store, "b", clock)
    assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    for _ in range(10):  # a renews every 2 s: b never takes over
        clock.now += 2
        assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    # A write based on a stale read loses: b read before a renewed.
    stale = store.get_or_none(PATH)
    assert stale is not None
    a.try_acquire_or_renew()
    try:
        store.request("PUT", PATH, stale)
        raise AssertionError("a stale write went through")
    except ApiError as err:
        assert err.status == 409
    # a stops renewing (crashed): b waits out the lease by its own clock, then leads.
    clock.now += 14
    assert not b.try_acquire_or_renew()
    clock.now += 2
    assert b.try_acquire_or_renew()
    assert store.lease is not None and store.lease["spec"]["holderIdentity"] == "b"
    assert store.lease["spec"]["leaseTransitions"] == 1
    assert not a.try_acquire_or_renew()  # a back from the dead follows


def test_a_released_lease_goes_to_the_follower_at_once() -> None:
    store, clock = LeaseStore(), Clock()
    a, b = elector(store, "a", clock), elector(store, "b", clock)
    assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    b.release()  # not the holder: changes nothing
    assert store.lease is not None and store.lease["spec"]["holderIdentity"] == "a"
    a.release()
    assert b.try_acquire_or_renew()


def test_a_leader_that_cannot_renew_stops_after_the_renew_deadline() -> None:
    store, clock = LeaseStore(), Clock()
    a = elector(store, "a", clock)
    a.retry = 0.001
    events: list[str] = []

    def started() -> None:
        events.append("started")
        store.reachable = False  # the API server goes away right after

    def stopped() -> None:
        events.append(f"stopped at {clock.now:g}")

    async def tick() -> None:
        while True:
            await asyncio.sleep(0.001)
            clock.now += 1

    async def scenario() -> None:
        ticking = asyncio.create_task(tick())
        await asyncio.wait_for(a.run(started, stopped), 10)
        ticking.cancel()

    asyncio.run(scenario())
    assert events[0] == "started" and events[1].startswith("stopped")
    assert float(events[1].split()[-1]) > a.renew_deadline


class StubCluster:
    def __init__(self) -> None:
        self.reads: list[tuple[str, str]] = []
        self.api = self
        self.caches = None

    def list(self, path: str, **_: Any) -> list[JSON]:
        return [{"metadata": {"namespace": "ns", "name": "s"}}]

    def list_page(self, path: str) -> JSON:
        return {"items": self.list(path)}

    def read(self, namespace: str, name: str) -> None:
        self.reads.append((namespace, name))


def test_a_follower_reconciles_nothing_until_it_leads() -> None:
    cluster = StubCluster()
    engine = Engine(cast(Cluster, cluster), settings=EngineSettings(workers=2, resync_seconds=60))

    async def scenario() -> None:
        await engine.start(leading=False)
        try:
            engine.child_event("ns", "s")
            await asyncio.sleep(0.05)
            assert cluster.reads == []
            engine.begin_leading()
            for _ in range(200):
                if cluster.reads:
                    break
                await asyncio.sleep(0.01)
            assert cluster.reads and set(cluster.reads) == {("ns", "s")}
            engine.stop_leading()
            await asyncio.sleep(0.05)
            seen = len(cluster.reads)
            engine.child_event("ns", "s")
            await asyncio.sleep(0.05)
            assert len(cluster.reads) == seen
        finally:
            await engine.stop()

    asyncio.run(scenario())
