"""The datastore's one connection to etcd: unary KV calls, transactions and raw watch streams.

This is the only module of the service that speaks etcd's gRPC API. It uses aetcd's generated
etcd stubs (``aetcd.rpc``) over a single channel rather than ``aetcd.Client``'s wrappers,
because the service needs what those wrappers hide: ranges at a given revision, transaction
responses with ``prev_kv``, and watch progress notifications (the header revision of an empty
watch response), which are how BOOKMARK events know a revision the stream has caught up to.

Group commit: single-key reads and transactions go through a ``_Batcher`` each. While one
batch is in flight, the requests that arrive queue up and then go out as *one* etcd request —
reads as one read-only transaction of ranges, transactions as nested transactions of one outer
transaction (each keeps its own compares and branches; those that write share one revision).
A lone request is sent at once; only concurrency is amortised. In grpc.aio an etcd round trip
costs the service more CPU than most requests' own work, so this is what lets throughput grow
with concurrent clients.

Failure handling, the "retry for the environment" half of the style guide:

- The channel reconnects with a short backoff (0.1 s to 1 s), so a restarted etcd is found
  within a second instead of gRPC's default of up to two minutes.
- Every unary call waits for the channel to be ready (``wait_for_ready``) for at most
  ``unavailable_wait`` seconds, so a restarting etcd is survived by callers that are in
  flight. Reads that lose their connection mid-call are retried within the same bound; writes
  are not (they may have been applied), and fail with ``UnavailableError``.
- Every error leaves this module as a ``libcalico.errors`` class naming the etcd endpoints.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import urlsplit

from aetcd import rpc
from grpc import aio as grpc_aio

from libcalico.errors import (
    CalicoError,
    CompactedError,
    ResourceExhaustedError,
    UnavailableError,
    ValidationError,
)
from libcalico.runtime.log import get_logger

log = get_logger(__name__)

_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
)


@dataclass(frozen=True, slots=True)
class KV:
    """One etcd key-value pair as the datastore uses it."""

    key: str
    value: bytes
    mod_revision: int
    create_revision: int


@dataclass(frozen=True, slots=True)
class Compare:
    """``target(key) op value``; e.g. ``Compare(key, "mod", "==", 12)``."""

    key: str
    target: Literal["mod", "create", "version"]
    op: Literal["==", "!=", ">", "<"]
    value: int


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes


@dataclass(frozen=True, slots=True)
class Delete:
    key: str


@dataclass(frozen=True, slots=True)
class Get:
    key: str


Op = Put | Delete | Get


@dataclass(frozen=True, slots=True)
class TxnResult:
    """``results[i]`` is, for op ``i`` of the branch that ran: the KV read (``Get``), the KV
    deleted (``Delete``, from ``prev_kv``), or ``None`` (a ``Put``, or an absent key)."""

    succeeded: bool
    revision: int
    results: list[KV | None]


_TARGETS = {
    "mod": rpc.Compare.MOD,
    "create": rpc.Compare.CREATE,
    "version": rpc.Compare.VERSION,
}
_OPS = {
    "==": rpc.Compare.EQUAL,
    "!=": rpc.Compare.NOT_EQUAL,
    ">": rpc.Compare.GREATER,
    "<": rpc.Compare.LESS,
}


def prefix_range_end(prefix: bytes) -> bytes:
    """The etcd ``range_end`` that covers every key starting with ``prefix``."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


def _kv(raw: Any) -> KV:
    return KV(
        key=raw.key.decode(),
        value=bytes(raw.value),
        mod_revision=int(raw.mod_revision),
        create_revision=int(raw.create_revision),
    )


