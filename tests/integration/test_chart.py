"""The Helm chart as `helm template` renders it, and its alerts as promtool evaluates them.

Needs helm (scripts/install-cluster-tools) and promtool (Debian's prometheus package); without them
the tests fail, as the e2e tests do, unless HPO_SKIP_E2E=1 asked to skip those.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
import yaml

from tests.support.chart import CHART, NAMESPACE, RELEASE, Obj, render, render_error, run, tool

MONITORING_APIS = ("monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PrometheusRule")
SELECTOR_LABELS = {"app.kubernetes.io/name": "hpo-operator", "app.kubernetes.io/instance": RELEASE}
COMMON_LABELS = {
    **SELECTOR_LABELS,
    "helm.sh/chart": "hpo-operator-0.1.0",
    "app.kubernetes.io/managed-by": "Helm",
}
DEFAULT_KINDS = [
    "ClusterRole",
    "ClusterRoleBinding",
    "Deployment",
    "FlowSchema",
    "Role",
    "RoleBinding",
    "Service",
    "ServiceAccount",
]


def kinds(objects: Iterable[Obj]) -> list[str]:
    return sorted(o["kind"] for o in objects)


def one(objects: Iterable[Obj], kind: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"{len(found)} objects of kind {kind}"
    return found[0]


def container(objects: Iterable[Obj]) -> Obj:
    containers = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    found: Obj = containers[0]
    return found


# --- lint and defaults -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sets",
    [(), ("serviceMonitor.enabled=true", "prometheusRule.enabled=true", "grafanaDashboard.enabled=true")],
    ids=["defaults", "monitoring"],
)
def test_helm_lint_is_clean(sets: tuple[str, ...]) -> None:
    args = [tool("helm"), "lint", "--strict", str(CHART)]
    for value in sets:
        args += ["--set", value]
    done = run(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout


def test_the_defaults_render_the_operator_and_nothing_optional() -> None:
    objects = render()
    assert kinds(objects) == DEFAULT_KINDS
    assert {o["metadata"]["name"] for o in objects} == {"hpo-operator", "hpo-operator-leader-election"}


def test_the_crds_ship_with_the_chart() -> None:
    crds = [o for o in render(include_crds=True) if o["kind"] == "CustomResourceDefinition"]
    assert sorted(c["metadata"]["name"] for c in crds) == ["hpostudies.hpo.dev", "hpotrials.hpo.dev"]


def test_the_operator_runs_as_a_locked_down_non_root_process() -> None:
    objects = render()
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container(objects)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    # The one writable path, on an emptyDir.
    assert container(objects)["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"][0]["name"] == "tmp" and "emptyDir" in pod["volumes"][0]
    assert pod["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"]
    resources = container(objects)["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]


def test_the_deployment_runs_one_hpo_operator_with_its_ports_and_liveness_probe() -> None:
    objects = render()
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    main = container(objects)
    assert main["image"] == "hpo-operator:0.1.0"
    assert main["command"] == ["hpo", "operator"]
    assert main["args"] == [
        "--resync=30",
        "--metrics-port=8080",
        "--liveness-port=8081",
        "--leader-elect",
        f"--leader-election-namespace={NAMESPACE}",
        "--leader-election-id=hpo-operator",
    ]
    assert {p["name"]: p["containerPort"] for p in main["ports"]} == {"metrics": 8080, "healthz": 8081}
    probe = main["livenessProbe"]
    assert probe["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert probe["failureThreshold"] >= 1 and probe["periodSeconds"] >= 1
    # Ready once /healthz answers, checked more often than liveness so a rollout does not wait long.
    ready = main["readinessProbe"]
    assert ready["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert ready["periodSeconds"] < probe["periodSeconds"]
    assert "readinessProbe" not in container(render("readinessProbe.enabled=false"))


def test_values_reach_the_operators_arguments_and_pod() -> None:
    objects = render(
        "watchNamespaces={team-a,team-b}",
        "livenessProbe.enabled=false",
        "metrics.port=9100",
        "operator.resyncSeconds=12",
        "operator.extraArgs={--kubeconfig=/etc/kube/config}",
        "image.repository=registry.example/hpo-operator",
        "image.tag=1.2.3",
        "nodeSelector.pool=system",
        "priorityClassName=system-cluster-critical",
        "podLabels.team=ml",
    )
    main = container(objects)
    assert main["image"] == "registry.example/hpo-operator:1.2.3"
    assert main["args"] == [
        "--resync=12",
        "--metrics-port=9100",
        "--leader-elect",
        f"--leader-election-namespace={NAMESPACE}",
        "--leader-election-id=hpo-operator",
        "--namespace=team-a",
        "--namespace=team-b",
        "--kubeconfig=/etc/kube/config",
    ]
    assert "livenessProbe" not in main and "readinessProbe" not in main
    assert [p["name"] for p in main["ports"]] == ["metrics"]
    pod = one(objects, "Deployment")["spec"]["template"]
    assert pod["spec"]["nodeSelector"] == {"pool": "system"}
    assert pod["spec"]["priorityClassName"] == "system-cluster-critical"
    assert pod["metadata"]["labels"] == {**SELECTOR_LABELS, "team": "ml"}


def test_the_trial_policy_reaches_the_operator_as_allowances_that_it_accepts() -> None:
    objects = render(
        "trialPolicy.allowedServiceAccounts[0].namespace=team-a",
        "trialPolicy.allowedServiceAccounts[0].name=bucket-reader",
        "trialPolicy.allowedServiceAccounts[1].namespace=*",
        "trialPolicy.allowedServiceAccounts[1].name=shared",
        "trialPolicy.allowHostPath=true",
        "trialPolicy.allowUnconfined=true",
        "trialPolicy.allowedCapabilities={SYS_PTRACE}",
        "trialRbac.create=true",
        "trialRbac.namespaces={team-b}",
    )
    allowances = [a for a in container(objects)["args"] if a.startswith("--allow-")]
    assert allowances == [
        "--allow-service-account=team-a/bucket-reader",
        "--allow-service-account=*/shared",
        "--allow-service-account=team-b/hpo-trial",
        "--allow-trial-setting=hostPath",
        "--allow-trial-setting=unconfined",
        "--allow-capability=SYS_PTRACE",
    ]
    from hpo_operator.kube.policy import parse_policy

    accounts = [a.split("=", 1)[1] for a in allowances if a.startswith("--allow-service-account")]
    settings = [a.split("=", 1)[1] for a in allowances if a.startswith("--allow-trial-setting")]
    policy = parse_policy(accounts, settings, ["SYS_PTRACE"])
    assert policy.allows_account("team-b", "hpo-trial") and policy.allows_account("anywhere", "shared")
    assert policy.allows("hostPath") and not policy.allows("privileged")
    # By default the operator gets no allowance at all.
    assert not [a for a in container(render())["args"] if a.startswith("--allow-")]


def test_replicas_elect_a_leader_on_a_lease_in_the_release_namespace() -> None:
    objects = render("replicaCount=3", "leaderElection.leaseName=hpo-leader")
    assert one(objects, "Deployment")["spec"]["replicas"] == 3
    assert "--leader-election-id=hpo-leader" in container(objects)["args"]
    role = one(objects, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}
    ]
    binding = one(objects, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == one(objects, "ServiceAccount")["metadata"]["name"]
    # Without it: one replica, no Lease, no Role.
    plain = render("leaderElection.enabled=false")
    assert not any(a.startswith("--leader") for a in container(plain)["args"])
    assert "Role" not in kinds(plain)


# --- labels and names --------------------------------------------------------------------------


def test_every_object_has_the_common_labels_and_selectors_use_only_the_stable_ones() -> None:
    objects = render(
        "grafanaDashboard.enabled=true",
        "trialRbac.create=true",
        "trialRbac.namespaces={team-a}",
        api_versions=MONITORING_APIS,
    )
    assert kinds(objects) == sorted(
        [
            *DEFAULT_KINDS,
            "ConfigMap",
            "PrometheusRule",
            "ServiceMonitor",
            "ServiceAccount",
            "Role",
            "RoleBinding",
        ]
    )
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert COMMON_LABELS.items() <= labels.items(), obj["kind"]
        assert labels["app.kubernetes.io/version"] == "0.1.0"
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["selector"]["matchLabels"] == SELECTOR_LABELS
    assert SELECTOR_LABELS.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert one(objects, "Service")["spec"]["selector"] == SELECTOR_LABELS
    monitor = one(objects, "ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"] == SELECTOR_LABELS
    assert monitor["namespaceSelector"] == {"matchNames": [NAMESPACE]}


@pytest.mark.parametrize(
    ("release", "sets", "fullname"),
    [
        ("r" * 53, (), "r" * 53 + "-hpo-opera"),
        ("r" * 50, ("nameOverride=" + "x" * 11 + "-yyyy",), "r" * 50 + "-" + "x" * 11),  # "-" at 63 trimmed
        ("short", ("fullnameOverride=" + "f" * 63,), "f" * 63),
        ("my-hpo-operator", (), "my-hpo-operator"),  # the release already names the chart
    ],
    ids=["long-release", "trailing-dash", "fullname-override", "release-holds-chart-name"],
)
def test_names_fit_in_63_characters(release: str, sets: tuple[str, ...], fullname: str) -> None:
    objects = render(*sets, "grafanaDashboard.enabled=true", release=release, api_versions=MONITORING_APIS)
    names = {o["kind"]: o["metadata"]["name"] for o in objects}
    for name in names.values():
        assert (
            len(name) <= 63
            and not name.endswith("-")
            and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name)
        )
    assert names["Deployment"] == fullname
    assert names["ConfigMap"].endswith("-dashboard")
    for label in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "helm.sh/chart"):
        assert len(one(objects, "Deployment")["metadata"]["labels"][label]) <= 63


# --- optional objects --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "api_versions", "expected"),
    [
        ((), (), set()),
        ((), MONITORING_APIS, {"ServiceMonitor", "PrometheusRule"}),
        ((), MONITORING_APIS[:1], {"ServiceMonitor"}),
        (("serviceMonitor.enabled=false", "prometheusRule.enabled=false"), MONITORING_APIS, set()),
        (
            ("serviceMonitor.enabled=true", "prometheusRule.enabled=true"),
            (),
            {"ServiceMonitor", "PrometheusRule"},
        ),
        (("prometheusRule.enabled=true",), (), {"PrometheusRule"}),
        (("metrics.enabled=false",), MONITORING_APIS, set()),
    ],
    ids=["auto-no-api", "auto-api", "auto-only-servicemonitor-api", "off", "on", "rule-only", "no-metrics"],
)
def test_monitoring_objects_follow_enabled_and_the_clusters_apis(
    sets: tuple[str, ...], api_versions: tuple[str, ...], expected: set[str]
) -> None:
    objects = render(*sets, api_versions=api_versions)
    assert {o["kind"] for o in objects} & {"ServiceMonitor", "PrometheusRule"} == expected


def test_without_metrics_there_is_no_service_and_no_metrics_port() -> None:
    objects = render("metrics.enabled=false")
    assert "Service" not in kinds(objects)
    assert not any(a.startswith("--metrics-port") for a in container(objects)["args"])


def test_the_servicemonitor_keeps_the_metrics_namespace_label_and_takes_overrides() -> None:
    objects = render(
        "serviceMonitor.enabled=true",
        "serviceMonitor.namespace=monitoring",
        "serviceMonitor.additionalLabels.release=kube-prometheus-stack",
        "serviceMonitor.interval=15s",
    )
    monitor = one(objects, "ServiceMonitor")
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint == {
        "port": "metrics",
        "path": "/metrics",
        "interval": "15s",
        "scrapeTimeout": "10s",
        "honorLabels": True,
    }
    assert one(objects, "Service")["spec"]["ports"][0]["name"] == "metrics"


def test_the_dashboard_configmap_carries_the_sidecar_label_and_the_dashboard() -> None:
    objects = render("grafanaDashboard.enabled=true", "grafanaDashboard.annotations.grafana_folder=HPO")
    configmap = one(objects, "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "HPO"}
    dashboard = json.loads(configmap["data"]["hpo-operator.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "hpo-operator.json").read_text())
    titles = {p["title"] for p in dashboard["panels"]}
    for wanted in (
        "Studies by phase",
        "Trials ended, by outcome",
        "Best value over time",
        "GPUs in use",
        "Decision latency",
        "Budget used",
    ):
        assert wanted in titles


def dashboard_queries() -> list[str]:
    dashboard = json.loads((CHART / "dashboards" / "hpo-operator.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query, with Grafana's variables given values."""
    queries = dashboard_queries()
    assert len(queries) >= 15
    for query in queries:
        assert "hpo_" in query or "up{" in query
    substituted = [
        q.replace("$__rate_interval", "5m")
        .replace("$job", ".*")
        .replace("$namespace", ".*")
        .replace("$study", ".*")
        for q in queries
    ]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"q:{i}", "expr": q} for i, q in enumerate(substituted)],
            }
        ]
    }
    path = tmp_path / "dashboard.yaml"
    path.write_text(yaml.safe_dump(rules))
    done = run(tool("promtool"), "check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("kube_version", "api_version"),
    [("1.20.2", "v1beta1"), ("1.22.0", "v1beta1"), ("1.23.0", "v1beta2"), ("1.25.3", "v1beta2"),
     ("1.26.0", "v1beta3"), ("1.28.9", "v1beta3"), ("1.29.0", "v1"), ("1.35.0", "v1")],
)  # fmt: skip
def test_the_operators_requests_get_a_priority_level_of_their_own(
    kube_version: str, api_version: str
) -> None:
    objects = render(kube_version=kube_version)
    (schema,) = [o for o in objects if o["kind"] == "FlowSchema"]
    assert schema["apiVersion"] == f"flowcontrol.apiserver.k8s.io/{api_version}"
    (account,) = [o for o in objects if o["kind"] == "ServiceAccount"]
    spec = schema["spec"]
    assert spec["priorityLevelConfiguration"] == {"name": "workload-high"}
    assert spec["matchingPrecedence"] < 9000  # ahead of the API server's service-accounts schema
    (rule,) = spec["rules"]
    assert rule["subjects"] == [
        {
            "kind": "ServiceAccount",
            "serviceAccount": {"name": account["metadata"]["name"], "namespace": NAMESPACE},
        }
    ]
    (resources,) = rule["resourceRules"]
    assert resources["verbs"] == resources["apiGroups"] == resources["resources"] == ["*"]
    assert resources["clusterScope"] is True and resources["namespaces"] == ["*"]


