"""Where batches come from and where reports go: calc_graph over gRPC, or a queue in tests.

A ``BatchSource`` yields ``Batch`` values (the ``ToDataplane`` messages of one ``SyncBatch``)
and ``RESET`` whenever the stream restarted: calc_graph sends a fresh snapshot on every new
``Sync`` call, so the driver must start a new generation (forget desired state, wait for the
new ``InSync`` before sweeping). ``CalcGraphSource`` reconnects with backoff forever; a stream
that was cut off for being slow (RESOURCE_EXHAUSTED) is just another reconnect.

``ReportSink`` sends ``FromDataplane`` messages on one long-lived ``Report`` client stream,
reopening it when it breaks; a failed send raises so the reporter keeps and retries the batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from libcalico.api.calcgraph.v1 import calcgraph_pb2 as cg
from libcalico.api.calcgraph.v1 import calcgraph_pb2_grpc as cg_grpc
from libcalico.api.felix import felixbackend_pb2 as fb
from libcalico.errors import CalicoError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Batch:
    messages: Sequence[fb.ToDataplane]
    traceparent: str = ""
    commit_unix_ns: int = 0
    received: float = 0.0  # time.perf_counter() when it arrived


class Reset:
    """The stream restarted; a full snapshot follows."""


RESET = Reset()
Item = Batch | Reset


class BatchSource(Protocol):
    def items(self) -> AsyncIterator[Item]: ...


class QueueSource:
    """Batches put by hand (tests, bench, the example driver)."""

    def __init__(self) -> None:
        self._q: asyncio.Queue[Item | None] = asyncio.Queue()

    def put(self, messages: Sequence[fb.ToDataplane]) -> None:
        self._q.put_nowait(Batch(list(messages), received=time.perf_counter()))

    def reset(self) -> None:
        self._q.put_nowait(RESET)

    def close(self) -> None:
        self._q.put_nowait(None)

    async def items(self) -> AsyncIterator[Item]:
        while True:
            item = await self._q.get()
            if item is None:
                return
            yield item


class CalcGraphSource:
    """``CalcGraph.Sync(node)`` with reconnects; the channel is made lazily in the loop."""

    def __init__(self, target: str, node: str, driver: str = "calico-py", *,
                 retry_min: float = 0.1, retry_max: float = 5.0, channel: Any = None) -> None:
        self.target = target
        self.node = node
        self.driver = driver
        self._retry = (retry_min, retry_max)
        self._channel = channel
        self.connects = 0

    def _stub(self) -> cg_grpc.CalcGraphStub:
        if self._channel is None:
            from libcalico.runtime.channel import make_channel

            self._channel = make_channel(self.target, service="calc_graph")
        return cg_grpc.CalcGraphStub(self._channel)

    async def items(self) -> AsyncIterator[Item]:
        delay = self._retry[0]
        while True:
            stub = self._stub()
            got_any = False
            try:
                call = stub.Sync(cg.SyncRequest(node=self.node, driver=self.driver))
                self.connects += 1
                if self.connects > 1:
                    yield RESET
                async for sb in call:
                    got_any = True
                    delay = self._retry[0]
                    yield Batch(list(sb.messages), sb.traceparent, sb.datastore_commit_unix_ns,
                                time.perf_counter())
                log.warning("calc_graph ended the Sync stream; reconnecting")
            except (CalicoError, OSError) as exc:
                log.warning("calc_graph Sync stream failed (%s); reconnecting in %.1fs",
                            exc, delay)
            except Exception as exc:  # grpc errors on a channel not made by make_channel
                if type(exc).__module__.startswith("grpc"):
                    log.warning("calc_graph Sync stream failed (%s)", exc)
                else:
                    raise
            if not got_any:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry[1])

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


class ReportSink:
    """Sends reports on one ``CalcGraph.Report`` client stream, reopened after failures."""

    def __init__(self, target: str, node: str, channel: Any = None) -> None:
        self.target = target
        self.node = node
        self._channel = channel
        self._call: Any = None
        self.sent = 0

    def _open(self) -> Any:
        if self._channel is None:
            from libcalico.runtime.channel import make_channel

            self._channel = make_channel(self.target, service="calc_graph")
        return cg_grpc.CalcGraphStub(self._channel).Report()

    async def send(self, msgs: Sequence[fb.FromDataplane]) -> None:
        if self._call is None:
            self._call = self._open()
        try:
            for m in msgs:
                await self._call.write(cg.ReportRequest(node=self.node, message=m))
            self.sent += len(msgs)
        except BaseException:
            call, self._call = self._call, None
            call.cancel()
            raise

    async def close(self) -> None:
        if self._call is not None:
            try:
                await self._call.done_writing()
            except Exception:
                pass
            self._call = None
        if self._channel is not None:
            await self._channel.close()
