"""Calico's IPAM block, handle, affinity and config objects, and their JSON.

A block is the unit of allocation and of compare-and-swap: one etcd key per block CIDR (/26
IPv4, /122 IPv6 by default) holding Calico's JSON::

    {"cidr": "10.65.79.0/26", "affinity": "host:node-1", "affinityClaimTime": "...",
     "allocations": [0, null, ...],      # ordinal -> index into attributes, null = free
     "unallocated": [1, 2, ...],         # free ordinals, a FIFO: allocate from the head,
                                         # released ordinals go to the tail
     "attributes": [{"handle_id": "net.cid", "secondary": {"node": ..., "timestamp": ...}}],
     "sequenceNumber": 1700000000000000000,   # bumped on every write
     "sequenceNumberForAllocation": {"0": 1700000000000000000},
     "deleted": false}

Everything here is pure and synchronous: the allocator copies a cached block, mutates the copy
through these methods and compare-and-swaps its JSON. Keys we do not understand are kept and
written back unchanged, so a block written by Calico's Go code round-trips.

Ordinal order is Calico's: a new block lists ordinals 0..N-1, so the first workload on a node
gets the block's ``.0`` address, and a released address is reused only after every other free
one (the FIFO is what gives freed addresses time to leave conntrack and iptables).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from libcalico import keys
from libcalico.errors import AlreadyExistsError, ConflictError, ValidationError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

AFFINITY_HOST = "host:"
STATE_PENDING = "pending"
STATE_CONFIRMED = "confirmed"
STATE_PENDING_DELETION = "pendingDeletion"

# Attribute keys Calico sets on allocations (libcalico-go model/block.go).
ATTR_NODE = "node"
ATTR_POD = "pod"
ATTR_NAMESPACE = "namespace"
ATTR_TYPE = "type"
ATTR_TIMESTAMP = "timestamp"

_BLOCK_FIELDS = (
    "cidr",
    "affinity",
    "affinityClaimTime",
    "allocations",
    "unallocated",
    "attributes",
    "sequenceNumber",
    "sequenceNumberForAllocation",
    "deleted",
)


def rfc3339_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class Block:
    """One allocation block. Mutating methods change this object only; nothing is written."""

    __slots__ = (
        "_cidr_text",
        "_key",
        "affinity",
        "affinity_claim_time",
        "allocations",
        "attributes",
        "base",
        "cidr",
        "deleted",
        "extra",
        "seq_for_alloc",
        "sequence_number",
        "unallocated",
    )

    def __init__(
        self,
        cidr: Network,
        *,
        affinity: str | None,
        allocations: list[int | None],
        unallocated: list[int],
        attributes: list[dict[str, Any]],
        sequence_number: int,
        seq_for_alloc: dict[str, int],
        deleted: bool = False,
        affinity_claim_time: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.cidr = cidr
        self.base = int(cidr.network_address)
        self._cidr_text = ""
        self._key = ""
        self.affinity = affinity
        self.affinity_claim_time = affinity_claim_time
        self.allocations = allocations
        self.unallocated = unallocated
        self.attributes = attributes
        self.sequence_number = sequence_number
        self.seq_for_alloc = seq_for_alloc
        self.deleted = deleted
        self.extra = extra or {}

    # -- construction and JSON ---------------------------------------------------------------

    @classmethod
    def new(cls, cidr: Network, host: str | None, *, now_ns: int | None = None) -> Block:
        """A fresh block: every ordinal free, in order; sequence number seeded from the clock."""
        n = cidr.num_addresses
        return cls(
            cidr,
            affinity=f"{AFFINITY_HOST}{host}" if host else None,
            affinity_claim_time=rfc3339_now() if host else None,
            allocations=[None] * n,
            unallocated=list(range(n)),
            attributes=[],
            sequence_number=now_ns if now_ns is not None else time.time_ns(),
            seq_for_alloc={},
        )

    @classmethod
    def from_json(cls, raw: bytes | str | Mapping[str, Any]) -> Block:
        data: dict[str, Any] = dict(raw) if isinstance(raw, Mapping) else orjson.loads(raw)
        try:
            cidr = ipaddress.ip_network(data["cidr"], strict=False)
        except (KeyError, ValueError) as exc:
            raise ValidationError(f"IPAM block has no valid cidr: {exc}") from exc
        n = cidr.num_addresses
        allocations = list(data.get("allocations") or [None] * n)
        if len(allocations) != n:
            raise ValidationError(
                f"IPAM block {cidr}: {len(allocations)} allocations for {n} addresses"
            )
        affinity = data.get("affinity")
        if affinity is None and data.get("hostAffinity"):
            affinity = AFFINITY_HOST + str(data["hostAffinity"])
        return cls(
            cidr,
            affinity=affinity,
            affinity_claim_time=data.get("affinityClaimTime"),
            allocations=allocations,
            unallocated=list(data.get("unallocated") or []),
            attributes=[dict(a) for a in (data.get("attributes") or [])],
            sequence_number=int(data.get("sequenceNumber") or 0),
            seq_for_alloc={
                str(k): int(v) for k, v in (data.get("sequenceNumberForAllocation") or {}).items()
            },
            deleted=bool(data.get("deleted", False)),
            extra={k: v for k, v in data.items() if k not in _BLOCK_FIELDS},
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cidr": self.cidr_text, "affinity": self.affinity}
        if self.affinity_claim_time is not None:
            out["affinityClaimTime"] = self.affinity_claim_time
        out["allocations"] = self.allocations
        out["unallocated"] = self.unallocated
        out["attributes"] = self.attributes
        out["sequenceNumber"] = self.sequence_number
        out["sequenceNumberForAllocation"] = self.seq_for_alloc
        out["deleted"] = self.deleted
        out.update(self.extra)
        return out

    def to_json(self) -> bytes:
        """``to_dict()`` as compact UTF-8 JSON.

        orjson, not the json module: every allocation writes its whole block (up to a block's
        size of attribute dicts, 4-9 kB), and orjson encodes it in ~5 us where json took ~18.
        (Keeping the JSON of the attributes already written and encoding only new ones saved
        another ~1 us in a loop and nothing measurable in a live service: not worth a cache.)
        """
        return orjson.dumps(self.to_dict())

    def copy(self) -> Block:
        # The attribute dicts are shared, not copied: nothing mutates one in place
        # (``_attr_index`` appends a new dict, ``_free`` builds a new list), and copying 64 of
        # them was a fifth of the cost of planning an allocation.
        new = Block(
            self.cidr,
            affinity=self.affinity,
            affinity_claim_time=self.affinity_claim_time,
            allocations=list(self.allocations),
            unallocated=list(self.unallocated),
            attributes=list(self.attributes),
            sequence_number=self.sequence_number,
            seq_for_alloc=dict(self.seq_for_alloc),
            deleted=self.deleted,
            extra=dict(self.extra),
        )
        new._cidr_text = self._cidr_text
        new._key = self._key
        return new

    @property
    def cidr_text(self) -> str:
        """``str(cidr)``, kept: blocks are copied and written on every allocation, and
        ipaddress formats a network in Python."""
        text = self._cidr_text
        if not text:
            text = self._cidr_text = str(self.cidr)
        return text

    @property
    def key(self) -> str:
        """The block's etcd key, kept like ``cidr_text``."""
        key = self._key
        if not key:
            key = self._key = keys.block_key(self.cidr)
        return key

    # -- addresses ---------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return len(self.allocations)

    @property
    def host(self) -> str:
        """The node this block is affine to, or "" (no affinity, or a non-host affinity)."""
        a = self.affinity
        return a[len(AFFINITY_HOST) :] if a and a.startswith(AFFINITY_HOST) else ""

    def ordinal_to_ip(self, ordinal: int) -> Address:
        if self.cidr.version == 4:
            return ipaddress.IPv4Address(self.base + ordinal)
        return ipaddress.IPv6Address(self.base + ordinal)

    def ip_to_ordinal(self, ip: Address) -> int:
        ordinal = int(ip) - self.base
        if ip.version != self.cidr.version or not 0 <= ordinal < self.size:
            raise ValidationError(f"IP {ip} is not in block {self.cidr}")
        return ordinal

    def ip_with_prefix(self, ordinal: int) -> str:
        """Calico returns addresses with the block's mask, e.g. ``10.65.79.5/26``."""
        if self.cidr.version == 4:
            # Formatted by hand: ``str(IPv4Address)`` costs several Python calls per address,
            # and every allocation returns one.
            n = self.base + ordinal
            return f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}/{self.cidr.prefixlen}"
        return f"{self.ordinal_to_ip(ordinal)}/{self.cidr.prefixlen}"

    # -- queries -----------------------------------------------------------------------------

    def in_use(self) -> int:
        return self.size - len(self.unallocated)

    def empty(self) -> bool:
        return all(a is None for a in self.allocations)

    def num_free(self, reserved: Callable[[int], bool] | None = None) -> int:
        if reserved is None:
            return len(self.unallocated)
        return sum(1 for o in self.unallocated if not reserved(o))

    def allocated_ordinals(self) -> Iterable[int]:
        return (o for o, a in enumerate(self.allocations) if a is not None)

    def attribute_of(self, ordinal: int) -> dict[str, Any] | None:
        idx = self.allocations[ordinal]
        if idx is None or idx >= len(self.attributes):
            return None
        return self.attributes[idx]

    def handle_of(self, ordinal: int) -> str | None:
        attr = self.attribute_of(ordinal)
        handle = attr.get("handle_id") if attr else None
        # Calico sanitises handles that host-local migration wrote with a trailing "\r...".
        return handle.split("\r")[0] if isinstance(handle, str) else None

    def seq_of(self, ordinal: int) -> int:
        return self.seq_for_alloc.get(str(ordinal), 0)

    def handles(self) -> dict[str, int]:
        """Handle id -> number of addresses it holds in this block."""
        counts: dict[str, int] = {}
        for o in self.allocated_ordinals():
            h = self.handle_of(o)
            if h is not None:
                counts[h] = counts.get(h, 0) + 1
        return counts

    # -- mutation ----------------------------------------------------------------------------

    def bump(self) -> None:
        """Every write of a block carries a new sequence number (ABA protection for releases)."""
        self.sequence_number += 1

    def _attr_index(
        self, handle: str | None, attrs: Mapping[str, str] | None, new_handle: bool = False
    ) -> int:
        """The index of the attribute entry ``{"handle_id": handle, "secondary": attrs}``,
        appended when no entry is equal to it (as Calico's findOrAddAttribute does). Equality
        is the dicts' own, so the scan runs in C. ``new_handle``: the caller knows no entry
        holds this handle (it has no addresses anywhere yet), so there is nothing to scan."""
        want = {"handle_id": handle, "secondary": dict(attrs) if attrs else None}
        if not (new_handle and handle is not None):
            try:
                return self.attributes.index(want)
            except ValueError:
                pass
        self.attributes.append(want)
        return len(self.attributes) - 1

    def auto_assign(
        self,
        num: int,
        handle: str | None,
        attrs: Mapping[str, str] | None,
        reserved: Callable[[int], bool] | None = None,
        *,
        new_handle: bool = False,
    ) -> list[int]:
        """Take up to ``num`` ordinals from the head of the free FIFO, skipping reserved ones.

        Reserved ordinals keep their place in the queue. Returns the ordinals taken.
        ``new_handle`` as for ``_attr_index``.
        """
        if num <= 0 or not self.unallocated:
            return []
        taken: list[int] = []
        if reserved is None:
            taken = self.unallocated[:num]
            del self.unallocated[: len(taken)]
        else:
            keep: list[int] = []
            for i, o in enumerate(self.unallocated):
                if len(taken) >= num:
                    keep.extend(self.unallocated[i:])
                    break
                if reserved(o):
                    keep.append(o)
                else:
                    taken.append(o)
            self.unallocated = keep
        if taken:
            idx = self._attr_index(handle, attrs, new_handle)
            seq = self.sequence_number
            for o in taken:
                self.allocations[o] = idx
                self.seq_for_alloc[str(o)] = seq
        return taken

    def assign(self, ordinal: int, handle: str | None, attrs: Mapping[str, str] | None) -> None:
        """Allocate one specific ordinal (AssignIP)."""
        if self.allocations[ordinal] is not None:
            raise AlreadyExistsError(
                f"{self.ordinal_to_ip(ordinal)} is already assigned in block {self.cidr}",
                resource=f"IPAMBlock({self.cidr})",
            )
        self.allocations[ordinal] = self._attr_index(handle, attrs)
        self.seq_for_alloc[str(ordinal)] = self.sequence_number
        try:
            self.unallocated.remove(ordinal)
        except ValueError:
            pass

    def release(
        self, requests: Iterable[tuple[int, str | None, int | None]]
    ) -> tuple[list[int], dict[str, int]]:
        """Free ordinals; each request is (ordinal, expected handle or None, expected seq or None).

        A request whose handle or sequence number no longer matches the stored allocation is
        stale (the address was released and handed out again since the caller looked) and
        fails the whole call with ConflictError, as Calico does. Returns (ordinals that were
        not allocated, addresses released per handle).
        """
        unique: dict[int, tuple[str | None, int | None]] = {}
        for o, h, s in requests:
            unique[o] = (h, s)
        not_allocated: list[int] = []
        to_free: list[int] = []
        by_handle: dict[str, int] = {}
        for o, (want_handle, want_seq) in unique.items():
            ip = self.ordinal_to_ip(o)
            if want_seq is not None and want_seq != self.seq_of(o):
                raise ConflictError(
                    f"release of {ip} is stale: sequence number {want_seq} != {self.seq_of(o)}",
                    resource=f"IPAMBlock({self.cidr})",
                )
            if self.allocations[o] is None:
                not_allocated.append(o)
                continue
            have = self.handle_of(o)
            if want_handle and have != want_handle:
                raise ConflictError(
                    f"release of {ip} is stale: it belongs to handle {have!r}, not {want_handle!r}",
                    resource=f"IPAMBlock({self.cidr})",
                )
            to_free.append(o)
            if have is not None:
                by_handle[have] = by_handle.get(have, 0) + 1
        self._free(to_free)
        return not_allocated, by_handle

    def release_by_handle(self, handle: str, seq: int | None = None) -> list[int]:
        """Free every ordinal held by ``handle`` (optionally only those with sequence ``seq``)."""
        ords = [
            o
            for o in self.allocated_ordinals()
            if self.handle_of(o) == handle and (seq is None or self.seq_of(o) == seq)
        ]
        self._free(ords)
        return ords

    def _free(self, ordinals: list[int]) -> None:
        if not ordinals:
            return
        for o in ordinals:
            self.allocations[o] = None
            self.seq_for_alloc.pop(str(o), None)
            self.unallocated.append(o)
        # Drop attributes nothing refers to any more, renumbering the rest.
        used = sorted({a for a in self.allocations if a is not None})
        if len(used) != len(self.attributes):
            remap = {old: new for new, old in enumerate(used)}
            self.attributes = [self.attributes[i] for i in used]
            self.allocations = [None if a is None else remap[a] for a in self.allocations]


