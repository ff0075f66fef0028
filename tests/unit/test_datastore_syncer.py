"""Syncer logic against a hand-written fake client: statuses, per-source dedupe, resync diffs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from libcalico.client import KV, EventType, SyncStatus, Update, WatchEvent
from libcalico.client.syncer import Syncer
from libcalico.errors import CompactedError, UnavailableError, ValidationError

RES = "/calico/resources/v3/projectcalico.org/"


def pool(name: str, rv: int, cidr: str = "10.65.0.0/16") -> dict[str, Any]:
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": {"name": name, "resourceVersion": str(rv)},
        "spec": {"cidr": cidr},
    }


def pool_event(etype: EventType, name: str, rev: int, **extra: Any) -> WatchEvent:
    return WatchEvent(
        etype, rev, RES + "ippools/" + name, resource=pool(name, rev),
        kind="IPPool", name=name, **extra,
    )  # fmt: skip


class FakeClient:
    """``list``/``kv_list`` answer from ``pools``/``kvs`` at ``revision``; ``watch`` plays
    ``script`` (events, or an exception to raise) and then waits for more."""

    def __init__(self) -> None:
        self.pools: dict[str, dict[str, Any]] = {}
        self.kvs: dict[str, KV] = {}
        self.revision = 1
        self.down = False
        self.script: asyncio.Queue[WatchEvent | Exception] = asyncio.Queue()
        self.watch_starts: list[int] = []
        self.watch_started = asyncio.Event()

    async def list(
        self, kind: str, namespace: str | None = None, all_namespaces: bool = False,
        name_prefix: str = "",
    ) -> tuple[list[dict[str, Any]], int]:  # fmt: skip
        if self.down:
            raise UnavailableError("cannot reach the datastore")
        assert kind == "IPPool"
        return [self.pools[k] for k in sorted(self.pools)], self.revision

    async def kv_list(self, prefix: str, keys_only: bool = False) -> tuple[list[KV], int]:
        if self.down:
            raise UnavailableError("cannot reach the datastore")
        return [kv for k, kv in sorted(self.kvs.items()) if k.startswith(prefix)], self.revision

    async def watch(
        self, kinds: Sequence[str] = (), kv_prefixes: Sequence[str] = (), revision: int = 0,
        *, kv_only: bool = False,
    ) -> AsyncIterator[WatchEvent]:  # fmt: skip
        self.watch_starts.append(revision)
        self.watch_started.set()
        while True:
            item = await self.script.get()
            if isinstance(item, Exception):
                raise item
            yield item


class Recorder:
    def __init__(self) -> None:
        self.statuses: list[SyncStatus] = []
        self.batches: list[list[Update]] = []
        self.view: dict[str, Any] = {}
        self.changed = asyncio.Event()

    def on_status(self, status: SyncStatus) -> None:
        self.statuses.append(status)
        self.changed.set()

    async def on_updates(self, updates: list[Update]) -> None:  # async callbacks are awaited
        self.batches.append(updates)
        for u in updates:
            if u.value is None:
                self.view.pop(u.key, None)
            else:
                self.view[u.key] = u.value
        self.changed.set()

    async def until(self, predicate: Any, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def running() -> AsyncIterator[tuple[FakeClient, Recorder, Syncer]]:
    client = FakeClient()
    rec = Recorder()
    syncer = Syncer(
        client, rec, kinds=["ippool"], kv_prefixes=["/calico/ipam/v2/"],  # type: ignore[arg-type]
        backoff_initial=0.01, backoff_max=0.02, batch_size=2,
    )  # fmt: skip
    yield client, rec, syncer
    assert syncer is not None


async def watching_from(client: FakeClient, revision: int) -> None:
    """Wait (bounded) until the syncer's latest watch started at ``revision``."""
    async with asyncio.timeout(5):
        while client.watch_starts[-1:] != [revision]:
            client.watch_started.clear()
            await client.watch_started.wait()


