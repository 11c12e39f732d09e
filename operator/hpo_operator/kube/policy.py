"""What a study's trialTemplate may ask for: the trial pod runs as the study's trial identity, with
no more privilege than the Pod Security Standards' baseline profile grants, unless a cluster admin
allowed more in the operator's own configuration.

Creating an HPOStudy makes the operator create Jobs with the operator's rights. Without this gate a
user allowed to create HPOStudies but not pods could run a pod as any ServiceAccount of the
namespace, or as root on the node. Pure: a template and a policy in, the refused fields out.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

# The capabilities the baseline profile lets a container add: those container runtimes grant by
# default anyway. Anything else (SYS_ADMIN, NET_ADMIN, SYS_PTRACE, ...) needs the admin's allowance.
BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
# Namespaced sysctls the kubelet allows without --allowed-unsafe-sysctls (the baseline's list).
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
    }
)
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t"})
APPARMOR_PREFIX = "container.apparmor.security.beta.kubernetes.io/"

# The settings an admin may allow, each with what it covers (docs/security.md, the chart's values).
SETTINGS: dict[str, str] = {
    "hostNamespaces": "spec.hostNetwork, spec.hostPID, spec.hostIPC",
    "privileged": "securityContext.privileged of a container",
    "hostPath": "hostPath volumes",
    "hostPorts": "hostPort of a container's ports",
    "unconfined": "seccomp or AppArmor Unconfined, procMount Unmasked, SELinux types and users, "
    "unsafe sysctls, Windows hostProcess",
}

# One line per rule, for the CRD's description of trialTemplate and for docs/security.md.
RULES = (
    "serviceAccountName (and serviceAccount) may only name an account the operator's configuration "
    "allows: unset, the trial runs as its own identity that may patch its own HPOTrial's status only",
    "hostNetwork, hostPID and hostIPC are refused",
    "privileged containers are refused",
    "capabilities beyond the Pod Security baseline's (" + ", ".join(sorted(BASELINE_CAPABILITIES)) + ") "
    "are refused",
    "hostPath volumes are refused",
    "hostPort is refused",
    "seccomp and AppArmor Unconfined, procMount other than Default, SELinux types other than the "
    "container types, SELinux user or role, unsafe sysctls and Windows hostProcess are refused",
)


@dataclass(frozen=True)
class TrialPolicy:
    """What the cluster admin allows beyond the default (`hpo operator --allow-*`, the chart's
    ``trialPolicy``). The default allows nothing beyond the baseline."""

    # (namespace, name); namespace "*" allows the account in every namespace.
    service_accounts: frozenset[tuple[str, str]] = field(default_factory=frozenset)
    settings: frozenset[str] = field(default_factory=frozenset)
    capabilities: frozenset[str] = field(default_factory=frozenset)

    def allows_account(self, namespace: str, name: str) -> bool:
        return (namespace, name) in self.service_accounts or ("*", name) in self.service_accounts

    def allows(self, setting: str) -> bool:
        return setting in self.settings

    def describe(self) -> str:
        parts = [f"{ns}/{name}" for ns, name in sorted(self.service_accounts)]
        parts += sorted(self.settings) + [f"capability {c}" for c in sorted(self.capabilities)]
        return ", ".join(parts) or "nothing beyond the baseline"


def parse_policy(
    service_accounts: Iterable[str] = (), settings: Iterable[str] = (), capabilities: Iterable[str] = ()
) -> TrialPolicy:
    """The policy from the operator's flags; raises ValueError naming a malformed value."""
    accounts = set()
    for text in service_accounts:
        namespace, sep, name = text.partition("/")
        if not sep or not namespace or not name or "/" in name:
            raise ValueError(
                f"--allow-service-account {text!r}: use NAMESPACE/NAME, or */NAME for every namespace"
            )
        accounts.add((namespace, name))
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ValueError(f"--allow-trial-setting {', '.join(unknown)}: not one of {', '.join(SETTINGS)}")
    caps = {c.upper().removeprefix("CAP_") for c in capabilities}
    return TrialPolicy(frozenset(accounts), frozenset(settings), frozenset(caps))


def refused_fields(template: Mapping[str, Any], namespace: str, policy: TrialPolicy) -> list[str]:
    """Every field of ``template`` (the study's spec.trialTemplate) the policy refuses, each named by
    its path and why; [] when the trial pod may run as asked."""
    spec, meta = template.get("spec"), template.get("metadata")
    return list(
        _refusals(
            spec if isinstance(spec, Mapping) else {},
            meta if isinstance(meta, Mapping) else {},
            namespace,
            policy,
        )
    )


