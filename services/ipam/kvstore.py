"""The IPAM service's two seams to storage, with an in-memory fake and two real backends.

``KVStore`` is the raw compare-and-swap key/value API the allocator is written against: get,
prefix list and a multi-key transaction whose compares are etcd mod revisions (0 means "the
key must not exist"). A failed transaction writes nothing and hands back the current value of
every compared key, so a lost race costs no extra read. ``ResourceStore`` is the little the
allocator needs of Calico resources: list a kind, get one, and compare-and-swap update one (a
Node gaining a tunnel address).

Implementations:

- ``MemoryKVStore``: the fake for unit tests; etcd's semantics (one revision per transaction).
- ``EtcdKVStore``: straight to etcd's v3 gRPC API (through aetcd's generated stubs), one round
  trip per transaction including the re-read on failure. Used by the bench to measure the floor
  and by tests that run several allocator processes against one etcd.
- ``DatastoreKVStore`` / ``DatastoreResourceStore``: over ``libcalico.client.DatastoreClient``,
  which is how the service runs in a deployment (the datastore service owns etcd).
- ``KVResourceStore``: resources as Calico's JSON under ``/calico/resources/v3/...`` on any
  ``KVStore``; ``metadata.resourceVersion`` is the key's mod revision.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from libcalico import keys
from libcalico.errors import ConflictError, NotFoundError, UnavailableError


@dataclass(frozen=True, slots=True)
class KV:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int = 0


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes


@dataclass(frozen=True, slots=True)
class Delete:
    key: str


Op = Put | Delete


@dataclass(slots=True)
class TxnResult:
    succeeded: bool
    revision: int
    # On failure: current state of each compared key that exists (absent keys omitted).
    current: list[KV] = field(default_factory=list)


class KVStore(Protocol):
    async def get(self, key: str) -> KV | None: ...

    async def list(self, prefix: str, keys_only: bool = False) -> tuple[list[KV], int]:
        """Every key under ``prefix`` in key order, and the store's revision. ``keys_only``:
        values empty (revisions kept), for callers that only need to know what exists."""
        ...

    async def txn(self, compares: Sequence[tuple[str, int]], ops: Sequence[Op]) -> TxnResult: ...

    async def close(self) -> None: ...


Resource = dict[str, Any]


class ResourceStore(Protocol):
    async def list(self, kind: str) -> list[Resource]: ...

    async def get(self, kind: str, name: str, namespace: str | None = None) -> Resource | None: ...

    async def update(self, resource: Resource) -> Resource:
        """Compare-and-swap on ``metadata.resourceVersion``; ConflictError when stale."""
        ...


# -- in-memory fake ---------------------------------------------------------------------------


class MemoryKVStore:
    """etcd's transaction semantics in a dict: one revision per successful transaction."""

    def __init__(self) -> None:
        self.data: dict[str, KV] = {}
        self.revision = 1
        self.txns = 0
        self.failed_txns = 0
        self.reads = 0

    async def get(self, key: str) -> KV | None:
        self.reads += 1
        return self.data.get(key)

    async def list(self, prefix: str, keys_only: bool = False) -> tuple[list[KV], int]:
        self.reads += 1
        kvs = [kv for k, kv in sorted(self.data.items()) if k.startswith(prefix)]
        if keys_only:
            kvs = [KV(kv.key, b"", kv.mod_revision, kv.create_revision) for kv in kvs]
        return kvs, self.revision

    async def txn(self, compares: Sequence[tuple[str, int]], ops: Sequence[Op]) -> TxnResult:
        self.txns += 1
        ok = all(
            (self.data[k].mod_revision if k in self.data else 0) == rev for k, rev in compares
        )
        if not ok:
            self.failed_txns += 1
            current = [self.data[k] for k, _ in compares if k in self.data]
            return TxnResult(False, self.revision, current)
        if ops:
            self.revision += 1
            for op in ops:
                if isinstance(op, Put):
                    old = self.data.get(op.key)
                    created = old.create_revision if old else self.revision
                    self.data[op.key] = KV(op.key, op.value, self.revision, created)
                else:
                    self.data.pop(op.key, None)
        return TxnResult(True, self.revision)

    async def close(self) -> None:
        return None

    def put_json(self, key: str, value: Any) -> int:
        """Test helper: unconditional put."""
        self.revision += 1
        old = self.data.get(key)
        created = old.create_revision if old else self.revision
        raw = json.dumps(value).encode()
        self.data[key] = KV(key, raw, self.revision, created)
        return self.revision


