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
"""

from __future__ import annotations

import builtins
import enum
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from libcalico.api.datastore.v1 import datastore_pb2 as pb
from libcalico.api.datastore.v1 import datastore_pb2_grpc as pb_grpc
from libcalico.runtime.channel import make_channel

Resource = dict[str, Any]


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


def encode(resource: Mapping[str, Any]) -> bytes:
    return json.dumps(resource, separators=(",", ":"), ensure_ascii=False).encode()


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

    ``timeout`` (seconds) bounds every unary call when set; watches are unbounded.
    """

    def __init__(self, target: str, *, timeout: float | None = None) -> None:
        self.target = target
        self.timeout = timeout
        self._channel: Any = None
        self._stub: Any = None

    @property
    def stub(self) -> Any:
        if self._stub is None:
            self._channel = make_channel(self.target, service="datastore")
            self._stub = pb_grpc.DatastoreStub(self._channel)
        return self._stub

    async def close(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()

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
        req = pb.WriteRequest(json=encode(resource), dry_run=dry_run)
        return resource_from_pb(await self.stub.Create(req, timeout=self.timeout))

    async def update(self, resource: Mapping[str, Any], *, dry_run: bool = False) -> Resource:
        """Replace an existing resource; compare-and-swap when it has a resourceVersion."""
        req = pb.WriteRequest(json=encode(resource), dry_run=dry_run)
        return resource_from_pb(await self.stub.Update(req, timeout=self.timeout))

    async def apply(self, resource: Mapping[str, Any], *, dry_run: bool = False) -> Resource:
        """Create or replace (a resourceVersion, when present, is still compared)."""
        req = pb.WriteRequest(json=encode(resource), dry_run=dry_run)
        return resource_from_pb(await self.stub.Apply(req, timeout=self.timeout))

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
        return resource_from_pb(await self.stub.Delete(req, timeout=self.timeout))

    async def get(self, kind: str, name: str, namespace: str | None = None) -> Resource:
        req = pb.GetRequest(kind=kind, name=name, namespace=namespace or "")
        return resource_from_pb(await self.stub.Get(req, timeout=self.timeout))

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
        resp = await self.stub.List(req, timeout=self.timeout)
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
        resp = await self.stub.KVGet(pb.KVGetRequest(key=key), timeout=self.timeout)
        return kv_from_pb(resp.kv) if resp.HasField("kv") else None

    async def kv_list(
        self, prefix: str, keys_only: bool = False
    ) -> tuple[builtins.list[KV], int]:
        resp = await self.stub.KVList(
            pb.KVListRequest(prefix=prefix, keys_only=keys_only), timeout=self.timeout
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
        resp = await self.stub.KVTxn(req, timeout=self.timeout)
        return TxnResult(
            bool(resp.succeeded),
            int(resp.revision),
            {kv.key: kv_from_pb(kv) for kv in resp.current},
        )