def _target(endpoints: Sequence[str]) -> str:
    """A gRPC target for the endpoint URLs; several IP endpoints become one ``ipv4:`` target."""
    addrs: list[tuple[str, int]] = []
    for ep in endpoints:
        url = urlsplit(ep if "://" in ep else f"http://{ep}")
        if url.scheme not in ("http", ""):
            raise ValidationError(
                f"only http:// etcd endpoints are supported, got {ep!r}", field="etcd_endpoints"
            )
        if not url.hostname:
            raise ValidationError(f"no host in etcd endpoint {ep!r}", field="etcd_endpoints")
        addrs.append((url.hostname, url.port or 2379))
    if not addrs:
        raise ValidationError("at least one etcd endpoint is needed", field="etcd_endpoints")
    if len(addrs) == 1:
        host, port = addrs[0]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if all(h.replace(".", "").isdigit() for h, _ in addrs):
        return "ipv4:" + ",".join(f"{h}:{p}" for h, p in addrs)
    # Several host names: gRPC's dns resolver takes one name; use the first and say so.
    log.warning("several etcd host names given; using the first", endpoints=list(endpoints))
    host, port = addrs[0]
    return f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class _Txn:
    compares: tuple[Compare, ...]
    success: tuple[Op, ...]
    failure: tuple[Op, ...]

    def keys(self) -> set[str]:
        return {c.key for c in self.compares} | {op.key for op in self.success + self.failure}

    def size(self) -> int:
        return sum(len(op.value) + len(op.key) for op in self.success if isinstance(op, Put))


_Req = TypeVar("_Req")
_Res = TypeVar("_Res")


