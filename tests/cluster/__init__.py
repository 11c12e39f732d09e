"""A real local Kubernetes for the tests: the control plane as processes and a process kubelet per node.

See tests/cluster/README.md. The names most tests need are exported here.
"""

from .cluster import ClusterSpec, LocalCluster
from .controlplane import Timings
from .rest import ApiError, Kube
from .waiting import WaitTimeout, wait_for

__all__ = ["ApiError", "ClusterSpec", "Kube", "LocalCluster", "Timings", "WaitTimeout", "wait_for"]