# -- resources as raw KV ----------------------------------------------------------------------


class KVResourceStore:
    """Calico resources stored as their JSON under the resource keys of any ``KVStore``."""

    def __init__(self, kv: KVStore) -> None:
        self.kv = kv

    @staticmethod
    def _decode(kv: KV) -> Resource:
        res: Resource = json.loads(kv.value)
        res.setdefault("metadata", {})["resourceVersion"] = str(kv.mod_revision)
        return res

    async def list(self, kind: str) -> list[Resource]:
        kvs, _ = await self.kv.list(keys.resource_prefix(kind))
        return [self._decode(kv) for kv in kvs]

    async def get(self, kind: str, name: str, namespace: str | None = None) -> Resource | None:
        kv = await self.kv.get(keys.resource_key(kind, name, namespace))
        return self._decode(kv) if kv else None

    async def update(self, resource: Resource) -> Resource:
        meta = resource.get("metadata", {})
        kind, name = resource["kind"], meta["name"]
        key = keys.resource_key(kind, name, meta.get("namespace"))
        rv = meta.get("resourceVersion")
        if not rv:
            current = await self.kv.get(key)
            if current is None:
                raise NotFoundError(f"{kind}({name}) does not exist", resource=f"{kind}({name})")
            rev = current.mod_revision
        else:
            rev = int(rv)
        body = dict(resource)
        body["metadata"] = {k: v for k, v in meta.items() if k != "resourceVersion"}
        result = await self.kv.txn([(key, rev)], [Put(key, json.dumps(body).encode())])
        if not result.succeeded:
            if not result.current:
                raise NotFoundError(f"{kind}({name}) does not exist", resource=f"{kind}({name})")
            raise ConflictError(
                f"{kind}({name}) was modified concurrently (resourceVersion {rev} is stale)",
                resource=f"{kind}({name})",
            )
        body["metadata"]["resourceVersion"] = str(result.revision)
        return body

    def put_resource(self, resource: Resource) -> None:
        """Test helper for ``MemoryKVStore``-backed stores: unconditional write."""
        if not isinstance(self.kv, MemoryKVStore):
            raise TypeError("put_resource is a MemoryKVStore helper")
        meta = resource["metadata"]
        key = keys.resource_key(resource["kind"], meta["name"], meta.get("namespace"))
        self.kv.put_json(key, resource)


# -- etcd directly ----------------------------------------------------------------------------


# etcd answers a Range in one message; gRPC's default 4 MiB limit is hit by a few hundred
# full blocks. Lists are paged (LIST_PAGE keys a request, all pages read at the first page's
# revision) and a page may still be large, so the receive limit is raised as the datastore's
# own etcd client raises it.
LIST_PAGE = 500
CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
)


