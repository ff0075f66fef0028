"""The per-node BGP driver: calc_graph's BGP view in, a running BIRD out.

::

    calc_graph.BGPSync(node) ──BGPUpdate──> view_from_proto ──> render ──> BirdProcess.apply
                                                                          (bird -p, birdc configure)
    watchdog every `check_interval` ────────────────────────────────────> BirdProcess.ensure_running

Nothing is rendered before the first in-sync view, so BIRD never starts with a partial peer set
and drops sessions it is about to need. A stream that breaks is reopened with backoff while BIRD
keeps its last good config (routes survive a calc_graph restart, as with Calico's graceful
restart). A config BIRD rejects is logged and the running one kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc

from libcalico.api.calcgraph.v1 import calcgraph_pb2, calcgraph_pb2_grpc
from libcalico.runtime.log import get_logger

from .bird import BirdConfigError, BirdProcess
from .bird_config import render
from .view import view_from_proto

log = get_logger(__name__)


class BGPDriver:
    def __init__(
        self,
        node: str,
        channel_factory: Callable[[], grpc.aio.Channel],
        bird: BirdProcess,
        *,
        check_interval: float = 5.0,
        max_backoff: float = 5.0,
    ) -> None:
        self.node = node
        self.channel_factory = channel_factory
        self.bird = bird
        self.check_interval = check_interval
        self.max_backoff = max_backoff
        self.applied_updates = 0
        self.rejected_updates = 0
        self.in_sync = asyncio.Event()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._follow_view())
            tg.create_task(self._watchdog())

    async def _follow_view(self) -> None:
        backoff = 0.1
        while True:
            channel = self.channel_factory()
            try:
                stub = calcgraph_pb2_grpc.CalcGraphStub(channel)
                stream: Any = stub.BGPSync(calcgraph_pb2.BGPSyncRequest(node=self.node))
                async for update in stream:
                    backoff = 0.1
                    await self.on_update(update)
            except (grpc.aio.AioRpcError, OSError, ConnectionError) as exc:
                log.warning("BGP view stream broke; BIRD keeps its config", node=self.node,
                            error=str(exc), retry_in=backoff)
            except Exception as exc:  # the environment, not a bug in us: keep BIRD running
                if type(exc).__module__.startswith("libcalico.errors"):
                    log.warning("BGP view unavailable", node=self.node, error=str(exc))
                else:
                    raise
            finally:
                await channel.close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    async def on_update(self, update: calcgraph_pb2.BGPUpdate) -> None:
        if not update.in_sync:
            return
        view = view_from_proto(self.node, update)
        text = render(view)
        try:
            changed = await self.bird.apply(text)
        except BirdConfigError as exc:
            self.rejected_updates += 1
            log.error("BIRD rejected the config; keeping the running one", node=self.node,
                      error=str(exc))
            return
        self.applied_updates += 1
        self.in_sync.set()
        if changed:
            log.info("BIRD config applied", node=self.node, peers=text.count("protocol bgp "),
                     blocks=len(view.local_blocks), reloads=self.bird.reloads)

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                if await self.bird.ensure_running():
                    log.warning("BIRD had died; restarted it", node=self.node,
                                restarts=self.bird.restarts)
            except BirdConfigError as exc:
                log.error("BIRD does not start", node=self.node, error=str(exc))
