"""The datastore service's configuration (env ``CALICO_DATASTORE_*`` > config file > defaults).

| setting | env | default |
|---|---|---|
| ``listen`` | ``CALICO_DATASTORE_LISTEN`` (comma-separated) | the lab socket |
| ``etcd_endpoints`` | ``CALICO_DATASTORE_ETCD_ENDPOINTS`` | ``http://127.0.0.1:2379`` |
| ``etcd_unavailable_wait`` | seconds a call waits for etcd to come back before UNAVAILABLE | 10 |
| ``bookmark_interval`` | seconds of quiet before a watch stream gets a BOOKMARK | 5 |
| ``trace_file`` | JSON-lines span file (empty: the runtime's default) | none |
| ``otlp_endpoint`` | OTLP/gRPC collector for spans | none |
| ``metrics_port`` | Prometheus ``/metrics`` on 127.0.0.1 (0/empty: off) | none |
| ``cpu_affinity`` | ``adaptive``, ``all`` or CPUs ``0-3,6`` (``runtime.cpu_affinity``) | adaptive |
| ``log_level`` | DEBUG/INFO/WARNING/ERROR | INFO |
| ``calico_version`` | ClusterInformation ``default`` spec.calicoVersion (first start) | v3.30.0 |
| ``cluster_type`` | ClusterInformation ``default`` spec.clusterType (first start) | calico-py,bgp |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from libcalico.runtime.cpu_affinity import parse_cpu_affinity

ENV_PREFIX = "CALICO_DATASTORE_"
LAB_SOCKET = "unix:///run/calico-lab/sock/datastore.sock"


@dataclass(frozen=True)
class DatastoreConfig:
    listen: tuple[str, ...] = (LAB_SOCKET,)
    etcd_endpoints: tuple[str, ...] = field(default=("http://127.0.0.1:2379",))
    etcd_unavailable_wait: float = 10.0
    bookmark_interval: float = 5.0
    trace_file: Path | None = None
    otlp_endpoint: str | None = None
    metrics_port: int | None = None
    cpu_affinity: str = "adaptive"
    log_level: str = "INFO"
    calico_version: str = "v3.30.0"
    cluster_type: str = "calico-py,bgp"

    def __post_init__(self) -> None:
        parse_cpu_affinity(self.cpu_affinity)
        if self.etcd_unavailable_wait <= 0:
            raise ValueError("etcd_unavailable_wait must be positive")
        if self.bookmark_interval <= 0:
            raise ValueError("bookmark_interval must be positive")