class EtcdKVStore:
    """``KVStore`` over etcd's v3 gRPC API: one round trip per get or transaction, one per
    ``LIST_PAGE`` keys of a list."""

    def __init__(self, host: str, port: int) -> None:
        import grpc.aio
        from aetcd import rpc  # the etcd v3 stubs; imported here to keep other imports light

        self._rpc = rpc
        self._channel = grpc.aio.insecure_channel(f"{host}:{port}", options=CHANNEL_OPTIONS)
        self._kv = rpc.KVStub(self._channel)

    @classmethod
    def from_endpoint(cls, endpoint: str) -> EtcdKVStore:
        """``http://127.0.0.1:2379`` or ``127.0.0.1:2379``."""
        hostport = endpoint.split("://", 1)[-1].rstrip("/")
        host, _, port = hostport.rpartition(":")
        return cls(host or "127.0.0.1", int(port))

    async def close(self) -> None:
        await self._channel.close()

    @staticmethod
    def _kv_of(kv: Any) -> KV:
        return KV(kv.key.decode(), bytes(kv.value), kv.mod_revision, kv.create_revision)

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=10)
        except self._rpc.AioRpcError as exc:
            raise UnavailableError(f"etcd request failed: {exc.details() or exc.code()}") from exc

    async def get(self, key: str) -> KV | None:
        resp = await self._call(self._kv.Range, self._rpc.RangeRequest(key=key.encode()))
        return self._kv_of(resp.kvs[0]) if resp.kvs else None

    async def list(self, prefix: str, keys_only: bool = False) -> tuple[list[KV], int]:
        start = prefix.encode()
        end = start[:-1] + bytes([start[-1] + 1])
        out: list[KV] = []
        revision = 0
        while True:
            req = self._rpc.RangeRequest(
                key=start, range_end=end, limit=LIST_PAGE, keys_only=keys_only,
                revision=revision,
            )
            resp = await self._call(self._kv.Range, req)
            if not revision:
                revision = resp.header.revision
            out.extend(self._kv_of(kv) for kv in resp.kvs)
            if not resp.more or not resp.kvs:
                return out, revision
            start = resp.kvs[-1].key + b"\0"

    async def txn(self, compares: Sequence[tuple[str, int]], ops: Sequence[Op]) -> TxnResult:
        # Filled in place with add(): building each Compare and RequestOp as its own message
        # and handing lists to the constructor copies every one of them again (10 us against
        # 4 for an allocation's two compares and two puts).
        rpc = self._rpc
        req = rpc.TxnRequest()
        for key, rev in compares:
            raw = key.encode()
            cmp = req.compare.add()
            cmp.key = raw
            cmp.result = rpc.Compare.EQUAL
            if rev == 0:
                cmp.target = rpc.Compare.CREATE
                cmp.create_revision = 0  # set, so the oneof says what is compared
            else:
                cmp.target = rpc.Compare.MOD
                cmp.mod_revision = rev
            req.failure.add().request_range.key = raw
        for op in ops:
            if isinstance(op, Put):
                put = req.success.add().request_put
                put.key = op.key.encode()
                put.value = op.value
            else:
                req.success.add().request_delete_range.key = op.key.encode()
        resp = await self._call(self._kv.Txn, req)
        if resp.succeeded:
            return TxnResult(True, resp.header.revision)
        current = [
            self._kv_of(kv) for r in resp.responses for kv in r.response_range.kvs
        ]
        return TxnResult(False, resp.header.revision, current)


# -- through the datastore service ------------------------------------------------------------


class DatastoreKVStore:
    """``KVStore`` over ``libcalico.client.DatastoreClient``'s kv_get/kv_list/kv_txn."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def get(self, key: str) -> KV | None:
        kv = await self.client.kv_get(key)
        return None if kv is None else _as_kv(kv)

    async def list(self, prefix: str, keys_only: bool = False) -> tuple[list[KV], int]:
        kvs, rev = await self.client.kv_list(prefix, keys_only=keys_only)
        return [_as_kv(kv) for kv in kvs], int(rev)

    async def txn(self, compares: Sequence[tuple[str, int]], ops: Sequence[Op]) -> TxnResult:
        result = await self.client.kv_txn(list(compares), list(ops))
        current = getattr(result, "current", None) or []
        if isinstance(current, dict):
            current = list(current.values())
        kvs = [_as_kv(kv) for kv in current]
        return TxnResult(bool(result.succeeded), int(result.revision), kvs)

    async def close(self) -> None:
        close = getattr(self.client, "close", None)
        if close is not None:
            await close()


def _as_kv(kv: Any) -> KV:
    if isinstance(kv, KV):
        return kv
    key = kv.key.decode() if isinstance(kv.key, bytes) else kv.key
    return KV(key, bytes(kv.value), int(kv.mod_revision), int(getattr(kv, "create_revision", 0)))


class DatastoreResourceStore:
    """``ResourceStore`` over ``DatastoreClient``'s typed list/get/update."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def list(self, kind: str) -> list[Resource]:
        result = await self.client.list(kind)
        items = result[0] if isinstance(result, tuple) else result
        return list(items)

    async def get(self, kind: str, name: str, namespace: str | None = None) -> Resource | None:
        try:
            if namespace is None:
                res: Resource = await self.client.get(kind, name)
            else:
                res = await self.client.get(kind, name, namespace)
            return res
        except NotFoundError:
            return None

    async def update(self, resource: Resource) -> Resource:
        res: Resource = await self.client.update(resource)
        return res
