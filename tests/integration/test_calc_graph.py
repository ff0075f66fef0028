"""calc_graph over real gRPC and a real etcd: the datastore service, calc_graph and three fake
nodes subscribed with ``Sync(node)``, each applying its stream to a strict ``FakeDataplane``.

Changes are written through the datastore service; the test then checks that each reaches
exactly the nodes that need it (the others receive no batch at all), that batches carry the
datastore revision and the writer's trace, and that a node whose driver restarts mid-stream
converges to the same state as a fresh subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from libcalico.api.calcgraph.v1 import calcgraph_pb2 as cg
from libcalico.api.calcgraph.v1 import calcgraph_pb2_grpc as cg_grpc
from libcalico.api.felix import felixbackend_pb2 as fb
from libcalico.client import DatastoreClient
from libcalico.runtime import make_channel
from libcalico.runtime.telemetry import get_tracer, setup_tracing
from libcalico.selector import parse
from libcalico.testing.datastore import short_socket_dir
from services.calc_graph.config import CalcGraphConfig
from services.calc_graph.testing import running_calc_graph
from tests.unit import fake_dataplane as f

NODES = ("node1", "node2", "node3")
NS1 = "projectcalico.org/namespace == 'ns1'"


class FakeNode:
    """A node's dataplane driver: one ``Sync(node)`` stream into a strict fake dataplane."""

    def __init__(self, target: str, node: str) -> None:
        self.target = target
        self.node = node
        self.dp = f.FakeDataplane(node)
        self.batches: list[cg.SyncBatch] = []
        self.error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> FakeNode:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        async with make_channel(self.target, service="calc_graph") as channel:
            stub = cg_grpc.CalcGraphStub(channel)
            try:
                async for batch in stub.Sync(cg.SyncRequest(node=self.node, driver="fake")):
                    self.dp.apply_all(batch.messages)
                    self.batches.append(batch)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                self.error = exc

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def eventually(check: Callable[[], Any], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check() is not False:
                return
        except (AssertionError, LookupError) as exc:
            last = exc
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}: {last}")


@pytest.fixture
async def calc_graph(datastore_target: str) -> AsyncIterator[str]:
    sock_dir = short_socket_dir("calico-cg-")
    cfg = CalcGraphConfig(
        listen=(f"unix://{sock_dir / 'calc_graph.sock'}",),
        datastore=datastore_target,
        resync_flush_interval=0.05,
    )
    try:
        async with running_calc_graph(cfg) as (_svc, target):
            yield target
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


def sel_id(text: str) -> str:
    return parse(text).unique_id


async def write(client: DatastoreClient, *updates: Any) -> None:
    for u in updates:
        if u.value is None:
            continue
        await client.apply(u.value)


