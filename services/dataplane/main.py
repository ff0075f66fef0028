"""``calico-dataplane``: one node's dataplane driver process.

    calico-dataplane [--config FILE]      # settings: services/dataplane/config.py

::

    calc_graph ──Sync(node)──> CalcGraphSource ──> Driver ──> kernel (iptables|nft, ipset,
        ^                                            │         routes, vxlan.calico, tunl0)
        └──────Report(stream)── ReportSink <── StatusReporter

Start-up: load config (env ``CALICO_DATAPLANE_*``), set up logs, traces and metrics, detect the
iptables backend (Felix's rule-counting, unless configured), wire the driver
(``flavors.build_driver``) and run it until SIGTERM/SIGINT, which exits 0 and leaves the kernel
programmed: a restarted driver takes over without a gap (it writes nothing until the stream is
in sync, then rewrites only what differs). A crash (a bug) exits non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from libcalico.runtime.config import load_config
from libcalico.runtime.log import get_logger, setup_logging
from libcalico.runtime.metrics import start_metrics_server
from libcalico.runtime.server import ServerSpec, run_main, start_in_process
from libcalico.runtime.telemetry import setup_tracing

from .commands import ExecRunner
from .config import ENV_PREFIX, DataplaneConfig
from .driver import ApplyReport, DriverSettings
from .flavors import build_driver
from .metrics import observe_driver
from .owners.iptables import detect_backend
from .sessions import SessionRunner
from .stream import CalcGraphSource, ReportSink

log = get_logger(__name__)


async def run_driver(cfg: DataplaneConfig) -> None:
    exec_runner = ExecRunner(node=cfg.node_name)
    backend = await detect_backend(exec_runner, cfg.iptables_backend)
    runner = SessionRunner(exec_runner)
    source = CalcGraphSource(cfg.calc_graph, cfg.node_name, driver=f"calico-py-{cfg.flavor}",
                             retry_min=cfg.retry_min, retry_max=min(cfg.retry_max, 5.0))
    sink = ReportSink(cfg.calc_graph, cfg.node_name)
    driver = build_driver(
        DriverSettings(
            node=cfg.node_name, flavor=cfg.flavor,
            iptables_refresh=cfg.iptables_refresh_interval,
            ipsets_refresh=cfg.ipsets_refresh_interval,
            routes_refresh=cfg.routes_refresh_interval,
            retry_min=cfg.retry_min, retry_max=cfg.retry_max,
            endpoint_status_dir=str(cfg.endpoint_status_dir) if cfg.endpoint_status_dir else None,
        ),
        sink=sink, runner=runner, iptables_backend=backend, mtu_file=cfg.mtu_file,
        ipv6=cfg.ipv6_support, report_interval=cfg.report_interval,
    )
    observe_driver(driver, exec_runner)
    health = None
    if cfg.listen:
        # gRPC health only (calico-lab status, supervisors): NOT_SERVING until the first
        # apply after InSync succeeded.
        health = await start_in_process(ServerSpec(
            service="dataplane", listen=cfg.listen, register=lambda _server: None,
            initially_serving=False))
        serving: list[asyncio.Task[None]] = []

        def on_apply(report: ApplyReport) -> None:
            if not report.failed_stages and not serving and health is not None:
                serving.append(asyncio.get_running_loop().create_task(health.set_serving(True)))

        driver.observers.append(on_apply)
    log.info("dataplane driver starting", node=cfg.node_name, flavor=cfg.flavor,
             iptables_backend=backend, calc_graph=cfg.calc_graph)
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    stopping = False

    def stop() -> None:
        nonlocal stopping
        stopping = True
        if task is not None:
            task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    try:
        await driver.run(source)
    except asyncio.CancelledError:
        if not stopping:
            raise
        log.info("dataplane driver stopping; the kernel stays programmed")
    finally:
        with contextlib.suppress(Exception):
            await driver.reporter.flush()
        await sink.close()
        await source.close()
        await runner.close()
        if health is not None:
            await health.stop()


async def amain() -> None:
    cfg = load_config(DataplaneConfig, env_prefix=ENV_PREFIX)
    setup_logging("dataplane", cfg.log_level)
    setup_tracing("dataplane", otlp_endpoint=cfg.otlp_endpoint, jsonl_path=cfg.trace_file)
    server = start_metrics_server(cfg.metrics_port)
    try:
        await run_driver(cfg)
    finally:
        if server is not None:
            server.close()


def main() -> None:
    run_main(amain, allow_uvloop=False)  # pyroute2's netlink sockets need asyncio's loop


if __name__ == "__main__":
    main()
