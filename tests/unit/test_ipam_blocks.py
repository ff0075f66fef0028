"""The block model: Calico's JSON, ordinal order, the free FIFO, attributes, sequence numbers."""

from __future__ import annotations

import ipaddress
import json
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libcalico.errors import AlreadyExistsError, ConflictError, ValidationError
from services.ipam.blocks import Block, Handle, IPAMConfig, affinity_json, affinity_state

NET = ipaddress.ip_network("10.65.79.0/26")

# A block as Calico v3.2x writes it to etcd (field order and nulls as Go's encoding/json).
CALICO_BLOCK = {
    "cidr": "10.65.79.0/26",
    "affinity": "host:node-1",
    "allocations": [0, None, 1] + [None] * 61,
    "unallocated": [*range(3, 64), 1],
    "attributes": [
        {"handle_id": "k8s-pod-network.abc", "secondary": {"node": "node-1", "pod": "p"}},
        {"handle_id": "ipip-tunnel-addr-node-1", "secondary": {"node": "node-1",
                                                              "type": "ipipTunnelAddress"}},
    ],
    "sequenceNumber": 1700000000000000005,
    "sequenceNumberForAllocation": {"0": 1700000000000000000, "2": 1700000000000000003},
    "deleted": False,
}


def test_calico_json_round_trips_and_unknown_fields_survive() -> None:
    raw = dict(CALICO_BLOCK, affinityClaimTime="2024-05-01T10:00:00Z", futureField={"x": 1})
    b = Block.from_json(json.dumps(raw))
    assert b.host == "node-1"
    assert b.handle_of(0) == "k8s-pod-network.abc"
    assert b.handle_of(2) == "ipip-tunnel-addr-node-1"
    assert b.seq_of(2) == 1700000000000000003
    assert b.in_use() == 2
    assert json.loads(b.to_json()) == raw


def test_go_nulls_parse() -> None:
    raw = dict(CALICO_BLOCK, attributes=None, sequenceNumberForAllocation=None, affinity=None)
    raw["allocations"] = [None] * 64
    raw["unallocated"] = list(range(64))
    b = Block.from_json(json.dumps(raw))
    assert b.attributes == [] and b.seq_for_alloc == {} and b.host == ""


def test_legacy_host_affinity_field() -> None:
    raw = dict(CALICO_BLOCK, affinity=None, hostAffinity="old-node")
    assert Block.from_json(json.dumps(raw)).host == "old-node"


def test_bad_block_json_is_a_validation_error() -> None:
    with pytest.raises(ValidationError):
        Block.from_json('{"cidr": "nonsense"}')
    with pytest.raises(ValidationError):
        Block.from_json('{"cidr": "10.0.0.0/30", "allocations": [null]}')


def test_new_block_hands_out_dot_zero_first_with_block_mask() -> None:
    b = Block.new(NET, "node-1", now_ns=42)
    assert b.sequence_number == 42 and b.affinity == "host:node-1"
    ords = b.auto_assign(2, "h", {"node": "node-1"})
    assert ords == [0, 1]
    assert [b.ip_with_prefix(o) for o in ords] == ["10.65.79.0/26", "10.65.79.1/26"]
    assert b.attributes == [{"handle_id": "h", "secondary": {"node": "node-1"}}]
    assert b.seq_for_alloc == {"0": 42, "1": 42}
    b.bump()
    assert b.sequence_number == 43


def test_ipv6_block() -> None:
    b = Block.new(ipaddress.ip_network("fd00::/122"), "n")
    assert b.size == 64
    (o,) = b.auto_assign(1, "h", None)
    assert b.ip_with_prefix(o) == "fd00::/122"
    assert b.ip_to_ordinal(ipaddress.ip_address("fd00::3f")) == 63
    with pytest.raises(ValidationError):
        b.ip_to_ordinal(ipaddress.ip_address("fd00::40"))
    with pytest.raises(ValidationError):
        b.ip_to_ordinal(ipaddress.ip_address("10.0.0.1"))


def test_reserved_ordinals_are_skipped_and_keep_their_place() -> None:
    b = Block.new(NET, "n")
    reserved = {0, 1, 5}
    ords = b.auto_assign(4, "h", None, reserved.__contains__)
    assert ords == [2, 3, 4, 6]
    assert b.unallocated[:3] == [0, 1, 5]
    assert b.num_free(reserved.__contains__) == 64 - 4 - 3


def test_attributes_are_shared_per_handle_and_dropped_when_unused() -> None:
    b = Block.new(NET, "n")
    b.auto_assign(2, "a", {"node": "n"})
    b.auto_assign(1, "b", {"node": "n"})
    b.auto_assign(1, "a", {"node": "n"})
    assert len(b.attributes) == 2
    assert b.handles() == {"a": 3, "b": 1}
    assert b.release_by_handle("a") == [0, 1, 3]
    assert b.attributes == [{"handle_id": "b", "secondary": {"node": "n"}}]
    assert b.allocations[2] == 0


def test_assign_specific_ordinal() -> None:
    b = Block.new(NET, "n")
    b.assign(10, "h", None)
    assert 10 not in b.unallocated and b.handle_of(10) == "h"
    with pytest.raises(AlreadyExistsError):
        b.assign(10, "h2", None)


def test_release_checks_handle_and_sequence_number() -> None:
    b = Block.new(NET, "n", now_ns=100)
    b.auto_assign(1, "h", None)
    with pytest.raises(ConflictError):
        b.release([(0, None, 99)])
    with pytest.raises(ConflictError):
        b.release([(0, "other", None)])
    missing, by_handle = b.release([(0, "h", 100), (0, "h", 100), (7, None, None)])
    assert missing == [7] and by_handle == {"h": 1}
    assert b.unallocated[-1] == 0 and b.empty()