def test_the_flowschema_follows_its_values() -> None:
    def schemas(*sets: str) -> list[Obj]:
        objects = render(*sets, kube_version="1.30.0")
        return [o for o in objects if o["kind"] == "FlowSchema"]

    assert schemas("apiPriority.enabled=false") == []
    (tuned,) = schemas("apiPriority.priorityLevel=system", "apiPriority.matchingPrecedence=500")
    assert tuned["spec"]["priorityLevelConfiguration"]["name"] == "system"
    assert tuned["spec"]["matchingPrecedence"] == 500
    assert "/apiPriority/matchingPrecedence" in render_error("apiPriority.matchingPrecedence=1")


def test_trial_rbac_grants_trials_only_their_status_in_each_namespace() -> None:
    objects = render(
        "trialRbac.create=true", "trialRbac.namespaces={team-a,team-b}", "leaderElection.enabled=false"
    )
    roles = [o for o in objects if o["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert role["metadata"]["name"] == "hpo-trial"
        assert role["rules"] == [
            {"apiGroups": ["hpo.dev"], "resources": ["hpotrials/status"], "verbs": ["get", "patch"]}
        ]
    bindings = [o for o in objects if o["kind"] == "RoleBinding"]
    for binding in bindings:
        namespace = binding["metadata"]["namespace"]
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "hpo-trial",
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "hpo-trial", "namespace": namespace}
        ]
    accounts = {
        (o["metadata"]["namespace"], o["metadata"]["name"]) for o in objects if o["kind"] == "ServiceAccount"
    }
    assert {("team-a", "hpo-trial"), ("team-b", "hpo-trial")} <= accounts