class _Batcher(Generic[_Req, _Res]):
    """Group commit: requests that arrive while a batch is in flight go out together next.

    There is no timer: the first request is sent at once, and whatever queued up behind it is
    sent as one batch when it returns, so a lone caller sees no added latency while concurrent
    callers share round trips (each etcd round trip costs the service ~0.2 ms of CPU in
    grpc.aio, more than the work of most requests). A batch holds at most ``max_batch``
    requests and ``max_bytes`` of values, and no two requests touching the same key: one that
    would is held for a later batch, so requests on one key are applied in arrival order.
    """

    def __init__(
        self,
        flush: Callable[[list[_Req]], Awaitable[list[_Res]]],
        *,
        keys: Callable[[_Req], set[str]],
        size: Callable[[_Req], int] = lambda _: 0,
        max_batch: int = 64,
        max_bytes: int = 512 * 1024,
    ) -> None:
        self._flush = flush
        self._keys = keys
        self._size = size
        self.max_batch = max_batch
        self.max_bytes = max_bytes
        self._queue: deque[tuple[_Req, asyncio.Future[_Res]]] = deque()
        self._running = False
        self.batches = 0
        self.requests = 0

    async def submit(self, request: _Req) -> _Res:
        future: asyncio.Future[_Res] = asyncio.get_running_loop().create_future()
        self._queue.append((request, future))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[_Req, asyncio.Future[_Res]]]:
        batch: list[tuple[_Req, asyncio.Future[_Res]]] = []
        held: list[tuple[_Req, asyncio.Future[_Res]]] = []
        seen: set[str] = set()
        size = 0
        while self._queue and len(batch) < self.max_batch:
            request, future = self._queue.popleft()
            if future.done():  # the caller gave up before it was sent
                continue
            keys = self._keys(request)
            req_size = self._size(request)
            if batch and (not seen.isdisjoint(keys) or size + req_size > self.max_bytes):
                held.append((request, future))
                continue
            seen |= keys
            size += req_size
            batch.append((request, future))
        self._queue.extendleft(reversed(held))
        return batch

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._take()
                if not batch:
                    continue
                self.batches += 1
                self.requests += len(batch)
                try:
                    results = await self._flush([request for request, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._running = False

    def fail_pending(self, exc: BaseException) -> None:
        while self._queue:
            _, future = self._queue.popleft()
            if not future.done():
                future.set_exception(exc)


LatencyObserver = Callable[[str, float], None]


class Etcd:
    """A connection to one etcd cluster (see the module doc for its failure handling)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        unavailable_wait: float = 10.0,
        observe_latency: LatencyObserver | None = None,
    ) -> None:
        self.endpoints = list(endpoints)
        self.unavailable_wait = unavailable_wait
        self._target = _target(self.endpoints)
        self._observe = observe_latency
        self._channel: Any = None
        self._kv: Any = None
        self._watch: Any = None
        self._reads: _Batcher[str, tuple[KV | None, int]] = _Batcher(
            self._flush_reads, keys=lambda key: {key}
        )
        self._writes: _Batcher[_Txn, TxnResult] = _Batcher(
            self._flush_txns, keys=_Txn.keys, size=_Txn.size
        )

    # -- lifecycle -----------------------------------------------------------------------------

    async def connect(self) -> None:
        if self._channel is not None:
            return
        self._channel = rpc.insecure_channel(self._target, options=_CHANNEL_OPTIONS)
        self._kv = rpc.KVStub(self._channel)
        self._watch = rpc.WatchStub(self._channel)

    async def close(self) -> None:
        closed = UnavailableError("the etcd connection is closed")
        self._reads.fail_pending(closed)
        self._writes.fail_pending(closed)
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()

    # -- errors --------------------------------------------------------------------------------

    def unavailable(self, detail: str) -> UnavailableError:
        return UnavailableError(f"etcd unreachable at {', '.join(self.endpoints)}: {detail}")

    def map_error(self, exc: Any) -> CalicoError:
        """The domain error for an etcd gRPC error."""
        code = exc.code()
        detail = exc.details() or code.name
        if code in (rpc.StatusCode.UNAVAILABLE, rpc.StatusCode.DEADLINE_EXCEEDED):
            return self.unavailable(detail)
        if code == rpc.StatusCode.OUT_OF_RANGE or "compacted" in detail:
            return CompactedError(f"etcd: {detail}; re-list")
        if code == rpc.StatusCode.RESOURCE_EXHAUSTED:
            return ResourceExhaustedError(f"etcd: {detail}")
        if code == rpc.StatusCode.INVALID_ARGUMENT:
            return ValidationError(f"etcd rejected the request: {detail}")
        return CalicoError(f"etcd error {code.name}: {detail}")

    async def _call(self, op: str, method_name: str, request: Any, *, retry: bool) -> Any:
        await self.connect()
        method: Callable[..., Awaitable[Any]] = getattr(self._kv, method_name)
        deadline = time.monotonic() + self.unavailable_wait
        delay = 0.05
        while True:
            start = time.monotonic()
            try:
                response = await method(
                    request, timeout=max(deadline - start, 0.05), wait_for_ready=True
                )
            except rpc.AioRpcError as exc:
                code = exc.code()
                if retry and code == rpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.5)
                    continue
                raise self.map_error(exc) from None
            if self._observe is not None:
                self._observe(op, time.monotonic() - start)
            return response

    # -- KV ------------------------------------------------------------------------------------

    async def get(self, key: str) -> tuple[KV | None, int]:
        """The key (or ``None``) and the revision it was read at (batched, see ``_Batcher``)."""
        return await self._reads.submit(key)

    async def _flush_reads(self, keys: list[str]) -> list[tuple[KV | None, int]]:
        if len(keys) == 1:
            response = await self._call(
                "range", "Range", rpc.RangeRequest(key=keys[0].encode()), retry=True
            )
            kv = _kv(response.kvs[0]) if response.kvs else None
            return [(kv, int(response.header.revision))]
        # Several reads in one read-only transaction: one round trip, one revision.
        request = rpc.TxnRequest(
            success=[rpc.RequestOp(request_range=rpc.RangeRequest(key=k.encode())) for k in keys]
        )
        response = await self._call("range", "Txn", request, retry=True)
        revision = int(response.header.revision)
        out: list[tuple[KV | None, int]] = []
        for resp in response.responses:
            kvs = resp.response_range.kvs
            out.append((_kv(kvs[0]) if kvs else None, revision))
        return out

    async def get_prefix(
        self, prefix: str, *, keys_only: bool = False, revision: int = 0
    ) -> tuple[list[KV], int]:
        """Every key under ``prefix`` in key order, and the revision they were read at."""
        raw = prefix.encode()
        request = rpc.RangeRequest(
            key=raw, range_end=prefix_range_end(raw), keys_only=keys_only, revision=revision
        )
        response = await self._call("range", "Range", request, retry=True)
        return [_kv(kv) for kv in response.kvs], int(response.header.revision)

    async def current_revision(self) -> int:
        request = rpc.RangeRequest(key=b"\0", count_only=True)
        response = await self._call("range", "Range", request, retry=True)
        return int(response.header.revision)

    @staticmethod
    def _request_op(op: Op) -> Any:
        if isinstance(op, Put):
            return rpc.RequestOp(request_put=rpc.PutRequest(key=op.key.encode(), value=op.value))
        if isinstance(op, Delete):
            return rpc.RequestOp(
                request_delete_range=rpc.DeleteRangeRequest(key=op.key.encode(), prev_kv=True)
            )
        return rpc.RequestOp(request_range=rpc.RangeRequest(key=op.key.encode()))

    @classmethod
    def _txn_request(cls, txn: _Txn) -> Any:
        return rpc.TxnRequest(
            compare=[
                rpc.Compare(
                    key=c.key.encode(),
                    target=_TARGETS[c.target],
                    result=_OPS[c.op],
                    **{f"{c.target}_revision" if c.target != "version" else "version": c.value},
                )
                for c in txn.compares
            ],
            success=[cls._request_op(op) for op in txn.success],
            failure=[cls._request_op(op) for op in txn.failure],
        )

    @staticmethod
    def _txn_result(response: Any, revision: int) -> TxnResult:
        results: list[KV | None] = []
        for resp in response.responses:
            which = resp.WhichOneof("response")
            if which == "response_range":
                kvs = resp.response_range.kvs
                results.append(_kv(kvs[0]) if kvs else None)
            elif which == "response_delete_range":
                prev = resp.response_delete_range.prev_kvs
                results.append(_kv(prev[0]) if prev else None)
            else:
                results.append(None)
        return TxnResult(bool(response.succeeded), revision, results)

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        """One etcd transaction; see ``TxnResult`` for what comes back per op.

        Transactions submitted while another is in flight are committed together (see
        ``_Batcher``), each as a nested transaction of one outer transaction: each keeps its
        own compares and branch, and the ones that write share one etcd revision.
        """
        return await self._writes.submit(_Txn(tuple(compares), tuple(success), tuple(failure)))

    async def _flush_txns(self, txns: list[_Txn]) -> list[TxnResult]:
        if len(txns) == 1:
            response = await self._call("txn", "Txn", self._txn_request(txns[0]), retry=False)
            return [self._txn_result(response, int(response.header.revision))]
        request = rpc.TxnRequest(
            success=[rpc.RequestOp(request_txn=self._txn_request(t)) for t in txns]
        )
        response = await self._call("txn", "Txn", request, retry=False)
        revision = int(response.header.revision)
        return [self._txn_result(r.response_txn, revision) for r in response.responses]

    # -- watch ---------------------------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int, *, max_pending: int = 10_000) -> EtcdWatch:
        """A watch on every key under ``prefix`` from ``start_revision`` (0 = from now)."""
        return EtcdWatch(self, prefix, start_revision, max_pending=max_pending)


@dataclass(frozen=True, slots=True)
class RawEvent:
    """One etcd watch event: ``kv`` for a put; for a delete ``kv`` has the deleted key and the
    delete's revision, and ``prev`` the last value (absent if compacted)."""

    deleted: bool
    kv: KV
    prev: KV | None


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """One etcd watch response: events of one or more revisions, or none (a progress
    notification, ``revision`` = etcd's revision at that moment)."""

    revision: int
    events: list[RawEvent]


class EtcdWatch:
    """One etcd watch stream with one watcher on a prefix.

    Responses are read by a task into a queue so ``next(timeout)`` can wait with a timeout
    without cancelling a gRPC read. ``request_progress()`` asks etcd for a progress
    notification (an empty batch). Use as ``async with``; leaving cancels the stream.

    The queue is bounded: a consumer more than ``max_pending`` batches behind is cut off with
    ``CompactedError`` (it must re-list), so a slow client costs bounded memory here.
    """

    def __init__(
        self, etcd: Etcd, prefix: str, start_revision: int, *, max_pending: int = 10_000
    ) -> None:
        self._etcd = etcd
        self._prefix = prefix.encode()
        self._start_revision = start_revision
        self.max_pending = max_pending
        self._call: Any = None
        self._queue: asyncio.Queue[WatchBatch | BaseException] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._cut_off: CalicoError | None = None

    async def __aenter__(self) -> EtcdWatch:
        await self._etcd.connect()
        self._call = self._etcd._watch.Watch(wait_for_ready=True)
        create = rpc.WatchCreateRequest(
            key=self._prefix,
            range_end=prefix_range_end(self._prefix),
            start_revision=self._start_revision,
            prev_kv=True,
            progress_notify=True,
        )
        try:
            await asyncio.wait_for(
                self._call.write(rpc.WatchRequest(create_request=create)),
                self._etcd.unavailable_wait,
            )
            first = await asyncio.wait_for(self._call.read(), self._etcd.unavailable_wait)
        except TimeoutError:
            self._call.cancel()
            raise self._etcd.unavailable("watch not created in time") from None
        except rpc.AioRpcError as exc:
            raise self._etcd.map_error(exc) from None
        self._check(first)
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._call is not None:
            self._call.cancel()

    def _check(self, response: Any) -> None:
        if response is None or response is grpc_aio.EOF:
            raise self._etcd.unavailable("watch stream ended")
        if response.compact_revision:
            raise CompactedError(
                f"revision {self._start_revision - 1} has been compacted "
                f"(etcd keeps revisions from {response.compact_revision}); re-list"
            )
        if response.canceled:
            raise self._etcd.unavailable(f"watch cancelled: {response.cancel_reason}")

    async def _read(self) -> None:
        try:
            while True:
                response = await self._call.read()
                self._check(response)
                events = [
                    RawEvent(
                        deleted=ev.type == rpc.Event.DELETE,
                        kv=_kv(ev.kv),
                        prev=_kv(ev.prev_kv) if ev.HasField("prev_kv") else None,
                    )
                    for ev in response.events
                ]
                if self._queue.qsize() >= self.max_pending:
                    self._cut_off = CompactedError(
                        f"watch consumer fell {self.max_pending} etcd responses behind; re-list"
                    )
                    self._call.cancel()
                    self._queue.put_nowait(self._cut_off)  # wakes a waiting next()
                    return
                self._queue.put_nowait(WatchBatch(int(response.header.revision), events))
        except rpc.AioRpcError as exc:
            self._queue.put_nowait(self._etcd.map_error(exc))
        except CalicoError as exc:
            self._queue.put_nowait(exc)

    async def next(self, timeout: float | None = None) -> WatchBatch | None:
        """The next batch, or ``None`` when ``timeout`` passes first; raises the stream's error."""
        if self._cut_off is not None:
            raise self._cut_off
        try:
            item = self._queue.get_nowait()
        except asyncio.QueueEmpty:
            if timeout is not None and timeout <= 0:
                return None
            try:
                item = await asyncio.wait_for(self._queue.get(), timeout)
            except TimeoutError:
                return None
        if isinstance(item, BaseException):
            raise item
        return item

    def fail(self, exc: CalicoError) -> None:
        """Make the next ``next()`` raise ``exc`` (after the batches already queued)."""
        self._queue.put_nowait(exc)

    async def request_progress(self) -> None:
        try:
            await self._call.write(rpc.WatchRequest(progress_request=rpc.WatchProgressRequest()))
        except rpc.AioRpcError as exc:
            raise self._etcd.map_error(exc) from None
