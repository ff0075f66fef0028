"""Which IP pools an allocation may use, where their blocks lie, and what is reserved.

Pool selection follows Calico's ``determinePools`` + ``filterPoolsByUse``:

1. Only enabled pools of the requested IP version count.
2. If the request names pools (by name or CIDR; CIDRs are normalised, so ``2001:db8::1/120``
   means ``2001:db8::/120``), exactly those are used and their ``nodeSelector`` is ignored
   (Calico keeps this for backwards compatibility); a named pool that does not exist or is
   disabled is an error that names it.
3. Otherwise every pool whose ``nodeSelector`` selects the node's labels, except pools with
   ``assignmentMode: Manual``, which serve only explicit requests.
4. Then ``allowedUses`` must contain the intended use (Workload or Tunnel; the default is both).

Block walk: a node looks for a new block starting at an index drawn from a PRNG seeded with the
FNV-1 hash of its name and walks the pool's blocks from there, wrapping. Nodes thus start in
different places and rarely race for the same block; one node always starts in the same place.
(Calico seeds Go's math/rand; the start index differs numerically, the property is the same.)

IPReservations: ``Reservations`` answers "is this address reserved" and "is this whole block
reserved" and builds per-block ordinal predicates the block allocator uses to skip addresses.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from libcalico.errors import ResourceExhaustedError, ValidationError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

USE_WORKLOAD = "Workload"
USE_TUNNEL = "Tunnel"
USE_LOAD_BALANCER = "LoadBalancer"
DEFAULT_USES = frozenset({USE_WORKLOAD, USE_TUNNEL})
DEFAULT_BLOCK_SIZE = {4: 26, 6: 122}

SelectorMatch = Callable[[str, Mapping[str, str]], bool]


@lru_cache(maxsize=256)
def _parsed_selector(text: str) -> Any:
    from libcalico import selector  # imported on first non-trivial selector only

    return selector.parse(text)


def default_match(selector_text: str, labels: Mapping[str, str]) -> bool:
    """Evaluate a pool ``nodeSelector`` against node labels (``all()``/empty: everything)."""
    text = (selector_text or "").strip()
    if text in ("", "all()"):
        return True
    return bool(_parsed_selector(text).evaluate(labels))


@dataclass(frozen=True, slots=True)
class Pool:
    name: str
    cidr: Network
    block_size: int
    disabled: bool = False
    node_selector: str = "all()"
    allowed_uses: frozenset[str] = DEFAULT_USES
    ipip_mode: str = "Never"
    vxlan_mode: str = "Never"
    assignment_mode: str = "Automatic"

    @classmethod
    def from_resource(cls, res: Mapping[str, Any]) -> Pool:
        name = str(res.get("metadata", {}).get("name", ""))
        spec = res.get("spec", {}) or {}
        try:
            cidr = ipaddress.ip_network(spec["cidr"], strict=False)
        except (KeyError, ValueError) as exc:
            raise ValidationError(
                f"no valid cidr: {exc}", resource=f"IPPool({name})", field="spec.cidr"
            ) from exc
        block_size = int(spec.get("blockSize") or DEFAULT_BLOCK_SIZE[cidr.version])
        if block_size < cidr.prefixlen:
            # Calico rejects such pools; treat the pool as one block rather than crash.
            block_size = cidr.prefixlen
        uses = spec.get("allowedUses")
        return cls(
            name=name,
            cidr=cidr,
            block_size=block_size,
            disabled=bool(spec.get("disabled", False)),
            node_selector=str(spec.get("nodeSelector") or "all()"),
            allowed_uses=frozenset(uses) if uses else DEFAULT_USES,
            ipip_mode=str(spec.get("ipipMode") or "Never"),
            vxlan_mode=str(spec.get("vxlanMode") or "Never"),
            assignment_mode=str(spec.get("assignmentMode") or "Automatic"),
        )

    @property
    def version(self) -> int:
        return self.cidr.version

    @property
    def label(self) -> str:
        return f"{self.name} ({self.cidr})" if self.name else str(self.cidr)

    @property
    def num_blocks(self) -> int:
        return 1 << (self.block_size - self.cidr.prefixlen)

    def nth_block(self, index: int) -> Network:
        host_bits = self.cidr.max_prefixlen - self.block_size
        base = int(self.cidr.network_address) + (index << host_bits)
        return ipaddress.ip_network((base, self.block_size))

    def block_for(self, ip: Address) -> Network:
        host_bits = self.cidr.max_prefixlen - self.block_size
        base = (int(ip) >> host_bits) << host_bits
        return ipaddress.ip_network((base, self.block_size))

    def block_index(self, block: Network) -> int:
        host_bits = self.cidr.max_prefixlen - self.block_size
        return (int(block.network_address) - int(self.cidr.network_address)) >> host_bits

    def contains(self, ip: Address) -> bool:
        return ip.version == self.cidr.version and ip in self.cidr

    def contains_block(self, block: Network) -> bool:
        # By the numbers: ipaddress's subnet_of costs a dozen Python calls, and the affine
        # step asks this of a block on every allocation.
        cidr = self.cidr
        return (
            block.version == cidr.version
            and block.prefixlen >= cidr.prefixlen
            and (int(block.network_address) ^ int(cidr.network_address))
            >> (cidr.max_prefixlen - cidr.prefixlen) == 0
        )


def fnv1_32(data: bytes) -> int:
    """FNV-1 32-bit, the hash Go's ``hash/fnv.New32`` computes."""
    h = 0x811C9DC5
    for b in data:
        h = (h * 0x01000193) & 0xFFFFFFFF
        h ^= b
    return h