# --- values that cannot work -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ("metrics.enabled=false", "serviceMonitor.enabled=true"),
            "serviceMonitor.enabled=true needs metrics.enabled=true",
        ),
        (
            ("metrics.enabled=false", "prometheusRule.enabled=true"),
            "prometheusRule.enabled=true needs metrics.enabled=true",
        ),
        (
            ("metrics.enabled=false", "grafanaDashboard.enabled=true"),
            "grafanaDashboard.enabled=true needs metrics.enabled=true",
        ),
        (("livenessProbe.port=8080",), "metrics.port and livenessProbe.port are both 8080"),
        (("trialRbac.create=true",), "trialRbac.create=true needs trialRbac.namespaces"),
        (
            ("trialRbac.create=true", "trialRbac.namespaces={team-c}", "watchNamespaces={team-a}"),
            "trialRbac.namespaces lists team-c, which is not in watchNamespaces",
        ),
        (("podLabels.app\\.kubernetes\\.io/name=other",), "podLabels may not set app.kubernetes.io/name"),
        (("serviceMonitor.enabled=sometimes",), "value must be one of true, false, 'auto'"),
        (
            ("replicaCount=2", "leaderElection.enabled=false"),
            "replicaCount=2 needs leaderElection.enabled=true",
        ),
        (("replicas=2",), "additional properties 'replicas' not allowed"),
        (("metrics.port=70000",), "maximum"),
        (("trialPolicy.allowPrivileged=yes",), "/trialPolicy/allowPrivileged"),
        (("trialPolicy.allowedServiceAccounts[0].name=x",), "namespace"),
    ],
    ids=[
        "monitor-without-metrics",
        "rule-without-metrics",
        "dashboard-without-metrics",
        "same-ports",
        "trial-rbac-without-namespaces",
        "trial-rbac-outside-watched",
        "pod-label-overrides-selector",
        "bad-enabled",
        "replicas-without-leader-election",
        "unknown-key",
        "bad-port",
        "bad-policy-flag",
        "policy-account-without-namespace",
    ],
)
def test_conflicting_or_bad_values_fail_with_a_message_naming_the_keys(
    sets: tuple[str, ...], message: str
) -> None:
    assert message in render_error(*sets)