async def test_changes_reach_exactly_the_nodes_that_need_them(
    calc_graph: str, datastore_client: DatastoreClient
) -> None:
    spans = InMemorySpanExporter()
    setup_tracing("calc-graph-test", jsonl=False, extra_processors=[SimpleSpanProcessor(spans)])
    await write(
        datastore_client,
        f.namespace("ns1"),
        f.namespace("ns2"),
        f.node("node1", "192.168.1.1/24", "10.65.0.254"),
        f.node("node2", "192.168.1.2/24", "10.65.1.254"),
        f.node("node3", "192.168.1.3/24", "10.65.2.254"),
        f.ip_pool("pool", "10.65.0.0/16", vxlan="Always"),
        f.wep("ns1", "web", "node1", "10.65.0.1", {"app": "web"}),
        f.wep("ns1", "db", "node2", "10.65.1.1", {"app": "db"}),
        f.wep("ns2", "cache", "node3", "10.65.2.1", {"app": "cache"}),
        f.network_policy(
            "ns1",
            "db",
            {
                "selector": "app == 'db'",
                "types": ["Ingress"],
                "ingress": [{"action": "Allow", "source": {"selector": "app == 'web'"}}],
            },
        ),
        f.global_policy(
            "cache",
            {
                "selector": "app == 'cache'",
                "types": ["Ingress"],
                "ingress": [{"action": "Allow", "source": {"selector": "role == 'monitor'"}}],
            },
        ),
    )
    nodes = {n: await FakeNode(calc_graph, n).start() for n in NODES}
    try:
        web_set = sel_id(f"({NS1}) && (app == 'web')")
        monitor_set = sel_id("role == 'monitor'")

        def synced() -> None:
            for fake in nodes.values():
                assert fake.error is None, fake.error
                fake.dp.assert_in_sync()
            assert nodes["node2"].dp.members(web_set) == {"10.65.0.1/32"}
            assert nodes["node3"].dp.members(monitor_set) == set()
            assert ("k8s", "ns1/web", "eth0") in nodes["node1"].dp.weps
            assert len(nodes["node1"].dp.vteps) == 3

        await eventually(synced, what="all three nodes in sync")
        assert set(nodes["node1"].dp.ipsets) == set()
        assert set(nodes["node2"].dp.ipsets) == {web_set}
        assert set(nodes["node3"].dp.ipsets) == {monitor_set}

        async def quiet() -> dict[str, int]:
            await asyncio.sleep(0.3)
            return {n: len(fake.batches) for n, fake in nodes.items()}

        # 1. A policy change: only node2 has the policy.
        before = await quiet()
        with get_tracer().start_as_current_span("test-write-policy") as span:
            trace_id = span.get_span_context().trace_id
            await write(
                datastore_client,
                f.network_policy(
                    "ns1",
                    "db",
                    {
                        "selector": "app == 'db'",
                        "types": ["Ingress"],
                        "ingress": [
                            {
                                "action": "Allow",
                                "protocol": "TCP",
                                "source": {"selector": "app == 'web'"},
                                "destination": {"ports": [5432]},
                            }
                        ],
                    },
                ),
            )
        policy_key = ("NetworkPolicy", "ns1", "db")

        def policy_updated() -> None:
            rule = nodes["node2"].dp.policies[policy_key].inbound_rules[0]
            assert list(rule.dst_ports) == [fb.PortRange(first=5432, last=5432)]

        await eventually(policy_updated, what="node2 gets the new policy")
        after = await quiet()
        assert after["node1"] == before["node1"] and after["node3"] == before["node3"]
        last = nodes["node2"].batches[-1]
        assert last.datastore_revision > 0
        assert last.traceparent.split("-")[1] == f"{trace_id:032x}"

        # 2. A label change: web gains role=monitor; only node3 uses that IP set.
        before = after
        await write(
            datastore_client,
            f.wep("ns1", "web", "node1", "10.65.0.1", {"app": "web", "role": "monitor"}),
        )
        await eventually(
            lambda: nodes["node3"].dp.members(monitor_set) == {"10.65.0.1/32"},
            what="node3's monitor set gains web",
        )
        after = await quiet()
        assert after["node1"] == before["node1"] and after["node2"] == before["node2"]

        # 3. A new endpoint on node1 that the cache policy selects: only node1 changes.
        before = after
        await write(
            datastore_client, f.wep("ns2", "cache2", "node1", "10.65.0.2", {"app": "cache"})
        )
        await eventually(
            lambda: ("GlobalNetworkPolicy", "", "cache") in nodes["node1"].dp.policies,
            what="node1 gets the cache policy",
        )
        after = await quiet()
        assert after["node2"] == before["node2"] and after["node3"] == before["node3"]
        wep = nodes["node1"].dp.weps[("k8s", "ns2/cache2", "eth0")]
        assert [p.name for t in wep.tiers for p in t.ingress_policies] == ["cache"]

        # 4. node2's driver restarts mid-stream; meanwhile web leaves and a new web arrives.
        await nodes["node2"].stop()
        await datastore_client.delete(
            "WorkloadEndpoint",
            f.wep("ns1", "web", "node1", "10.65.0.1").value["metadata"]["name"],
            "ns1",
        )
        await write(datastore_client, f.wep("ns1", "web2", "node3", "10.65.2.9", {"app": "web"}))
        nodes["node2"] = await FakeNode(calc_graph, "node2").start()
        await eventually(
            lambda: (
                nodes["node2"].dp.in_sync and nodes["node2"].dp.members(web_set) == {"10.65.2.9/32"}
            ),
            what="restarted node2 converges",
        )
        check = await FakeNode(calc_graph, "node2").start()
        try:
            await eventually(lambda: check.dp.in_sync, what="a fresh node2 subscriber")
            await quiet()
            assert nodes["node2"].dp.state() == check.dp.state()
        finally:
            await check.stop()
        for fake in nodes.values():
            assert fake.error is None
    finally:
        for fake in nodes.values():
            await fake.stop()
        setup_tracing("calc-graph-test", jsonl=False)