def start_index(pool: Pool, host: str) -> int:
    return random.Random(fnv1_32(host.encode())).randrange(pool.num_blocks)


def block_walk(pool: Pool, host: str) -> Iterator[Network]:
    """Every block of the pool once, from the node's seeded start index, wrapping."""
    n = pool.num_blocks
    start = start_index(pool, host)
    for i in range(n):
        yield pool.nth_block((start + i) % n)


def walk_order(pool: Pool, host: str, blocks: Iterable[Network]) -> list[Network]:
    """``blocks`` of this pool in the order ``block_walk`` would visit them (no full walk)."""
    n = pool.num_blocks
    start = start_index(pool, host)
    mine = [b for b in blocks if pool.contains_block(b)]
    return sorted(mine, key=lambda b: (pool.block_index(b) - start) % n)


def pool_for(pools: Iterable[Pool], ip: Address) -> Pool | None:
    for p in pools:
        if p.contains(ip):
            return p
    return None


@lru_cache(maxsize=1024)
def _norm(entry: str) -> Network | None:
    # Cached: every AutoAssign that names its pools normalises them, and a pool *name* costs
    # a raised and caught ValueError each time. Networks are immutable, so sharing is safe.
    try:
        return ipaddress.ip_network(entry.strip(), strict=False)
    except ValueError:
        return None


def select_pools(
    pools: Sequence[Pool],
    version: int,
    requested: Sequence[str],
    node: str,
    node_labels: Mapping[str, str],
    use: str,
    match: SelectorMatch = default_match,
) -> list[Pool]:
    """The pools an allocation of ``version`` for ``node`` may use, in preference order."""
    enabled = [p for p in pools if p.version == version and not p.disabled]
    chosen: list[Pool] = []
    if requested:
        for entry in requested:
            cidr = _norm(entry)
            found = next(
                (p for p in enabled if p.name == entry or (cidr is not None and p.cidr == cidr)),
                None,
            )
            if found is None:
                shown = str(cidr) if cidr is not None else entry
                if cidr is not None and cidr.version != version:
                    raise ValidationError(
                        f"pool {shown} is an IPv{cidr.version} CIDR, requested for IPv{version}"
                    )
                raise ValidationError(
                    f"the given pool ({shown}) does not exist, or is not enabled; create it "
                    f"with calicoctl apply or fix ipv{version}_pools in the CNI config"
                )
            if found not in chosen:
                chosen.append(found)
    else:
        chosen = [
            p
            for p in enabled
            if p.assignment_mode != "Manual" and match(p.node_selector, node_labels)
        ]
        if not chosen:
            raise ResourceExhaustedError(
                f"no enabled IPv{version} pool selects node {node}; create an IPPool or change "
                "the nodeSelector of an existing one",
                resource=f"Node({node})",
            )
    allowed = [p for p in chosen if use in p.allowed_uses]
    if not allowed:
        names = ", ".join(p.label for p in chosen)
        raise ResourceExhaustedError(
            f"no IPv{version} pool allows use {use} for node {node} (candidates: {names}); "
            f"add {use} to spec.allowedUses of a pool",
            resource=f"Node({node})",
        )
    return allowed


class Reservations:
    """IPReservation ``spec.reservedCIDRs``: addresses auto-assignment never hands out."""

    def __init__(self, nets: Iterable[Network] = ()) -> None:
        self.nets = sorted(set(nets), key=lambda n: (n.version, int(n.network_address)))

    @classmethod
    def from_resources(cls, resources: Iterable[Mapping[str, Any]]) -> Reservations:
        nets: list[Network] = []
        for res in resources:
            for text in (res.get("spec", {}) or {}).get("reservedCIDRs") or []:
                net = _norm(str(text))
                if net is not None:
                    nets.append(net)
        return cls(nets)

    def __bool__(self) -> bool:
        return bool(self.nets)

    def matches(self, ip: Address) -> bool:
        return any(ip.version == n.version and ip in n for n in self.nets)

    def covers(self, block: Network) -> bool:
        return any(
            block.version == n.version and block.subnet_of(n)  # type: ignore[arg-type]
            for n in self.nets
        )

    def predicate(self, block: Network) -> Callable[[int], bool] | None:
        """Ordinal -> reserved, for one block; None when nothing in the block is reserved."""
        overlapping = [n for n in self.nets if n.version == block.version and n.overlaps(block)]  # type: ignore[arg-type]
        if not overlapping:
            return None
        base = int(block.network_address)
        ranges = [
            (int(n.network_address) - base, int(n.broadcast_address) - base) for n in overlapping
        ]
        return lambda o: any(lo <= o <= hi for lo, hi in ranges)

    def count_in(self, net: Network) -> int:
        """Reserved addresses inside ``net`` (overlapping reservations counted once)."""
        total = 0
        same = [n for n in self.nets if n.version == net.version]
        merged: list[Network] = list(ipaddress.collapse_addresses(same))  # type: ignore[type-var]
        for n in merged:
            if n.overlaps(net):
                inter_lo = max(int(n.network_address), int(net.network_address))
                inter_hi = min(int(n.broadcast_address), int(net.broadcast_address))
                total += inter_hi - inter_lo + 1
        return total
