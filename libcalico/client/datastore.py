"""``DatastoreClient``: the async client of the datastore service.

Resources go in and come out as Calico's v3 JSON held in plain dicts; every resource returned
has ``metadata.resourceVersion`` (the etcd mod revision, as a decimal string) filled in. Errors
come back as the ``libcalico.errors`` class the service raised (``ConflictError`` for a stale
resourceVersion, ``ValidationError`` for a bad field, ``UnavailableError`` when the service or
etcd cannot be reached), through ``libcalico.runtime.make_channel``.

Example::

    async with DatastoreClient("unix:///run/calico-lab/sock/datastore.sock") as ds:
        pool = await ds.create({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                                "metadata": {"name": "pool-a"},
                                "spec": {"cidr": "10.65.0.0/16"}})
        pool["spec"]["natOutgoing"] = True
        pool = await ds.update(pool)          # compare-and-swap on pool's resourceVersion
        items, revision = await ds.list("IPPool")
        async for event in ds.watch(kinds=["IPPool"], revision=revision):
            ...

The channel is made on first use (gRPC's asyncio channels belong to the loop that made them),
so a client can be constructed anywhere and used from one event loop.

Every operation but ``watch`` travels over one ``Session`` stream (``libcalico.client.session``),
opened on first use and again after it breaks: a call on an open stream costs both processes
far less than a unary RPC, and concurrent calls share messages. Each call still gets a CLIENT
span named like its unary method, whose context the server's span continues, and fails with
the same ``libcalico.errors`` class the unary RPC would. A call in flight when the stream
breaks fails with ``UnavailableError`` (it may or may not have been applied); one that was
provably never read by the server is sent again on a new stream. A server without ``Session``
(UNIMPLEMENTED) is then called with unary RPCs for the rest of the client's life;
``DatastoreClient(target, session=False)`` uses unary RPCs from the start.
"""

from __future__ import annotations

import asyncio
import builtins
import enum
import itertools
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc
import grpc.aio
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from libcalico.api.datastore.v1 import datastore_pb2 as pb
from libcalico.api.datastore.v1 import datastore_pb2_grpc as pb_grpc
from libcalico.client.session import (
    GRPC_SERVICE,
    NotSent,
    SessionStream,
    SessionUnsupported,
    error_from_result,
)
from libcalico.errors import CalicoError, UnavailableError
from libcalico.runtime.channel import DEFAULT_CHANNEL_OPTIONS, make_channel, start_client_span
from libcalico.runtime.log import get_logger
from libcalico.runtime.telemetry import TRACER_NAME, inject_headers

Resource = dict[str, Any]

_log = get_logger(__name__)
# A proxy until setup_tracing installs the provider; fetched once, not per call.
_tracer = trace.get_tracer(TRACER_NAME)
#: Times a call is sent again on a new stream after the server ended one without reading it.
_MAX_RESENDS = 3


@dataclass(frozen=True, slots=True)
class KV:
    """A raw key (outside ``/calico/resources/``) with its etcd revisions."""

    key: str
    value: bytes
    mod_revision: int
    create_revision: int = 0

    def json(self) -> Any:
        """The value decoded as JSON (Calico's IPAM and status values are JSON)."""
        return json.loads(self.value)


@dataclass(frozen=True, slots=True)
class KVOp:
    """One write of ``kv_txn``: a put of ``value``, or a delete when ``delete`` is true."""

    key: str
    value: bytes = b""
    delete: bool = False

    @classmethod
    def put(cls, key: str, value: bytes | str | Mapping[str, Any]) -> KVOp:
        if isinstance(value, Mapping):
            value = json.dumps(value, separators=(",", ":"))
        if isinstance(value, str):
            value = value.encode()
        return cls(key, value)

    @classmethod
    def remove(cls, key: str) -> KVOp:
        return cls(key, b"", True)


