"""Prometheus metrics: one registry per process, fixed label sets, an optional HTTP endpoint.

Every collector lives in prometheus_client's default ``REGISTRY``; a process has one service (or,
in tests, several in-process services that share the same collectors, which is why the
``counter``/``gauge``/``histogram`` helpers return the existing collector when asked twice for
the same name). Label *names* are fixed when a collector is created and a second request with
other labels is a bug, so it raises. Label *values* must come from small closed sets (gRPC
method names, status codes, table names) — never resource names, IPs or revisions.

The runtime's server handler wrapping records
``calico_grpc_server_handled_total{service,method,code}`` and
``calico_grpc_server_handling_seconds{service,method}`` (``rpc_metrics``: plain numbers, not
these helpers' collectors, as every RPC pays for them); ``service`` is the fully qualified
gRPC service (``calico.datastore.v1.Datastore``), not the process.

``start_metrics_server(port)`` serves ``/metrics`` on loopback by default from
prometheus_client's own thread; port ``0``/``None`` turns it off.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

__all__ = [
    "LATENCY_BUCKETS",
    "MetricsServer",
    "counter",
    "gauge",
    "histogram",
    "start_metrics_server",
]

#: Seconds; tuned for RPCs that take ~100 µs on a unix socket up to multi-second list calls.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

_C = TypeVar("_C", Counter, Gauge, Histogram)
_lock = threading.Lock()
_collectors: dict[str, tuple[type[Any], tuple[str, ...], Any]] = {}


def _get_or_create(
    kind: type[_C], name: str, documentation: str, labels: Sequence[str], **kwargs: Any
) -> _C:
    label_names = tuple(labels)
    with _lock:
        existing = _collectors.get(name)
        if existing is not None:
            ekind, elabels, collector = existing
            if ekind is not kind or elabels != label_names:
                raise ValueError(
                    f"metric {name} already registered as {ekind.__name__}{list(elabels)}, "
                    f"asked again as {kind.__name__}{list(label_names)}"
                )
            result: _C = collector
            return result
        created = kind(name, documentation, label_names, registry=REGISTRY, **kwargs)
        _collectors[name] = (kind, label_names, created)
        return created


def counter(name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
    """The process-wide counter ``name`` (created on first use)."""
    return _get_or_create(Counter, name, documentation, labels)


def gauge(name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
    """The process-wide gauge ``name`` (created on first use)."""
    return _get_or_create(Gauge, name, documentation, labels)


def histogram(
    name: str,
    documentation: str,
    labels: Sequence[str] = (),
    buckets: Sequence[float] = LATENCY_BUCKETS,
) -> Histogram:
    """The process-wide histogram ``name`` (created on first use)."""
    return _get_or_create(Histogram, name, documentation, labels, buckets=tuple(buckets))


@dataclass
class MetricsServer:
    """A running ``/metrics`` endpoint; ``close()`` stops it."""

    addr: str
    port: int
    _server: Any
    _thread: threading.Thread

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(port: int | None, addr: str = "127.0.0.1") -> MetricsServer | None:
    """Serve the default registry on ``http://addr:port/metrics``; ``None``/``0`` means off."""
    if not port:
        return None
    server, thread = start_http_server(port, addr=addr, registry=REGISTRY)
    bound_port = int(server.server_address[1])
    return MetricsServer(addr=addr, port=bound_port, _server=server, _thread=thread)
