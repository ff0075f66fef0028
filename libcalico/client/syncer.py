"""The list+watch syncer: a snapshot, then deltas, and the same view again after any failure.

``Syncer(client, callbacks, kinds, kv_prefixes)`` keeps a caller's view of part of the datastore
equal to etcd's: every resource of ``kinds`` (empty = every kind) and every raw key under
``kv_prefixes``. The caller gets

- ``callbacks.on_status(SyncStatus)``: ``WAIT_FOR_DATASTORE`` (not connected) →
  ``RESYNC_IN_PROGRESS`` (listing) → ``IN_SYNC`` (the snapshot has been delivered; from here on
  updates are deltas in revision order). Reported on change only.
- ``callbacks.on_updates(list[Update])``: ``Update(key, value, revision, traceparent)`` with the
  etcd key, the decoded JSON (a resource with its resourceVersion, or a raw key's value), and
  ``None`` for a deletion.

Either callback may be a plain function or a coroutine function; a coroutine is awaited, which
is how a slow consumer pushes back on the syncer.

Algorithm::

      ┌──────────────► WAIT_FOR_DATASTORE ◄───── service/etcd unreachable (backoff 0.1 s → 5 s)
      │                      │ first list answered
      │                      ▼
      │              RESYNC_IN_PROGRESS: list each kind and prefix (source i read at r_i)
      │                      │ diff against what the caller was told → on_updates (batches)
      │                      ▼
      │                   IN_SYNC: watch from min(r_i); an event of source i at a revision
      │                      │     <= r_i is already in the snapshot and is skipped
      └── error ─────────────┘     (compaction goes straight back to listing)

Consistency: each source is read in one etcd range, consistent at its own revision, and the
watch starts at the lowest of them, so no write is missed and none is applied twice. Across
sources the snapshot can straddle the writes that land during the listing (milliseconds), as
Calico's own watchersyncer does with one list per resource type; those writes arrive as deltas
immediately after IN_SYNC.

After a reconnect the syncer does not replay everything: it remembers the key → revision of
everything it told the caller, and the fresh snapshot is delivered as the *difference* —
updates for new or changed keys, ``None`` for keys that vanished meanwhile — so the caller's
view equals etcd's once IN_SYNC is reported again.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import json
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from libcalico import keys
from libcalico.client.datastore import DatastoreClient, EventType, WatchEvent
from libcalico.errors import (
    AlreadyExistsError,
    CalicoError,
    CompactedError,
    FailedPreconditionError,
    NotFoundError,
    ValidationError,
)
from libcalico.model.kinds import KINDS, lookup_kind
from libcalico.runtime.log import get_logger

log = get_logger(__name__)


#: Errors that mean the syncer's own request is wrong; retrying cannot help.
_NOT_RETRYABLE = (ValidationError, NotFoundError, AlreadyExistsError, FailedPreconditionError)


class SyncStatus(enum.Enum):
    WAIT_FOR_DATASTORE = "wait-for-datastore"
    RESYNC_IN_PROGRESS = "resync-in-progress"
    IN_SYNC = "in-sync"


@dataclass(frozen=True, slots=True)
class Update:
    """One change: ``value`` None means the key was deleted."""

    key: str
    value: Any
    revision: int
    traceparent: str = ""


class SyncerCallbacks(Protocol):
    def on_status(self, status: SyncStatus) -> Awaitable[None] | None: ...

    def on_updates(self, updates: list[Update]) -> Awaitable[None] | None: ...


def decode_value(raw: bytes) -> Any:
    """A raw key's JSON value; text that is not JSON is passed through as a string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


class _Source:
    """One list: a kind or a raw prefix, the revision it was read at."""

    __slots__ = ("kind", "prefix", "revision")

    def __init__(self, kind: str, prefix: str) -> None:
        self.kind = kind
        self.prefix = prefix
        self.revision = 0


