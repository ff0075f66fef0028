"""``SyncRecorder``: Syncer callbacks that keep the caller's view, for tests and the lab.

    recorder = SyncRecorder()
    task = asyncio.create_task(Syncer(client, recorder, kinds=["IPPool"]).run())
    await recorder.wait_for(lambda: recorder.in_sync)
    assert recorder.view[key]["spec"]["cidr"] == "10.65.0.0/16"

``view`` is key -> value exactly as the updates left it (deletions remove the key);
``statuses`` every status reported, in order; ``wait_for(predicate, timeout)`` waits until the
predicate holds after some callback, bounded, without fixed sleeps. ``on_status`` and
``on_updates`` are coroutines, so a test can hold the syncer at a chosen point with ``gate``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from libcalico.client.syncer import SyncStatus, Update


class SyncRecorder:
    def __init__(self) -> None:
        self.view: dict[str, Any] = {}
        self.statuses: list[SyncStatus] = []
        self.updates: list[Update] = []
        self.batches = 0
        #: When set for a status, ``on_status`` waits on the event before returning.
        self.gate: dict[SyncStatus, asyncio.Event] = {}
        self._changed = asyncio.Event()

    @property
    def status(self) -> SyncStatus | None:
        return self.statuses[-1] if self.statuses else None

    @property
    def in_sync(self) -> bool:
        return self.status is SyncStatus.IN_SYNC

    async def on_status(self, status: SyncStatus) -> None:
        self.statuses.append(status)
        self._changed.set()
        gate = self.gate.get(status)
        if gate is not None:
            await gate.wait()

    async def on_updates(self, updates: list[Update]) -> None:
        self.batches += 1
        self.updates.extend(updates)
        for update in updates:
            if update.value is None:
                self.view.pop(update.key, None)
            else:
                self.view[update.key] = update.value
        self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Return once ``predicate()`` holds; ``TimeoutError`` after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()
