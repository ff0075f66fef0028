"""calc_graph's configuration (env ``CALICO_CALC_GRAPH_*`` > config file > defaults).

| setting | meaning | default |
|---|---|---|
| ``listen`` | gRPC addresses (comma-separated in env) | the lab socket |
| ``datastore`` | the datastore service target | the lab datastore socket |
| ``flush_interval`` | minimum seconds between flushes once in sync (Felix's 10 ms tick) | 0.01 |
| ``resync_flush_interval`` | minimum seconds between flushes while the datastore resyncs | 0.5 |
| ``max_batches`` / ``max_messages`` | a subscriber's queue bound (then cut off) | 1000 / 500000 |
| ``update_chunk`` | updates applied between yields to the event loop | 500 |
| ``trace_file`` / ``otlp_endpoint`` | spans | none |
| ``metrics_port`` | Prometheus ``/metrics`` on 127.0.0.1 | none |
| ``cpu_affinity`` | ``adaptive``, ``all`` or CPUs ``0-3,6`` (``runtime.cpu_affinity``) | adaptive |
| ``log_level`` | DEBUG/INFO/WARNING/ERROR | INFO |
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from libcalico.runtime.cpu_affinity import parse_cpu_affinity

ENV_PREFIX = "CALICO_CALC_GRAPH_"
LAB_SOCKET = "unix:///run/calico-lab/sock/calc_graph.sock"
LAB_DATASTORE = "unix:///run/calico-lab/sock/datastore.sock"


@dataclass(frozen=True)
class CalcGraphConfig:
    listen: tuple[str, ...] = (LAB_SOCKET,)
    datastore: str = LAB_DATASTORE
    flush_interval: float = 0.01
    resync_flush_interval: float = 0.5
    max_batches: int = 1000
    max_messages: int = 500_000
    update_chunk: int = 500
    trace_file: Path | None = None
    otlp_endpoint: str | None = None
    metrics_port: int | None = None
    cpu_affinity: str = "adaptive"
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        parse_cpu_affinity(self.cpu_affinity)
        if self.flush_interval < 0 or self.resync_flush_interval < 0:
            raise ValueError("flush intervals cannot be negative")
        if self.max_batches < 1 or self.max_messages < 1:
            raise ValueError("subscriber queue bounds must be at least 1")
        if self.update_chunk < 1:
            raise ValueError("update_chunk must be at least 1")
