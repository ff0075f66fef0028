"""The allocator against the in-memory KV fake: Calico's algorithm and our transaction shape."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libcalico import keys
from libcalico.errors import (
    AlreadyExistsError,
    ConflictError,
    NotFoundError,
    ResourceExhaustedError,
    RetriesExhaustedError,
    ValidationError,
)
from services.ipam.allocator import (
    Allocator,
    AutoAssignArgs,
    AutoAssignResult,
    ReleaseOptions,
    ResourceCache,
)
from services.ipam.blocks import Block, Handle
from services.ipam.kvstore import KVResourceStore, MemoryKVStore, Op, TxnResult


@dataclass
class Env:
    kv: MemoryKVStore
    rs: KVResourceStore
    alloc: Allocator

    def pool(self, name: str, cidr: str, **spec: Any) -> None:
        self.rs.put_resource(
            {
                "apiVersion": "projectcalico.org/v3",
                "kind": "IPPool",
                "metadata": {"name": name},
                "spec": {"cidr": cidr, **spec},
            }
        )

    def node(self, name: str, labels: dict[str, str] | None = None, **spec: Any) -> None:
        self.rs.put_resource(
            {
                "apiVersion": "projectcalico.org/v3",
                "kind": "Node",
                "metadata": {"name": name, "labels": labels or {}},
                "spec": spec,
            }
        )

    def block(self, cidr: str) -> Block:
        return Block.from_json(self.kv.data[keys.block_key(ipaddress.ip_network(cidr))].value)

    def blocks(self) -> list[Block]:
        return [
            Block.from_json(kv.value)
            for k, kv in sorted(self.kv.data.items())
            if k.startswith(keys.BLOCK_PREFIX)
        ]

    def handle(self, hid: str) -> dict[str, Any] | None:
        kv = self.kv.data.get(keys.handle_key(hid))
        return None if kv is None else json.loads(kv.value)

    def new_allocator(self) -> Allocator:
        return Allocator(self.kv, ResourceCache(self.rs, max_age=0))


def make_env(kv: MemoryKVStore | None = None) -> Env:
    kv = kv or MemoryKVStore()
    rs = KVResourceStore(kv)
    return Env(kv, rs, Allocator(kv, ResourceCache(rs, max_age=0)))


def a4(node: str, handle: str, n: int = 1, **kw: Any) -> AutoAssignArgs:
    return AutoAssignArgs(node=node, num4=n, handle=handle, attrs={"node": node}, **kw)


def allocated(env: Env) -> dict[str, tuple[str | None, str]]:
    """Every allocated IP -> (handle, block host), straight from the store."""
    out: dict[str, tuple[str | None, str]] = {}
    for b in env.blocks():
        for o in b.allocated_ordinals():
            ip = str(b.ordinal_to_ip(o))
            assert ip not in out, f"{ip} allocated twice"
            out[ip] = (b.handle_of(o), b.host)
    return out


def assert_handles_consistent(env: Env) -> None:
    """Handles count exactly the addresses blocks hold for them."""
    want: dict[str, dict[str, int]] = {}
    for b in env.blocks():
        for h, n in b.handles().items():
            want.setdefault(h, {})[str(b.cidr)] = n
    have = {
        keys.parse_handle_key(k): json.loads(kv.value)["block"]
        for k, kv in env.kv.data.items()
        if k.startswith(keys.HANDLE_PREFIX)
    }
    assert have == want


async def test_first_allocation_claims_a_block_and_writes_calicos_objects() -> None:
    env = make_env()
    env.pool("default-ipv4-ippool", "192.168.0.0/16")
    res = await env.alloc.auto_assign(a4("node-1", "k8s-pod-network.c1"))
    (ip,) = res.ipv4
    assert ip.endswith("/26")
    block_cidr = ipaddress.ip_interface(ip).network
    assert ip == f"{block_cidr.network_address}/26"  # a new block hands out .0 first
    b = env.block(str(block_cidr))
    assert b.host == "node-1" and b.affinity_claim_time
    assert b.attributes == [{"handle_id": "k8s-pod-network.c1", "secondary": {"node": "node-1"}}]
    aff = env.kv.data[keys.affinity_key("node-1", block_cidr)]
    assert json.loads(aff.value) == {"state": "confirmed", "deleted": False}
    assert env.handle("k8s-pod-network.c1") == {"block": {str(block_cidr): 1}, "deleted": False}
    # Block, affinity and handle were written by the same transaction.
    assert aff.mod_revision == env.kv.data[keys.block_key(block_cidr)].mod_revision


async def test_steady_state_allocation_is_one_transaction_and_no_read() -> None:
    env = make_env()
    env.pool("p", "10.0.0.0/16")
    env.alloc.resources.max_age = 60
    await env.alloc.auto_assign(a4("n1", "h0"))
    reads, txns = env.kv.reads, env.kv.txns
    for i in range(20):
        await env.alloc.auto_assign(a4("n1", f"h{i + 1}"))
    assert env.kv.txns - txns == 20
    assert env.kv.reads - reads == 0
    assert env.kv.failed_txns == 0


async def test_a_handle_another_allocator_wrote_shares_its_attribute_entry() -> None:
    # A handle this allocator has not seen is taken to be new (no attribute entry to look
    # for). When another process already gave it an address in the same block, the
    # handle's compare fails, and the retry finds and reuses the existing entry.
    env = make_env()
    env.pool("p", "10.0.0.0/26")
    await env.alloc.auto_assign(a4("n", "h"))
    other = env.new_allocator()
    failed = env.kv.failed_txns
    await other.auto_assign(a4("n", "h"))
    assert env.kv.failed_txns == failed + 1
    block = env.blocks()[0]
    assert block.attributes == [{"handle_id": "h", "secondary": {"node": "n"}}]
    assert env.handle("h") == {"block": {"10.0.0.0/26": 2}, "deleted": False}
    assert_handles_consistent(env)


async def test_the_one_address_shortcut_writes_what_the_general_path_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One address for a new handle into a cached affine block skips building a plan; the
    # store must end up exactly as when every request takes the general path.
    answered = 0

    async def run(shortcut: bool) -> tuple[list[str], dict[str, bytes]]:
        env = make_env()
        env.pool("p", "10.0.0.0/24")
        env.pool("q", "10.1.0.0/24")
        serve = env.alloc._assign_batch

        async def counted(node: str, args: AutoAssignArgs) -> AutoAssignResult | None:
            nonlocal answered
            served = await serve(node, args) if shortcut else None
            answered += served is not None
            return served

        monkeypatch.setattr(env.alloc, "_assign_batch", counted)
        ips: list[str] = []
        for i in range(150):  # across blocks, both pools, a release and a shared handle
            pool = ["p"] if i % 3 else ["q"]
            handle = "shared" if i % 50 == 7 else f"h{i}"
            ips += (await env.alloc.auto_assign(a4("n", handle, ipv4_pools=pool))).ipv4
            if i == 40:
                await env.alloc.release_by_handle("h1")
        data = {k: kv.value for k, kv in env.kv.data.items() if k.startswith("/calico/ipam/")}
        return ips, data

    fast_ips, fast = await run(True)
    assert answered > 100  # all but block claims, known handles and the first of each pool
    slow_ips, slow = await run(False)
    assert fast_ips == slow_ips
    assert fast.keys() == slow.keys()
    for key in fast:  # a block's clock-seeded numbers: compare them relative to its latest
        a, b = json.loads(fast[key]), json.loads(slow[key])
        for doc in (a, b):
            doc.pop("affinityClaimTime", None)
            if "sequenceNumber" in doc:
                last = doc.pop("sequenceNumber")
                doc["sequenceNumberForAllocation"] = {
                    o: last - n for o, n in doc["sequenceNumberForAllocation"].items()
                }
        assert a == b, key


async def test_dual_stack_and_pool_names_or_cidrs() -> None:
    env = make_env()
    env.pool("v4", "10.0.0.0/24")
    env.pool("v6", "2001:db8::/120")
    res = await env.alloc.auto_assign(
        AutoAssignArgs(
            node="n", num4=1, num6=2, handle="h", ipv4_pools=["v4"], ipv6_pools=["2001:db8::1/120"]
        )
    )
    assert len(res.ipv4) == 1 and len(res.ipv6) == 2
    assert all(ip.endswith("/122") for ip in res.ipv6)
    assert sum(env.handle("h")["block"].values()) == 3  # type: ignore[index]


async def test_free_ordinals_are_reused_fifo() -> None:
    env = make_env()
    env.pool("p", "10.0.0.0/26")
    first = [(await env.alloc.auto_assign(a4("n", f"h{i}"))).ipv4[0] for i in range(3)]
    await env.alloc.release_by_handle("h0")
    nxt = (await env.alloc.auto_assign(a4("n", "h3"))).ipv4[0]
    assert nxt.startswith("10.0.0.3/")  # the freed .0 waits at the tail
    assert first[0].startswith("10.0.0.0/")


async def test_lowest_affine_block_with_room_is_used_even_after_many_filled() -> None:
    env = make_env()
    env.pool("p", "10.0.0.0/24", blockSize=28)  # 16 addresses a block
    got = (await env.alloc.auto_assign(a4("n", "h", n=40))).ipv4  # fills 2 blocks, part of 3
    first_block = ipaddress.ip_interface(got[0]).network
    freed = got[3].split("/")[0]
    await env.alloc.release_ips([ReleaseOptions(freed)])
    again = (await env.alloc.auto_assign(a4("n", "h2"))).ipv4[0].split("/")[0]
    assert again == freed  # back in the first block, not the third
    # Another allocator (no cache) releasing in the first block: seen on a fresh read.
    other = env.new_allocator()
    await other.release_ips([ReleaseOptions(got[5].split("/")[0])])
    nxt = (await env.alloc.auto_assign(a4("n", "h3"))).ipv4[0]
    assert ipaddress.ip_interface(nxt).network != first_block  # stale cache: still "full"
    await env.alloc._list_blocks(4)  # a refresh (as the claim step does) shows the room
    (last,) = (await env.alloc.auto_assign(a4("n", "h4"))).ipv4
    assert last.split("/")[0] == got[5].split("/")[0]


async def test_an_allocation_looks_at_one_block_however_many_are_full() -> None:
    # Either path starts its walk after the node's leading full blocks, also when they were
    # claimed beforehand (so no allocation takes the general path's claim step).
    env = make_env()
    env.pool("p", "10.0.0.0/22", blockSize=28)  # 16 addresses a block
    env.alloc.resources.max_age = 60
    await env.alloc.claim_affinity("10.0.0.0/23", "n")
    for i in range(30 * 16 + 3):
        await env.alloc.auto_assign(a4("n", f"h{i}"))

    class Counting(dict):  # type: ignore[type-arg]
        looked = 0

        def get(self, key: object, default: object = None) -> object:
            Counting.looked += 1
            return super().get(key, default)

    env.alloc._blocks = Counting(env.alloc._blocks)
    await env.alloc.auto_assign(a4("n", "one-more"))
    assert Counting.looked <= 2


async def test_claiming_a_block_reads_block_keys_not_contents() -> None:
    lists: list[tuple[str, bool]] = []

    class Recording(MemoryKVStore):
        async def list(self, prefix: str, keys_only: bool = False) -> Any:
            lists.append((prefix, keys_only))
            return await super().list(prefix, keys_only)

    env = make_env(Recording())
    env.pool("p", "10.0.0.0/16", blockSize=28)
    for i in range(8):  # other nodes' blocks, full of attributes
        await env.alloc.auto_assign(a4(f"other{i}", f"o{i}", n=16))
    lists.clear()
    await env.alloc.auto_assign(a4("n", "h", n=40))  # claims three blocks
    block_lists = [keys_only for prefix, keys_only in lists if prefix.startswith(
        keys.BLOCK_PREFIX)]
    assert block_lists and all(block_lists)


async def test_exhaustion_names_the_pools_and_rolls_back() -> None:
    env = make_env()
    env.pool("tiny", "10.0.0.0/30", blockSize=30)
    with pytest.raises(ResourceExhaustedError, match=r"tiny \(10\.0\.0\.0/30\)"):
        await env.alloc.auto_assign(a4("n", "h", n=5))
    assert allocated(env) == {}  # all-or-nothing
    assert env.handle("h") is None


async def test_no_pool_at_all() -> None:
    env = make_env()
    with pytest.raises(ResourceExhaustedError, match="no enabled IPv4 pool selects node n"):
        await env.alloc.auto_assign(a4("n", "h"))
    env.pool("late", "10.0.0.0/24")  # created after: the next request sees it at once
    env.alloc.resources.max_age = 3600
    assert (await env.alloc.auto_assign(a4("n", "h"))).ipv4


async def test_strict_affinity_never_borrows_and_non_strict_does() -> None:
    env = make_env()
    env.pool("p", "10.0.0.0/26")  # a single block
    await env.alloc.auto_assign(a4("owner", "h-owner"))
    await env.alloc.set_config(strict_affinity=True)
    with pytest.raises(ResourceExhaustedError, match="StrictAffinity is true"):
        await env.alloc.auto_assign(a4("other", "h-other"))
    await env.alloc.set_config(strict_affinity=False)
    (ip,) = (await env.alloc.auto_assign(a4("other", "h-other"))).ipv4
    assert allocated(env)[ip.split("/")[0]] == ("h-other", "owner")  # borrowed


async def test_max_blocks_per_host_gives_a_clear_error() -> None:
    env = make_env()
    env.pool("p", "10.0.0.0/24", blockSize=28)
    await env.alloc.set_config(strict_affinity=True, max_blocks_per_host=2)
    await env.alloc.auto_assign(a4("n", "h", n=32))
    with pytest.raises(ResourceExhaustedError) as err:
        await env.alloc.auto_assign(a4("n", "h2"))
    msg = str(err.value)
    assert "MaxBlocksPerHost" in msg and "2" in msg and "--max-blocks-per-host" in msg
    # The request's own limit is used when it is stricter.
    with pytest.raises(ResourceExhaustedError, match="is 1"):
        await env.alloc.auto_assign(a4("m", "h3", n=17, max_blocks_per_host=1))


async def test_default_limit_is_twenty_blocks() -> None:
    env = make_env()
    env.pool("p", "10.0.0.0/16", blockSize=30)
    await env.alloc.auto_assign(a4("n", "h", n=80))
    with pytest.raises(ResourceExhaustedError, match="is 20"):
        await env.alloc.auto_assign(a4("n", "h2"))


async def test_auto_allocate_blocks_off_only_uses_existing_blocks() -> None:
    env = make_env()
    env.pool("p", "10.0.0.0/24")
    await env.alloc.set_config(strict_affinity=True, auto_allocate_blocks=False)
    with pytest.raises(ResourceExhaustedError, match="AutoAllocateBlocks is false"):
        await env.alloc.auto_assign(a4("n", "h"))


async def test_config_rules_are_calicos_and_unset_fields_are_kept() -> None:
    env = make_env()
    with pytest.raises(ValidationError, match="requires StrictAffinity"):
        await env.alloc.set_config(max_blocks_per_host=4)
    with pytest.raises(ValidationError, match="cannot disable StrictAffinity and AutoAlloc"):
        await env.alloc.set_config(auto_allocate_blocks=False)
    cfg = await env.alloc.set_config(strict_affinity=True, max_blocks_per_host=4)
    assert (cfg.strict_affinity, cfg.auto_allocate_blocks, cfg.max_blocks_per_host) == (
        True, True, 4)
    with pytest.raises(ValidationError, match="requires StrictAffinity"):
        await env.alloc.set_config(strict_affinity=False)  # would leave the limit without it
    cfg = await env.alloc.set_config(max_blocks_per_host=0)  # one field: the others stay
    assert (cfg.strict_affinity, cfg.auto_allocate_blocks, cfg.max_blocks_per_host) == (
        True, True, 0)
    stored, _ = await env.alloc.get_config()
    assert stored == cfg
    with pytest.raises(ValidationError, match="negative"):
        await env.alloc.set_config(max_blocks_per_host=-1)


async def test_reserved_addresses_are_never_handed_out() -> None:
    env = make_env()
    env.pool("p", "10.0.0.0/28", blockSize=28)
    env.rs.put_resource(
        {
            "kind": "IPReservation",
            "metadata": {"name": "r"},
            "spec": {"reservedCIDRs": ["10.0.0.0/30", "10.0.0.9"]},
        }
    )
    res = await env.alloc.auto_assign(a4("n", "h", n=11))
    got = {ip.split("/")[0] for ip in res.ipv4}
    assert not got & {"10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.9"}
    with pytest.raises(ResourceExhaustedError):
        await env.alloc.auto_assign(a4("n", "h2"))


async def test_node_selector_disabled_and_allowed_uses() -> None:
    env = make_env()
    env.node("a", {"zone": "a"})
    env.node("b", {"zone": "b"})
    env.pool("za", "10.1.0.0/24", nodeSelector="zone == 'a'")
    env.pool("zb", "10.2.0.0/24", nodeSelector="zone == 'b'")
    env.pool("off", "10.3.0.0/24", disabled=True)
    env.pool("tun", "10.4.0.0/24", allowedUses=["Tunnel"])
    (ipa,) = (await env.alloc.auto_assign(a4("a", "ha"))).ipv4
    (ipb,) = (await env.alloc.auto_assign(a4("b", "hb"))).ipv4
    assert ipa.startswith("10.1.") and ipb.startswith("10.2.")
    tun = await env.alloc.auto_assign(a4("b", "ht", use="Tunnel", ipv4_pools=["tun"]))
    assert tun.ipv4[0].startswith("10.4.")
    with pytest.raises(ResourceExhaustedError, match="allows use Workload"):
        await env.alloc.auto_assign(a4("b", "hx", ipv4_pools=["tun"]))
    with pytest.raises(ValidationError, match="does not exist, or is not enabled"):
        await env.alloc.auto_assign(a4("b", "hx", ipv4_pools=["off"]))


async def test_release_ips_with_stale_sequence_number_is_refused() -> None:
    env = make_env()
    env.pool("p", "10.0.0.0/24")
    (ip,) = (await env.alloc.auto_assign(a4("n", "h"))).ipv4
    ip = ip.split("/")[0]
    a = await env.alloc.get_assignment(ip)
    assert a.allocated and a.handle == "h" and a.attrs == {"node": "n"}
    with pytest.raises(ConflictError):
        await env.alloc.release_ips([ReleaseOptions(ip, "h", a.sequence_number + 1)])
    assert await env.alloc.release_ips([ReleaseOptions(ip, "h", a.sequence_number)]) == []
    assert env.handle("h") is None
    assert await env.alloc.release_ips([ReleaseOptions(ip)]) == [ip]
    assert await env.alloc.release_ips([ReleaseOptions("172.16.0.1")]) == ["172.16.0.1"]
    assert not (await env.alloc.get_assignment(ip)).allocated


async def test_release_by_handle_is_idempotent_and_deletes_the_handle() -> None:
    env = make_env()
    env.pool("p", "10.0.0.0/24")
    env.pool("v6", "fd00::/120")
    res = await env.alloc.auto_assign(
        AutoAssignArgs(node="n", num4=2, num6=1, handle="h", attrs={"node": "n"})
    )
    released = await env.alloc.release_by_handle("h")
    assert sorted(released) == sorted(ip.split("/")[0] for ip in res.ipv4 + res.ipv6)
    assert env.handle("h") is None and allocated(env) == {}
    assert await env.alloc.release_by_handle("h") == []
    assert await env.alloc.release_by_handle("never-existed") == []
    # The now-empty blocks keep their affinity (GC releases those).
    assert len(env.blocks()) == 2


async def test_empty_borrowed_block_without_affinity_is_deleted_on_release() -> None:
    env = make_env()
    env.pool("p", "10.0.0.0/26")
    await env.alloc.auto_assign(a4("owner", "h1"))
    assert await env.alloc.release_affinity("owner", "10.0.0.0/26") == ["10.0.0.0/26"]
    assert env.block("10.0.0.0/26").affinity is None  # in use: kept without affinity
    await env.alloc.release_by_handle("h1")
    assert env.blocks() == []


async def test_assign_ip_and_duplicate() -> None:
    env = make_env()
    env.pool("p", "10.0.0.0/24")
    assert await env.alloc.assign_ip("10.0.0.77", "h", {"node": "n"}, "n") == "10.0.0.77"
    assert env.block("10.0.0.64/26").host == "n"
    with pytest.raises(AlreadyExistsError):
        await env.alloc.assign_ip("10.0.0.77", "h2", {}, "n")
    with pytest.raises(ValidationError, match="no enabled IP pool"):
        await env.alloc.assign_ip("11.0.0.1", "h", {}, "n")
    await env.alloc.set_config(strict_affinity=True)
    with pytest.raises(ValidationError, match="StrictAffinity"):
        await env.alloc.assign_ip("10.0.0.78", "h", {}, "other")


async def test_claim_and_release_affinity() -> None:
    env = make_env()
    env.pool("p", "10.0.0.0/24")
    claimed, failed = await env.alloc.claim_affinity("10.0.0.0/25", "n")
    assert claimed == ["10.0.0.0/26", "10.0.0.64/26"] and failed == []
    assert (await env.alloc.claim_affinity("10.0.0.0/26", "other")) == ([], ["10.0.0.0/26"])
    assert (await env.alloc.claim_affinity("10.0.0.0/26", "n")) == (["10.0.0.0/26"], [])
    (ip,) = (await env.alloc.auto_assign(a4("n", "h"))).ipv4
    assert ip.startswith("10.0.0.0/")  # the claimed block is used before any new one
    released = await env.alloc.release_affinity("n")  # node-wide: empty blocks only
    assert released == ["10.0.0.64/26"]
    assert [b.cidr for b in env.blocks()] == [ipaddress.ip_network("10.0.0.0/26")]
    with pytest.raises(NotFoundError):
        await env.alloc.release_affinity("n", "10.0.0.128/26")


async def test_pending_affinity_left_by_another_writer_is_completed() -> None:
    env = make_env()
    env.pool("p", "10.0.0.0/26")
    net = ipaddress.ip_network("10.0.0.0/26")
    env.kv.put_json(keys.affinity_key("n", net), {"state": "pending", "deleted": False})
    (ip,) = (await env.alloc.auto_assign(a4("n", "h"))).ipv4
    assert ip == "10.0.0.0/26"
    aff = json.loads(env.kv.data[keys.affinity_key("n", net)].value)
    assert aff["state"] == "confirmed"


async def test_empty_block_of_another_node_is_reclaimed_after_a_minute() -> None:
    env = make_env()
    env.pool("p", "10.0.0.0/26")
    await env.alloc.auto_assign(a4("old", "h"))
    await env.alloc.release_by_handle("h")
    with pytest.raises(ResourceExhaustedError):
        await env.alloc.set_config(strict_affinity=True)
        await env.alloc.auto_assign(a4("new", "h2"))
    env.alloc.wall_clock = lambda: 4_000_000_000.0  # much later
    await env.alloc.auto_assign(a4("new", "h2"))
    assert env.block("10.0.0.0/26").host == "new"
    assert keys.affinity_key("old", ipaddress.ip_network("10.0.0.0/26")) not in env.kv.data


class AlwaysConflict(MemoryKVStore):
    async def txn(self, compares: Sequence[tuple[str, int]], ops: Sequence[Op]) -> TxnResult:
        self.revision += 1  # someone else always got there first
        return TxnResult(False, self.revision, [])


async def test_bounded_retries() -> None:
    env = make_env(AlwaysConflict())
    env.pool("p", "10.0.0.0/24")
    env.alloc.retries = 5
    with pytest.raises(RetriesExhaustedError, match="5 compare-and-swap conflicts"):
        await env.alloc.auto_assign(a4("n", "h"))


class Interleaving(MemoryKVStore):
    """Yields to other tasks inside every call, so concurrent allocators really race."""

    async def get(self, key: str) -> Any:
        await asyncio.sleep(0)
        return await super().get(key)

    async def list(self, prefix: str, keys_only: bool = False) -> Any:
        await asyncio.sleep(0)
        return await super().list(prefix, keys_only)

    async def txn(self, compares: Sequence[tuple[str, int]], ops: Sequence[Op]) -> TxnResult:
        await asyncio.sleep(0)
        return await super().txn(compares, ops)


async def test_many_allocators_on_shared_nodes_never_double_allocate() -> None:
    env = make_env(Interleaving())
    env.pool("p", "10.0.0.0/22")
    allocators = [env.new_allocator() for _ in range(4)]  # four "processes"

    async def worker(i: int) -> list[str]:
        out = []
        for j in range(40):
            node = f"node-{(i + j) % 2}"
            res = await allocators[i].auto_assign(a4(node, f"w{i}-{j}"))
            out.extend(res.ipv4)
        return out

    results = await asyncio.gather(*(worker(i) for i in range(4)))
    ips = [ip for r in results for ip in r]
    assert len(ips) == len(set(ips)) == 160
    assert len(allocated(env)) == 160
    assert env.kv.failed_txns > 0  # they did race
    assert_handles_consistent(env)
    for b in env.blocks():
        for o in b.allocated_ordinals():
            node = (b.attribute_of(o) or {})["secondary"]["node"]
            assert node == b.host  # nobody needed to borrow


async def test_service_rollback_on_second_family_failure() -> None:
    env = make_env()
    env.pool("v4", "10.0.0.0/24")
    env.pool("v6", "fd00::/126", blockSize=126)
    with pytest.raises(ResourceExhaustedError, match="IPv6"):
        await env.alloc.auto_assign(
            AutoAssignArgs(node="n", num4=1, num6=5, handle="h", attrs={"node": "n"})
        )
    assert allocated(env) == {} and env.handle("h") is None


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["alloc", "release_handle", "release_ip"]),
            st.integers(0, 2),  # node
            st.integers(1, 5),  # count
            st.integers(0, 7),  # handle index
        ),
        max_size=40,
    )
)
def test_random_sequences_keep_blocks_and_handles_consistent(
    sequence: list[tuple[str, int, int, int]],
) -> None:
    async def run() -> None:
        env = make_env()
        env.pool("p", "10.0.0.0/25", blockSize=28)
        live: dict[str, str] = {}  # ip -> handle
        for op, node, n, h in sequence:
            handle = f"h{h}"
            if op == "alloc":
                try:
                    res = await env.alloc.auto_assign(a4(f"n{node}", handle, n=n))
                except ResourceExhaustedError:
                    continue
                for ip in res.ipv4:
                    addr = ip.split("/")[0]
                    assert addr not in live
                    live[addr] = handle
            elif op == "release_handle":
                for addr in await env.alloc.release_by_handle(handle):
                    assert live.pop(addr) == handle
                assert handle not in live.values()
            elif live:
                addr = sorted(live)[n % len(live)]
                assert await env.alloc.release_ips([ReleaseOptions(addr)]) == []
                del live[addr]
            assert {ip: h for ip, (h, _) in allocated(env).items()} == live
            assert_handles_consistent(env)

    asyncio.run(run())


def test_handle_model_ignores_unknown() -> None:
    h = Handle.from_json('{"block":{},"deleted":false,"x":1}')
    assert h.empty() and json.loads(h.to_json())["x"] == 1


class GatedKV(MemoryKVStore):
    """A memory store whose transactions wait at ``gate`` while it is closed (so requests
    queue behind one in flight, as they do against a real etcd), and fail with ``error``
    from the ``fail_from``-th transaction started on."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = 0
        self.error: Exception | None = None
        self.fail_from = 0

    async def txn(self, compares: Sequence[tuple[str, int]], ops: Sequence[Op]) -> TxnResult:
        n = self.started
        self.started += 1
        await self.gate.wait()
        if self.error is not None and n >= self.fail_from:
            raise self.error
        return await super().txn(compares, ops)


