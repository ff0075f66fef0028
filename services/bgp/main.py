"""``calico-bgp``: one per node, inside the node's network namespace, next to its BIRD.

Config (env prefix ``CALICO_BGP_``, or a YAML file with ``--config``): ``NODE_NAME`` (defaults
to the hostname), ``CALC_GRAPH`` (the calc_graph target), ``BIRD_DIR`` (config, control socket
``bird.ctl`` and log), ``LISTEN`` (health socket), ``CHECK_INTERVAL``, logging, tracing and
metrics settings.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from libcalico.runtime import (
    Server,
    ServerSpec,
    load_config,
    make_channel,
    run_main,
    setup_logging,
    setup_tracing,
)

from .bird import BirdProcess
from .driver import BGPDriver


@dataclass(frozen=True)
class BGPConfig:
    node_name: str = ""
    calc_graph: str = "unix:///run/calico-lab/sock/calc_graph.sock"
    # BIRD's config, log and control socket; /var/run/calico/bird.ctl is where Calico keeps it.
    bird_dir: Path = Path("/var/run/calico")
    bird_binary: str = "bird"
    listen: list[str] = field(default_factory=list)
    check_interval: float = 5.0
    log_level: str = "INFO"
    trace_file: Path | None = None
    otlp_endpoint: str | None = None
    metrics_port: int = 0


def build(cfg: BGPConfig) -> BGPDriver:
    node = cfg.node_name or socket.gethostname()
    bird = BirdProcess(cfg.bird_dir, bird=cfg.bird_binary)
    return BGPDriver(
        node,
        lambda: make_channel(cfg.calc_graph, service="calc_graph"),
        bird,
        check_interval=cfg.check_interval,
    )


async def amain() -> None:
    cfg = load_config(BGPConfig, env_prefix="CALICO_BGP_")
    setup_logging("bgp", cfg.log_level)
    setup_tracing("bgp", otlp_endpoint=cfg.otlp_endpoint, jsonl_path=cfg.trace_file)
    driver = build(cfg)
    server = Server(ServerSpec(
        service="bgp",
        listen=cfg.listen or [f"unix://{cfg.bird_dir / 'driver.sock'}"],
        register=lambda _server: None,
        tasks={"bgp-driver": driver.run},
        metrics_port=cfg.metrics_port or None,
    ))
    try:
        await server.run()
    finally:
        await driver.bird.stop()


def main() -> None:
    # BIRD and birdc are child processes: uvloop forks them with gRPC's threads running
    # ("skipping fork() handlers"), where asyncio's loop uses vfork; stay on asyncio.
    run_main(amain, allow_uvloop=False)
