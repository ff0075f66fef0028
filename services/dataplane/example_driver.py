"""A minimal dataplane driver: it logs what the Sync stream says and reports back, nothing more.

This is the skeleton ``docs/dataplane-driver-api.md`` walks through. It depends on nothing but
grpc and the generated stubs, to show that a driver for another dataplane (eBPF, Windows HNS…)
needs only the stream::

    python -m services.dataplane.example_driver --node node-1 \
        --calc-graph unix:///run/calico-lab/sock/calc_graph.sock

It keeps the desired state a real driver would program (endpoints, policies, IP sets, routes,
VTEPs) in dictionaries, prints one line per message, and follows the contract:

- apply nothing before ``in_sync`` (here: print the summary once in sync);
- after ``in_sync``, report ``DataplaneInSync`` once, then an endpoint status for every local
  endpoint as it comes and goes, and a ``ProcessStatusUpdate`` heartbeat every 10 s;
- when the stream breaks, reconnect: a new stream starts with a full snapshot, so drop the
  desired state (never the programmed one) and wait for ``in_sync`` again.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import time
from collections.abc import AsyncIterator

import grpc

from libcalico.api.calcgraph.v1 import calcgraph_pb2 as cg
from libcalico.api.calcgraph.v1 import calcgraph_pb2_grpc as cg_grpc
from libcalico.api.felix import felixbackend_pb2 as fb

log = logging.getLogger("example_driver")


class State:
    """Desired state, keyed as the messages key it. A real driver diffs this against its
    dataplane after each batch once ``in_sync`` is set."""

    def __init__(self) -> None:
        self.in_sync = False
        self.endpoints: dict[tuple[str, str, str], fb.WorkloadEndpoint] = {}
        self.policies: dict[tuple[str, str, str], fb.Policy] = {}
        self.profiles: dict[str, fb.Profile] = {}
        self.ipsets: dict[str, set[str]] = {}
        self.routes: dict[str, fb.RouteUpdate] = {}
        self.vteps: dict[str, fb.VXLANTunnelEndpointUpdate] = {}
        self.config: dict[str, str] = {}

    def apply(self, m: fb.ToDataplane) -> str:
        kind = m.WhichOneof("payload") or "?"
        if kind == "in_sync":
            self.in_sync = True
        elif kind == "config_update":
            self.config = dict(m.config_update.config)
        elif kind == "ipset_update":
            self.ipsets[m.ipset_update.id] = set(m.ipset_update.members)
        elif kind == "ipset_delta_update":
            s = self.ipsets.setdefault(m.ipset_delta_update.id, set())
            s.difference_update(m.ipset_delta_update.removed_members)
            s.update(m.ipset_delta_update.added_members)
        elif kind == "ipset_remove":
            self.ipsets.pop(m.ipset_remove.id, None)
        elif kind == "active_policy_update":
            p = m.active_policy_update.id
            self.policies[(p.kind, p.namespace, p.name)] = m.active_policy_update.policy
        elif kind == "active_policy_remove":
            p = m.active_policy_remove.id
            self.policies.pop((p.kind, p.namespace, p.name), None)
        elif kind == "active_profile_update":
            self.profiles[m.active_profile_update.id.name] = m.active_profile_update.profile
        elif kind == "active_profile_remove":
            self.profiles.pop(m.active_profile_remove.id.name, None)
        elif kind == "workload_endpoint_update":
            u = m.workload_endpoint_update
            self.endpoints[_key(u.id)] = u.endpoint
        elif kind == "workload_endpoint_remove":
            self.endpoints.pop(_key(m.workload_endpoint_remove.id), None)
        elif kind == "route_update":
            self.routes[m.route_update.dst] = m.route_update
        elif kind == "route_remove":
            self.routes.pop(m.route_remove.dst, None)
        elif kind == "vtep_update":
            self.vteps[m.vtep_update.node] = m.vtep_update
        elif kind == "vtep_remove":
            self.vteps.pop(m.vtep_remove.node, None)
        return kind


def _key(wid: fb.WorkloadEndpointID) -> tuple[str, str, str]:
    return (wid.orchestrator_id, wid.workload_id, wid.endpoint_id)


class Reporter:
    """FromDataplane messages on one Report client stream."""

    def __init__(self, stub: cg_grpc.CalcGraphStub, node: str) -> None:
        self.node = node
        self.queue: asyncio.Queue[fb.FromDataplane] = asyncio.Queue()
        self.seq = 0
        self.started = time.monotonic()
        self.call = stub.Report(self._requests())

    def put(self, msg: fb.FromDataplane) -> None:
        msg.sequence_number = self.seq
        self.seq += 1
        self.queue.put_nowait(msg)

    async def _requests(self) -> AsyncIterator[cg.ReportRequest]:
        while True:
            yield cg.ReportRequest(node=self.node, message=await self.queue.get())

    async def heartbeats(self, interval: float = 10.0) -> None:
        while True:
            now = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
            self.put(fb.FromDataplane(process_status_update=fb.ProcessStatusUpdate(
                iso_timestamp=now, uptime=time.monotonic() - self.started)))
            await asyncio.sleep(interval)


async def run(target: str, node: str) -> None:
    while True:
        state = State()  # a new stream means a new snapshot: start from nothing
        reported: set[tuple[str, str, str]] = set()
        try:
            async with grpc.aio.insecure_channel(target) as channel:
                stub = cg_grpc.CalcGraphStub(channel)
                reporter = Reporter(stub, node)
                beat = asyncio.create_task(reporter.heartbeats())
                try:
                    async for batch in stub.Sync(cg.SyncRequest(node=node, driver="example")):
                        for m in batch.messages:
                            kind = state.apply(m)
                            log.info("#%d %s", m.sequence_number, kind)
                        if not state.in_sync:
                            continue  # never program a partial snapshot
                        if not reported and state.in_sync:
                            log.info("in sync: %d endpoints, %d policies, %d IP sets, "
                                     "%d routes, %d VTEPs", len(state.endpoints),
                                     len(state.policies), len(state.ipsets),
                                     len(state.routes), len(state.vteps))
                            reporter.put(fb.FromDataplane(dataplane_in_sync=fb.DataplaneInSync()))
                        _report_endpoints(reporter, state, reported)
                finally:
                    beat.cancel()
        except grpc.aio.AioRpcError as exc:
            log.warning("stream ended (%s); reconnecting", exc.code())
        await asyncio.sleep(1.0)


def _report_endpoints(reporter: Reporter, state: State,
                      reported: set[tuple[str, str, str]]) -> None:
    for key, ep in state.endpoints.items():
        if key not in reported:
            wid = fb.WorkloadEndpointID(orchestrator_id=key[0], workload_id=key[1],
                                        endpoint_id=key[2])
            reporter.put(fb.FromDataplane(workload_endpoint_status_update=(
                fb.WorkloadEndpointStatusUpdate(id=wid, status=fb.EndpointStatus(status="up"),
                                                endpoint=ep))))
            reported.add(key)
    for key in list(reported - state.endpoints.keys()):
        wid = fb.WorkloadEndpointID(orchestrator_id=key[0], workload_id=key[1],
                                    endpoint_id=key[2])
        reporter.put(fb.FromDataplane(
            workload_endpoint_status_remove=fb.WorkloadEndpointStatusRemove(id=wid)))
        reported.discard(key)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calc-graph", default="unix:///run/calico-lab/sock/calc_graph.sock")
    ap.add_argument("--node", required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    asyncio.run(run(args.calc_graph, args.node))


if __name__ == "__main__":
    main()
