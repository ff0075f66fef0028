"""DatastoreClient's protobuf ↔ dict conversions and KV op shapes (no server needed)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from libcalico.api.datastore.v1 import datastore_pb2 as pb
from libcalico.client import KVOp
from libcalico.client.datastore import EventType, _op_pb, event_from_pb, resource_from_pb


def test_resource_gets_its_resource_version_from_the_message() -> None:
    body = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "a"}}
    msg = pb.Resource(
        kind="IPPool", name="a", resource_version="42", json=json.dumps(body).encode()
    )
    assert resource_from_pb(msg)["metadata"] == {"name": "a", "resourceVersion": "42"}


def test_watch_event_conversion() -> None:
    res = pb.Resource(kind="NetworkPolicy", namespace="ns", name="p", resource_version="6",
                      json=b'{"metadata":{"name":"p","namespace":"ns"}}')
    msg = pb.WatchEvent(type=pb.WatchEvent.DELETED, revision=7, resource=res,
                        kv=pb.KeyValue(key="/calico/resources/v3/x", mod_revision=6),
                        traceparent="tp")
    ev = event_from_pb(msg)
    assert ev.type is EventType.DELETED and ev.revision == 7 and ev.key.endswith("/x")
    assert ev.resource is not None and ev.resource["metadata"]["resourceVersion"] == "6"
    assert (ev.kind, ev.namespace, ev.name, ev.traceparent) == ("NetworkPolicy", "ns", "p", "tp")
    kv = event_from_pb(pb.WatchEvent(type=pb.WatchEvent.ADDED, revision=3,
                                     kv=pb.KeyValue(key="/calico/ipam/v2/h", value=b"{}",
                                                    mod_revision=3, create_revision=3)))
    assert kv.kv is not None and kv.kv.json() == {} and kv.resource is None
    bookmark = event_from_pb(pb.WatchEvent(type=pb.WatchEvent.BOOKMARK, revision=9))
    assert bookmark.type is EventType.BOOKMARK and bookmark.key == ""


@dataclass
class OtherPut:  # the shape another service's own op types have
    key: str
    value: bytes


@dataclass
class OtherDelete:
    key: str


def test_kv_ops_accept_kvop_and_duck_typed_ops() -> None:
    assert _op_pb(KVOp.put("/k", {"a": 1})) == pb.KVOp(key="/k", value=b'{"a":1}')
    assert _op_pb(KVOp.remove("/k")) == pb.KVOp(key="/k", delete=True)
    assert _op_pb(OtherPut("/k", b"v")) == pb.KVOp(key="/k", value=b"v")
    assert _op_pb(OtherDelete("/k")) == pb.KVOp(key="/k", delete=True)