# -- the small objects ----------------------------------------------------------------------


@dataclass
class Handle:
    """``/calico/ipam/v2/handle/<id>``: ``{"block": {"<cidr>": count}, "deleted": false}``."""

    blocks: dict[str, int] = field(default_factory=dict)
    deleted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Handle:
        data = orjson.loads(raw)
        return cls(
            blocks={str(k): int(v) for k, v in (data.get("block") or {}).items()},
            deleted=bool(data.get("deleted", False)),
            extra={k: v for k, v in data.items() if k not in ("block", "deleted")},
        )

    def to_json(self) -> bytes:
        out: dict[str, Any] = {"block": self.blocks, "deleted": self.deleted}
        out.update(self.extra)
        return orjson.dumps(out)

    def copy(self) -> Handle:
        return Handle(dict(self.blocks), self.deleted, dict(self.extra))

    def add(self, cidr: str, n: int) -> None:
        self.blocks[cidr] = self.blocks.get(cidr, 0) + n

    def remove(self, cidr: str, n: int) -> None:
        left = self.blocks.get(cidr, 0) - n
        if left > 0:
            self.blocks[cidr] = left
        else:
            self.blocks.pop(cidr, None)

    def empty(self) -> bool:
        return not self.blocks


def affinity_json(state: str) -> bytes:
    return orjson.dumps({"state": state, "deleted": False})