class Syncer:
    """See the module docstring. ``await run()`` until cancelled.

    ``kv_only=True`` syncs only ``kv_prefixes`` (no resource kinds). ``batch_size`` bounds the
    updates handed over in one ``on_updates`` call.
    """

    def __init__(
        self,
        client: DatastoreClient,
        callbacks: SyncerCallbacks,
        kinds: Sequence[str] = (),
        kv_prefixes: Sequence[str] = (),
        *,
        kv_only: bool = False,
        batch_size: int = 1000,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
    ) -> None:
        self.client = client
        self.callbacks = callbacks
        self.kv_only = kv_only
        kind_names = [] if kv_only else [lookup_kind(k).kind for k in kinds] or list(KINDS)
        self.kinds = list(dict.fromkeys(kind_names))
        self.kv_prefixes = list(dict.fromkeys(kv_prefixes))
        self.batch_size = batch_size
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.status: SyncStatus | None = None
        #: key -> revision of every key the caller currently has.
        self.told: dict[str, int] = {}
        #: The highest revision delivered (snapshot or event or bookmark).
        self.revision = 0
        self.resyncs = 0
        self._listed = False
        self._sources = [_Source(k, keys.resource_prefix(k)) for k in self.kinds]
        self._kv_sources = [_Source("", p) for p in self.kv_prefixes]
        self._by_kind = {s.kind: s for s in self._sources}

    # -- callbacks -----------------------------------------------------------------------------

    async def _call(self, fn: Callable[[Any], Awaitable[None] | None], arg: Any) -> None:
        result = fn(arg)
        if inspect.isawaitable(result):
            await result

    async def _set_status(self, status: SyncStatus) -> None:
        if status is self.status:
            return
        self.status = status
        log.info("syncer status", status=status.value)
        await self._call(self.callbacks.on_status, status)

    async def _emit(self, updates: list[Update]) -> None:
        for i in range(0, len(updates), self.batch_size):
            await self._call(self.callbacks.on_updates, updates[i : i + self.batch_size])

    # -- main loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Sync until cancelled; every failure of the environment leads back to a re-list.

        Errors that say the request itself is wrong (an unknown kind, a prefix inside
        ``/calico/resources/``) are bugs and are raised.
        """
        await self._set_status(SyncStatus.WAIT_FOR_DATASTORE)
        delay = self.backoff_initial
        while True:
            self._listed = False
            try:
                await self._sync_once()
            except CompactedError as exc:
                log.info("watch revision compacted; re-listing", error=str(exc))
                await self._set_status(SyncStatus.RESYNC_IN_PROGRESS)
                continue
            except _NOT_RETRYABLE:
                raise
            except CalicoError as exc:
                if self._listed:
                    delay = self.backoff_initial
                log.warning(
                    "datastore connection lost; will re-list",
                    error=str(exc),
                    retry_in=round(delay, 2),
                )
                await self._set_status(SyncStatus.WAIT_FOR_DATASTORE)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.backoff_max)

    async def _list(self) -> dict[str, Update]:
        snapshot: dict[str, Update] = {}
        for source in self._sources:
            items, revision = await self.client.list(source.kind, all_namespaces=True)
            self._listed = True
            await self._set_status(SyncStatus.RESYNC_IN_PROGRESS)
            source.revision = revision
            for item in items:
                meta = item.get("metadata") or {}
                key = keys.resource_key(source.kind, meta.get("name", ""),
                                        meta.get("namespace") or None)
                snapshot[key] = Update(key, item, int(meta.get("resourceVersion") or 0))
        for source in self._kv_sources:
            kvs, revision = await self.client.kv_list(source.prefix)
            self._listed = True
            await self._set_status(SyncStatus.RESYNC_IN_PROGRESS)
            source.revision = revision
            for kv in kvs:
                snapshot[kv.key] = Update(kv.key, decode_value(kv.value), kv.mod_revision)
        return snapshot

    async def _sync_once(self) -> None:
        snapshot = await self._list()
        all_sources = self._sources + self._kv_sources
        list_revision = max((s.revision for s in all_sources), default=0)
        start = min((s.revision for s in all_sources), default=0)

        changes = [u for key, u in snapshot.items() if self.told.get(key) != u.revision]
        gone = [Update(key, None, list_revision) for key in self.told.keys() - snapshot.keys()]
        self.told = {key: u.revision for key, u in snapshot.items()}
        self.revision = max(self.revision, list_revision)
        await self._emit(changes + gone)
        self.resyncs += 1
        log.info(
            "snapshot delivered", keys=len(snapshot), changed=len(changes), deleted=len(gone),
            revision=list_revision,
        )
        await self._set_status(SyncStatus.IN_SYNC)
        await self._follow(start)

    def _source_revision(self, event: WatchEvent) -> int:
        if event.kind:
            source = self._by_kind.get(event.kind)
            return source.revision if source is not None else 0
        best: _Source | None = None
        for source in self._kv_sources:
            if event.key.startswith(source.prefix) and (
                best is None or len(source.prefix) > len(best.prefix)
            ):
                best = source
        return best.revision if best is not None else 0

    def _update(self, event: WatchEvent) -> Update | None:
        if event.revision <= self._source_revision(event):
            return None  # already in the snapshot
        if event.type is EventType.DELETED:
            self.told.pop(event.key, None)
            return Update(event.key, None, event.revision, event.traceparent)
        if event.resource is not None:
            value: Any = event.resource
        elif event.kv is not None:
            value = decode_value(event.kv.value)
        else:
            return None
        self.told[event.key] = event.revision
        return Update(event.key, value, event.revision, event.traceparent)

    async def _follow(self, start: int) -> None:
        """Watch from ``start`` and hand over events in batches until the stream fails."""
        queue: asyncio.Queue[WatchEvent | Exception] = asyncio.Queue(maxsize=10_000)

        async def read() -> None:
            try:
                async for event in self.client.watch(
                    self.kinds if not self.kv_only else (),
                    self.kv_prefixes,
                    start,
                    kv_only=self.kv_only,
                ):
                    await queue.put(event)
            except Exception as exc:  # handed to the consumer, which re-raises it
                await queue.put(exc)
            else:
                await queue.put(CalicoError("watch stream ended"))

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while True:
                item = await queue.get()
                batch: list[Update] = []
                while True:
                    if isinstance(item, Exception):
                        if batch:
                            await self._emit(batch)
                        raise item
                    if item.type is EventType.BOOKMARK:
                        self.revision = max(self.revision, item.revision)
                    else:
                        update = self._update(item)
                        if update is not None:
                            batch.append(update)
                            self.revision = max(self.revision, item.revision)
                    if len(batch) >= self.batch_size or queue.empty():
                        break
                    item = queue.get_nowait()
                if batch:
                    await self._emit(batch)
        finally:
            reader.cancel()
            try:
                await reader
            except BaseException:
                pass  # the reader's fate was handed over through the queue
