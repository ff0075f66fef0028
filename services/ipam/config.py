"""The IPAM service's configuration (env ``CALICO_IPAM_*`` > config file > defaults).

| setting | env | default |
|---|---|---|
| ``listen`` | ``CALICO_IPAM_LISTEN`` (comma-separated) | the lab socket |
| ``datastore`` | ``CALICO_IPAM_DATASTORE``: the datastore service | the lab datastore socket |
| ``etcd_endpoints`` | ``CALICO_IPAM_ETCD_ENDPOINTS``: go to etcd directly (see below) | none |
| ``resource_cache_seconds`` | how long pools, reservations and node labels are reused | 2 |
| ``retries`` | compare-and-swap conflicts tolerated per request (Calico: 100) | 100 |
| ``trace_file`` / ``otlp_endpoint`` | spans | none |
| ``metrics_port`` | Prometheus ``/metrics`` on 127.0.0.1 | none |
| ``cpu_affinity`` | ``adaptive``, ``all`` or CPUs ``0-3,6`` (``runtime.cpu_affinity``) | adaptive |
| ``log_level`` | DEBUG/INFO/WARNING/ERROR | INFO |

With ``etcd_endpoints`` the IPAM keys and the few resources the service reads (pools,
reservations, nodes, workload endpoints) go to etcd directly instead of through the datastore
service: one hop less per allocation, same keys and JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from libcalico.runtime.cpu_affinity import parse_cpu_affinity

ENV_PREFIX = "CALICO_IPAM_"
LAB_SOCKET = "unix:///run/calico-lab/sock/ipam.sock"
LAB_DATASTORE = "unix:///run/calico-lab/sock/datastore.sock"


@dataclass(frozen=True)
class IPAMServiceConfig:
    listen: tuple[str, ...] = (LAB_SOCKET,)
    datastore: str = LAB_DATASTORE
    etcd_endpoints: tuple[str, ...] = ()
    resource_cache_seconds: float = 2.0
    retries: int = 100
    trace_file: Path | None = None
    otlp_endpoint: str | None = None
    metrics_port: int | None = None
    cpu_affinity: str = "adaptive"
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        parse_cpu_affinity(self.cpu_affinity)
        if self.resource_cache_seconds < 0:
            raise ValueError("resource_cache_seconds cannot be negative")
        if self.retries < 1:
            raise ValueError("retries must be at least 1")
