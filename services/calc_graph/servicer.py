"""gRPC servicer: protobuf <-> the driver's subscribers, nothing else.

``Sync`` turns a subscriber's batches into ``SyncBatch`` messages, numbering every
``ToDataplane`` of the stream from 0 and splitting a batch larger than ``MAX_BATCH_BYTES``
(a snapshot) into several, in order. A subscriber cut off for falling behind ends its stream
with RESOURCE_EXHAUSTED (``ResourceExhaustedError`` through the runtime's interceptor).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from libcalico.api.calcgraph.v1 import calcgraph_pb2 as cg
from libcalico.api.calcgraph.v1 import calcgraph_pb2_grpc as cg_grpc
from libcalico.errors import ResourceExhaustedError, ValidationError

from .driver import GraphDriver
from .fanout import Batch, SubscriberCutOff

MAX_BATCH_BYTES = 1 << 20
MAX_BATCH_MESSAGES = 5000


def split(batch: Batch, seq: int) -> Iterator[cg.SyncBatch]:
    """``SyncBatch`` messages for one batch, sequence-numbered from ``seq``."""
    out = cg.SyncBatch(traceparent=batch.traceparent, datastore_revision=batch.revision)
    size = 0
    for msg in batch.messages:
        n = msg.ByteSize()
        if out.messages and (size + n > MAX_BATCH_BYTES or len(out.messages) >= MAX_BATCH_MESSAGES):
            yield out
            out = cg.SyncBatch(traceparent=batch.traceparent, datastore_revision=batch.revision)
            size = 0
        m = out.messages.add()
        m.CopyFrom(msg)
        m.sequence_number = seq
        seq += 1
        size += n
    if out.messages:
        yield out


class CalcGraphServicer(cg_grpc.CalcGraphServicer):
    def __init__(self, driver: GraphDriver) -> None:
        self.driver = driver

    async def Sync(self, request: cg.SyncRequest, context: Any) -> AsyncIterator[cg.SyncBatch]:
        if not request.node:
            raise ValidationError("node is required", field="node")
        sub = self.driver.subscribe(request.node, request.driver)
        seq = 0
        try:
            while True:
                try:
                    batches = await sub.next_batches()
                except SubscriberCutOff as exc:
                    raise ResourceExhaustedError(str(exc)) from None
                if not batches:
                    return  # the service is stopping
                for batch in batches:
                    for out in split(batch, seq):
                        seq += len(out.messages)
                        yield out
        finally:
            self.driver.unsubscribe(sub)

    async def Report(
        self, request_iterator: AsyncIterator[cg.ReportRequest], context: Any
    ) -> cg.ReportResult:
        async for req in request_iterator:
            self.driver.status.record(req.node, req.message)
        return cg.ReportResult(successful=True)

    async def BGPSync(
        self, request: cg.BGPSyncRequest, context: Any
    ) -> AsyncIterator[cg.BGPUpdate]:
        if not request.node:
            raise ValidationError("node is required", field="node")
        sub = self.driver.subscribe_bgp(request.node)
        try:
            while True:
                update = await sub.next_update()
                if update is None:
                    return
                yield update
        finally:
            self.driver.unsubscribe_bgp(sub)


def to_dataplane_kinds(batch: cg.SyncBatch) -> list[str]:
    return [m.WhichOneof("payload") or "" for m in batch.messages]
