"""``calico-datastore``: the datastore service process.

    calico-datastore [--config FILE]      # settings: services/datastore/config.py

Object graph (built by ``build``, the one wiring function)::

    gRPC Datastore ──> DatastoreServicer ──> Store ───> Etcd (one channel to etcd)
                                    │          ▲           ▲
                                    └────> Watcher ────────┘ (one etcd watch per stream)
                                               └─ RevisionTraces (traceparent per revision)

On start-up the store makes sure ClusterInformation ``default`` and the ``default`` Tier exist,
waiting for etcd (with backoff) if it is not up yet; health turns SERVING after that.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from libcalico.api.datastore.v1 import datastore_pb2_grpc as pb_grpc
from libcalico.errors import UnavailableError
from libcalico.runtime.config import load_config
from libcalico.runtime.log import get_logger, setup_logging
from libcalico.runtime.server import Server, ServerSpec, run_main
from libcalico.runtime.telemetry import setup_tracing
from services.datastore.config import ENV_PREFIX, DatastoreConfig
from services.datastore.etcd import Etcd
from services.datastore.metrics import observe_etcd
from services.datastore.servicer import DatastoreServicer
from services.datastore.store import RevisionTraces, Store
from services.datastore.watch import Watcher

log = get_logger(__name__)

SERVICE_NAME = "calicopy.datastore.v1.Datastore"


@dataclass
class DatastoreGraph:
    etcd: Etcd
    store: Store
    watcher: Watcher
    servicer: DatastoreServicer

    def end_streams(self) -> None:
        """End the long-lived streams (watches, sessions) so a stop need not wait them out."""
        self.watcher.close()
        self.servicer.close()

    async def close(self) -> None:
        self.end_streams()
        await self.etcd.close()


def build(cfg: DatastoreConfig) -> DatastoreGraph:
    """Wire the service's objects (see the module docstring's diagram)."""
    etcd = Etcd(
        cfg.etcd_endpoints,
        unavailable_wait=cfg.etcd_unavailable_wait,
        observe_latency=observe_etcd,
    )
    store = Store(etcd, traces=RevisionTraces())
    watcher = Watcher(store, bookmark_interval=cfg.bookmark_interval)
    return DatastoreGraph(etcd, store, watcher, DatastoreServicer(store, watcher))


async def ensure_defaults(graph: DatastoreGraph, cfg: DatastoreConfig) -> None:
    """Create the cluster's default objects, retrying while etcd is unreachable."""
    delay = 0.2
    while True:
        try:
            await graph.store.ensure_defaults(
                calico_version=cfg.calico_version, cluster_type=cfg.cluster_type
            )
            return
        except UnavailableError as exc:
            log.warning("etcd not reachable yet; retrying", error=str(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def server_spec(graph: DatastoreGraph, cfg: DatastoreConfig) -> ServerSpec:
    return ServerSpec(
        service="datastore",
        listen=cfg.listen,
        register=lambda server: pb_grpc.add_DatastoreServicer_to_server(graph.servicer, server),
        service_names=[SERVICE_NAME],
        # Each call on a Session has its own span; the stream's would be a root as long as the
        # client's connection.
        untraced_methods=[f"/{SERVICE_NAME}/Session"],
        metrics_port=cfg.metrics_port,
        cpu_affinity=cfg.cpu_affinity,
        initially_serving=False,
    )


async def run_service(cfg: DatastoreConfig) -> None:
    """Serve until SIGTERM/SIGINT."""
    graph = build(cfg)
    server = Server(server_spec(graph, cfg))

    async def ready() -> None:
        await ensure_defaults(graph, cfg)
        await server.set_serving(True)

    async def end_watches_on_stop() -> None:
        # The server cancels its tasks first when it stops; ending the watch and session
        # streams then means a stop does not sit out the grace period for them.
        try:
            await asyncio.Event().wait()
        finally:
            graph.end_streams()

    server.add_task("ready", ready)
    server.add_task("watch-closer", end_watches_on_stop)
    try:
        await server.run()
    finally:
        await graph.close()


async def amain() -> None:
    cfg = load_config(DatastoreConfig, env_prefix=ENV_PREFIX)
    setup_logging("datastore", cfg.log_level)
    setup_tracing("datastore", otlp_endpoint=cfg.otlp_endpoint, jsonl_path=cfg.trace_file)
    await run_service(cfg)


def main() -> None:
    run_main(amain)


if __name__ == "__main__":
    main()
