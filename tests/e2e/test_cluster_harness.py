"""The local cluster harness against what the operator's tests will rely on: GPU scheduling, pod
lifecycle, deletion with grace, ServiceAccount RBAC inside a pod, restarts, node loss."""

from __future__ import annotations

import os
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from tests.cluster import Kube, LocalCluster, wait_for
from tests.cluster.fixtures import api_client
from tests.cluster.procs import pid_alive

pytestmark = pytest.mark.e2e

JSON = dict[str, Any]
GPU = "nvidia.com/gpu"


def container(command: list[str], gpus: int = 0, **extra: Any) -> JSON:
    c: JSON = {"name": "main", "image": "hpo-trial:local", "command": command, **extra}
    if gpus:
        c["resources"] = {"limits": {GPU: gpus}}
    return c


def pod(name: str, command: list[str], gpus: int = 0, restart: str = "Never", **spec: Any) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"restartPolicy": restart, "containers": [container(command, gpus)], **spec},
    }


def py(code: str) -> list[str]:
    return ["python", "-c", textwrap.dedent(code)]


def get_pod(kube: Kube, ns: str, name: str) -> JSON:
    p: JSON = kube.get(f"/api/v1/namespaces/{ns}/pods/{name}")
    return p


def phase(kube: Kube, ns: str, name: str) -> str:
    return str(get_pod(kube, ns, name).get("status", {}).get("phase", ""))


def wait_phase(kube: Kube, ns: str, name: str, want: str, timeout: float = 30) -> JSON:
    def check() -> JSON | None:
        p = get_pod(kube, ns, name)
        return p if p.get("status", {}).get("phase") == want else None

    return wait_for(check, timeout, message=lambda: f"pod {ns}/{name} {want} (is {phase(kube, ns, name)})")


def pid_of(p: JSON) -> int:
    cid = p["status"]["containerStatuses"][0]["containerID"]
    assert cid.startswith("process://")
    return int(cid.removeprefix("process://"))


def gpu_pods_active(kube: Kube) -> list[JSON]:
    out = []
    for p in kube.get("/api/v1/pods")["items"]:
        limits = [c.get("resources", {}).get("limits", {}).get(GPU) for c in p["spec"]["containers"]]
        if any(limits) and p.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
            out.append(p)
    return out


def first_line(log: Path, timeout: float = 10) -> str:
    def read() -> str | None:
        lines = log.read_text().splitlines() if log.exists() else []
        return lines[0] if lines else None

    return wait_for(read, timeout, message=f"a line in {log}")


# --- Jobs and GPUs -------------------------------------------------------------------------------


@pytest.mark.parametrize("exit_code", [0, 3])
def test_a_gpu_job_runs_to_its_end_with_the_exit_code_reported(
    kube: Kube, namespace: str, cluster: LocalCluster, exit_code: int
) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "train"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        container(
                            py(f"""
                                import os, sys
                                print("pod", os.environ["POD_NAME"], "ns", os.environ["POD_NAMESPACE"],
                                      "gpus", os.environ["NVIDIA_VISIBLE_DEVICES"], flush=True)
                                sys.exit({exit_code})
                            """),
                            gpus=1,
                            env=[
                                {
                                    "name": "POD_NAME",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                },
                                {
                                    "name": "POD_NAMESPACE",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                                },
                            ],
                        )
                    ],
                }
            },
        },
    }
    kube.create(f"/apis/batch/v1/namespaces/{namespace}/jobs", job)
    key = "succeeded" if exit_code == 0 else "failed"
    wait_for(
        lambda: kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/train").get("status", {}).get(key) == 1,
        60,
        message=f"Job train status.{key} == 1",
    )
    (p,) = kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector="job-name=train")["items"]
    assert p["status"]["phase"] == ("Succeeded" if exit_code == 0 else "Failed")
    assert p["spec"]["nodeName"] in cluster.node_names
    (status,) = p["status"]["containerStatuses"]
    terminated = status["state"]["terminated"]
    assert terminated["exitCode"] == exit_code
    assert terminated["reason"] == ("Completed" if exit_code == 0 else "Error")
    assert terminated["startedAt"] <= terminated["finishedAt"]
    assert p["status"]["podIP"] and p["status"]["hostIP"]
    name = p["metadata"]["name"]
    log = cluster.container_log(namespace, name, "main").read_text()
    assert f"pod {name} ns {namespace} gpus " in log