# --- the alerts --------------------------------------------------------------------------------


def rule_groups() -> list[Obj]:
    rule = one(render(api_versions=MONITORING_APIS), "PrometheusRule")
    groups: list[Obj] = rule["spec"]["groups"]
    return groups


def test_the_rendered_rules_pass_promtool_check(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule_groups()}))
    done = run(tool("promtool"), "check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    alerts = [r["alert"] for g in rule_groups() for r in g["rules"]]
    assert alerts == [
        "HPOOperatorDown",
        "HPOStudyStuck",
        "HPOTrialsFailing",
        "HPOStudyOverBudget",
        "HPOOperatorWatchFailing",
    ]


def test_alerts_can_be_turned_off_tuned_and_extended() -> None:
    objects = render(
        "prometheusRule.enabled=true",
        "prometheusRule.studyStuck.enabled=false",
        "prometheusRule.trialsFailing.ratio=0.25",
        "prometheusRule.alertLabels.team=ml",
        "prometheusRule.extraRules[0].alert=Extra",
        "prometheusRule.extraRules[0].expr=vector(1)",
    )
    rules = one(objects, "PrometheusRule")["spec"]["groups"][0]["rules"]
    by_name = {r["alert"]: r for r in rules}
    assert list(by_name) == [
        "HPOOperatorDown",
        "HPOTrialsFailing",
        "HPOStudyOverBudget",
        "HPOOperatorWatchFailing",
        "Extra",
    ]
    assert ") > 0.25\n" in by_name["HPOTrialsFailing"]["expr"]
    assert by_name["HPOOperatorDown"]["labels"] == {"severity": "critical", "team": "ml"}


def series(name: str, labels: Mapping[str, str], values: str) -> Obj:
    text = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{text}}}", "values": values}


