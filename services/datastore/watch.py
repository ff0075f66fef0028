"""Watch: one etcd watch per stream, filtered here, with bookmarks when idle.

A stream asks for resource kinds (empty = every kind, unless ``kv_only``) and raw key prefixes,
and events strictly after ``revision``. It is served by **one** etcd watcher on the longest
common prefix of everything asked for (``/calico/resources/v3/projectcalico.org/<plural>/``
for one kind; ``/calico/`` when kinds and IPAM keys are mixed), created with
``start_revision = revision + 1`` and ``prev_kv``; events are filtered in-process. One
watcher (rather than one per prefix) keeps every event of the stream in etcd's revision order,
which is what makes "resume from the last revision you saw" correct.

Events:

- ``ADDED`` / ``MODIFIED``: a put (ADDED when the key's create revision is the event's).
- ``DELETED``: carries the last value (etcd's ``prev_kv``); its resourceVersion is that value's.
- ``BOOKMARK``: nothing changed for this stream up to ``revision``; a client that resumes from
  it misses nothing. Sent after ``bookmark_interval`` seconds without an event for the stream:
  at the revision of the last (filtered-out) etcd event if etcd sent any, otherwise at the
  revision of an etcd progress notification, which is requested then. A progress
  notification is held back ``PROGRESS_HOLD`` seconds so an event that etcd queued just
  before answering goes out first (etcd 3.4 answers progress requests out of band).

A compacted start revision fails with ``CompactedError`` (OUT_OF_RANGE): list again. etcd
going away fails the stream with ``UnavailableError``; the client re-lists after reconnecting
(a stream never silently skips events).

Every event carries the traceparent of the write that produced its revision when this process
made that write (see ``store.RevisionTraces``).
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from libcalico import keys, model
from libcalico.errors import UnavailableError, ValidationError
from libcalico.runtime.log import get_logger
from services.datastore.etcd import KV, EtcdWatch, RawEvent
from services.datastore.metrics import WATCH_EVENTS, WATCH_STREAMS
from services.datastore.store import Store, StoredResource

log = get_logger(__name__)

#: Seconds a progress notification waits for events etcd may have queued ahead of it.
PROGRESS_HOLD = 0.05


class EventType(enum.IntEnum):
    """Numbered as ``WatchEvent.Type`` in datastore.proto."""

    ADDED = 0
    MODIFIED = 1
    DELETED = 2
    BOOKMARK = 3


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One event of a stream. ``resource`` for resource keys, ``kv`` for raw keys (for
    DELETED: the last value), neither for BOOKMARK. ``key`` is always the etcd key."""

    type: EventType
    revision: int
    key: str = ""
    resource: StoredResource | None = None
    kv: KV | None = None
    traceparent: str = ""


@dataclass(frozen=True, slots=True)
class WatchFilter:
    """What one stream asked for, resolved: canonical kinds (``None`` = all) and prefixes."""

    kinds: frozenset[str] | None
    include_resources: bool
    kv_prefixes: tuple[str, ...]

    @property
    def etcd_prefix(self) -> str:
        """The one prefix the etcd watcher covers."""
        prefixes: list[str] = list(self.kv_prefixes)
        if self.include_resources:
            if self.kinds is None:
                prefixes.append(keys.RESOURCES_PREFIX)
            else:
                prefixes.extend(keys.resource_prefix(k) for k in sorted(self.kinds))
        # Key prefixes, not paths: '/calico/ipam/v2/' and '/calico/felix/' share '/calico/'.
        return os.path.commonprefix(prefixes)  # noqa: RUF071

    def resource(self, key: str) -> keys.ResourceKey | None:
        """The identity of ``key`` if it is a resource this stream wants."""
        if not self.include_resources:
            return None
        parsed = keys.parse_resource_key(key)
        if parsed is None or (self.kinds is not None and parsed.kind not in self.kinds):
            return None
        return parsed

    def wants_kv(self, key: str) -> bool:
        """Whether ``key`` is under one of the raw prefixes (never a resource key)."""
        return any(key.startswith(p) for p in self.kv_prefixes)