def test_five_one_gpu_pods_on_two_by_two_gpus_run_four_at_a_time(
    kube: Kube, namespace: str, cluster: LocalCluster, tmp_path: Path
) -> None:
    assert len(cluster.node_names) * cluster.spec.gpus_per_node == 4
    wait_for(lambda: not gpu_pods_active(kube), 60, message="no GPU pods left from other tests")
    names = [f"trial-{i}" for i in range(5)]
    for name in names:
        # Each pod holds its GPU until the test creates its release file.
        manifest = pod(
            name,
            py("""
                import os, pathlib, time
                print("gpus", os.environ["NVIDIA_VISIBLE_DEVICES"], flush=True)
                release = pathlib.Path(os.environ["RELEASE"])
                while not release.exists():
                    time.sleep(0.05)
            """),
            gpus=1,
        )
        manifest["spec"]["containers"][0]["env"] = [{"name": "RELEASE", "value": str(tmp_path / name)}]
        kube.create(f"/api/v1/namespaces/{namespace}/pods", manifest)

    def by_phase() -> dict[str, list[JSON]]:
        out: dict[str, list[JSON]] = {}
        for p in kube.get(f"/api/v1/namespaces/{namespace}/pods")["items"]:
            out.setdefault(p.get("status", {}).get("phase", ""), []).append(p)
        return out

    def four_running_one_pending() -> dict[str, list[JSON]] | None:
        ph = by_phase()
        return ph if len(ph.get("Running", [])) == 4 and len(ph.get("Pending", [])) == 1 else None

    phases = wait_for(
        four_running_one_pending, 60, message=lambda: f"4 Running + 1 Pending: {by_phase().keys()}"
    )
    running = phases["Running"]
    nodes = sorted(p["spec"]["nodeName"] for p in running)
    assert nodes == sorted(cluster.node_names * 2)
    (waiting,) = phases["Pending"]
    assert not waiting["spec"].get("nodeName")
    scheduled = {c["type"]: c for c in waiting["status"]["conditions"]}["PodScheduled"]
    assert scheduled["status"] == "False" and scheduled["reason"] == "Unschedulable"
    assert GPU in scheduled["message"]
    # Two pods on one node never share a GPU.
    for node in cluster.node_names:
        devices = []
        for p in running:
            if p["spec"]["nodeName"] == node:
                devices.append(first_line(cluster.container_log(namespace, p["metadata"]["name"], "main")))
        assert len(set(devices)) == 2, devices

    first = running[0]["metadata"]["name"]
    fifth = waiting["metadata"]["name"]
    (tmp_path / first).touch()
    wait_phase(kube, namespace, first, "Succeeded")
    wait_phase(kube, namespace, fifth, "Running", timeout=60)
    ph = by_phase()
    assert len(ph["Running"]) == 4 and len(ph["Succeeded"]) == 1
    for name in names:
        (tmp_path / name).touch()
    wait_for(lambda: len(by_phase().get("Succeeded", [])) == 5, 60, message="all five Succeeded")


# --- deletion, deadlines, restarts -------------------------------------------------------------


HANDLERS = {
    "exits-on-sigterm": "lambda *_: sys.exit(143)",
    "ignores-sigterm": "signal.SIG_IGN",
    # As PID 1 of a container, a process without a handler never receives SIGTERM.
    "no-handler": "signal.SIG_DFL",
}


