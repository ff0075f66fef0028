"""The datastore service over gRPC on a unix socket, against a real etcd.

Status codes are checked on a bare gRPC channel (what any client sees); domain error classes
through ``DatastoreClient`` (what our code sees). "Nothing written" is checked on etcd itself:
the store's revision and every key under ``/calico/`` are compared before and after.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aetcd
import grpc
import grpc.aio
import pytest

from libcalico.api.datastore.v1 import datastore_pb2 as pb
from libcalico.api.datastore.v1 import datastore_pb2_grpc as pb_grpc
from libcalico.client import DatastoreClient, KVOp
from libcalico.errors import (
    AlreadyExistsError,
    ConflictError,
    NotFoundError,
    ValidationError,
)

RES = "/calico/resources/v3/projectcalico.org/"


def ippool(name: str = "pool-a", cidr: str = "10.65.0.0/16", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": {"name": name},
        "spec": {"cidr": cidr, **spec},
    }


@pytest.fixture
async def raw_stub(datastore_target: str) -> AsyncIterator[pb_grpc.DatastoreStub]:
    """The service's stub on a plain channel: no error mapping, real status codes."""
    async with grpc.aio.insecure_channel(datastore_target) as channel:
        yield pb_grpc.DatastoreStub(channel)


async def etcd_state(client: aetcd.Client) -> tuple[int, dict[str, tuple[int, bytes]]]:
    """etcd's revision and every key under /calico/ with its mod revision and value."""
    got = await client.get_prefix(b"/calico/")
    keys = {kv.key.decode(): (kv.mod_revision, kv.value) for kv in got}
    return got.header.revision, keys


async def test_cluster_defaults_exist(datastore_client: DatastoreClient) -> None:
    info = await datastore_client.get("ClusterInformation", "default")
    assert info["spec"]["datastoreReady"] is True
    assert len(info["spec"]["clusterGUID"]) == 32
    assert info["spec"]["calicoVersion"] and info["spec"]["clusterType"]
    tier = await datastore_client.get("Tier", "default")
    assert tier["spec"]["order"] == 1000000


async def test_etcd_holds_calicos_json(
    datastore_client: DatastoreClient, etcd_client: aetcd.Client
) -> None:
    created = await datastore_client.create(ippool())
    raw = await etcd_client.get((RES + "ippools/pool-a").encode())
    assert raw is not None
    assert str(raw.mod_revision) == created["metadata"]["resourceVersion"]
    value = json.loads(raw.value)
    assert value["apiVersion"] == "projectcalico.org/v3" and value["kind"] == "IPPool"
    # resourceVersion lives in etcd's revision, not in the value (as Calico stores it).
    assert "resourceVersion" not in value["metadata"]
    assert value["metadata"]["uid"] == created["metadata"]["uid"]
    assert value["metadata"]["creationTimestamp"] == created["metadata"]["creationTimestamp"]
    assert value["spec"]["blockSize"] == 26 and value["spec"]["ipipMode"] == "Never"
    assert b": " not in raw.value  # compact, as Go's encoding/json writes it


async def test_crud_round_trip(datastore_client: DatastoreClient) -> None:
    c = datastore_client
    pool = await c.create(ippool())
    assert await c.get("ippool", "pool-a") == pool
    pool["spec"]["natOutgoing"] = True
    updated = await c.update(pool)
    assert int(updated["metadata"]["resourceVersion"]) > int(pool["metadata"]["resourceVersion"])
    applied = await c.apply(ippool("pool-b", "10.66.0.0/16"))
    items, revision = await c.list("IPPool")
    assert [i["metadata"]["name"] for i in items] == ["pool-a", "pool-b"]
    assert revision >= int(applied["metadata"]["resourceVersion"])
    items, _ = await c.list("IPPool", name_prefix="pool-b")
    assert [i["metadata"]["name"] for i in items] == ["pool-b"]
    version = updated["metadata"]["resourceVersion"]
    deleted = await c.delete("IPPool", "pool-a", resource_version=version)
    assert deleted["spec"]["natOutgoing"] is True
    with pytest.raises(NotFoundError, match=r"IPPool\(pool-a\) not found"):
        await c.get("IPPool", "pool-a")
    with pytest.raises(AlreadyExistsError):
        await c.create(ippool("pool-b", "10.66.0.0/16"))