def test_handle_and_affinity_and_config_json() -> None:
    h = Handle.from_json('{"block":{"10.65.79.0/26":2},"deleted":false}')
    h.remove("10.65.79.0/26", 1)
    h.add("fd00::/122", 1)
    assert json.loads(h.to_json()) == {
        "block": {"10.65.79.0/26": 1, "fd00::/122": 1},
        "deleted": False,
    }
    h.remove("10.65.79.0/26", 5)
    assert h.blocks == {"fd00::/122": 1}
    assert json.loads(affinity_json("confirmed")) == {"state": "confirmed", "deleted": False}
    assert affinity_state(b'{"state":"pending","deleted":false}') == "pending"
    assert affinity_state(b"{}") == "confirmed"
    cfg = IPAMConfig.from_json('{"strict_affinity":true,"maxBlocksPerHost":4}')
    assert cfg.strict_affinity and not cfg.auto_allocate_blocks and cfg.max_blocks_per_host == 4
    assert IPAMConfig().auto_allocate_blocks
    assert json.loads(IPAMConfig(max_blocks_per_host=3).to_json()) == {
        "auto_allocate_blocks": True,
        "maxBlocksPerHost": 3,
    }


@pytest.mark.parametrize(
    ("glob", "req", "want"), [(0, 0, 20), (5, 0, 5), (0, 7, 7), (5, 7, 5), (9, 7, 7)]
)
def test_effective_max_blocks(glob: int, req: int, want: int) -> None:
    assert IPAMConfig(max_blocks_per_host=glob).effective_max_blocks(req) == want


# -- properties -------------------------------------------------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.integers(1, 9), st.sampled_from(["a", "b", "c"])),
        st.tuples(st.just("release"), st.integers(0, 63), st.none()),
        st.tuples(st.just("release_handle"), st.just(0), st.sampled_from(["a", "b", "c"])),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(ops, st.frozensets(st.integers(0, 63), max_size=6))
def test_allocate_release_never_double_allocates_and_is_fifo(
    sequence: list[tuple[str, int, str | None]], reserved: frozenset[int]
) -> None:
    block = Block.new(NET, "n", now_ns=1)
    model: deque[int] = deque(range(64))  # the FIFO as a reference model
    owner: dict[int, str] = {}
    pred = reserved.__contains__ if reserved else None
    for op, n, handle in sequence:
        if op == "alloc":
            assert handle is not None
            want = [o for o in model if o not in reserved][:n]
            got = block.auto_assign(n, handle, {"node": "n"}, pred)
            assert got == want  # head of the FIFO, reserved skipped, order kept
            for o in got:
                assert o not in owner  # never handed out twice
                model.remove(o)
                owner[o] = handle
        elif op == "release":
            missing, counts = block.release([(n, None, None)])
            if n in owner:
                assert missing == [] and counts == {owner.pop(n): 1}
                model.append(n)  # released ordinals go to the tail
            else:
                assert missing == [n]
        else:
            assert handle is not None
            freed = block.release_by_handle(handle)
            assert sorted(freed) == sorted(o for o, h in owner.items() if h == handle)
            for o in freed:
                del owner[o]
                model.append(o)
        block.bump()
        # Invariants: allocations and the free list partition the block; attributes are all
        # referenced and every allocation's handle is what we recorded.
        assert list(block.unallocated) == list(model)
        assert sorted(block.unallocated + list(block.allocated_ordinals())) == list(range(64))
        used = {a for a in block.allocations if a is not None}
        assert used == set(range(len(block.attributes)))
        assert {o: block.handle_of(o) for o in block.allocated_ordinals()} == owner
        assert set(block.seq_for_alloc) == {str(o) for o in owner}
    again = Block.from_json(block.to_json())
    assert again.to_dict() == block.to_dict()


copy_ops = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.integers(1, 3), st.sampled_from(["a", "b", "ü", None])),
        st.tuples(st.just("assign"), st.integers(0, 63), st.sampled_from(["a", "c", None])),
        st.tuples(st.just("release_handle"), st.just(0), st.sampled_from(["a", "b", "ü"])),
        st.tuples(st.just("copy"), st.just(0), st.none()),
        st.tuples(st.just("encode"), st.just(0), st.none()),
    ),
    max_size=60,
)


def _plain(block: Block) -> bytes:
    return json.dumps(block.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()


@settings(max_examples=200, deadline=None)
@given(copy_ops, st.sampled_from([None, "node-1", 'nödé "q"']), st.booleans())
def test_to_json_is_compact_utf8_json_of_to_dict_across_copies(
    sequence: list[tuple[str, int, str | None]], host: str | None, extra: bool
) -> None:
    # Whatever the history of allocations, assignments, releases and copies, the bytes are
    # the plain compact UTF-8 JSON of to_dict() (what json.dumps gives), and copies share
    # nothing that a later change to one of them could disturb.
    block = Block.new(NET, host, now_ns=1)
    if extra:
        block.extra["futureField"] = {"x": [1, None]}
    superseded: list[tuple[Block, bytes]] = []  # each block a copy replaced, as it was then
    for op, n, handle in sequence:
        if op == "alloc":
            block.auto_assign(n, handle, {"node": "n", "ns": handle or ""} if handle else None)
        elif op == "assign":
            if block.allocations[n] is None:
                block.assign(n, handle, {"node": "n"})
        elif op == "release_handle":
            assert handle is not None
            block.release_by_handle(handle)
        elif op == "copy":
            superseded.append((block, block.to_json()))
            block = block.copy()
        elif op == "encode":
            assert block.to_json() == _plain(block)
        block.bump()
    assert block.to_json() == _plain(block)
    for old, then in superseded:  # changing a copy never changed what it was copied from
        assert old.to_json() == then
