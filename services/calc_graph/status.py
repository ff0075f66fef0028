"""Status reported by dataplane drivers (``Report``): kept in memory and written to etcd.

Endpoint status (``up``/``down``/``error``) by endpoint ID, the driver's last process status and
whether its dataplane reported in-sync. As Felix's status reporter does, the datastore shows it
under Calico's keys (through the datastore service's KV API)::

    /calico/felix/v2/no-region/host/<node>/status                          {"time", "uptime"}
    /calico/felix/v2/no-region/host/<node>/workload/<orch>/<wl>/endpoint/<ep>  {"status": "up"}
    /calico/felix/v2/no-region/host/<node>/endpoint/<hep>                  {"status": "up"}

``record`` only notes what each key should hold; ``StatusWriter`` writes the latest value of
every changed key in batches, so a driver's heartbeat or a burst of endpoint changes costs one
transaction, and a datastore outage is ridden out by keeping the pending writes.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from libcalico import keys
from libcalico.api.felix import felixbackend_pb2 as fb
from libcalico.client.datastore import DatastoreClient, KVOp
from libcalico.errors import CalicoError
from libcalico.runtime.log import get_logger

log = get_logger(__name__)

# etcd's default limit is 128 operations per transaction.
_MAX_OPS = 100


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
        # etcd key -> JSON to write, or None to delete; only the newest value per key.
        self.pending: dict[str, bytes | None] = {}
        self.changed = asyncio.Event()

    def record(self, node: str, msg: fb.FromDataplane) -> None:
        st = self.nodes.setdefault(node, NodeStatus())
        st.last_report = time.time()
        kind = msg.WhichOneof("payload")
        try:
            self._record(node, st, kind, msg)
        except CalicoError as exc:  # an ID that cannot form a key: keep it in memory only
            log.warning("status not written to the datastore", node=node, error=str(exc))

    def _record(self, node: str, st: NodeStatus, kind: str | None, msg: fb.FromDataplane) -> None:
        if kind == "process_status_update":
            p = msg.process_status_update
            st.process_timestamp = p.iso_timestamp
            st.uptime = p.uptime
            self._put(keys.felix_status_key(node), {"time": p.iso_timestamp, "uptime": p.uptime})
        elif kind == "workload_endpoint_status_update":
            m = msg.workload_endpoint_status_update
            st.endpoints[_wep_key(m.id)] = m.status.status
            self._put(_wep_status_key(node, m.id), {"status": m.status.status})
        elif kind == "workload_endpoint_status_remove":
            wid = msg.workload_endpoint_status_remove.id
            st.endpoints.pop(_wep_key(wid), None)
            self._delete(_wep_status_key(node, wid))
        elif kind == "host_endpoint_status_update":
            m2 = msg.host_endpoint_status_update
            st.endpoints[f"hep:{m2.id.endpoint_id}"] = m2.status.status
            self._put(keys.host_endpoint_status_key(node, m2.id.endpoint_id),
                      {"status": m2.status.status})
        elif kind == "host_endpoint_status_remove":
            hid = msg.host_endpoint_status_remove.id.endpoint_id
            st.endpoints.pop(f"hep:{hid}", None)
            self._delete(keys.host_endpoint_status_key(node, hid))
        elif kind == "dataplane_in_sync":
            st.dataplane_in_sync = True

    def _put(self, key: str, value: dict[str, object]) -> None:
        self.pending[key] = json.dumps(value, separators=(",", ":")).encode()
        self.changed.set()

    def _delete(self, key: str) -> None:
        self.pending[key] = None
        self.changed.set()

    def endpoint_statuses(self, node: str) -> dict[str, str]:
        st = self.nodes.get(node)
        return dict(st.endpoints) if st else {}


def _wep_status_key(node: str, i: fb.WorkloadEndpointID) -> str:
    return keys.workload_endpoint_status_key(node, i.orchestrator_id, i.workload_id,
                                             i.endpoint_id)


class StatusWriter:
    """Writes ``StatusStore.pending`` to the datastore; retries while it is unreachable."""

    def __init__(self, store: StatusStore, client: DatastoreClient, *,
                 interval: float = 0.1, retry: float = 1.0) -> None:
        self.store = store
        self.client = client
        self.interval = interval
        self.retry = retry
        self.writes = 0

    async def run(self) -> None:
        while True:
            await self.store.changed.wait()
            # A short pause lets a burst of reports fold into one transaction.
            await asyncio.sleep(self.interval)
            self.store.changed.clear()
            if not await self.flush():
                self.store.changed.set()
                await asyncio.sleep(self.retry)

    async def flush(self) -> bool:
        batch = dict(self.store.pending)
        if not batch:
            return True
        items = list(batch.items())
        try:
            for i in range(0, len(items), _MAX_OPS):
                ops = [KVOp.remove(k) if v is None else KVOp.put(k, v)
                       for k, v in items[i:i + _MAX_OPS]]
                await self.client.kv_txn((), ops)
        except CalicoError as exc:
            log.warning("endpoint status not written yet; will retry", error=str(exc),
                        pending=len(batch))
            return False
        for key, value in items:
            # A newer report for the same key may have arrived while we wrote.
            if self.store.pending.get(key, b"\0") == value:
                del self.store.pending[key]
        self.writes += 1
        return True
