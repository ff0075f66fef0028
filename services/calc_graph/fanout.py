"""Fan-out: per-node subscribers with bounded queues; a subscriber that falls behind is cut off.

The graph flushes into every subscriber synchronously and never waits for one: ``offer`` either
queues the batch or, when the queue is full (``max_batches`` batches or ``max_messages``
messages), marks the subscriber cut off and returns False; the graph then drops it and its
stream ends with RESOURCE_EXHAUSTED. The node's driver reconnects and gets a fresh snapshot, so
a slow consumer costs itself a resync and costs everyone else nothing. A first snapshot larger
than the message bound is still accepted into an empty queue.

BGP subscribers only ever need the newest view, so their "queue" is one slot that the next view
overwrites; they are never cut off.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from libcalico.api.calcgraph.v1 import calcgraph_pb2 as cg
from libcalico.api.felix import felixbackend_pb2 as fb

DEFAULT_MAX_BATCHES = 1_000
DEFAULT_MAX_MESSAGES = 500_000


@dataclass(slots=True)
class Batch:
    """Messages flushed together for one subscriber."""

    messages: list[fb.ToDataplane]
    traceparent: str = ""
    revision: int = 0
    snapshot: bool = False
    commit_unix_ns: int = 0  # the oldest change's arrival (SyncBatch.datastore_commit_unix_ns)


class SubscriberCutOff(Exception):
    """The subscriber fell behind (or the graph dropped it); it must resync."""


@dataclass(eq=False)
class Subscriber:
    node: str
    driver: str = ""
    max_batches: int = DEFAULT_MAX_BATCHES
    max_messages: int = DEFAULT_MAX_MESSAGES
    in_sync_sent: bool = False
    error: str = ""
    batches_sent: int = 0
    _queue: deque[Batch] = field(default_factory=deque)
    _queued_messages: int = 0
    _event: asyncio.Event = field(default_factory=asyncio.Event)
    _closed: bool = False

    def offer(self, batch: Batch) -> bool:
        if self._closed:
            return False
        n = len(batch.messages)
        if self._queue and (
            len(self._queue) >= self.max_batches or self._queued_messages + n > self.max_messages
        ):
            self.cut_off(
                f"subscriber for node {self.node!r} fell behind: {len(self._queue)} batches "
                f"({self._queued_messages} messages) unread, limit {self.max_batches} batches / "
                f"{self.max_messages} messages; reconnect to resync from a fresh snapshot"
            )
            return False
        self._queue.append(batch)
        self._queued_messages += n
        self._event.set()
        return True

    def cut_off(self, reason: str) -> None:
        if not self._closed:
            self.error = reason
            self._closed = True
            self._queue.clear()
            self._queued_messages = 0
            self._event.set()

    def close(self) -> None:
        self._closed = True
        self._event.set()

    @property
    def closed(self) -> bool:
        return self._closed

    def drain(self) -> list[Batch]:
        """Everything queued, without waiting (tests and the servicer)."""
        if self.error:
            raise SubscriberCutOff(self.error)
        out = list(self._queue)
        self._queue.clear()
        self._queued_messages = 0
        self._event.clear()
        return out

    async def next_batches(self) -> list[Batch]:
        """Wait for at least one batch; raises SubscriberCutOff when cut off."""
        while not self._queue:
            if self.error:
                raise SubscriberCutOff(self.error)
            if self._closed:
                return []
            self._event.clear()
            await self._event.wait()
        return self.drain()


@dataclass(eq=False)
class BGPSubscriber:
    node: str
    latest: cg.BGPUpdate | None = None
    sent_once: bool = False
    _event: asyncio.Event = field(default_factory=asyncio.Event)
    _closed: bool = False

    def offer(self, update: cg.BGPUpdate) -> bool:
        self.latest = update
        self._event.set()
        return True

    def close(self) -> None:
        self._closed = True
        self._event.set()

    def take(self) -> cg.BGPUpdate | None:
        update, self.latest = self.latest, None
        self._event.clear()
        return update

    async def next_update(self) -> cg.BGPUpdate | None:
        while self.latest is None:
            if self._closed:
                return None
            self._event.clear()
            await self._event.wait()
        return self.take()


def in_sync_message() -> fb.ToDataplane:
    return fb.ToDataplane(in_sync=fb.InSync())
