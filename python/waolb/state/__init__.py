"""The desired state: Services and EndpointSlices as kube-proxy sees them, and their ports.

:mod:`~waolb.state.model` holds the records, :mod:`~waolb.state.parse` turns API objects into
them, :mod:`~waolb.state.tracker` merges them into service ports and tracks what changed.
"""

from waolb.kube.objects import MalformedObjectError
from waolb.state.model import (
    PROTOCOLS,
    ChangeBatch,
    ChangeKind,
    ChangeListener,
    EndpointInfo,
    PortEndpoints,
    ServiceName,
    ServicePortInfo,
    ServicePortKey,
)
from waolb.state.parse import (
    SERVICE_NAME_LABEL,
    TRIGGER_TIME_ANNOTATION,
    ParsedEndpointSlice,
    ParsedService,
    SlicePort,
    parse_endpoint_slice,
    parse_service,
)
from waolb.state.tracker import ClusterState, merge_endpoints, select_endpoints

__all__ = [
    "PROTOCOLS",
    "SERVICE_NAME_LABEL",
    "TRIGGER_TIME_ANNOTATION",
    "ChangeBatch",
    "ChangeKind",
    "ChangeListener",
    "ClusterState",
    "EndpointInfo",
    "MalformedObjectError",
    "ParsedEndpointSlice",
    "ParsedService",
    "PortEndpoints",
    "ServiceName",
    "ServicePortInfo",
    "ServicePortKey",
    "SlicePort",
    "merge_endpoints",
    "parse_endpoint_slice",
    "parse_service",
    "select_endpoints",
]