def make_filter(
    kinds: Sequence[str], kv_prefixes: Sequence[str], *, kv_only: bool = False
) -> WatchFilter:
    for prefix in kv_prefixes:
        Store.check_kv_key(prefix, prefix=True)
    include_resources = not kv_only
    wanted: frozenset[str] | None = None
    if kinds:
        wanted = frozenset(model.lookup_kind(k).kind for k in kinds)
    if not include_resources and not kv_prefixes:
        raise ValidationError("kv_only without kv_prefixes watches nothing", field="kv_prefixes")
    return WatchFilter(wanted, include_resources, tuple(dict.fromkeys(kv_prefixes)))


class Watcher:
    """Serves watch streams over the store's etcd (see the module docstring)."""

    def __init__(self, store: Store, *, bookmark_interval: float = 5.0) -> None:
        self.store = store
        self.bookmark_interval = bookmark_interval
        self._open: set[EtcdWatch] = set()
        self._closed = False

    def close(self) -> None:
        """End every open stream with UNAVAILABLE (the service is stopping); refuse new ones."""
        self._closed = True
        for w in list(self._open):
            w.fail(UnavailableError("the datastore service is stopping; reconnect"))

    async def _event(self, flt: WatchFilter, raw: RawEvent) -> WatchEvent | None:
        key = raw.kv.key
        ident = flt.resource(key)
        if ident is None and not flt.wants_kv(key):
            return None
        revision = raw.kv.mod_revision
        shown = raw.prev if raw.deleted else raw.kv
        if raw.deleted:
            etype = EventType.DELETED
        elif raw.kv.create_revision == raw.kv.mod_revision:
            etype = EventType.ADDED
        else:
            etype = EventType.MODIFIED
        traceparent = await self.store.traces.settle(revision, key)
        if ident is None:
            kv = shown if shown is not None else KV(key, b"", 0, 0)
            return WatchEvent(etype, revision, key, kv=kv, traceparent=traceparent)
        resource = StoredResource(
            ident.kind,
            ident.namespace or "",
            ident.name,
            shown.mod_revision if shown is not None else 0,
            shown.value if shown is not None else b"",
        )
        return WatchEvent(etype, revision, key, resource=resource, traceparent=traceparent)

    async def watch(
        self,
        kinds: Sequence[str] = (),
        kv_prefixes: Sequence[str] = (),
        revision: int = 0,
        *,
        kv_only: bool = False,
    ) -> AsyncIterator[WatchEvent]:
        """Events after ``revision`` (0 = from now) until the caller stops iterating."""
        flt = make_filter(kinds, kv_prefixes, kv_only=kv_only)
        if revision < 0:
            raise ValidationError(f"revision {revision} is negative", field="revision")
        if self._closed:
            raise UnavailableError("the datastore service is stopping; reconnect")
        interval = self.bookmark_interval
        stream = self.store.etcd.watch(flt.etcd_prefix, revision + 1 if revision else 0)
        self._open.add(stream)
        WATCH_STREAMS.inc()
        try:
            async with stream as w:
                told = revision  # highest revision the client knows everything up to
                seen = revision  # highest etcd event revision received (sent or filtered)
                idle_until = time.monotonic() + interval
                progress: int | None = None
                progress_until = 0.0
                while True:
                    now = time.monotonic()
                    wait = (progress_until if progress is not None else idle_until) - now
                    batch = await w.next(max(wait, 0.0))
                    if batch is not None and batch.events:
                        sent = False
                        for raw in batch.events:
                            event = await self._event(flt, raw)
                            seen = max(seen, raw.kv.mod_revision)
                            if event is not None:
                                WATCH_EVENTS.labels(event.type.name).inc()
                                yield event
                                sent = True
                        if sent:
                            told = seen
                            idle_until = time.monotonic() + interval
                    elif batch is not None:
                        progress = batch.revision
                        progress_until = time.monotonic() + PROGRESS_HOLD
                    now = time.monotonic()
                    if progress is not None and now >= progress_until:
                        told = max(told, seen, progress)
                        progress = None
                        idle_until = now + interval
                        WATCH_EVENTS.labels("BOOKMARK").inc()
                        yield WatchEvent(EventType.BOOKMARK, told)
                    elif progress is None and now >= idle_until:
                        idle_until = now + interval
                        if seen > told:
                            told = seen
                            WATCH_EVENTS.labels("BOOKMARK").inc()
                            yield WatchEvent(EventType.BOOKMARK, told)
                        else:
                            await w.request_progress()
        finally:
            WATCH_STREAMS.dec()
            self._open.discard(stream)
