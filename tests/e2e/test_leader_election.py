"""Two operator replicas with leader election against the local cluster: one reconciles, and when it
dies the other takes the Lease over and finishes the study.

The session's operator (no leader election) is stopped for this test, so that only the two replicas
under test act; the next test that needs it starts it again.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from tests.cluster.cluster import LocalCluster
from tests.cluster.rest import Kube
from tests.cluster.waiting import wait_for
from tests.support.e2e_study import (
    PodWatch,
    create_study,
    sample,
    scrape,
    study_manifest,
    trials_of,
    wait_phase,
)
from tests.support.operator_process import OPERATOR_NAMESPACE, OperatorProcess

pytestmark = pytest.mark.e2e

LEASE = f"/apis/coordination.k8s.io/v1/namespaces/{OPERATOR_NAMESPACE}/leases/hpo-operator"


def leading(op: OperatorProcess) -> bool:
    return sample(scrape(op), "hpo_operator_leader") == 1


def started(op: OperatorProcess, namespace: str) -> float:
    value = sample(scrape(op), "hpo_trials_started_total", namespace=namespace, study="ha")
    return 0.0 if math.isnan(value) else value


def test_one_replica_leads_and_the_other_takes_over_when_it_dies(
    hpo_operator: OperatorProcess,
    operator_kubeconfig: Path,
    cluster: LocalCluster,
    kube: Kube,
    namespace: str,
) -> None:
    hpo_operator.stop()
    args = ("--leader-elect", "--leader-election-namespace", OPERATOR_NAMESPACE)
    replicas = [
        OperatorProcess(operator_kubeconfig, cluster.log_dir / f"hpo-operator-replica-{i}.log", args)
        for i in range(2)
    ]
    try:
        for replica in replicas:
            replica.start()
        leader = wait_for(
            lambda: next((r for r in replicas if leading(r)), None), 30, 0.2, "a replica leading"
        )
        follower = next(r for r in replicas if r is not leader)
        assert not leading(follower)
        holder = kube.get(LEASE)["spec"]["holderIdentity"]
        assert holder and kube.get(LEASE)["spec"]["leaseDurationSeconds"] == 15

        with PodWatch(kube, namespace) as watch:
            create_study(kube, namespace, study_manifest("ha", deadline="45s", epoch_seconds=0.3))
            wait_for(lambda: started(leader, namespace) >= 2 or None, 30, 0.2, "the leader starting trials")
            # Only the leader acts.
            assert started(follower, namespace) == 0 and not leading(follower)

            # The leader dies without giving the Lease up: the follower waits it out, then leads.
            leader.kill()
            killed = time.monotonic()
            wait_for(lambda: leading(follower) or None, 40, 0.2, lambda: f"takeover; log:\n{follower.tail()}")
            print(f"\nleader SIGKILLed -> the other replica leads: {time.monotonic() - killed:.1f} s")
            assert kube.get(LEASE)["spec"]["holderIdentity"] != holder
            assert kube.get(LEASE)["spec"]["leaseTransitions"] >= 1
            study = wait_phase(kube, namespace, "ha", {"Succeeded", "Failed"}, 90)
            wait_for(
                lambda: all(p.gone or p.ended for p in watch.pods.values()), 30, 0.2, "every trial pod ended"
            )
        assert study["status"]["phase"] == "Succeeded", study["status"]
        # The new leader carried on from the API's state: the trials started after the takeover
        # are new indices, and no trial ever ran two pods at once.
        trials = trials_of(kube, namespace)
        indices = [int(t["spec"]["index"]) for t in trials]
        assert indices == list(range(len(trials)))
        assert started(follower, namespace) >= 1
        assert all(n == 1 for n in watch.running_per_trial.values()), watch.running_per_trial
        assert study["status"]["budget"]["finishedInsideSeconds"] >= 0, study["status"]["budget"]

        # A clean stop gives the Lease up: a replica started now leads at once, not 15 s later.
        follower.stop()
        assert kube.get(LEASE)["spec"].get("holderIdentity") is None
        again = OperatorProcess(operator_kubeconfig, cluster.log_dir / "hpo-operator-replica-2.log", args)
        replicas.append(again)
        begun = time.monotonic()
        again.start()
        wait_for(lambda: leading(again) or None, 8, 0.2, lambda: f"a quick takeover; log:\n{again.tail()}")
        print(f"lease released -> a new replica leads: {time.monotonic() - begun:.1f} s (its start included)")
    finally:
        for replica in replicas:
            replica.stop()