@pytest.mark.parametrize("handling", list(HANDLERS))
def test_a_pod_deleted_mid_run_has_its_process_gone_within_its_grace_period(
    kube: Kube, namespace: str, cluster: LocalCluster, handling: str
) -> None:
    grace = 3
    handler = HANDLERS[handling]
    ignores_sigterm = handling != "exits-on-sigterm"
    manifest = pod(
        "victim",
        py(f"""
            import signal, sys, time
            signal.signal(signal.SIGTERM, {handler})
            print("running", flush=True)
            time.sleep(600)
        """),
        gpus=1,
        terminationGracePeriodSeconds=grace,
    )
    kube.create(f"/api/v1/namespaces/{namespace}/pods", manifest)
    pid = pid_of(wait_phase(kube, namespace, "victim", "Running"))
    log = cluster.container_log(namespace, "victim", "main")
    wait_for(lambda: log.exists() and "running" in log.read_text(), 10, message="its SIGTERM handler set")
    assert pid_alive(pid)
    t0 = time.monotonic()
    kube.delete(f"/api/v1/namespaces/{namespace}/pods/victim")
    wait_for(lambda: not pid_alive(pid), grace + 2, 0.02, message=f"process {pid} gone")
    took = time.monotonic() - t0
    if ignores_sigterm:
        assert took >= grace - 0.5, f"SIGKILL came after {took:.1f}s, before the {grace}s grace period"
    else:
        assert took < grace - 1, f"SIGTERM should end it at once, took {took:.1f}s"
    wait_for(lambda: kube.get_or_none(f"/api/v1/namespaces/{namespace}/pods/victim") is None, 10,
             message="pod object deleted")  # fmt: skip


def test_a_pod_past_its_active_deadline_fails(kube: Kube, namespace: str) -> None:
    kube.create(
        f"/api/v1/namespaces/{namespace}/pods",
        pod("slow", ["sleep", "600"], activeDeadlineSeconds=2, terminationGracePeriodSeconds=1),
    )
    p = wait_phase(kube, namespace, "slow", "Failed", timeout=20)
    assert p["status"]["reason"] == "DeadlineExceeded"
    assert p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] != 0


def test_a_crashing_deployment_pod_is_restarted(kube: Kube, namespace: str, cluster: LocalCluster) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "crasher"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "crasher"}},
            "template": {
                "metadata": {"labels": {"app": "crasher"}},
                "spec": {"containers": [container(["sh", "-c", "echo crashing; exit 7"])]},
            },
        },
    }
    kube.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", deployment)

    def restarted_twice() -> JSON | None:
        pods: list[JSON] = kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector="app=crasher")[
            "items"
        ]
        for p in pods:
            statuses = p.get("status", {}).get("containerStatuses") or []
            if statuses and statuses[0]["restartCount"] >= 2:
                return p
        return None

    p = wait_for(restarted_twice, 60, message="the crasher restarted twice")
    (status,) = p["status"]["containerStatuses"]
    assert status["lastState"]["terminated"]["exitCode"] == 7
    assert p["status"]["phase"] == "Running"
    # Restarted in place: still one pod, each run with its own log beside the current one.
    assert len(kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector="app=crasher")["items"]) == 1
    runs = cluster.container_log(namespace, p["metadata"]["name"], "main").resolve().parent
    assert {"0.log", "1.log"} <= {f.name for f in runs.iterdir()}
    assert "crashing" in (runs / "0.log").read_text()


