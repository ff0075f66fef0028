"""Store rules against an in-memory etcd: validation before writes, CAS, server fields, KV limits.

``FakeEtcd`` keeps etcd's transaction semantics (one revision per write transaction, compares
on absent keys see 0) in a dict, so these run in milliseconds; the same rules are exercised
against a real etcd in ``tests/integration/test_datastore.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from libcalico.errors import (
    AlreadyExistsError,
    ConflictError,
    NotFoundError,
    RetriesExhaustedError,
    ValidationError,
)
from services.datastore.etcd import KV, Compare, Delete, Get, Op, Put, TxnResult
from services.datastore.store import KVWrite, RevisionTraces, Store


class FakeEtcd:
    endpoints = ["http://fake:2379"]

    def __init__(self) -> None:
        self.data: dict[str, KV] = {}
        self.revision = 1
        self.writes = 0
        #: Called once before the next txn (to simulate another writer slipping in).
        self.before_txn: Callable[[], None] | None = None

    def put(self, key: str, value: bytes) -> int:
        self.revision += 1
        old = self.data.get(key)
        created = old.create_revision if old else self.revision
        self.data[key] = KV(key, value, self.revision, created)
        return self.revision

    async def get(self, key: str) -> tuple[KV | None, int]:
        return self.data.get(key), self.revision

    async def get_prefix(
        self, prefix: str, *, keys_only: bool = False, revision: int = 0
    ) -> tuple[list[KV], int]:
        return [kv for k, kv in sorted(self.data.items()) if k.startswith(prefix)], self.revision

    def _holds(self, c: Compare) -> bool:
        kv = self.data.get(c.key)
        actual = 0
        if kv is not None:
            actual = {"mod": kv.mod_revision, "create": kv.create_revision, "version": 1}[c.target]
        return {
            "==": actual == c.value,
            "!=": actual != c.value,
            ">": actual > c.value,
            "<": actual < c.value,
        }[c.op]

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        if self.before_txn is not None:
            hook, self.before_txn = self.before_txn, None
            hook()
        ok = all(self._holds(c) for c in compares)
        ops = success if ok else failure
        results: list[KV | None] = []
        wrote = any(isinstance(op, Put | Delete) for op in ops)
        if wrote:
            self.revision += 1
            self.writes += 1
        for op in ops:
            if isinstance(op, Get):
                results.append(self.data.get(op.key))
            elif isinstance(op, Delete):
                results.append(self.data.pop(op.key, None))
            else:
                old = self.data.get(op.key)
                created = old.create_revision if old else self.revision
                self.data[op.key] = KV(op.key, op.value, self.revision, created)
                results.append(None)
        return TxnResult(ok, self.revision, results)


def ippool(name: str = "pool-a", cidr: str = "10.65.0.0/16", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": {"name": name},
        "spec": {"cidr": cidr, **spec},
    }


def netpol(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": "all()"},
    }


POOL_KEY = "/calico/resources/v3/projectcalico.org/ippools/pool-a"


@pytest.fixture
def etcd() -> FakeEtcd:
    return FakeEtcd()


@pytest.fixture
def store(etcd: FakeEtcd) -> Store:
    return Store(etcd, traceparent=lambda: "")  # type: ignore[arg-type]


def stored(etcd: FakeEtcd, key: str = POOL_KEY) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(etcd.data[key].value)
    return value


async def test_create_sets_server_fields_and_stores_no_resource_version(
    store: Store, etcd: FakeEtcd
) -> None:
    res = await store.create(ippool())
    assert res.revision == etcd.data[POOL_KEY].mod_revision
    value = stored(etcd)
    assert "resourceVersion" not in value["metadata"]
    assert len(value["metadata"]["uid"]) == 36
    assert value["metadata"]["creationTimestamp"].endswith("Z")
    # Defaults from the model were applied before the write.
    assert value["spec"]["blockSize"] == 26
    assert res.to_dict()["metadata"]["resourceVersion"] == str(res.revision)


async def test_create_refuses_a_resource_version(store: Store, etcd: FakeEtcd) -> None:
    pool = ippool()
    pool["metadata"]["resourceVersion"] = "5"
    with pytest.raises(ValidationError, match=r"IPPool\(pool-a\) metadata.resourceVersion"):
        await store.create(pool)
    assert etcd.writes == 0


async def test_create_of_existing_is_already_exists_and_writes_nothing(
    store: Store, etcd: FakeEtcd
) -> None:
    await store.create(ippool())
    before = dict(etcd.data)
    with pytest.raises(AlreadyExistsError, match=r"IPPool\(pool-a\) already exists"):
        await store.create(ippool(cidr="10.66.0.0/16"))
    assert etcd.data == before


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"cidr": "10.65.0.300/16"}, "spec.cidr", "10.65.0.300/16"),
        ({"ipipMode": "Always", "vxlanMode": "Always"}, "spec.vxlanMode", "Always"),
        ({"blockSize": 19}, "spec.blockSize", "19"),
    ],
)
async def test_invalid_resource_writes_nothing(
    store: Store, etcd: FakeEtcd, spec: dict[str, Any], field: str, words: str
) -> None:
    pool = ippool()
    pool["spec"].update(spec)
    with pytest.raises(ValidationError) as info:
        await store.create(pool)
    assert "IPPool(pool-a)" in str(info.value)
    assert info.value.field.startswith(field)
    assert words in str(info.value)
    assert etcd.data == {} and etcd.writes == 0


async def test_update_with_stale_version_is_a_conflict_naming_both_versions(
    store: Store, etcd: FakeEtcd
) -> None:
    first = (await store.create(ippool())).to_dict()
    await store.update({**first, "spec": {**first["spec"], "natOutgoing": True}})
    current = etcd.data[POOL_KEY].mod_revision
    before = dict(etcd.data)
    with pytest.raises(ConflictError) as info:
        await store.update(first)
    msg = str(info.value)
    assert "IPPool(pool-a)" in msg
    assert f"version {first['metadata']['resourceVersion']} is stale" in msg
    assert f"current version is {current}" in msg
    assert info.value.field == "metadata.resourceVersion"
    assert etcd.data == before


async def test_update_of_absent_is_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError, match=r"IPPool\(pool-a\) not found"):
        await store.update(ippool())


async def test_update_keeps_uid_and_creation_timestamp(store: Store, etcd: FakeEtcd) -> None:
    created = (await store.create(ippool())).to_dict()
    request = ippool(natOutgoing=True)
    request["metadata"]["uid"] = "someone-elses"
    await store.update(request)
    meta = stored(etcd)["metadata"]
    assert meta["uid"] == created["metadata"]["uid"]
    assert meta["creationTimestamp"] == created["metadata"]["creationTimestamp"]
    assert stored(etcd)["spec"]["natOutgoing"] is True


async def test_update_without_version_retries_when_another_writer_slips_in(
    store: Store, etcd: FakeEtcd
) -> None:
    await store.create(ippool())
    etcd.before_txn = lambda: etcd.put(POOL_KEY, etcd.data[POOL_KEY].value)
    res = await store.update(ippool(natOutgoing=True))
    assert stored(etcd)["spec"]["natOutgoing"] is True
    assert res.revision == etcd.data[POOL_KEY].mod_revision


async def test_update_gives_up_after_bounded_retries(etcd: FakeEtcd) -> None:
    store = Store(etcd, traceparent=lambda: "", max_retries=3)  # type: ignore[arg-type]
    await store.create(ippool())

    def interfere() -> None:
        etcd.put(POOL_KEY, etcd.data[POOL_KEY].value)
        etcd.before_txn = interfere

    etcd.before_txn = interfere
    with pytest.raises(RetriesExhaustedError, match="3 attempts"):
        await store.update(ippool(natOutgoing=True))


async def test_apply_creates_then_replaces(store: Store, etcd: FakeEtcd) -> None:
    a = await store.apply(ippool())
    b = await store.apply(ippool(natOutgoing=True))
    assert b.revision > a.revision
    assert stored(etcd)["metadata"]["uid"] == json.loads(a.raw)["metadata"]["uid"]


async def test_apply_with_version_of_deleted_resource_is_a_conflict(store: Store) -> None:
    res = (await store.create(ippool())).to_dict()
    await store.delete("IPPool", "pool-a")
    with pytest.raises(ConflictError, match="no longer exists"):
        await store.apply(res)


async def test_delete_cas_and_returns_last_value(store: Store, etcd: FakeEtcd) -> None:
    first = await store.create(ippool())
    await store.update(ippool(natOutgoing=True))
    with pytest.raises(ConflictError):
        await store.delete("IPPool", "pool-a", resource_version=str(first.revision))
    assert POOL_KEY in etcd.data
    last = etcd.data[POOL_KEY].mod_revision
    gone = await store.delete("ippools", "pool-a", resource_version=str(last))
    assert gone.revision == last and json.loads(gone.raw)["spec"]["natOutgoing"] is True
    assert POOL_KEY not in etcd.data
    with pytest.raises(NotFoundError):
        await store.delete("IPPool", "pool-a")


async def test_bad_resource_version_text_is_a_validation_error(store: Store) -> None:
    await store.create(ippool())
    with pytest.raises(ValidationError, match=r"metadata\.resourceVersion"):
        await store.delete("IPPool", "pool-a", resource_version="abc")


async def test_dry_run_writes_nothing(store: Store, etcd: FakeEtcd) -> None:
    res = await store.create(ippool(), dry_run=True)
    assert json.loads(res.raw)["spec"]["blockSize"] == 26
    assert etcd.writes == 0


async def test_list_across_namespaces_and_by_name_prefix(store: Store) -> None:
    for ns, name in [("a", "allow-dns"), ("a", "deny-all"), ("b", "allow-web")]:
        await store.create(netpol(name, ns))
    items, _ = await store.list("NetworkPolicy")
    assert [(r.namespace, r.name) for r in items] == [
        ("a", "allow-dns"), ("a", "deny-all"), ("b", "allow-web")
    ]
    items, _ = await store.list("networkpolicies", "a")
    assert [r.name for r in items] == ["allow-dns", "deny-all"]
    items, _ = await store.list("NetworkPolicy", all_namespaces=True, name_prefix="allow-")
    assert [(r.namespace, r.name) for r in items] == [("a", "allow-dns"), ("b", "allow-web")]
    items, _ = await store.list("NetworkPolicy", "a", name_prefix="deny")
    assert [r.name for r in items] == ["deny-all"]


async def test_namespace_defaults_to_default(store: Store, etcd: FakeEtcd) -> None:
    pol = netpol("p", "x")
    del pol["metadata"]["namespace"]
    res = await store.create(pol)
    assert res.namespace == "default"
    assert "/networkpolicies/default/p" in next(iter(etcd.data))


@pytest.mark.parametrize(
    "key",
    ["/calico/resources/v3/projectcalico.org/ippools/x", "/etc/passwd", "/calico/resources/"],
)
async def test_kv_api_stays_outside_resources(store: Store, key: str) -> None:
    with pytest.raises(ValidationError):
        await store.kv_get(key)
    with pytest.raises(ValidationError):
        await store.kv_txn([], [KVWrite(key, b"{}")])


@pytest.mark.parametrize("prefix", ["/calico/", "/calico/res", "/"])
async def test_kv_list_prefix_may_not_cover_resources(store: Store, prefix: str) -> None:
    with pytest.raises(ValidationError, match="/calico/"):
        await store.kv_list(prefix)


async def test_kv_txn_compare_zero_means_absent(store: Store) -> None:
    key = "/calico/ipam/v2/handle/h1"
    ok = await store.kv_txn([(key, 0)], [KVWrite(key, b'{"block":{}}')])
    assert ok.succeeded
    again = await store.kv_txn([(key, 0)], [KVWrite(key, b"{}")])
    assert not again.succeeded
    assert [kv.key for kv in again.current] == [key]
    assert again.current[0].mod_revision == ok.revision
    gone = await store.kv_txn([(key, ok.revision)], [KVWrite(key, delete=True)])
    assert gone.succeeded
    assert (await store.kv_get(key))[0] is None


async def test_writes_remember_their_traceparent(etcd: FakeEtcd) -> None:
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    traces = RevisionTraces(capacity=2)
    store = Store(etcd, traces=traces, traceparent=lambda: tp)  # type: ignore[arg-type]
    a = await store.create(ippool("a"))
    b = await store.create(ippool("b", "10.66.0.0/16"))
    c = await store.kv_txn([], [KVWrite("/calico/ipam/v2/x", b"{}")])
    assert traces.get(b.revision, POOL_KEY.replace("pool-a", "b")) == tp
    assert traces.get(c.revision, "/calico/ipam/v2/x") == tp
    assert traces.get(a.revision, POOL_KEY.replace("pool-a", "a")) == ""  # evicted: bounded
    assert len(traces) == 2


async def test_ensure_defaults_creates_once(store: Store, etcd: FakeEtcd) -> None:
    await store.ensure_defaults(calico_version="v3.30.0", cluster_type="calico-py")
    info_key = "/calico/resources/v3/projectcalico.org/clusterinformations/default"
    first = stored(etcd, info_key)
    assert first["spec"]["datastoreReady"] is True
    assert first["spec"]["calicoVersion"] == "v3.30.0"
    tier = stored(etcd, "/calico/resources/v3/projectcalico.org/tiers/default")
    assert tier["spec"]["order"] == 1000000
    await store.ensure_defaults(calico_version="v9", cluster_type="x")
    assert stored(etcd, info_key)["spec"]["clusterGUID"] == first["spec"]["clusterGUID"]


async def test_unknown_kind_is_a_validation_error(store: Store) -> None:
    with pytest.raises(ValidationError, match="kind"):
        await store.get("NoSuchKind", "x")
