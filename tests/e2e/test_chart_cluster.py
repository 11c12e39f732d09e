"""The chart's objects as a real Kubernetes 1.20 API server and kubectl's schema validation see them.

`kubectl apply --dry-run=server` with validation: every field must exist in the server's OpenAPI
schema (1.20, the oldest supported) and every object must pass admission. The prometheus-operator
kinds are left out: their CRDs are not installed on the local cluster.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.cluster.binaries import K8S_VERSION
from tests.cluster.cluster import LocalCluster
from tests.support.chart import render, tool

MONITORING_KINDS = {"ServiceMonitor", "PrometheusRule"}


def test_every_rendered_object_is_valid_for_a_1_20_api_server(
    cluster: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    objects = render(
        "grafanaDashboard.enabled=true",
        f"trialRbac.namespaces={{{namespace}}}",
        "trialRbac.create=true",
        f"watchNamespaces={{{namespace}}}",
        "operator.extraEnv[0].name=EXAMPLE",
        "operator.extraEnv[0].value=yes",
        "tolerations[0].key=dedicated",
        "tolerations[0].operator=Exists",
        include_crds=True,
        kube_version=K8S_VERSION,
    )
    kinds = {o["kind"] for o in objects}
    assert {
        "CustomResourceDefinition", "Deployment", "Service", "ConfigMap", "Role", "ClusterRole", "FlowSchema"
    } <= kinds  # fmt: skip
    for obj in objects:
        if obj["metadata"].get("namespace") is not None or obj["kind"] in (
            "Deployment",
            "Service",
            "ConfigMap",
        ):
            obj["metadata"]["namespace"] = (
                namespace  # the release's namespace (hpo-system) does not exist here
            )
    path = tmp_path / "chart.yaml"
    path.write_text(yaml.safe_dump_all([o for o in objects if o["kind"] not in MONITORING_KINDS]))
    done = subprocess.run(
        [tool("kubectl"), "apply", "--dry-run=server", "--validate=true", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"KUBECONFIG": str(cluster.kubeconfig), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("(server dry run)") == len(objects) - len(kinds & MONITORING_KINDS)
