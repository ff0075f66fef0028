"""The datastore service's Prometheus metrics (fixed label sets; values from closed sets).

- ``calico_datastore_writes_total{kind,op,result}``: every write through the store. ``kind`` is
  a Calico kind or ``kv`` for raw keys, ``op`` one of create/update/apply/delete/txn and
  ``result`` one of ok, failed (a KV compare that did not hold), or the error class name of
  ``libcalico.errors`` (ConflictError, ValidationError, ...).
- ``calico_datastore_watch_streams``: Watch RPCs open right now.
- ``calico_datastore_watch_events_total{type}``: events sent on watch streams.
- ``calico_datastore_etcd_seconds{op}``: etcd round trips (range, txn) as the service sees them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from libcalico.errors import CalicoError
from libcalico.runtime.metrics import counter, gauge, histogram

WRITES = counter(
    "calico_datastore_writes_total",
    "Writes through the datastore, by kind (or kv), operation and result.",
    ("kind", "op", "result"),
)
WATCH_STREAMS = gauge(
    "calico_datastore_watch_streams",
    "Watch streams open on this datastore service.",
)
WATCH_EVENTS = counter(
    "calico_datastore_watch_events_total",
    "Events sent on watch streams, by type (ADDED, MODIFIED, DELETED, BOOKMARK).",
    ("type",),
)
ETCD_SECONDS = histogram(
    "calico_datastore_etcd_seconds",
    "etcd round-trip time seen by the datastore service, by etcd operation.",
    ("op",),
)


def observe_etcd(op: str, seconds: float) -> None:
    ETCD_SECONDS.labels(op).observe(seconds)


class WriteOutcome:
    """Set ``result`` to override the ``ok`` of a write that returned normally."""

    __slots__ = ("result",)

    def __init__(self) -> None:
        self.result = "ok"


@contextmanager
def counted_write(kind: str, op: str) -> Iterator[WriteOutcome]:
    """Count one write by its outcome: ``ok``, ``failed`` or the domain error's class name."""
    outcome = WriteOutcome()
    try:
        yield outcome
    except CalicoError as exc:
        WRITES.labels(kind, op, type(exc).__name__).inc()
        raise
    except Exception:
        WRITES.labels(kind, op, "error").inc()
        raise
    WRITES.labels(kind, op, outcome.result).inc()
