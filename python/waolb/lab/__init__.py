"""A laboratory of network namespaces: small Kubernetes-like clusters on one machine.

Used by ``make demo`` and by the tests. Everything here works only inside namespaces it creates
(named ``waolb-t-<role>-<random>``, each claimed by the process that made it) and removes them,
with every process it started in them, even when something fails halfway.
"""

from .addressing import (
    CLIENT_ADDRESS,
    CLUSTER_CIDRS,
    EXTERNAL_CIDRS,
    FABRIC_GATEWAY,
    SERVICE_CIDRS,
)
from .conntrack import ConntrackEntry, ConntrackTuple, conntrack_entries
from .delay import DelayLink
from .kube import KubeLab, LabService, ObjectApi, kube_lab
from .netns import (
    CLONE_NEWNET,
    HUNG_AFTER,
    NETNS_PREFIX,
    CommandError,
    Netns,
    entered,
    host_run,
    ip_batch,
    run,
    stop_process,
    wait_until,
    write_sysctls,
)
from .objects import Backend, PortSpec, endpoint_slices, node_object, service_object
from .ownership import sweep_stale
from .proxies import HEALTHZ_PORT, METRICS_PORT, Proxy, waolb_executable
from .topology import (
    GATEWAY4,
    GATEWAY6,
    NODE_BRIDGE,
    POD_SUBNET4,
    POD_SUBNET6,
    Cluster,
    Host,
    Lab,
    Node,
    Pod,
    cluster,
    multinode,
)
from .traffic import PROTOCOLS, SERVER_PORT, Exchange, ServerSpec, exchange, start_servers

__all__ = [
    "CLIENT_ADDRESS",
    "CLONE_NEWNET",
    "CLUSTER_CIDRS",
    "EXTERNAL_CIDRS",
    "FABRIC_GATEWAY",
    "GATEWAY4",
    "GATEWAY6",
    "HEALTHZ_PORT",
    "HUNG_AFTER",
    "METRICS_PORT",
    "NETNS_PREFIX",
    "NODE_BRIDGE",
    "POD_SUBNET4",
    "POD_SUBNET6",
    "PROTOCOLS",
    "SERVER_PORT",
    "SERVICE_CIDRS",
    "Backend",
    "Cluster",
    "CommandError",
    "ConntrackEntry",
    "ConntrackTuple",
    "DelayLink",
    "Exchange",
    "Host",
    "KubeLab",
    "Lab",
    "LabService",
    "Netns",
    "Node",
    "ObjectApi",
    "Pod",
    "PortSpec",
    "Proxy",
    "ServerSpec",
    "cluster",
    "conntrack_entries",
    "endpoint_slices",
    "entered",
    "exchange",
    "host_run",
    "ip_batch",
    "kube_lab",
    "multinode",
    "node_object",
    "run",
    "service_object",
    "start_servers",
    "stop_process",
    "sweep_stale",
    "wait_until",
    "waolb_executable",
    "write_sysctls",
]
