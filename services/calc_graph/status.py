"""Status reported by dataplane drivers (``Report``): kept in memory, readable per node.

Endpoint status (``up``/``down``/``error``) by endpoint ID, the driver's last process status and
whether its dataplane reported in-sync. Writing endpoint status back to the datastore (Felix's
status reporter) can build on ``endpoint_statuses``; until then this is what ``calicoctl`` or a
test can ask.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from libcalico.api.felix import felixbackend_pb2 as fb


@dataclass
class NodeStatus:
    endpoints: dict[str, str] = field(default_factory=dict)  # "wep:<orch>/<wl>/<ep>" -> status
    process_timestamp: str = ""
    uptime: float = 0.0
    dataplane_in_sync: bool = False
    last_report: float = 0.0


def _wep_key(i: fb.WorkloadEndpointID) -> str:
    return f"wep:{i.orchestrator_id}/{i.workload_id}/{i.endpoint_id}"


class StatusStore:
    def __init__(self) -> None:
        self.nodes: dict[str, NodeStatus] = {}

    def record(self, node: str, msg: fb.FromDataplane) -> None:
        st = self.nodes.setdefault(node, NodeStatus())
        st.last_report = time.time()
        kind = msg.WhichOneof("payload")
        if kind == "process_status_update":
            st.process_timestamp = msg.process_status_update.iso_timestamp
            st.uptime = msg.process_status_update.uptime
        elif kind == "workload_endpoint_status_update":
            m = msg.workload_endpoint_status_update
            st.endpoints[_wep_key(m.id)] = m.status.status
        elif kind == "workload_endpoint_status_remove":
            st.endpoints.pop(_wep_key(msg.workload_endpoint_status_remove.id), None)
        elif kind == "host_endpoint_status_update":
            m2 = msg.host_endpoint_status_update
            st.endpoints[f"hep:{m2.id.endpoint_id}"] = m2.status.status
        elif kind == "host_endpoint_status_remove":
            st.endpoints.pop(f"hep:{msg.host_endpoint_status_remove.id.endpoint_id}", None)
        elif kind == "dataplane_in_sync":
            st.dataplane_in_sync = True

    def endpoint_statuses(self, node: str) -> dict[str, str]:
        st = self.nodes.get(node)
        return dict(st.endpoints) if st else {}
