"""Free GPUs in the cluster, counted the way the scheduler counts them.

Allocatable ``nvidia.com/gpu`` of every Ready, schedulable Node, minus what every non-terminal pod
requests (bound or still waiting: a waiting pod will take its GPUs first). A pod being deleted still
holds its GPUs until it is gone, as for the scheduler.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .resources import GPU

TERMINAL_POD_PHASES = frozenset({"Succeeded", "Failed"})


def quantity(value: Any) -> int:
    """An extended-resource quantity ("2", 2, "2000m") as a whole number."""
    text = str(value).strip()
    if text.endswith("m"):
        return int(text[:-1]) // 1000
    return int(float(text))


def node_ready(node: Mapping[str, Any]) -> bool:
    if node.get("spec", {}).get("unschedulable"):
        return False
    conditions = node.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def node_gpus(node: Mapping[str, Any]) -> int:
    return quantity((node.get("status", {}).get("allocatable") or {}).get(GPU, 0))


def pod_gpus(pod: Mapping[str, Any]) -> int:
    """A pod's GPU request: the larger of its containers' sum and its largest init container."""
    spec = pod.get("spec", {})

    def request(container: Mapping[str, Any]) -> int:
        resources = container.get("resources") or {}
        # For extended resources a limit without a request is the request.
        amount = (resources.get("requests") or {}).get(GPU, (resources.get("limits") or {}).get(GPU, 0))
        return quantity(amount)

    main = sum(request(c) for c in spec.get("containers") or [])
    init = max((request(c) for c in spec.get("initContainers") or []), default=0)
    return max(main, init)


def pod_terminal(pod: Mapping[str, Any]) -> bool:
    return pod.get("status", {}).get("phase") in TERMINAL_POD_PHASES


@dataclass(frozen=True)
class Capacity:
    total: int  # allocatable GPUs on Ready, schedulable nodes
    used: int  # requested by non-terminal pods on those nodes or not yet bound
    largest: int | None = None  # the most GPUs any one node has, Ready or not (None: not counted)

    @property
    def free(self) -> int:
        return max(0, self.total - self.used)


def gpu_capacity(nodes: Sequence[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]]) -> Capacity:
    usable = {n["metadata"]["name"]: node_gpus(n) for n in nodes if node_ready(n)}
    used = sum(
        pod_gpus(p)
        for p in pods
        if not pod_terminal(p) and p.get("spec", {}).get("nodeName") in (None, "", *usable)
    )
    largest = max((node_gpus(n) for n in nodes), default=0)
    return Capacity(total=sum(usable.values()), used=used, largest=largest)
