"""Watch streams against a real etcd: event types, filters, resume, bookmarks, compaction, traces.

The ``datastore`` fixture sends bookmarks after 0.2 s of quiet, so every wait here is bounded by
``next_event``'s timeout rather than a fixed sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aetcd
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from libcalico.client import DatastoreClient, EventType, KVOp, WatchEvent
from libcalico.errors import CompactedError
from libcalico.runtime.telemetry import get_tracer, setup_tracing
from libcalico.testing.datastore import InProcessDatastore

RES = "/calico/resources/v3/projectcalico.org/"


def ippool(name: str, cidr: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": {"name": name},
        "spec": {"cidr": cidr, **spec},
    }


class Stream:
    """A watch consumed by a task into a queue, so tests can wait for events with a bound."""

    def __init__(self, events: AsyncIterator[WatchEvent]) -> None:
        self.queue: asyncio.Queue[WatchEvent | BaseException] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._pump(events))

    async def _pump(self, events: AsyncIterator[WatchEvent]) -> None:
        try:
            async for ev in events:
                await self.queue.put(ev)
        except Exception as exc:
            await self.queue.put(exc)

    async def next_event(self, timeout: float = 5.0, *, bookmarks: bool = False) -> WatchEvent:
        while True:
            item = await asyncio.wait_for(self.queue.get(), timeout)
            if isinstance(item, BaseException):
                raise item
            if bookmarks or item.type is not EventType.BOOKMARK:
                return item

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


@pytest.fixture
async def watch(datastore_client: DatastoreClient) -> AsyncIterator[Any]:
    streams: list[Stream] = []

    def start(*args: Any, **kwargs: Any) -> Stream:
        stream = Stream(datastore_client.watch(*args, **kwargs))
        streams.append(stream)
        return stream

    yield start
    for s in streams:
        await s.close()


async def test_event_types_and_deleted_value(
    datastore_client: DatastoreClient, watch: Any
) -> None:
    c = datastore_client
    _, revision = await c.list("IPPool")
    stream = watch(kinds=["IPPool"], revision=revision)
    created = await c.create(ippool("a", "10.65.0.0/16"))
    update = {**created, "spec": {**created["spec"], "natOutgoing": True}}
    updated = await c.update(update)
    await c.delete("IPPool", "a")

    added = await stream.next_event()
    assert added.type is EventType.ADDED
    assert added.resource == created
    assert added.key == RES + "ippools/a" and added.kind == "IPPool" and added.name == "a"
    modified = await stream.next_event()
    assert modified.type is EventType.MODIFIED and modified.resource == updated
    deleted = await stream.next_event()
    assert deleted.type is EventType.DELETED
    assert deleted.revision > int(updated["metadata"]["resourceVersion"])
    assert deleted.resource == updated  # the last value, with its last resourceVersion


async def test_filters_and_resume_strictly_after_revision(
    datastore_client: DatastoreClient, etcd_client: aetcd.Client, watch: Any
) -> None:
    c = datastore_client
    _, start = await c.list("IPPool")
    a = await c.create(ippool("a", "10.65.0.0/16"))
    await c.create({
        "apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkSet",
        "metadata": {"name": "ns"}, "spec": {"nets": ["10.0.0.0/8"]},
    })  # fmt: skip
    await c.kv_txn([], [KVOp.put("/calico/ipam/v2/handle/h", "{}")])
    await etcd_client.put(b"/calico/felix/v2/no-region/host/n1/status", b"{}")
    b = await c.create(ippool("b", "10.66.0.0/16"))

    stream = watch(kinds=["IPPool"], kv_prefixes=["/calico/ipam/v2/"], revision=start)
    got = [await stream.next_event() for _ in range(3)]
    assert [(e.type, e.key) for e in got] == [
        (EventType.ADDED, RES + "ippools/a"),
        (EventType.ADDED, "/calico/ipam/v2/handle/h"),
        (EventType.ADDED, RES + "ippools/b"),
    ]
    assert got[1].kv is not None and got[1].kv.value == b"{}"

    # Resuming from a's revision starts strictly after it.
    resumed = watch(kinds=["IPPool"], revision=int(a["metadata"]["resourceVersion"]))
    first = await resumed.next_event()
    assert first.key == RES + "ippools/b"
    assert first.revision == int(b["metadata"]["resourceVersion"])


async def test_bookmark_when_idle_carries_a_resumable_revision(
    datastore_client: DatastoreClient, etcd_client: aetcd.Client, watch: Any
) -> None:
    c = datastore_client
    _, start = await c.list("IPPool")
    stream = watch(kinds=["IPPool"], revision=start)
    pool = await c.create(ippool("a", "10.65.0.0/16"))
    assert (await stream.next_event()).type is EventType.ADDED
    # Writes this stream does not want still move a bookmark forward.
    last = await etcd_client.put(b"/calico/felix/v2/no-region/host/n1/status", b"{}")
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        ev = await stream.next_event(bookmarks=True)
        assert ev.type is EventType.BOOKMARK
        assert ev.revision >= int(pool["metadata"]["resourceVersion"])
        if ev.revision >= last.header.revision:
            break
        assert asyncio.get_running_loop().time() < deadline


async def test_watch_from_now_and_quiet_stream_bookmarks(
    datastore_client: DatastoreClient, watch: Any
) -> None:
    _, revision = await datastore_client.list("Tier")
    stream = watch(kinds=["Tier"])  # revision 0: from now
    ev = await stream.next_event(bookmarks=True)
    assert ev.type is EventType.BOOKMARK and ev.revision >= revision


async def test_compacted_revision_is_out_of_range(
    datastore_client: DatastoreClient, etcd_client: aetcd.Client, watch: Any
) -> None:
    c = datastore_client
    await c.create(ippool("a", "10.65.0.0/16"))
    _, revision = await c.list("IPPool")
    await c.create(ippool("b", "10.66.0.0/16"))
    await etcd_client.compact(revision + 1, physical=True)
    stream = watch(kinds=["IPPool"], revision=revision - 1)
    with pytest.raises(CompactedError, match="re-list"):
        await stream.next_event()


async def test_events_carry_the_writers_traceparent(
    datastore_client: DatastoreClient, watch: Any
) -> None:
    spans = InMemorySpanExporter()
    setup_tracing("datastore-test", jsonl=False, extra_processors=[SimpleSpanProcessor(spans)])
    _, revision = await datastore_client.list("IPPool")
    stream = watch(kinds=["IPPool"], revision=revision)
    with get_tracer().start_as_current_span("calicoctl apply") as span:
        await datastore_client.create(ippool("a", "10.65.0.0/16"))
        trace_id = format(span.get_span_context().trace_id, "032x")
    ev = await stream.next_event()
    assert ev.traceparent.split("-")[1] == trace_id
    # The traceparent is the datastore's own server span for the Create, a child of ours.
    create_spans = [s for s in spans.get_finished_spans() if s.name.endswith("/Create")]
    assert any(
        format(s.context.span_id, "016x") == ev.traceparent.split("-")[2] for s in create_spans
    )


async def test_a_consumer_that_falls_behind_is_cut_off(
    datastore: InProcessDatastore, etcd_client: aetcd.Client
) -> None:
    etcd = datastore.graph.etcd
    start = await etcd.current_revision()
    async with etcd.watch("/calico/felix/", start + 1, max_pending=5) as w:
        for i in range(20):  # separate revisions: separate etcd responses, none consumed
            await etcd_client.put(f"/calico/felix/v2/no-region/host/n{i}/status".encode(), b"{}")
        assert w._reader is not None
        await asyncio.wait_for(asyncio.shield(w._reader), 5)  # white box: the reader gave up
        with pytest.raises(CompactedError, match="5 etcd responses behind; re-list"):
            await w.next(0)