A = {"namespace": "team-a", "study": "resnet"}
B = {"namespace": "team-a", "study": "bert"}
JOB = {"job": RELEASE, "namespace": NAMESPACE, "instance": "10.0.0.5:8080"}


def fired(severity: str, labels: Mapping[str, str], summary: str, *description: str) -> Obj:
    """An expected alert: its labels and annotations (the description's folded lines joined by spaces)."""
    return {
        "exp_labels": {"severity": severity, **labels},
        "exp_annotations": {"summary": summary, "description": " ".join(description)},
    }


OPERATOR_DOWN = fired(
    "critical",
    {},
    "The hpo-operator is down",
    f"No hpo-operator in namespace {NAMESPACE} has been scraped for 5m.",
    "Studies make no progress: no trial starts, no trial is pruned and deadlines are not enforced.",
    f"Check `kubectl -n {NAMESPACE} get pods -l app.kubernetes.io/instance={RELEASE}`.",
)

RULE_TESTS: list[Obj] = [
    {
        # Scraped for 5 minutes, then down: the alert fires 5 minutes after the first failed scrape.
        "interval": "1m",
        "input_series": [series("up", JOB, "1x5 0x15")],
        "alert_rule_test": [
            {"eval_time": "8m", "alertname": "HPOOperatorDown", "exp_alerts": []},
            {"eval_time": "12m", "alertname": "HPOOperatorDown", "exp_alerts": [OPERATOR_DOWN]},
        ],
    },
    {
        # The operator's target never appeared at all.
        "interval": "1m",
        "input_series": [series("up", {**JOB, "job": "something-else"}, "1x10")],
        "alert_rule_test": [
            {"eval_time": "4m", "alertname": "HPOOperatorDown", "exp_alerts": []},
            {"eval_time": "6m", "alertname": "HPOOperatorDown", "exp_alerts": [OPERATOR_DOWN]},
        ],
    },
    {
        # resnet runs trials for 5 minutes, then none while Running; bert keeps one running; a
        # finished study with no trials is not stuck.
        "interval": "1m",
        "input_series": [
            series("hpo_study_phase", {**A, "phase": "Running"}, "1x40"),
            series("hpo_study_running_trials", A, "2x5 0x35"),
            series("hpo_study_phase", {**B, "phase": "Running"}, "1x40"),
            series("hpo_study_running_trials", B, "1x40"),
            series("hpo_study_phase", {"namespace": "team-a", "study": "old", "phase": "Succeeded"}, "1x40"),
            series("hpo_study_running_trials", {"namespace": "team-a", "study": "old"}, "0x40"),
        ],
        "alert_rule_test": [
            {"eval_time": "15m", "alertname": "HPOStudyStuck", "exp_alerts": []},
            {
                "eval_time": "25m",
                "alertname": "HPOStudyStuck",
                "exp_alerts": [
                    fired(
                        "warning",
                        A,
                        "An HPO study has had no running trial for 15m",
                        "Study team-a/resnet is not finished but has run no trial for 15m.",
                        "Usually no GPU is free (`kubectl describe pod` of its trials shows Insufficient",
                        "nvidia.com/gpu) or trial pods cannot start (image, quota); its budget keeps running",
                        "meanwhile.",
                    )
                ],
            },
        ],
    },
    {
        # resnet: one failed trial a minute and nothing else ends; bert: trials are pruned, one
        # failure in a while, which stays below both thresholds.
        "interval": "1m",
        "input_series": [
            series("hpo_trials_finished_total", {**A, "outcome": "failed"}, "0+1x40"),
            series("hpo_trials_finished_total", {**A, "outcome": "completed"}, "0x40"),
            series("hpo_trials_finished_total", {**B, "outcome": "failed"}, "0x20 1x20"),
            series("hpo_trials_finished_total", {**B, "outcome": "pruned"}, "0+2x40"),
        ],
        "alert_rule_test": [
            {"eval_time": "3m", "alertname": "HPOTrialsFailing", "exp_alerts": []},
            {
                "eval_time": "20m",
                "alertname": "HPOTrialsFailing",
                "exp_alerts": [
                    fired(
                        "warning",
                        A,
                        "Trials of an HPO study are failing",
                        "100% of the trials of study team-a/resnet that ended in the last 30m failed.",
                        "Read a failed trial's logs: kubectl -n team-a logs job/<trial>",
                        "(trials are HPOTrials named <study>-<index>).",
                    )
                ],
            },
        ],
    },
    {
        # resnet passes its deadline while Running; bert finished at 120% and is history.
        "interval": "1m",
        "input_series": [
            series("hpo_study_budget_used_ratio", A, "0+0.1x20"),
            series("hpo_study_phase", {**A, "phase": "Running"}, "1x20"),
            series("hpo_study_budget_used_ratio", B, "1.2x20"),
            series("hpo_study_phase", {**B, "phase": "Succeeded"}, "1x20"),
        ],
        "alert_rule_test": [
            {"eval_time": "11m", "alertname": "HPOStudyOverBudget", "exp_alerts": []},
            {
                "eval_time": "15m",
                "alertname": "HPOStudyOverBudget",
                "exp_alerts": [
                    fired(
                        "warning",
                        A,
                        "An HPO study has overrun its time budget",
                        "Study team-a/resnet has used 150% of its time budget and is still not finished.",
                        "The operator stops every trial at the deadline, so it is failing to:",
                        "check its logs and the study's trials' Jobs.",
                    )
                ],
            },
        ],
    },
]


