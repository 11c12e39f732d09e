"""What a trial template may ask for (policy.py), and that the reconcile refuses the rest."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from hpo_operator.kube.crd import study_crd
from hpo_operator.kube.policy import SETTINGS, TrialPolicy, parse_policy, refused_fields

JSON = dict[str, Any]

# Each hostile template change, the setting (or account/capability) that allows it, and the field
# the refusal must name.
CASES: list[tuple[str, JSON, str, str]] = [
    ("account", {"serviceAccountName": "admin"}, "account", "serviceAccountName"),
    ("deprecated account", {"serviceAccount": "admin"}, "account", "serviceAccount"),
    ("host network", {"hostNetwork": True}, "hostNamespaces", "hostNetwork"),
    ("host pid", {"hostPID": True}, "hostNamespaces", "hostPID"),
    ("host ipc", {"hostIPC": True}, "hostNamespaces", "hostIPC"),
    (
        "host path",
        {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]},
        "hostPath",
        "volumes[0].hostPath",
    ),
    (
        "unsafe sysctl",
        {"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}},
        "unconfined",
        "securityContext.sysctls[0]",
    ),
    (
        "pod seccomp",
        {"securityContext": {"seccompProfile": {"type": "Unconfined"}}},
        "unconfined",
        "securityContext.seccompProfile",
    ),
]
CONTAINER_CASES: list[tuple[str, JSON, str, str]] = [
    ("privileged", {"securityContext": {"privileged": True}}, "privileged", "securityContext.privileged"),
    (
        "SYS_ADMIN",
        {"securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}},
        "capability",
        "securityContext.capabilities.add",
    ),
    ("host port", {"ports": [{"containerPort": 80, "hostPort": 80}]}, "hostPorts", "ports[0].hostPort"),
    ("proc mount", {"securityContext": {"procMount": "Unmasked"}}, "unconfined", "securityContext.procMount"),
    (
        "selinux",
        {"securityContext": {"seLinuxOptions": {"type": "spc_t"}}},
        "unconfined",
        "securityContext.seLinuxOptions.type",
    ),
    (
        "host process",
        {"securityContext": {"windowsOptions": {"hostProcess": True}}},
        "unconfined",
        "securityContext.windowsOptions.hostProcess",
    ),
]


def template(pod: JSON | None = None, container: JSON | None = None, kind: str = "containers") -> JSON:
    spec: JSON = {"containers": [{"name": "t", "image": "i"}], **(pod or {})}
    if container is not None:
        spec[kind] = [{"name": "c", "image": "i", **container}]
    return {"spec": spec}


def allowing(allowance: str) -> TrialPolicy:
    if allowance == "account":
        return parse_policy(service_accounts=["ns/admin"])
    if allowance == "capability":
        return parse_policy(capabilities=["SYS_ADMIN"])
    return parse_policy(settings=[allowance])


@pytest.mark.parametrize(("case", "pod", "allowance", "path"), CASES, ids=[c[0] for c in CASES])
def test_a_pod_level_escalation_is_refused_naming_the_field_unless_the_admin_allowed_it(
    case: str, pod: JSON, allowance: str, path: str
) -> None:
    refused = refused_fields(template(pod), "ns", TrialPolicy())
    assert len(refused) == 1 and refused[0].startswith(f"spec.trialTemplate.spec.{path}:"), refused
    assert refused_fields(template(pod), "ns", allowing(allowance)) == []


@pytest.mark.parametrize("kind", ["containers", "initContainers", "ephemeralContainers"])
@pytest.mark.parametrize(
    ("case", "container", "allowance", "path"), CONTAINER_CASES, ids=[c[0] for c in CONTAINER_CASES]
)
def test_a_container_escalation_is_refused_in_every_kind_of_container(
    kind: str, case: str, container: JSON, allowance: str, path: str
) -> None:
    refused = refused_fields(template(container=container, kind=kind), "ns", TrialPolicy())
    assert len(refused) == 1 and refused[0].startswith(f"spec.trialTemplate.spec.{kind}[0].{path}:"), refused
    assert refused_fields(template(container=container, kind=kind), "ns", allowing(allowance)) == []


def test_what_the_baseline_allows_passes() -> None:
    pod = {
        "securityContext": {
            "runAsNonRoot": True,
            "sysctls": [{"name": "net.ipv4.ip_local_port_range", "value": "1024 65535"}],
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": "c"}},
            {"name": "t", "emptyDir": {}},
        ],
        "nodeSelector": {"gpu": "a100"},
    }
    container = {
        "securityContext": {
            "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
            "privileged": False,
        },
        "ports": [{"containerPort": 8080}],
    }
    meta = {"annotations": {"container.apparmor.security.beta.kubernetes.io/c": "runtime/default"}}
    assert refused_fields({**template(pod, container), "metadata": meta}, "ns", TrialPolicy()) == []
    unconfined = {"annotations": {"container.apparmor.security.beta.kubernetes.io/c": "unconfined"}}
    assert len(refused_fields({**template(), "metadata": unconfined}, "ns", TrialPolicy())) == 1


def test_an_allowed_account_is_allowed_in_its_namespace_only_unless_allowed_everywhere() -> None:
    pod = {"serviceAccountName": "trainer"}
    assert refused_fields(template(pod), "a", parse_policy(["a/trainer"])) == []
    assert refused_fields(template(pod), "b", parse_policy(["a/trainer"])) != []
    assert refused_fields(template(pod), "b", parse_policy(["*/trainer"])) == []


def test_every_problem_is_named_at_once() -> None:
    hostile = template(
        {
            "serviceAccountName": "admin",
            "hostNetwork": True,
            "hostPID": True,
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
        },
        {"securityContext": {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}}},
    )
    assert len(refused_fields(hostile, "ns", TrialPolicy())) == 6


@pytest.mark.parametrize(
    ("accounts", "settings"), [(["admin"], []), (["ns/"], []), (["a/b/c"], []), ([], ["everything"])]
)
def test_a_malformed_allowance_is_an_error_that_names_it(accounts: list[str], settings: list[str]) -> None:
    with pytest.raises(ValueError, match="--allow-"):
        parse_policy(accounts, settings)


def test_the_crd_describes_every_refusal_and_every_setting_has_a_case() -> None:
    description = study_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]["trialTemplate"]["description"]
    for word in (
        "serviceAccountName",
        "hostNetwork",
        "hostPID",
        "hostIPC",
        "privileged",
        "capabilities",
        "hostPath",
        "hostPort",
        "Unconfined",
        "procMount",
        "SELinux",
        "sysctls",
        "hostProcess",
    ):
        assert word in description, word
    covered = {c[2] for c in CASES + CONTAINER_CASES}
    assert set(SETTINGS) <= covered


def test_a_template_is_not_changed_by_the_check() -> None:
    t = template({"hostPID": True}, {"securityContext": {"privileged": True}})
    before = copy.deepcopy(t)
    refused_fields(t, "ns", TrialPolicy())
    assert t == before