async def _gated_env() -> tuple[Env, GatedKV]:
    """A node with its block claimed, on a gated store."""
    kv = GatedKV()
    env = make_env(kv)
    env.pool("p", "10.0.0.0/24")
    env.alloc.resources.max_age = 60
    await env.alloc.auto_assign(a4("n", "h-first"))
    return env, kv


async def _queue_behind_one_in_flight(
    env: Env, kv: GatedKV, requests: Sequence[AutoAssignArgs]
) -> tuple[asyncio.Task[AutoAssignResult], list[asyncio.Task[AutoAssignResult]]]:
    """Start ``requests`` while a first request on the same node is mid-transaction; the
    gate stays closed until the caller opens it."""
    kv.gate.clear()
    first = asyncio.create_task(env.alloc.auto_assign(a4("n", "in-flight")))
    await asyncio.sleep(0)
    tasks = [asyncio.create_task(env.alloc.auto_assign(r)) for r in requests]
    for _ in range(5):
        await asyncio.sleep(0)
    return first, tasks


async def test_queued_single_address_requests_share_one_block_write() -> None:
    env, kv = await _gated_env()
    txns = kv.txns
    first, tasks = await _queue_behind_one_in_flight(
        env, kv, [a4("n", f"pod{i}") for i in range(10)]
    )
    kv.gate.set()
    ips = [(await t).ipv4[0] for t in (first, *tasks)]
    assert kv.txns - txns == 2  # the one in flight, then all ten queued behind it together
    # First come, first served, from the block's free list in order.
    assert [ipaddress.ip_interface(ip).ip for ip in ips] == [
        ipaddress.ip_address(f"10.0.0.{i}") for i in range(1, 12)
    ]
    for i in range(10):
        assert env.handle(f"pod{i}") == {"block": {"10.0.0.0/26": 1}, "deleted": False}
    assert_handles_consistent(env)