POD = {**JOB, "pod": "hpo-hpo-operator-7d9f-x2"}
RULE_TESTS.append(
    {
        # Two failures at an API server restart, then quiet; from minute 20 one failure a minute,
        # as when the CRDs are missing (kopf runs again every 30 s at most).
        "interval": "1m",
        "input_series": [series("hpo_operator_watch_failures_total", POD, "0x5 2x15 2+1x30")],
        "alert_rule_test": [
            {"eval_time": "18m", "alertname": "HPOOperatorWatchFailing", "exp_alerts": []},
            {"eval_time": "26m", "alertname": "HPOOperatorWatchFailing", "exp_alerts": []},
            {
                "eval_time": "32m",
                "alertname": "HPOOperatorWatchFailing",
                "exp_alerts": [
                    fired(
                        "warning",
                        {"namespace": NAMESPACE, "pod": POD["pod"]},
                        "The hpo-operator keeps losing its watches",
                        f"The hpo-operator {POD['pod']} in namespace {NAMESPACE}",
                        "ran kopf again at least 5 times in the last 15m:",
                        "it cannot keep watching its resources,",
                        "so trials are pruned, started and stopped late.",
                        'Its log says why ("kopf ended on ...").',
                        "Check that the CRDs hpostudies.hpo.dev and hpotrials.hpo.dev",
                        "are installed and served,",
                        "and the operator's RBAC.",
                    )
                ],
            },
        ],
    }
)


def test_the_alerts_fire_when_and_only_when_they_should(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups()}))
    (tmp_path / "tests.yaml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": RULE_TESTS})
    )
    done = subprocess.run(
        [tool("promtool"), "test", "rules", "tests.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
