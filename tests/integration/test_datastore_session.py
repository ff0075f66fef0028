"""The Datastore Session stream against the real service and etcd: every unary operation over
one stream, the same errors (class, message, details) as the unary RPCs, the trace running
client → server span → the revision's traceparent, the same RPC metrics, and a server stop
that answers the calls it read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY

from libcalico.client import DatastoreClient, KVOp
from libcalico.errors import (
    AlreadyExistsError,
    CalicoError,
    ConflictError,
    NotFoundError,
    UnavailableError,
    ValidationError,
)
from libcalico.runtime.telemetry import get_tracer, setup_tracing
from libcalico.testing.datastore import InProcessDatastore
from services.datastore.session import GRPC_SERVICE


def ippool(name: str = "pool-a", cidr: str = "10.65.0.0/16", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": {"name": name},
        "spec": {"cidr": cidr, **spec},
    }


def handled(method: str, code: str = "OK") -> float:
    labels = {"service": GRPC_SERVICE, "method": method, "code": code}
    return REGISTRY.get_sample_value("calico_grpc_server_handled_total", labels) or 0.0


@pytest.fixture
async def unary_client(datastore_target: str) -> AsyncIterator[DatastoreClient]:
    async with DatastoreClient(datastore_target, session=False) as client:
        yield client


async def test_every_operation_over_one_session(
    datastore: InProcessDatastore, datastore_client: DatastoreClient
) -> None:
    c = datastore_client
    creates, sessions = handled("Create"), handled("Session")
    pool = await c.create(ippool())
    assert datastore.graph.servicer.sessions.open_sessions == 1
    assert await c.get("IPPool", "pool-a") == pool
    pool["spec"]["natOutgoing"] = True
    updated = await c.update(pool)
    assert updated["spec"]["natOutgoing"] is True
    await c.apply(ippool("pool-b", "10.66.0.0/16"))
    items, revision = await c.list("IPPool")
    assert [i["metadata"]["name"] for i in items] == ["pool-a", "pool-b"] and revision > 0
    deleted = await c.delete("IPPool", "pool-a", resource_version=updated["metadata"]
                             ["resourceVersion"])  # fmt: skip
    assert deleted["metadata"]["name"] == "pool-a"
    txn = await c.kv_txn([("/calico/ipam/v2/handle/h", 0)], [KVOp.put("/calico/ipam/v2/handle/h",
                                                                       {"a": 1})])  # fmt: skip
    assert txn.succeeded
    kv = await c.kv_get("/calico/ipam/v2/handle/h")
    assert kv is not None and kv.json() == {"a": 1}
    kvs, _ = await c.kv_list("/calico/ipam/v2/")
    assert [k.key for k in kvs] == ["/calico/ipam/v2/handle/h"]
    # Concurrent calls share the stream (and its messages).
    got = await asyncio.gather(*(c.get("IPPool", "pool-b") for _ in range(50)))
    assert {g["metadata"]["name"] for g in got} == {"pool-b"}
    assert datastore.graph.servicer.sessions.open_sessions == 1
    assert handled("Create") == creates + 1  # counted as the unary method
    assert handled("Session") == sessions  # the stream is still open


async def _outcome(call: Any) -> tuple[type[BaseException], str, str, str, str]:
    with pytest.raises(CalicoError) as info:
        await call
    err = info.value
    return type(err), str(err), err.resource, err.field, err.reason


async def test_errors_are_the_unary_ones(
    datastore_client: DatastoreClient, unary_client: DatastoreClient
) -> None:
    existing = await datastore_client.create(ippool())
    stale = dict(existing, metadata=dict(existing["metadata"], resourceVersion="1"))
    cases = [
        lambda c: c.create(ippool("bad", "10.70.0.0/16", blockSize=19)),
        lambda c: c.create(ippool()),
        lambda c: c.get("IPPool", "nope"),
        lambda c: c.update(stale),
        lambda c: c.kv_get("/calico/resources/v3/projectcalico.org/ippools/pool-a"),
        lambda c: c.get("NoSuchKind", "x"),
    ]
    expected = [ValidationError, AlreadyExistsError, NotFoundError, ConflictError,
                ValidationError, ValidationError]  # fmt: skip
    for case, cls in zip(cases, expected, strict=True):
        over_session = await _outcome(case(datastore_client))
        over_unary = await _outcome(case(unary_client))
        assert over_session == over_unary
        assert over_session[0] is cls
    assert handled("Get", "NOT_FOUND") >= 2


async def test_the_trace_runs_through_the_session(
    datastore: InProcessDatastore, datastore_client: DatastoreClient
) -> None:
    spans = InMemorySpanExporter()
    setup_tracing("datastore-test", jsonl=False, extra_processors=[SimpleSpanProcessor(spans)])
    with get_tracer().start_as_current_span("calicoctl apply") as root:
        created = await datastore_client.create(ippool())
    finished = spans.get_finished_spans()
    name = f"{GRPC_SERVICE}/Create"
    client = [s for s in finished if s.name == name and s.kind is SpanKind.CLIENT]
    server = [s for s in finished if s.name == name and s.kind is SpanKind.SERVER]
    assert len(client) == 1 and len(server) == 1
    trace_id = root.get_span_context().trace_id
    assert client[0].parent is not None
    assert client[0].parent.span_id == root.get_span_context().span_id
    assert server[0].parent is not None and server[0].parent.span_id == client[0].context.span_id
    assert server[0].context.trace_id == trace_id
    assert server[0].attributes is not None
    assert server[0].attributes["rpc.method"] == "Create"
    assert server[0].attributes["rpc.grpc.status_code"] == 0
    # The write's revision carries the server span's traceparent (what watchers continue).
    revision = int(created["metadata"]["resourceVersion"])
    traceparent = datastore.graph.store.traces.get(
        revision, "/calico/resources/v3/projectcalico.org/ippools/pool-a"
    )
    assert traceparent.split("-")[1:3] == [
        format(trace_id, "032x"), format(server[0].context.span_id, "016x")
    ]
    # No span for the stream itself, on either side: it would be a root outliving every
    # command (the server's would end when the client closes, so close it and wait).
    await datastore_client.close()
    for _ in range(500):
        if datastore.graph.servicer.sessions.open_sessions == 0:
            break
        await asyncio.sleep(0.01)
    assert datastore.graph.servicer.sessions.open_sessions == 0
    await asyncio.sleep(0.05)  # the wrapper ends its span after the handler returns
    finished = spans.get_finished_spans()
    assert [s.name for s in finished if s.name.endswith("/Session")] == []


async def test_a_stopping_server_answers_what_it_read(
    datastore: InProcessDatastore, datastore_client: DatastoreClient
) -> None:
    await datastore_client.create(ippool())
    store = datastore.graph.store
    entered, release = asyncio.Event(), asyncio.Event()
    real_get = store.get

    async def slow_get(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        await release.wait()
        return await real_get(*args, **kwargs)

    store.get = slow_get  # type: ignore[method-assign]
    pending = asyncio.ensure_future(datastore_client.get("IPPool", "pool-a"))
    await asyncio.wait_for(entered.wait(), 5)
    datastore.graph.servicer.close()  # what the server does when it stops
    await asyncio.sleep(0.05)
    release.set()
    got = await asyncio.wait_for(pending, 5)
    assert got["metadata"]["name"] == "pool-a"
    # A stopped hub reads nothing more: new calls are never run, and say so.
    with pytest.raises(UnavailableError, match="kept ending the session"):
        await asyncio.wait_for(datastore_client.get("IPPool", "pool-a"), 5)