async def test_a_batch_takes_what_the_block_holds_and_the_rest_go_their_own_way() -> None:
    kv = GatedKV()
    env = make_env(kv)
    env.pool("p", "10.0.0.0/24", blockSize=28)  # 16 addresses a block
    env.pool("q", "10.1.0.0/24")
    env.alloc.resources.max_age = 60
    known = (await env.alloc.auto_assign(a4("n", "known", n=12))).ipv4
    first_block = ipaddress.ip_interface(known[0]).network  # 3 left after the one in flight
    requests = [
        *(a4("n", f"pod{i}") for i in range(6)),  # 3 fit the block; 3 need a new one
        a4("n", "known"),  # a handle holding addresses already: the general path
        a4("n", "pod0"),  # the same handle twice in the queue
        a4("n", "other-pool", ipv4_pools=["q"]),  # other pools: not in this batch
        AutoAssignArgs(node="n", num4=1, num6=0, handle=None),  # no handle: general path
    ]
    # Behind the batch's first request, a handle no key can hold: an error for it alone.
    queue = [requests[0], a4("n", "bad/handle"), *requests[1:]]
    first, tasks = await _queue_behind_one_in_flight(env, kv, queue)
    kv.gate.set()
    await first
    with pytest.raises(ValidationError, match="bad/handle"):
        await tasks[1]
    results = [await t for t in (tasks[0], *tasks[2:])]
    got = allocated(env)  # asserts no address is handed out twice
    assert len(got) == 12 + 1 + len(requests)
    for r, res in zip(requests, results, strict=True):
        (ip,) = res.ipv4
        assert got[ip.split("/")[0]][0] == r.handle
    blocks = [ipaddress.ip_interface(res.ipv4[0]).network for res in results[:6]]
    assert blocks[:3] == [first_block] * 3  # the batch took what the block held
    assert first_block not in blocks[3:]
    assert results[-2].ipv4[0].startswith("10.1.0.")
    assert sum(env.handle("pod0")["block"].values()) == 2  # type: ignore[index]
    assert_handles_consistent(env)


async def test_when_a_batch_write_fails_every_request_in_it_gets_the_error() -> None:
    env, kv = await _gated_env()
    first, queued = await _queue_behind_one_in_flight(
        env, kv, [a4("n", f"pod{i}") for i in range(3)]
    )
    # The write in flight succeeds; the batch behind it meets a datastore that went away.
    kv.error, kv.fail_from = ConnectionError("etcd went away"), kv.started
    kv.gate.set()
    assert (await first).ipv4
    for t in queued:
        with pytest.raises(ConnectionError):
            await t
    assert [h for h in ("pod0", "pod1", "pod2") if env.handle(h)] == []


async def test_a_request_cancelled_in_the_queue_is_not_served() -> None:
    env, kv = await _gated_env()
    first, (gone, stays) = await _queue_behind_one_in_flight(
        env, kv, [a4("n", "gone"), a4("n", "stays")]
    )
    gone.cancel()
    kv.gate.set()
    await first
    assert (await stays).ipv4
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert env.handle("gone") is None
    assert env.alloc._waiting == {}