async def test_bgp_sync_and_report(calc_graph: str, datastore_client: DatastoreClient) -> None:
    await write(
        datastore_client,
        f.node("node1", "192.168.1.1/24", asn=65001),
        f.node("node2", "192.168.1.2/24"),
        f.ip_pool("pool", "10.65.0.0/16", ipip="Always"),
    )
    async with make_channel(calc_graph, service="calc_graph") as channel:
        stub = cg_grpc.CalcGraphStub(channel)
        stream = stub.BGPSync(cg.BGPSyncRequest(node="node1"))
        update = await asyncio.wait_for(stream.read(), 10)
        while not (update.in_sync and len(update.nodes) == 2):
            update = await asyncio.wait_for(stream.read(), 10)
        assert [n.name for n in update.nodes] == ["node1", "node2"]
        assert update.nodes[0].as_number == "65001"
        assert [p.cidr for p in update.pools] == ["10.65.0.0/16"]
        stream.cancel()

        async def reports() -> AsyncIterator[cg.ReportRequest]:
            yield cg.ReportRequest(
                node="node1",
                message=fb.FromDataplane(
                    workload_endpoint_status_update=fb.WorkloadEndpointStatusUpdate(
                        id=fb.WorkloadEndpointID(
                            orchestrator_id="k8s", workload_id="ns1/web", endpoint_id="eth0"
                        ),
                        status=fb.EndpointStatus(status="up"),
                    )
                ),
            )

        result = await stub.Report(reports())
        assert result.successful


async def test_slow_reader_is_cut_off_and_resyncs(
    datastore_target: str, datastore_client: DatastoreClient
) -> None:
    """A node that stops reading fills its queue and gets RESOURCE_EXHAUSTED with a message
    saying why; the graph and other nodes carry on; reconnecting gives a fresh snapshot."""
    from libcalico.errors import ResourceExhaustedError

    sock_dir = short_socket_dir("calico-cg-")
    cfg = CalcGraphConfig(
        listen=(f"unix://{sock_dir / 'calc_graph.sock'}",),
        datastore=datastore_target,
        resync_flush_interval=0.05,
        max_batches=3,
    )
    pods = [
        f.wep("ns1", f"w{i}", "node2", f"10.65.{i // 250}.{i % 250 + 1}", {"app": "web"})
        for i in range(500)
    ]
    await write(
        datastore_client,
        f.namespace("ns1", {"env": "x"}),
        f.wep("ns2", "db", "node1", "10.66.0.1", {"app": "db"}),
        f.global_policy(
            "db",
            {
                "selector": "app == 'db'",
                "ingress": [{"action": "Allow", "source": {"namespaceSelector": "env == 'x'"}}],
            },
        ),
    )
    for i in range(0, len(pods), 10):  # gently: the test machine may be busy
        await asyncio.gather(*(write(datastore_client, p) for p in pods[i : i + 10]))
    try:
        async with running_calc_graph(cfg) as (svc, target):
            # No BDP probing: the stream's flow-control window stays at 64 KiB, so a reader
            # that stops reading blocks the server's writes soon.
            async with make_channel(
                target, service="calc_graph", options=[("grpc.http2.bdp_probe", 0)]
            ) as channel:
                stub = cg_grpc.CalcGraphStub(channel)
                call = stub.Sync(cg.SyncRequest(node="node1"))
                dp = f.FakeDataplane("node1")
                while not dp.in_sync:
                    dp.apply_all((await asyncio.wait_for(call.read(), 10)).messages)
                other = await FakeNode(target, "node2").start()
                # Stop reading; flip the namespace in and out of the policy's IP set: every
                # flip is a 500-member delta; the window fills, then the queue (3 batches).
                for i in range(100):
                    await write(datastore_client, f.namespace("ns1", {"env": "xy"[i % 2]}))
                    await asyncio.sleep(0.02)
                    if any(s.error for s in svc.driver.subscribers):
                        break
                with pytest.raises(ResourceExhaustedError, match="fell behind"):
                    for _ in range(10_000):
                        await asyncio.wait_for(call.read(), 10)
                await eventually(
                    lambda: other.dp.in_sync and other.error is None, what="node2 unaffected"
                )
                await other.stop()
                # Reconnect: a fresh snapshot with the set as it is now.
                fresh = await FakeNode(target, "node1").start()
                await eventually(lambda: fresh.dp.in_sync, what="node1 resynced")
                await fresh.stop()
                assert len(svc.graph.views) == 0 or set(svc.graph.views) <= {"node1", "node2"}
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)
