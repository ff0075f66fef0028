"""gRPC ↔ domain for the Datastore service: protobuf in, ``Store``/``Watcher`` call, protobuf out.

Nothing else happens here. ``Session`` runs these same handlers for calls multiplexed on one
stream (``services.datastore.session`` gives each call the span, metrics and error mapping the
runtime gives a unary RPC). Errors are ``libcalico.errors`` raised by the domain; the runtime's
handler wrapping turns them into status codes with ``calico-error-*`` trailing metadata. Resource
bodies pass through as the bytes etcd holds (``Resource.json``, without resourceVersion, which
travels in ``Resource.resource_version``), so a list or a watch decodes no JSON here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from libcalico.api.datastore.v1 import datastore_pb2 as pb
from libcalico.api.datastore.v1 import datastore_pb2_grpc as pb_grpc
from libcalico.errors import ValidationError
from services.datastore.etcd import KV
from services.datastore.session import OPS, SessionHub
from services.datastore.store import KVWrite, Store, StoredResource
from services.datastore.watch import Watcher, WatchEvent


def resource_pb(res: StoredResource) -> pb.Resource:
    return pb.Resource(
        kind=res.kind,
        namespace=res.namespace,
        name=res.name,
        resource_version=res.resource_version,
        json=res.raw,
    )


def kv_pb(kv: KV, *, keys_only: bool = False) -> pb.KeyValue:
    return pb.KeyValue(
        key=kv.key,
        value=b"" if keys_only else kv.value,
        mod_revision=kv.mod_revision,
        create_revision=kv.create_revision,
    )


def event_pb(event: WatchEvent) -> pb.WatchEvent:
    out = pb.WatchEvent(
        type=pb.WatchEvent.Type.Value(event.type.name),
        revision=event.revision,
        traceparent=event.traceparent,
    )
    if event.resource is not None:
        out.resource.CopyFrom(resource_pb(event.resource))
        # The etcd key rides along; the value is already in resource.json.
        out.kv.CopyFrom(
            pb.KeyValue(key=event.key, mod_revision=event.resource.revision)
        )
    elif event.kv is not None:
        out.kv.CopyFrom(kv_pb(event.kv))
    return out


def decode_json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValidationError("request body must be a JSON object (one resource)")
    return data


class DatastoreServicer(pb_grpc.DatastoreServicer):  # type: ignore[misc]
    def __init__(self, store: Store, watcher: Watcher, *, service: str = "datastore") -> None:
        """``service`` is the process's name for the spans of session calls (the runtime's
        handler wrapping is given the same name for unary ones)."""
        self.store = store
        self.watcher = watcher
        # Session calls run the very handlers below (with no context; none of them uses it).
        self.sessions = SessionHub(
            {method: getattr(self, method) for method, _ in OPS.values()}, process=service
        )

    def close(self) -> None:
        """The server is stopping: end the Session streams (each answers what it read)."""
        self.sessions.close()

    async def Create(self, request: pb.WriteRequest, context: Any) -> pb.Resource:
        res = await self.store.create(decode_json(request.json), dry_run=request.dry_run)
        return resource_pb(res)

    async def Update(self, request: pb.WriteRequest, context: Any) -> pb.Resource:
        res = await self.store.update(decode_json(request.json), dry_run=request.dry_run)
        return resource_pb(res)

    async def Apply(self, request: pb.WriteRequest, context: Any) -> pb.Resource:
        res = await self.store.apply(decode_json(request.json), dry_run=request.dry_run)
        return resource_pb(res)

    async def Delete(self, request: pb.DeleteRequest, context: Any) -> pb.Resource:
        res = await self.store.delete(
            request.kind,
            request.name,
            request.namespace or None,
            request.resource_version or None,
        )
        return resource_pb(res)

    async def Get(self, request: pb.GetRequest, context: Any) -> pb.Resource:
        res = await self.store.get(request.kind, request.name, request.namespace or None)
        return resource_pb(res)

    async def List(self, request: pb.ListRequest, context: Any) -> pb.ListResponse:
        items, revision = await self.store.list(
            request.kind,
            request.namespace or None,
            all_namespaces=request.all_namespaces,
            name_prefix=request.name_prefix,
        )
        return pb.ListResponse(items=[resource_pb(r) for r in items], revision=revision)

    async def Watch(self, request: pb.WatchRequest, context: Any) -> Any:
        async for event in self.watcher.watch(
            list(request.kinds),
            list(request.kv_prefixes),
            request.revision,
            kv_only=request.kv_only,
        ):
            yield event_pb(event)

    async def Session(
        self, request_iterator: AsyncIterator[pb.SessionRequest], context: Any
    ) -> AsyncIterator[pb.SessionResponse]:
        """The unary operations over one stream; see ``services.datastore.session``."""
        async for response in self.sessions.serve(request_iterator):
            yield response

    async def KVGet(self, request: pb.KVGetRequest, context: Any) -> pb.KVGetResponse:
        kv, revision = await self.store.kv_get(request.key)
        out = pb.KVGetResponse(revision=revision)
        if kv is not None:
            out.kv.CopyFrom(kv_pb(kv))
        return out

    async def KVList(self, request: pb.KVListRequest, context: Any) -> pb.KVListResponse:
        kvs, revision = await self.store.kv_list(request.prefix, keys_only=request.keys_only)
        return pb.KVListResponse(
            kvs=[kv_pb(kv, keys_only=request.keys_only) for kv in kvs], revision=revision
        )

    async def KVTxn(self, request: pb.KVTxnRequest, context: Any) -> pb.KVTxnResponse:
        outcome = await self.store.kv_txn(
            [(c.key, c.mod_revision) for c in request.compares],
            [KVWrite(op.key, op.value, op.delete) for op in request.ops],
        )
        return pb.KVTxnResponse(
            succeeded=outcome.succeeded,
            revision=outcome.revision,
            current=[kv_pb(kv) for kv in outcome.current],
        )