async def test_namespaced_resources(datastore_client: DatastoreClient) -> None:
    c = datastore_client
    for ns in ("a", "b"):
        await c.create({
            "apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
            "metadata": {"name": "allow-dns", "namespace": ns}, "spec": {"selector": "all()"},
        })  # fmt: skip
    every, _ = await c.list("NetworkPolicy", all_namespaces=True)
    assert [i["metadata"]["namespace"] for i in every] == ["a", "b"]
    only_b, _ = await c.list("NetworkPolicy", namespace="b")
    assert [i["metadata"]["namespace"] for i in only_b] == ["b"]
    got = await c.get("NetworkPolicy", "allow-dns", "a")
    assert got["spec"]["tier"] == "default"  # the model's default


async def test_two_updates_with_the_same_version_exactly_one_wins(
    datastore_client: DatastoreClient, etcd_client: aetcd.Client
) -> None:
    base = await datastore_client.create(ippool())
    attempts = []
    for i in range(5):
        req = json.loads(json.dumps(base))
        req["metadata"]["labels"] = {"writer": str(i)}
        attempts.append(datastore_client.update(req))
    results = await asyncio.gather(*attempts, return_exceptions=True)
    winners = [r for r in results if isinstance(r, dict)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1 and len(losers) == 4
    assert all(isinstance(e, ConflictError) for e in losers)
    assert all("IPPool(pool-a)" in str(e) for e in losers)
    raw = await etcd_client.get((RES + "ippools/pool-a").encode())
    assert raw is not None
    assert json.loads(raw.value)["metadata"]["labels"] == winners[0]["metadata"]["labels"]


async def _call_code(coro: Any) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    err = info.value
    trailing = {k: v for k, v in (err.trailing_metadata() or ()) if k.startswith("calico-error-")}
    return err.code(), err.details() or "", trailing


@pytest.mark.parametrize(
    ("case", "code", "field", "words"),
    [
        ("stale version", grpc.StatusCode.ABORTED, "metadata.resourceVersion", "stale"),
        ("bad CIDR", grpc.StatusCode.INVALID_ARGUMENT, "spec.cidr", "10.65.0.300/16"),
        ("both encapsulations", grpc.StatusCode.INVALID_ARGUMENT, "spec.vxlanMode", "IPIP"),
        ("blockSize 19", grpc.StatusCode.INVALID_ARGUMENT, "spec.blockSize", "out of range"),
    ],
)
async def test_rejected_writes_name_resource_field_reason_and_write_nothing(
    datastore_client: DatastoreClient,
    raw_stub: pb_grpc.DatastoreStub,
    etcd_client: aetcd.Client,
    case: str,
    code: grpc.StatusCode,
    field: str,
    words: str,
) -> None:
    first = await datastore_client.create(ippool())
    second = await datastore_client.update(first)
    assert second["metadata"]["resourceVersion"] != first["metadata"]["resourceVersion"]
    request = json.loads(json.dumps(second))
    if case == "stale version":
        request = first
    elif case == "bad CIDR":
        request["spec"]["cidr"] = "10.65.0.300/16"
    elif case == "both encapsulations":
        request["spec"].update(ipipMode="Always", vxlanMode="Always")
    else:
        request["spec"]["blockSize"] = 19
    before = await etcd_state(etcd_client)

    got_code, details, trailing = await _call_code(
        raw_stub.Update(pb.WriteRequest(json=json.dumps(request).encode()))
    )
    assert got_code == code
    assert "IPPool(pool-a)" in details and field in details and words in details
    assert trailing["calico-error-resource"] == "IPPool(pool-a)"
    assert trailing["calico-error-field"] == field

    expected = ConflictError if code == grpc.StatusCode.ABORTED else ValidationError
    with pytest.raises(expected) as info:
        await datastore_client.update(request)
    assert info.value.field == field and "IPPool(pool-a)" in str(info.value)
    if case == "stale version":
        assert first["metadata"]["resourceVersion"] in str(info.value)
        assert second["metadata"]["resourceVersion"] in str(info.value)

    assert await etcd_state(etcd_client) == before


async def test_other_status_codes(raw_stub: pb_grpc.DatastoreStub) -> None:
    code, _, _ = await _call_code(raw_stub.Get(pb.GetRequest(kind="IPPool", name="nope")))
    assert code == grpc.StatusCode.NOT_FOUND
    body = json.dumps(ippool()).encode()
    await raw_stub.Create(pb.WriteRequest(json=body))
    code, _, _ = await _call_code(raw_stub.Create(pb.WriteRequest(json=body)))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    code, details, _ = await _call_code(raw_stub.Create(pb.WriteRequest(json=b"{nope")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "JSON" in details
    code, _, _ = await _call_code(raw_stub.KVGet(pb.KVGetRequest(key=RES + "ippools/pool-a")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_dry_run_validates_and_writes_nothing(
    datastore_client: DatastoreClient, etcd_client: aetcd.Client
) -> None:
    before = await etcd_state(etcd_client)
    res = await datastore_client.create(ippool(), dry_run=True)
    assert res["spec"]["blockSize"] == 26
    assert await etcd_state(etcd_client) == before


async def test_kv_compare_and_swap(datastore_client: DatastoreClient) -> None:
    c = datastore_client
    key = "/calico/ipam/v2/handle/k8s-pod-network.abc"
    created = await c.kv_txn([(key, 0)], [KVOp.put(key, {"block": {"10.65.0.0/26": 1}})])
    assert created.succeeded
    kv = await c.kv_get(key)
    assert kv is not None and kv.mod_revision == created.revision
    assert kv.json() == {"block": {"10.65.0.0/26": 1}}
    lost = await c.kv_txn([(key, 0)], [KVOp.put(key, "{}")])
    assert not lost.succeeded and lost.current[key].mod_revision == created.revision
    other = "/calico/ipam/v2/handle/other"
    both = await c.kv_txn(
        [(key, created.revision), (other, 0)], [KVOp.remove(key), KVOp.put(other, "{}")]
    )
    assert both.succeeded
    assert await c.kv_get(key) is None
    kvs, revision = await c.kv_list("/calico/ipam/v2/")
    assert [k.key for k in kvs] == [other] and revision == both.revision
    names, _ = await c.kv_list("/calico/ipam/v2/", keys_only=True)
    assert names[0].value == b""
    with pytest.raises(ValidationError, match="resources"):
        await c.kv_txn([], [KVOp.put(RES + "ippools/x", "{}")])


async def test_concurrent_writes_are_committed_together_and_fail_alone(
    datastore_client: DatastoreClient, etcd_client: aetcd.Client
) -> None:
    c = datastore_client
    await c.create(ippool("taken", "10.99.0.0/16"))
    attempts = [c.create(ippool(f"p{i}", f"10.{100 + i}.0.0/16")) for i in range(20)]
    attempts.append(c.create(ippool("taken", "10.98.0.0/16")))
    results = await asyncio.gather(*attempts, return_exceptions=True)
    created = [r for r in results if isinstance(r, dict)]
    assert len(created) == 20
    assert isinstance(results[-1], AlreadyExistsError)
    revisions = {r["metadata"]["resourceVersion"] for r in created}
    assert len(revisions) < 20  # group commit: some creates shared an etcd revision
    for r in created:  # ...and each resourceVersion is still its key's mod revision
        raw = await etcd_client.get((RES + "ippools/" + r["metadata"]["name"]).encode())
        assert raw is not None and str(raw.mod_revision) == r["metadata"]["resourceVersion"]
    taken = await c.get("IPPool", "taken")
    assert taken["spec"]["cidr"] == "10.99.0.0/16"
