"""gRPC servicer: protobuf <-> the driver's subscribers, nothing else.

``Sync`` turns a subscriber's batches into ``SyncBatch`` messages, numbering every
``ToDataplane`` of the stream from 0 and splitting a batch larger than ``MAX_BATCH_BYTES``
(a snapshot) into several, in order. A subscriber cut off for falling behind ends its stream
with RESOURCE_EXHAUSTED (``ResourceExhaustedError`` through the runtime's handler wrapping).

Most messages in a flush are the same objects for every node (IP-set deltas and memberships,
policies, routes, VTEPs), so ``Sync`` writes ``SyncBatch`` bytes itself: each ``ToDataplane`` is
serialised once (``WireCache``) and every stream appends its own ``sequence_number`` (field 15,
a varint; protobuf takes fields in any order) when it frames the message. ``add_to_server``
registers ``Sync`` with an identity serializer; on the wire it is the usual ``SyncBatch``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc

from libcalico.api.calcgraph.v1 import calcgraph_pb2 as cg
from libcalico.api.calcgraph.v1 import calcgraph_pb2_grpc as cg_grpc
from libcalico.api.felix import felixbackend_pb2 as fb
from libcalico.errors import ResourceExhaustedError, ValidationError

from .driver import GraphDriver
from .fanout import Batch, SubscriberCutOff

MAX_BATCH_BYTES = 1 << 20
MAX_BATCH_MESSAGES = 5000
SERVICE = "calicopy.calcgraph.v1.CalcGraph"


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class WireCache:
    """Serialised ``ToDataplane`` by message object, shared by every stream.

    Keyed by ``id()`` while holding the message, so an ID cannot be reused by another object
    while cached; messages handed to subscribers are never modified afterwards. Cleared
    wholesale when full: the working set is one or two flushes.
    """

    def __init__(self, max_entries: int = 200_000) -> None:
        self.max_entries = max_entries
        self._cache: dict[int, tuple[fb.ToDataplane, bytes]] = {}
        self.hits = 0
        self.misses = 0

    def bytes_of(self, msg: fb.ToDataplane) -> bytes:
        hit = self._cache.get(id(msg))
        if hit is not None:
            self.hits += 1
            return hit[1]
        self.misses += 1
        data = msg.SerializeToString()
        if len(self._cache) >= self.max_entries:
            self._cache = {}
        self._cache[id(msg)] = (msg, data)
        return data


def encode(batch: Batch, seq: int, cache: WireCache) -> Iterator[tuple[bytes, int]]:
    """``SyncBatch`` bytes for one batch, sequence-numbered from ``seq``: (bytes, messages)."""
    tail = b""
    if batch.traceparent:
        tp = batch.traceparent.encode()
        tail += b"\x12" + _varint(len(tp)) + tp
    if batch.commit_unix_ns:
        tail += b"\x18" + _varint(batch.commit_unix_ns)  # field 3: datastore_commit_unix_ns
    if batch.revision:
        tail += b"\x20" + _varint(batch.revision)
    parts: list[bytes] = []
    size = 0
    count = 0
    for msg in batch.messages:
        body = cache.bytes_of(msg) + b"\x78" + _varint(seq)  # field 15: sequence_number
        seq += 1
        framed = b"\x0a" + _varint(len(body)) + body  # SyncBatch field 1: messages
        if parts and (size + len(framed) > MAX_BATCH_BYTES or count >= MAX_BATCH_MESSAGES):
            yield b"".join(parts) + tail, count
            parts, size, count = [], 0, 0
        parts.append(framed)
        size += len(framed)
        count += 1
    if parts:
        yield b"".join(parts) + tail, count


class CalcGraphServicer(cg_grpc.CalcGraphServicer):
    def __init__(self, driver: GraphDriver) -> None:
        self.driver = driver
        self.wire = WireCache()

    async def Sync(self, request: cg.SyncRequest, context: Any) -> AsyncIterator[bytes]:  # type: ignore[override]
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
                    for data, count in encode(batch, seq, self.wire):
                        seq += count
                        yield data
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


def add_to_server(servicer: CalcGraphServicer, server: Any) -> None:
    """Register the service; ``Sync`` yields ready-made ``SyncBatch`` bytes."""
    handlers = {
        "Sync": grpc.unary_stream_rpc_method_handler(
            servicer.Sync,
            request_deserializer=cg.SyncRequest.FromString,
            response_serializer=lambda data: data,
        ),
        "Report": grpc.stream_unary_rpc_method_handler(
            servicer.Report,
            request_deserializer=cg.ReportRequest.FromString,
            response_serializer=cg.ReportResult.SerializeToString,
        ),
        "BGPSync": grpc.unary_stream_rpc_method_handler(
            servicer.BGPSync,
            request_deserializer=cg.BGPSyncRequest.FromString,
            response_serializer=cg.BGPUpdate.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