@dataclass(frozen=True, slots=True)
class TxnResult:
    """``succeeded``; ``revision`` of the write (or the current one on failure); on failure
    ``current`` maps each compared key that exists to its current value."""

    succeeded: bool
    revision: int
    current: dict[str, KV] = field(default_factory=dict)


class EventType(enum.IntEnum):
    ADDED = 0
    MODIFIED = 1
    DELETED = 2
    BOOKMARK = 3


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One watch event. ``key`` is the etcd key (empty for BOOKMARK). For resource keys
    ``resource`` is the decoded resource with its resourceVersion, ``kind``/``namespace``/
    ``name`` its identity; for raw keys ``kv`` is set. DELETED carries the last value."""

    type: EventType
    revision: int
    key: str = ""
    resource: Resource | None = None
    kv: KV | None = None
    traceparent: str = ""
    kind: str = ""
    namespace: str = ""
    name: str = ""


# One encoder for every call: json.dumps with non-default options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode(resource: Mapping[str, Any]) -> bytes:
    return _ENCODER.encode(resource).encode()


def resource_from_pb(msg: pb.Resource) -> Resource:
    """The resource dict of a ``Resource`` message, with resourceVersion filled in."""
    data: Resource = json.loads(msg.json) if msg.json else {}
    meta = data.get("metadata")
    if not isinstance(meta, dict):
        meta = data["metadata"] = {}
    if msg.resource_version:
        meta["resourceVersion"] = msg.resource_version
    return data


def kv_from_pb(msg: pb.KeyValue) -> KV:
    return KV(msg.key, bytes(msg.value), int(msg.mod_revision), int(msg.create_revision))


def event_from_pb(msg: pb.WatchEvent) -> WatchEvent:
    etype = EventType(msg.type)
    if msg.HasField("resource"):
        res = msg.resource
        return WatchEvent(
            etype,
            int(msg.revision),
            msg.kv.key,
            resource=resource_from_pb(res),
            traceparent=msg.traceparent,
            kind=res.kind,
            namespace=res.namespace,
            name=res.name,
        )
    if msg.HasField("kv"):
        return WatchEvent(
            etype, int(msg.revision), msg.kv.key, kv=kv_from_pb(msg.kv),
            traceparent=msg.traceparent,
        )
    return WatchEvent(etype, int(msg.revision), traceparent=msg.traceparent)


def _op_pb(op: Any) -> pb.KVOp:
    """A ``KVOp`` or any object with ``key`` and either ``value`` (put) or ``delete=True``."""
    delete = bool(getattr(op, "delete", False)) or not hasattr(op, "value")
    value = b"" if delete else op.value
    if isinstance(value, str):
        value = value.encode()
    return pb.KVOp(key=op.key, value=value, delete=delete)


class DatastoreClient:
    """Async client of the Datastore gRPC service at ``target`` (``unix:///path`` or host:port).

    ``timeout`` (seconds) bounds every call but ``watch`` when set. ``session=False`` sends
    each call as its own unary RPC instead of over the session stream.
    """

    def __init__(
        self, target: str, *, timeout: float | None = None, session: bool = True
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.use_session = session
        self._channel: Any = None
        self._stub: Any = None
        self._session_channel: grpc.aio.Channel | None = None
        self._stream: SessionStream | None = None
        self._ids = itertools.count(1)

    @property
    def stub(self) -> Any:
        if self._stub is None:
            self._channel = make_channel(self.target, service="datastore")
            self._stub = pb_grpc.DatastoreStub(self._channel)
        return self._stub

    async def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.close()
        session_channel, self._session_channel = self._session_channel, None
        if session_channel is not None:
            await session_channel.close()
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()

    # -- calls over the session ----------------------------------------------------------------

    def _open_stream(self) -> SessionStream:
        stream = self._stream
        if stream is None or stream.broken:
            if self._session_channel is None:
                # No interceptors: see libcalico.client.session on why.
                self._session_channel = grpc.aio.insecure_channel(
                    self.target, options=list(DEFAULT_CHANNEL_OPTIONS)
                )
            stream = self._stream = SessionStream(
                self._session_channel,
                target=self.target,
                service="datastore",
                on_broken=self._stream_broken,
            )
        return stream

    def _stream_broken(self, stream: SessionStream) -> None:
        if self._stream is stream:
            self._stream = None

    async def _invoke(self, op: str, method: str, request: Any, size: int = 0) -> Any:
        """``request`` as session call ``op`` (the unary ``method``'s response comes back);
        the unary RPC when the server has no sessions."""
        if self.use_session:
            try:
                return await self._over_session(op, method, request, size)
            except SessionUnsupported:
                if self.use_session:
                    _log.info("the datastore has no Session stream; using unary calls",
                              target=self.target)  # fmt: skip
                self.use_session = False
        return await getattr(self.stub, method)(request, timeout=self.timeout)

    async def _over_session(self, op: str, method: str, request: Any, size: int) -> Any:
        span = start_client_span(_tracer, GRPC_SERVICE, method, self.target)
        # The server's span is the child of ours, or of the caller's when we do not record
        # (no tracer provider), as make_channel's interceptor arranges for unary calls.
        carrier: dict[str, str] = {}
        inject_headers(carrier, trace.set_span_in_context(span) if span.is_recording() else None)
        call = pb.SessionCall(
            id=next(self._ids),
            traceparent=carrier.get("traceparent", ""),
            tracestate=carrier.get("tracestate", ""),
            **{op: request},
        )
        code = grpc.StatusCode.UNKNOWN
        try:
            result = await self._send(call, size)
            which = result.WhichOneof("result") or ""
            if which == "error":
                code = grpc.StatusCode.__members__.get(result.error.code, code)
                raise error_from_result(
                    result.error, target=self.target, service="datastore",
                    method=f"/{GRPC_SERVICE}/{method}",
                )  # fmt: skip
            code = grpc.StatusCode.OK
            return getattr(result, which)
        except SessionUnsupported:
            code = grpc.StatusCode.UNIMPLEMENTED
            raise
        except UnavailableError:
            code = grpc.StatusCode.UNAVAILABLE
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code is not grpc.StatusCode.OK:
                span.set_status(Status(StatusCode.ERROR, code.name))
            span.end()

    async def _send(self, call: pb.SessionCall, size: int) -> pb.SessionResult:
        cause: CalicoError | None = None
        for _ in range(_MAX_RESENDS):
            future = self._open_stream().submit(call, size)
            try:
                if self.timeout is None:
                    return await future
                return await asyncio.wait_for(future, self.timeout)
            except NotSent as exc:
                cause = exc.cause
                continue
            except TimeoutError:
                raise UnavailableError(
                    f"the datastore at {self.target} did not answer in time: Deadline Exceeded"
                ) from None
        if cause is not None:  # the stream kept failing (nobody listens): say why
            raise cause
        raise UnavailableError(
            f"the datastore at {self.target} kept ending the session before reading the request"
        )

    async def __aenter__(self) -> DatastoreClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- resources -----------------------------------------------------------------------------

    async def create(self, resource: Mapping[str, Any], *, dry_run: bool = False) -> Resource:
        """Create; ``AlreadyExistsError`` if it exists. Sets uid and creationTimestamp."""
        body = encode(resource)
        req = pb.WriteRequest(json=body, dry_run=dry_run)
        return resource_from_pb(await self._invoke("create", "Create", req, len(body)))

    async def update(self, resource: Mapping[str, Any], *, dry_run: bool = False) -> Resource:
        """Replace an existing resource; compare-and-swap when it has a resourceVersion."""
        body = encode(resource)
        req = pb.WriteRequest(json=body, dry_run=dry_run)
        return resource_from_pb(await self._invoke("update", "Update", req, len(body)))

    async def apply(self, resource: Mapping[str, Any], *, dry_run: bool = False) -> Resource:
        """Create or replace (a resourceVersion, when present, is still compared)."""
        body = encode(resource)
        req = pb.WriteRequest(json=body, dry_run=dry_run)
        return resource_from_pb(await self._invoke("apply", "Apply", req, len(body)))

    async def delete(
        self,
        kind: str,
        name: str,
        namespace: str | None = None,
        resource_version: str | int | None = None,
    ) -> Resource:
        """Delete and return the last value; only at ``resource_version`` when given."""
        req = pb.DeleteRequest(
            kind=kind,
            name=name,
            namespace=namespace or "",
            resource_version=str(resource_version) if resource_version else "",
        )
        return resource_from_pb(await self._invoke("delete", "Delete", req))

    async def get(self, kind: str, name: str, namespace: str | None = None) -> Resource:
        req = pb.GetRequest(kind=kind, name=name, namespace=namespace or "")
        return resource_from_pb(await self._invoke("get", "Get", req))

    async def list(
        self,
        kind: str,
        namespace: str | None = None,
        all_namespaces: bool = False,
        name_prefix: str = "",
    ) -> tuple[list[Resource], int]:
        """Resources of ``kind`` (every namespace when none is given) and the read revision."""
        req = pb.ListRequest(
            kind=kind,
            namespace=namespace or "",
            all_namespaces=all_namespaces,
            name_prefix=name_prefix,
        )
        resp = await self._invoke("list", "List", req)
        return [resource_from_pb(r) for r in resp.items], int(resp.revision)

    async def watch(
        self,
        kinds: Sequence[str] = (),
        kv_prefixes: Sequence[str] = (),
        revision: int = 0,
        *,
        kv_only: bool = False,
    ) -> AsyncIterator[WatchEvent]:
        """Events strictly after ``revision`` (0 = from now), until the caller stops.

        ``kinds`` empty means every kind (unless ``kv_only``). Raises ``CompactedError`` when
        ``revision`` is compacted away (list again), ``UnavailableError`` when the stream
        breaks.
        """
        req = pb.WatchRequest(
            kinds=list(kinds), kv_prefixes=list(kv_prefixes), revision=revision, kv_only=kv_only
        )
        call = self.stub.Watch(req)
        try:
            async for msg in call:
                yield event_from_pb(msg)
        finally:
            call.cancel()

    # -- raw keys ------------------------------------------------------------------------------

    async def kv_get(self, key: str) -> KV | None:
        resp = await self._invoke("kv_get", "KVGet", pb.KVGetRequest(key=key))
        return kv_from_pb(resp.kv) if resp.HasField("kv") else None

    async def kv_list(
        self, prefix: str, keys_only: bool = False
    ) -> tuple[builtins.list[KV], int]:
        resp = await self._invoke(
            "kv_list", "KVList", pb.KVListRequest(prefix=prefix, keys_only=keys_only)
        )
        return [kv_from_pb(kv) for kv in resp.kvs], int(resp.revision)

    async def kv_txn(
        self, compares: Sequence[tuple[str, int]], ops: Sequence[Any]
    ) -> TxnResult:
        """Apply ``ops`` only if every ``(key, mod_revision)`` holds (0 = must not exist).

        ``ops`` are ``KVOp``s (or objects with ``key`` and ``value``; without ``value``, or
        with ``delete=True``, a delete).
        """
        req = pb.KVTxnRequest(
            compares=[pb.Compare(key=k, mod_revision=int(r)) for k, r in compares],
            ops=[_op_pb(op) for op in ops],
        )
        resp = await self._invoke(
            "kv_txn", "KVTxn", req, sum(len(op.value) for op in req.ops)
        )
        return TxnResult(
            bool(resp.succeeded),
            int(resp.revision),
            {kv.key: kv_from_pb(kv) for kv in resp.current},
        )
