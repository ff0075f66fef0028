"""What the driver reports back: ``FromDataplane`` messages, sequenced, through one sink.

- ``ProcessStatusUpdate`` every ``interval`` seconds (ISO timestamp, uptime): the heartbeat
  Felix turns into the node's status report;
- ``WorkloadEndpointStatusUpdate`` with ``up`` / ``down`` / ``error`` whenever an endpoint's
  status changes, and ``WorkloadEndpointStatusRemove`` when it goes;
- ``DataplaneInSync`` once, after the first complete apply following the stream's ``InSync``.

Reports are queued (never blocking the apply loop) and sent in order by ``run()``; the sink is
the calc_graph ``Report`` stream in production and a list in tests. A sink that fails keeps
the unsent messages and retries them with backoff, so a restarted calc_graph still hears them.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from libcalico.api.felix import felixbackend_pb2 as fb

log = logging.getLogger(__name__)


class StatusSink(Protocol):
    async def send(self, msgs: Sequence[fb.FromDataplane]) -> None: ...


@dataclass
class ListSink:
    """A sink that keeps everything (tests, the example driver)."""

    sent: list[fb.FromDataplane] = field(default_factory=list)

    async def send(self, msgs: Sequence[fb.FromDataplane]) -> None:
        self.sent.extend(msgs)

    def endpoint_statuses(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for m in self.sent:
            kind = m.WhichOneof("payload")
            if kind == "workload_endpoint_status_update":
                out[m.workload_endpoint_status_update.id.workload_id] = \
                    m.workload_endpoint_status_update.status.status
            elif kind == "workload_endpoint_status_remove":
                out.pop(m.workload_endpoint_status_remove.id.workload_id, None)
        return out

    @property
    def in_sync_reported(self) -> bool:
        return any(m.WhichOneof("payload") == "dataplane_in_sync" for m in self.sent)


class StatusReporter:
    def __init__(self, sink: StatusSink, *, interval: float = 10.0,
                 retry_min: float = 0.1, retry_max: float = 10.0) -> None:
        self._sink = sink
        self._interval = interval
        self._retry = (retry_min, retry_max)
        self._queue: list[fb.FromDataplane] = []
        self._wake = asyncio.Event()
        self._seq = 0
        self._started = time.monotonic()

    def _put(self, msg: fb.FromDataplane) -> None:
        msg.sequence_number = self._seq
        self._seq += 1
        self._queue.append(msg)
        self._wake.set()

    def endpoint(self, wid: fb.WorkloadEndpointID, status: str,
                 endpoint: fb.WorkloadEndpoint | None = None) -> None:
        u = fb.WorkloadEndpointStatusUpdate(id=wid, status=fb.EndpointStatus(status=status))
        if endpoint is not None:
            u.endpoint.CopyFrom(endpoint)
        self._put(fb.FromDataplane(workload_endpoint_status_update=u))

    def endpoint_removed(self, wid: fb.WorkloadEndpointID) -> None:
        self._put(fb.FromDataplane(
            workload_endpoint_status_remove=fb.WorkloadEndpointStatusRemove(id=wid)))

    def in_sync(self) -> None:
        self._put(fb.FromDataplane(dataplane_in_sync=fb.DataplaneInSync()))

    def heartbeat(self) -> None:
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        self._put(fb.FromDataplane(process_status_update=fb.ProcessStatusUpdate(
            iso_timestamp=now.replace("+00:00", "Z"),
            uptime=time.monotonic() - self._started)))

    async def flush(self) -> None:
        """Send everything queued (raises what the sink raises; the queue is kept)."""
        if not self._queue:
            return
        batch = list(self._queue)
        await self._sink.send(batch)
        del self._queue[: len(batch)]

    async def run(self) -> None:
        """Heartbeats and delivery until cancelled."""
        next_beat = time.monotonic()
        delay = self._retry[0]
        while True:
            now = time.monotonic()
            if now >= next_beat:
                self.heartbeat()
                next_beat = now + self._interval
            try:
                await self.flush()
                delay = self._retry[0]
            except Exception as exc:  # a sink failure is the environment's: retry
                log.warning("status report failed (%d queued): %s", len(self._queue), exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry[1])
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_beat - time.monotonic()))
            except TimeoutError:
                pass