async def start(syncer: Syncer) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(syncer.run())


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_snapshot_then_deltas_with_dedupe(
    running: tuple[FakeClient, Recorder, Syncer],
) -> None:
    client, rec, syncer = running
    client.pools = {"a": pool("a", 5), "b": pool("b", 7), "c": pool("c", 8)}
    client.kvs = {"/calico/ipam/v2/h": KV("/calico/ipam/v2/h", b'{"x":1}', 9)}
    client.revision = 10
    task = await start(syncer)
    try:
        await rec.until(lambda: rec.statuses[-1:] == [SyncStatus.IN_SYNC])
        assert rec.statuses == [
            SyncStatus.WAIT_FOR_DATASTORE, SyncStatus.RESYNC_IN_PROGRESS, SyncStatus.IN_SYNC
        ]
        assert [len(b) for b in rec.batches] == [2, 2]  # batch_size bounds each call
        assert rec.view[RES + "ippools/a"]["metadata"]["resourceVersion"] == "5"
        assert rec.view["/calico/ipam/v2/h"] == {"x": 1}
        await watching_from(client, 10)
        # An event at or below the list revision is already in the snapshot.
        await client.script.put(pool_event(EventType.MODIFIED, "a", 10))
        await client.script.put(pool_event(EventType.MODIFIED, "a", 11, traceparent="tp"))
        await client.script.put(WatchEvent(EventType.BOOKMARK, 12))
        await client.script.put(
            WatchEvent(EventType.DELETED, 13, RES + "ippools/b", resource=pool("b", 7),
                       kind="IPPool", name="b")
        )  # fmt: skip
        await rec.until(lambda: RES + "ippools/b" not in rec.view)
        delta = [u for batch in rec.batches[2:] for u in batch]
        assert [(u.key, u.revision, u.value is None, u.traceparent) for u in delta] == [
            (RES + "ippools/a", 11, False, "tp"),
            (RES + "ippools/b", 13, True, ""),
        ]
        assert syncer.revision == 13
    finally:
        await stop(task)


async def test_reconnect_delivers_only_the_difference(
    running: tuple[FakeClient, Recorder, Syncer],
) -> None:
    client, rec, syncer = running
    client.pools = {"a": pool("a", 5), "b": pool("b", 7), "c": pool("c", 8)}
    client.revision = 10
    task = await start(syncer)
    try:
        await rec.until(lambda: rec.statuses[-1:] == [SyncStatus.IN_SYNC])
        seen = len(rec.batches)
        # The datastore goes away; meanwhile a changes, c goes, d arrives; b is untouched.
        client.down = True
        await client.script.put(UnavailableError("stream broke"))
        await rec.until(lambda: rec.statuses[-1] is SyncStatus.WAIT_FOR_DATASTORE)
        client.pools = {"a": pool("a", 12), "b": pool("b", 7), "d": pool("d", 14)}
        client.revision = 15
        client.down = False
        await rec.until(lambda: rec.statuses[-1] is SyncStatus.IN_SYNC and len(rec.statuses) > 3)
        assert rec.statuses[3:] == [
            SyncStatus.WAIT_FOR_DATASTORE, SyncStatus.RESYNC_IN_PROGRESS, SyncStatus.IN_SYNC
        ]
        diff = sorted(
            (u.key.rsplit("/", 1)[1], u.value is None) for b in rec.batches[seen:] for u in b
        )
        assert diff == [("a", False), ("c", True), ("d", False)]
        assert set(rec.view) == {RES + "ippools/" + n for n in "abd"}
        await watching_from(client, 15)
    finally:
        await stop(task)


async def test_compaction_relists_without_waiting_for_the_datastore(
    running: tuple[FakeClient, Recorder, Syncer],
) -> None:
    client, rec, syncer = running
    client.pools = {"a": pool("a", 5)}
    client.revision = 10
    task = await start(syncer)
    try:
        await rec.until(lambda: rec.statuses[-1:] == [SyncStatus.IN_SYNC])
        await client.script.put(CompactedError("revision 10 has been compacted; re-list"))
        await rec.until(lambda: syncer.resyncs == 2 and rec.statuses[-1] is SyncStatus.IN_SYNC)
        assert SyncStatus.WAIT_FOR_DATASTORE not in rec.statuses[1:]
        assert rec.statuses[-2:] == [SyncStatus.RESYNC_IN_PROGRESS, SyncStatus.IN_SYNC]
    finally:
        await stop(task)


async def test_a_wrong_request_is_a_bug_not_a_retry(
    running: tuple[FakeClient, Recorder, Syncer],
) -> None:
    client, _, syncer = running

    async def bad_list(*args: Any, **kwargs: Any) -> Any:
        raise ValidationError("resource type 'x' is not supported", field="kind")

    client.list = bad_list  # type: ignore[method-assign]
    with pytest.raises(ValidationError):
        await asyncio.wait_for(syncer.run(), 5)
