"""``calico-ipam-service``: the IPAM service process.

    calico-ipam-service [--config FILE]      # settings: services/ipam/config.py

Object graph (built by ``build``, the one wiring function)::

    gRPC IPAM ──> IPAMServicer ──> Allocator ──> KVStore ─────────> datastore KVTxn ──> etcd
                       │              │  └─ ResourceCache ──> ResourceStore ──┘ (pools,
                       │              │        (pools, reservations,           reservations,
                       │              │         node labels; short-lived)      nodes, WEPs)
                       ├──> TunnelAddresses ──> Allocator + ResourceStore (Node updates)
                       └──> check ──> Allocator.snapshot + ResourceStore (Nodes, WEPs)

The KVStore and ResourceStore are the datastore service's client, or (``etcd_endpoints``)
etcd itself. The allocator's block cache lives as long as the process; nothing needs warming.
"""

from __future__ import annotations

from dataclasses import dataclass

from libcalico.api.ipam.v1 import ipam_pb2_grpc as pb_grpc
from libcalico.runtime import (
    ServerSpec,
    get_logger,
    load_config,
    run_main,
    serve,
    setup_logging,
    setup_tracing,
)
from services.ipam.allocator import Allocator, ResourceCache
from services.ipam.config import ENV_PREFIX, IPAMServiceConfig
from services.ipam.kvstore import (
    DatastoreKVStore,
    DatastoreResourceStore,
    EtcdKVStore,
    KVResourceStore,
    KVStore,
    ResourceStore,
)
from services.ipam.servicer import IPAMServicer
from services.ipam.tunnels import TunnelAddresses

log = get_logger(__name__)

SERVICE_NAME = "calicopy.ipam.v1.IPAM"


@dataclass
class IPAMGraph:
    kv: KVStore
    resources: ResourceStore
    allocator: Allocator
    tunnels: TunnelAddresses
    servicer: IPAMServicer

    async def close(self) -> None:
        await self.kv.close()


def build(cfg: IPAMServiceConfig) -> IPAMGraph:
    """Wire the service's objects (see the module docstring's diagram)."""
    kv: KVStore
    resources: ResourceStore
    if cfg.etcd_endpoints:
        kv = EtcdKVStore.from_endpoint(cfg.etcd_endpoints[0])
        resources = KVResourceStore(kv)
    else:
        from libcalico.client import DatastoreClient

        client = DatastoreClient(cfg.datastore)
        kv = DatastoreKVStore(client)
        resources = DatastoreResourceStore(client)
    cache = ResourceCache(resources, max_age=cfg.resource_cache_seconds)
    allocator = Allocator(kv, cache, retries=cfg.retries)
    tunnels = TunnelAddresses(allocator, resources)
    return IPAMGraph(kv, resources, allocator, tunnels, IPAMServicer(allocator, tunnels, resources))


def server_spec(graph: IPAMGraph, cfg: IPAMServiceConfig) -> ServerSpec:
    return ServerSpec(
        service="ipam",
        listen=cfg.listen,
        register=lambda server: pb_grpc.add_IPAMServicer_to_server(graph.servicer, server),
        service_names=[SERVICE_NAME],
        metrics_port=cfg.metrics_port,
        cpu_affinity=cfg.cpu_affinity,
    )


async def run_service(cfg: IPAMServiceConfig) -> None:
    """Serve until SIGTERM/SIGINT."""
    graph = build(cfg)
    log.info(
        "ipam service starting",
        listen=",".join(cfg.listen),
        backend="etcd" if cfg.etcd_endpoints else cfg.datastore,
    )
    try:
        await serve(server_spec(graph, cfg))
    finally:
        await graph.close()


async def amain() -> None:
    cfg = load_config(IPAMServiceConfig, env_prefix=ENV_PREFIX)
    setup_logging("ipam", cfg.log_level)
    setup_tracing("ipam", otlp_endpoint=cfg.otlp_endpoint, jsonl_path=cfg.trace_file)
    await run_service(cfg)


def main() -> None:
    run_main(amain)


if __name__ == "__main__":
    main()
