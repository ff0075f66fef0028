"""The driver's gRPC edges against a scripted in-process CalcGraph server on a unix socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from libcalico.api.calcgraph.v1 import calcgraph_pb2 as cg
from libcalico.api.calcgraph.v1 import calcgraph_pb2_grpc as cg_grpc
from libcalico.api.felix import felixbackend_pb2 as fb
from services.dataplane import messages as m
from services.dataplane.status import StatusReporter
from services.dataplane.stream import RESET, Batch, CalcGraphSource, ReportSink


class ScriptedCalcGraph(cg_grpc.CalcGraphServicer):
    """First Sync: one batch, then UNAVAILABLE. Later Syncs: one batch, then hold open."""

    def __init__(self) -> None:
        self.syncs: list[cg.SyncRequest] = []
        self.reports: list[cg.ReportRequest] = []

    async def Sync(self, request: cg.SyncRequest, context: Any) -> AsyncIterator[cg.SyncBatch]:
        self.syncs.append(request)
        n = len(self.syncs)
        yield cg.SyncBatch(messages=[m.config(Call=str(n)), m.in_sync()], datastore_revision=n)
        if n == 1:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "calc_graph restarting")
        await asyncio.sleep(3600)

    async def Report(self, request_iterator: AsyncIterator[cg.ReportRequest],
                     context: Any) -> cg.ReportResult:
        async for req in request_iterator:
            self.reports.append(req)
        return cg.ReportResult(successful=True)

    async def BGPSync(self, request: cg.BGPSyncRequest,
                      context: Any) -> AsyncIterator[cg.BGPUpdate]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this test")
        yield cg.BGPUpdate()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[ScriptedCalcGraph, str]]:
    servicer = ScriptedCalcGraph()
    srv = grpc.aio.server()
    cg_grpc.add_CalcGraphServicer_to_server(servicer, srv)
    target = f"unix://{tmp_path / 'cg.sock'}"
    srv.add_insecure_port(target)
    await srv.start()
    try:
        yield servicer, target
    finally:
        await srv.stop(0)


async def test_source_reconnects_and_announces_a_new_generation(
    server: tuple[ScriptedCalcGraph, str],
) -> None:
    servicer, target = server
    source = CalcGraphSource(target, "node-1", "test", retry_min=0.01, retry_max=0.05)
    items: list[Any] = []
    async for item in source.items():
        items.append(item)
        if len(items) == 3:
            break
    await source.close()
    first, reset, second = items
    assert isinstance(first, Batch) and isinstance(second, Batch)
    assert first.messages[0].config_update.config["Call"] == "1"
    assert reset is RESET
    assert second.messages[0].config_update.config["Call"] == "2"
    assert [s.node for s in servicer.syncs] == ["node-1", "node-1"]
    assert servicer.syncs[0].driver == "test"


async def test_reports_go_out_on_one_report_stream(server: tuple[ScriptedCalcGraph, str]) -> None:
    servicer, target = server
    sink = ReportSink(target, "node-1")
    rep = StatusReporter(sink, interval=3600)
    rep.in_sync()
    rep.endpoint(fb.WorkloadEndpointID(orchestrator_id="k8s", workload_id="ns/p",
                                       endpoint_id="eth0"), "up")
    await rep.flush()
    for _ in range(100):
        if len(servicer.reports) == 2:
            break
        await asyncio.sleep(0.01)
    kinds = [r.message.WhichOneof("payload") for r in servicer.reports]
    assert kinds == ["dataplane_in_sync", "workload_endpoint_status_update"]
    assert {r.node for r in servicer.reports} == {"node-1"}
    await sink.close()
