"""Cluster-wide keyed messages that every node receives alike, with per-flush change tracking.

Namespaces, service accounts, VTEPs, host metadata and IP pools are the same for every node, so
the graph keeps one table of ready-built update messages and, for each key changed since the
last flush, whether it existed at that flush. At flush time an established node receives the
removes and updates (the *same* message objects for every node); a node taking its first
snapshot receives every current value instead. A key added and removed within one cycle
produces nothing, as in Felix's event sequencer.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from libcalico.api.felix import felixbackend_pb2 as fb

K = TypeVar("K", bound=Hashable)


class KeyedMessages(Generic[K]):
    def __init__(self, make_remove: Callable[[K], fb.ToDataplane]) -> None:
        self._make_remove = make_remove
        self.values: dict[K, fb.ToDataplane] = {}
        self._existed: dict[K, bool] = {}
        self._memo: tuple[list[fb.ToDataplane], list[fb.ToDataplane]] | None = None

    def __len__(self) -> int:
        return len(self.values)

    def set(self, key: K, msg: fb.ToDataplane | None) -> bool:
        """Record the current message for ``key`` (``None``: absent). True if it changed."""
        old = self.values.get(key)
        if msg is None:
            if old is None:
                return False
            del self.values[key]
        else:
            if old is not None and old == msg:
                return False
            self.values[key] = msg
        if key not in self._existed:
            self._existed[key] = old is not None
        self._memo = None
        return True

    @property
    def dirty(self) -> bool:
        return bool(self._existed)

    def changes(self) -> tuple[list[fb.ToDataplane], list[fb.ToDataplane]]:
        """(removes, updates) since the last flush, shared by every established node."""
        if self._memo is None:
            removes = []
            updates = []
            for key, existed in self._existed.items():
                msg = self.values.get(key)
                if msg is not None:
                    updates.append(msg)
                elif existed:
                    removes.append(self._make_remove(key))
            self._memo = (removes, updates)
        return self._memo

    def snapshot(self) -> list[fb.ToDataplane]:
        return list(self.values.values())

    def end_flush(self) -> None:
        self._existed = {}
        self._memo = None