def _refusals(
    spec: Mapping[str, Any], meta: Mapping[str, Any], namespace: str, policy: TrialPolicy
) -> Iterator[str]:
    root = "spec.trialTemplate.spec"
    for key in ("serviceAccountName", "serviceAccount"):
        name = spec.get(key)
        if name and not policy.allows_account(namespace, str(name)):
            yield (
                f"{root}.{key}: {str(name)[:100]!r} is not allowed: trials run as the study's own trial "
                "identity unless the operator's configuration allows the account (trialPolicy)"
            )
    if not policy.allows("hostNamespaces"):
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(key) is True:
                yield f"{root}.{key}: host namespaces are not allowed (trialPolicy)"
    if not policy.allows("hostPath"):
        for i, volume in enumerate(_items(spec.get("volumes"))):
            if "hostPath" in volume:
                yield f"{root}.volumes[{i}].hostPath: hostPath volumes are not allowed (trialPolicy)"
    if not policy.allows("unconfined"):
        yield from _unconfined(spec.get("securityContext"), f"{root}.securityContext", pod=True)
        for key, value in _items_of(meta.get("annotations")):
            if (
                key.startswith(APPARMOR_PREFIX)
                and value != "runtime/default"
                and not value.startswith("localhost/")
            ):
                yield f"spec.trialTemplate.metadata.annotations[{key}]: AppArmor {value!r} is not allowed"
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for i, container in enumerate(_items(spec.get(kind))):
            yield from _container(container, f"{root}.{kind}[{i}]", policy)


def _container(container: Mapping[str, Any], path: str, policy: TrialPolicy) -> Iterator[str]:
    context = container.get("securityContext")
    context = context if isinstance(context, Mapping) else {}
    if context.get("privileged") is True and not policy.allows("privileged"):
        yield f"{path}.securityContext.privileged: privileged containers are not allowed (trialPolicy)"
    added = (
        (context.get("capabilities") or {}).get("add")
        if isinstance(context.get("capabilities"), Mapping)
        else None
    )
    for cap in added if isinstance(added, list) else []:
        name = str(cap).upper().removeprefix("CAP_")
        if name not in BASELINE_CAPABILITIES and name not in policy.capabilities:
            yield f"{path}.securityContext.capabilities.add: {name[:64]} is not allowed (trialPolicy)"
    if not policy.allows("unconfined"):
        yield from _unconfined(context, f"{path}.securityContext", pod=False)
    if not policy.allows("hostPorts"):
        for j, port in enumerate(_items(container.get("ports"))):
            if port.get("hostPort"):
                yield f"{path}.ports[{j}].hostPort: host ports are not allowed (trialPolicy)"


def _unconfined(context: Any, path: str, pod: bool) -> Iterator[str]:
    if not isinstance(context, Mapping):
        return
    seccomp = context.get("seccompProfile")
    if isinstance(seccomp, Mapping) and seccomp.get("type") == "Unconfined":
        yield f"{path}.seccompProfile: Unconfined is not allowed (trialPolicy)"
    selinux = context.get("seLinuxOptions")
    if isinstance(selinux, Mapping):
        if str(selinux.get("type") or "") not in SELINUX_TYPES:
            yield f"{path}.seLinuxOptions.type: {str(selinux['type'])[:64]!r} is not allowed (trialPolicy)"
        for key in ("user", "role"):
            if selinux.get(key):
                yield f"{path}.seLinuxOptions.{key}: setting it is not allowed (trialPolicy)"
    windows = context.get("windowsOptions")
    if isinstance(windows, Mapping) and windows.get("hostProcess") is True:
        yield f"{path}.windowsOptions.hostProcess: host processes are not allowed (trialPolicy)"
    if pod:
        for i, sysctl in enumerate(_items(context.get("sysctls"))):
            name = str(sysctl.get("name"))[:64]
            if name not in SAFE_SYSCTLS:
                yield f"{path}.sysctls[{i}]: {name!r} is not a safe sysctl (trialPolicy)"
    elif context.get("procMount") not in (None, "Default"):
        yield f"{path}.procMount: {str(context['procMount'])[:64]!r} is not allowed (trialPolicy)"


def _items(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _items_of(value: Any) -> list[tuple[str, str]]:
    return [(str(k), str(v)) for k, v in value.items()] if isinstance(value, Mapping) else []