def test_on_failure_restarts_in_place_after_init_containers_ran(
    kube: Kube, namespace: str, cluster: LocalCluster
) -> None:
    manifest = pod(
        "retry",
        ["sh", "-c", "cat /work/init; if [ -e /work/once ]; then exit 0; fi; touch /work/once; exit 1"],
        restart="OnFailure",
        gpus=1,
    )
    manifest["spec"]["containers"][0]["volumeMounts"] = [{"name": "work", "mountPath": "/work"}]
    manifest["spec"]["initContainers"] = [
        {
            **container(["sh", "-c", "echo from-init > /work/init"]),
            "name": "init",
            "volumeMounts": [{"name": "work", "mountPath": "/work"}],
        }
    ]
    manifest["spec"]["volumes"] = [{"name": "work", "emptyDir": {}}]
    kube.create(f"/api/v1/namespaces/{namespace}/pods", manifest)
    p = wait_phase(kube, namespace, "retry", "Succeeded", timeout=30)
    (status,) = p["status"]["containerStatuses"]
    assert status["restartCount"] == 1
    assert status["lastState"]["terminated"]["exitCode"] == 1
    assert status["state"]["terminated"]["exitCode"] == 0
    assert p["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    assert cluster.container_log(namespace, "retry", "main").read_text().strip() == "from-init"


# --- what a process in a pod sees ----------------------------------------------------------------


def test_a_pod_gets_its_env_volumes_and_working_dir(
    kube: Kube, namespace: str, cluster: LocalCluster
) -> None:
    ns = namespace
    kube.create(f"/api/v1/namespaces/{ns}/configmaps", {"metadata": {"name": "cfg"}, "data": {"lr": "0.01"}})
    kube.create(
        f"/api/v1/namespaces/{ns}/secrets", {"metadata": {"name": "sec"}, "stringData": {"key": "s3cret"}}
    )
    kube.create(
        f"/api/v1/namespaces/{ns}/persistentvolumeclaims",
        {
            "metadata": {"name": "ckpt"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )
    script = """
        import json, os, pathlib
        prev = pathlib.Path("/ckpt/count")
        n = int(prev.read_text()) + 1 if prev.exists() else 1
        prev.write_text(str(n))
        pathlib.Path("/scratch/x").write_text("ok")
        print(json.dumps({
            "env": {k: os.environ.get(k)
                    for k in ("LR", "KEY", "UID", "IP", "PLAIN", "KUBERNETES_SERVICE_HOST")},
            "cwd": os.getcwd(), "count": n,
            "cfg": pathlib.Path("/etc/cfg/lr").read_text(),
            "sec": pathlib.Path("/etc/sec/key").read_text(),
            "ns": pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read_text(),
        }), flush=True)
    """
    for run in (1, 2):
        name = f"reader-{run}"
        manifest = pod(name, py(script))
        c = manifest["spec"]["containers"][0]
        c["workingDir"] = "/scratch"
        c["env"] = [
            {"name": "LR", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "lr"}}},
            {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "key"}}},
            {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "PLAIN", "value": "lr=$(LR)"},
        ]
        c["volumeMounts"] = [
            {"name": "cfg", "mountPath": "/etc/cfg"},
            {"name": "sec", "mountPath": "/etc/sec", "readOnly": True},
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "ckpt", "mountPath": "/ckpt"},
        ]
        manifest["spec"]["volumes"] = [
            {"name": "cfg", "configMap": {"name": "cfg"}},
            {"name": "sec", "secret": {"secretName": "sec"}},
            {"name": "scratch", "emptyDir": {}},
            {"name": "ckpt", "persistentVolumeClaim": {"claimName": "ckpt"}},
        ]
        kube.create(f"/api/v1/namespaces/{ns}/pods", manifest)
        p = wait_phase(kube, ns, name, "Succeeded", timeout=60)
        import json

        out = json.loads(cluster.container_log(ns, name, "main").read_text().strip().splitlines()[-1])
        assert out["env"] == {
            "LR": "0.01",
            "KEY": "s3cret",
            "UID": p["metadata"]["uid"],
            "IP": p["status"]["podIP"],
            "PLAIN": "lr=0.01",
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        }
        assert out["cwd"] == "/scratch"
        assert (out["cfg"], out["sec"], out["ns"]) == ("0.01", "s3cret", ns)
        # The claim's folder outlives the pod: the second pod sees what the first wrote.
        assert out["count"] == run
    # Mounts are private to the pod: the host sees none of them.
    assert not Path("/scratch/x").exists()
    assert not Path("/etc/cfg/lr").exists()