def affinity_state(raw: bytes) -> str:
    try:
        state = orjson.loads(raw).get("state")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    # Affinities written before states existed have no state and count as confirmed.
    return str(state) if state else STATE_CONFIRMED


DEFAULT_MAX_BLOCKS_PER_HOST = 20


@dataclass
class IPAMConfig:
    """``/calico/ipam/v2/config``. Absent key: Calico's defaults (auto-allocate on)."""

    strict_affinity: bool = False
    auto_allocate_blocks: bool = True
    max_blocks_per_host: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, raw: bytes | str) -> IPAMConfig:
        data = orjson.loads(raw)
        # Go writes these with omitempty, so a missing field is false / 0.
        return cls(
            strict_affinity=bool(data.get("strict_affinity", False)),
            auto_allocate_blocks=bool(data.get("auto_allocate_blocks", False)),
            max_blocks_per_host=int(data.get("maxBlocksPerHost", 0) or 0),
            extra={
                k: v
                for k, v in data.items()
                if k not in ("strict_affinity", "auto_allocate_blocks", "maxBlocksPerHost")
            },
        )

    def to_json(self) -> bytes:
        out: dict[str, Any] = {}
        if self.strict_affinity:
            out["strict_affinity"] = True
        if self.auto_allocate_blocks:
            out["auto_allocate_blocks"] = True
        if self.max_blocks_per_host:
            out["maxBlocksPerHost"] = self.max_blocks_per_host
        out.update(self.extra)
        return orjson.dumps(out)

    def effective_max_blocks(self, requested: int = 0) -> int:
        """The stricter of the request's and the global limit; 0 and 0 mean 20."""
        limit = self.max_blocks_per_host
        if requested > 0 and (limit == 0 or requested < limit):
            limit = requested
        return limit or DEFAULT_MAX_BLOCKS_PER_HOST
