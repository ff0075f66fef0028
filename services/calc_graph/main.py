"""``calico-calc-graph``: the calculation graph service.

    calico-calc-graph [--config FILE]      # settings: services/calc_graph/config.py

Object graph (``build``, with the stages wired by ``graph.build_graph``)::

    datastore ──list+watch──> Syncer ──on_updates/on_status──> GraphDriver ──> CalcGraph
                                                                   │ flush loop (rate-limited)
    Sync(node) / BGPSync(node) / Report <── CalcGraphServicer <────┘ subscribers, status
"""

from __future__ import annotations

from dataclasses import dataclass

from libcalico.client import DatastoreClient
from libcalico.client.syncer import Syncer
from libcalico.keys import IPAM_PREFIX
from libcalico.runtime import (
    ServerSpec,
    get_logger,
    load_config,
    run_main,
    serve,
    setup_logging,
    setup_tracing,
)

from .config import ENV_PREFIX, CalcGraphConfig
from .driver import GraphDriver
from .graph import CalcGraph, build_graph
from .servicer import CalcGraphServicer, add_to_server
from .status import StatusWriter

log = get_logger(__name__)

SERVICE_NAME = "calicopy.calcgraph.v1.CalcGraph"  # servicer.SERVICE


@dataclass
class CalcGraphService:
    graph: CalcGraph
    driver: GraphDriver
    client: DatastoreClient
    syncer: Syncer
    servicer: CalcGraphServicer
    status_writer: StatusWriter

    async def close(self) -> None:
        self.driver.close()
        await self.client.close()


def build(cfg: CalcGraphConfig) -> CalcGraphService:
    graph = build_graph()
    driver = GraphDriver(graph, cfg)
    client = DatastoreClient(cfg.datastore)
    syncer = Syncer(client, driver, kinds=graph.dispatcher.kinds(), kv_prefixes=(IPAM_PREFIX,))
    return CalcGraphService(graph, driver, client, syncer, CalcGraphServicer(driver),
                            StatusWriter(driver.status, client))


def server_spec(svc: CalcGraphService, cfg: CalcGraphConfig) -> ServerSpec:
    return ServerSpec(
        service="calc_graph",
        listen=cfg.listen,
        register=lambda server: add_to_server(svc.servicer, server),
        service_names=[SERVICE_NAME],
        tasks={"syncer": svc.syncer.run, "flush": svc.driver.run,
               "status-writer": svc.status_writer.run},
        metrics_port=cfg.metrics_port,
        cpu_affinity=cfg.cpu_affinity,
    )


async def run_service(cfg: CalcGraphConfig) -> None:
    svc = build(cfg)
    log.info("calc_graph starting", listen=",".join(cfg.listen), datastore=cfg.datastore)
    try:
        await serve(server_spec(svc, cfg))
    finally:
        await svc.close()


async def amain() -> None:
    cfg = load_config(CalcGraphConfig, env_prefix=ENV_PREFIX)
    setup_logging("calc_graph", cfg.log_level)
    setup_tracing("calc_graph", otlp_endpoint=cfg.otlp_endpoint, jsonl_path=cfg.trace_file)
    await run_service(cfg)


def main() -> None:
    run_main(amain)


if __name__ == "__main__":
    main()
