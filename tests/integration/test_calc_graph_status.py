"""Status a dataplane driver reports reaches the datastore under Felix's keys."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator

from libcalico import keys
from libcalico.api.calcgraph.v1 import calcgraph_pb2 as cg
from libcalico.api.calcgraph.v1 import calcgraph_pb2_grpc as cg_grpc
from libcalico.api.felix import felixbackend_pb2 as fb
from libcalico.client import DatastoreClient
from libcalico.runtime import make_channel
from libcalico.testing.datastore import short_socket_dir
from services.calc_graph.config import CalcGraphConfig
from services.calc_graph.testing import running_calc_graph

WEP = fb.WorkloadEndpointID(orchestrator_id="k8s", workload_id="ns1/web", endpoint_id="eth0")


def report(msg: fb.FromDataplane) -> AsyncIterator[cg.ReportRequest]:
    async def gen() -> AsyncIterator[cg.ReportRequest]:
        yield cg.ReportRequest(node="node-1", message=msg)

    return gen()


async def wait_for_value(client: DatastoreClient, key: str, want: object | None) -> None:
    deadline = time.monotonic() + 10
    while True:
        kv = await client.kv_get(key)
        have = json.loads(kv.value) if kv is not None else None
        if have == want:
            return
        assert time.monotonic() < deadline, f"{key}: have {have}, want {want}"
        await asyncio.sleep(0.05)


async def test_reported_status_is_written_under_felix_keys(
    datastore_target: str, datastore_client: DatastoreClient
) -> None:
    sock_dir = short_socket_dir("calico-cgs-")
    cfg = CalcGraphConfig(listen=(f"unix://{sock_dir / 'cg.sock'}",), datastore=datastore_target)
    try:
        async with running_calc_graph(cfg) as (_svc, target), \
                make_channel(target, service="calc_graph") as channel:
            stub = cg_grpc.CalcGraphStub(channel)
            await stub.Report(report(fb.FromDataplane(
                workload_endpoint_status_update=fb.WorkloadEndpointStatusUpdate(
                    id=WEP, status=fb.EndpointStatus(status="up")))))
            await stub.Report(report(fb.FromDataplane(
                process_status_update=fb.ProcessStatusUpdate(
                    iso_timestamp="2026-11-21T06:00:00Z", uptime=12.5))))
            wep_key = "/calico/felix/v2/no-region/host/node-1/workload/k8s/ns1%2fweb/endpoint/eth0"
            assert keys.workload_endpoint_status_key("node-1", "k8s", "ns1/web", "eth0") == wep_key
            await wait_for_value(datastore_client, wep_key, {"status": "up"})
            await wait_for_value(datastore_client, keys.felix_status_key("node-1"),
                                 {"time": "2026-11-21T06:00:00Z", "uptime": 12.5})

            await stub.Report(report(fb.FromDataplane(
                workload_endpoint_status_remove=fb.WorkloadEndpointStatusRemove(id=WEP))))
            await wait_for_value(datastore_client, wep_key, None)
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)
