"""calc_graph for tests, benches and the lab: serve it in the current event loop.

``running_calc_graph(cfg)`` builds the service (syncer on ``cfg.datastore``, driver, servicer)
and serves it with the real runtime (interceptors, health, reflection); yields the service
and its target, and always stops it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .config import CalcGraphConfig
from .main import CalcGraphService, build, server_spec


@asynccontextmanager
async def running_calc_graph(cfg: CalcGraphConfig) -> AsyncIterator[tuple[CalcGraphService, str]]:
    from libcalico.runtime.server import start_in_process

    svc = build(cfg)
    server = await start_in_process(server_spec(svc, cfg))
    try:
        yield svc, server.target
    finally:
        try:
            await server.stop(grace=0.5)
        finally:
            await svc.close()