def test_a_process_in_a_pod_gets_exactly_its_service_accounts_rbac(
    kube: Kube, namespace: str, cluster: LocalCluster
) -> None:
    ns = namespace
    kube.create(f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": "reader"}})
    kube.create(
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
        {
            "metadata": {"name": "read-configmaps"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        },
    )
    kube.create(
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
        {
            "metadata": {"name": "reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-configmaps"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}],
        },
    )
    kube.create(f"/api/v1/namespaces/{ns}/configmaps", {"metadata": {"name": "visible"}, "data": {"a": "1"}})
    script = """
        from kubernetes import client, config
        config.load_incluster_config()
        v1 = client.CoreV1Api()
        ns = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read()
        names = [c.metadata.name for c in v1.list_namespaced_config_map(ns).items]
        print("configmaps", sorted(names), flush=True)
        for what, call in (("secrets", lambda: v1.list_namespaced_secret(ns)),
                           ("pods", lambda: v1.list_namespaced_pod(ns)),
                           ("configmaps-default", lambda: v1.list_namespaced_config_map("default"))):
            try:
                call()
                print(what, "allowed", flush=True)
            except client.ApiException as e:
                print(what, e.status, flush=True)
    """
    kube.create(f"/api/v1/namespaces/{ns}/pods", pod("rbac", py(script), serviceAccountName="reader"))
    wait_phase(kube, ns, "rbac", "Succeeded", timeout=60)
    lines = cluster.container_log(ns, "rbac", "main").read_text().splitlines()
    assert "configmaps ['kube-root-ca.crt', 'visible']" in lines or "configmaps ['visible']" in lines, lines
    assert "secrets 403" in lines and "pods 403" in lines and "configmaps-default 403" in lines, lines


def test_a_local_process_can_act_as_a_service_account(namespace: str, cluster: LocalCluster) -> None:
    kubeconfig = cluster.service_account_kubeconfig(namespace, "default")
    v1 = kubernetes.client.CoreV1Api(api_client(kubeconfig))
    with pytest.raises(kubernetes.client.ApiException) as e:
        v1.list_namespaced_secret(namespace)
    assert e.value.status == 403
    # kubectl with the admin kubeconfig sees everything.
    out = subprocess.run(
        ["kubectl", "get", "serviceaccount", "default", "-n", namespace, "-o", "name"],
        env={**os.environ, **cluster.env()},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "serviceaccount/default"


def test_the_official_client_reads_pods(
    core_v1: kubernetes.client.CoreV1Api, namespace: str, kube: Kube
) -> None:
    kube.create(f"/api/v1/namespaces/{namespace}/pods", pod("hello", ["true"]))
    wait_phase(kube, namespace, "hello", "Succeeded")
    p = core_v1.read_namespaced_pod("hello", namespace)
    assert p.status is not None and p.status.phase == "Succeeded"
    (status,) = p.status.container_statuses or []
    assert status.state is not None and status.state.terminated is not None
    assert status.state.terminated.exit_code == 0


# --- node loss -----------------------------------------------------------------------------------


def test_a_node_whose_agent_stops_goes_not_ready_and_its_pods_are_evicted(
    kube: Kube, namespace: str, cluster: LocalCluster
) -> None:
    ns = namespace
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "svc"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "svc"}},
            "template": {
                "metadata": {"labels": {"app": "svc"}},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [container(["sleep", "600"])]},
            },
        },
    }
    kube.create(f"/apis/apps/v1/namespaces/{ns}/deployments", deployment)

    def running_pods() -> list[JSON]:
        items = kube.get(f"/api/v1/namespaces/{ns}/pods", labelSelector="app=svc")["items"]
        return [
            p
            for p in items
            if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
        ]

    (first,) = wait_for(running_pods, 30, message="the Deployment's pod Running")
    node = first["spec"]["nodeName"]
    pid = pid_of(first)
    cluster.stop_node(node)
    try:
        assert not pid_alive(pid), "a stopped node's processes die with it"

        def node_not_ready() -> bool:
            n = kube.get(f"/api/v1/nodes/{node}")
            ready = {c["type"]: c for c in n["status"]["conditions"]}["Ready"]
            return bool(ready["status"] != "True")

        wait_for(node_not_ready, 40, message=f"node {node} NotReady")

        def evicted_and_replaced() -> bool:
            old = kube.get_or_none(f"/api/v1/namespaces/{ns}/pods/{first['metadata']['name']}")
            evicted = old is None or bool(old["metadata"].get("deletionTimestamp"))
            others = [p for p in running_pods() if p["metadata"]["uid"] != first["metadata"]["uid"]]
            return evicted and any(p["spec"]["nodeName"] != node for p in others)

        wait_for(
            evicted_and_replaced, 60, message="the pod evicted and a replacement Running on another node"
        )
    finally:
        cluster.start_node(node)
    # Back again, the node's agent finishes the eviction of the pod it lost.
    wait_for(
        lambda: kube.get_or_none(f"/api/v1/namespaces/{ns}/pods/{first['metadata']['name']}") is None,
        30,
        message="the evicted pod deleted once its node is back",
    )
