"""Calico's block-affinity allocator over a compare-and-swap KV store.

What it owns: the IPAM keys (blocks, affinities, handles, config) and an in-process cache of
the ones it has seen, each with the etcd mod revision it was read or written at.

How an allocation goes (``auto_assign``), per IP version, until enough addresses are taken::

    affine step   blocks affine to the node, in a pool the request may use, with free
                  ordinals (from the cache) ─┐
    claim step    else, if AutoAllocateBlocks and the node owns fewer than MaxBlocksPerHost
                  blocks of those pools: a new block from the pool walk seeded by the node
                  name, or an empty block another node has not touched for a minute ─┤
    borrow step   else, only when StrictAffinity is false: free ordinals in other nodes'
                  blocks of those pools ─┤
                                          v
    commit        ONE etcd transaction: compare every touched block (mod revision, or
                  "absent" for a new block), our affinity key and the handle key; put the
                  blocks (sequence number bumped), the confirmed affinity and the handle.

On a lost compare-and-swap nothing is written; the transaction's failure branch returns the
current value of every compared key, which replaces the cache, and the step is planned again.
So an allocation into a cached affine block is one round trip with no read before the write,
and a stale cache costs one extra round trip. Conflicts are bounded (``retries``, Calico's
datastoreRetries is 100) and then ``RetriesExhaustedError``.

Differences from Calico's Go client, both because etcd has multi-key transactions:

- Calico writes a block and then increments the handle in a second write; a crash between the
  two leaves a leak ``ipam check`` reports. Here block and handle change in one transaction.
- Calico claims a block in three writes (affinity ``pending`` → create block → affinity
  ``confirmed``). Here the block and the ``confirmed`` affinity are created together, so the
  ``pending`` state never needs to be written. Affinities other writers left ``pending`` are
  understood: a pending affinity whose block is ours is confirmed by our next write to that
  block; one whose block does not exist is claimed by creating the block.

The common request (one address, a handle holding none yet, the node's current affine block
cached with room) skips the plan: ``_assign_batch`` makes the same choice and the same
transaction directly.

Concurrency: allocations for one node are serialised by an ``asyncio.Lock`` per node, so the
service never races itself for a node's blocks; different nodes proceed concurrently and
other processes (another service replica, Calico itself) are handled by compare-and-swap.
One-address requests that find their node busy queue, and the next holder of the lock
serves the queued ones it can together with its own: one block write for all of them (group
commit), which is what a node starting many pods at once needs. Releases take no lock: they
are rarer and compare-and-swap keeps them correct.

An allocation is all-or-nothing: if the IPv6 half (or part of a multi-address request) cannot
be satisfied, what was already taken is released before the error is raised.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from libcalico import keys
from libcalico.errors import (
    AlreadyExistsError,
    NotFoundError,
    ResourceExhaustedError,
    RetriesExhaustedError,
    ValidationError,
)
from services.ipam.blocks import (
    ATTR_NAMESPACE,
    ATTR_NODE,
    ATTR_POD,
    ATTR_TYPE,
    STATE_CONFIRMED,
    Block,
    Handle,
    IPAMConfig,
    affinity_json,
    affinity_state,
    parse_rfc3339,
)
from services.ipam.kvstore import KV, Delete, KVStore, Op, Put, ResourceStore
from services.ipam.pools import (
    USE_WORKLOAD,
    Pool,
    Reservations,
    SelectorMatch,
    block_walk,
    default_match,
    pool_for,
    select_pools,
    walk_order,
)

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

DATASTORE_RETRIES = 100
EMPTY_BLOCK_MIN_RECLAIM_AGE = 60.0  # seconds; Calico's EmptyBlockMinReclaimAge
HANDLE_CACHE_SIZE = 50_000
SELECTED_CACHE_SIZE = 4096
_NO_LABELS: Mapping[str, str] = {}


# Block keys of the blocks this process writes, formatted once (ipaddress formats in Python).
_block_key: Callable[[Network], str] = functools.lru_cache(maxsize=4096)(keys.block_key)


def parse_ip(text: str) -> Address:
    try:
        return ipaddress.ip_address(text.split("/", 1)[0].strip())
    except ValueError as exc:
        raise ValidationError(f"{text!r} is not an IP address") from exc


# -- requests ---------------------------------------------------------------------------------


@dataclass
class AutoAssignArgs:
    node: str
    num4: int = 0
    num6: int = 0
    handle: str | None = None
    attrs: dict[str, str] = field(default_factory=dict)
    ipv4_pools: list[str] = field(default_factory=list)
    ipv6_pools: list[str] = field(default_factory=list)
    use: str = USE_WORKLOAD
    max_blocks_per_host: int = 0


@dataclass
class AutoAssignResult:
    ipv4: list[str] = field(default_factory=list)
    ipv6: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ReleaseOptions:
    """One address to release; handle / sequence number, when given, must still match."""

    ip: str
    handle: str | None = None
    sequence_number: int | None = None


@dataclass
class Assignment:
    ip: str
    allocated: bool
    block: str = ""
    block_affinity: str = ""
    handle: str | None = None
    attrs: dict[str, str] = field(default_factory=dict)
    sequence_number: int = 0


# -- pools, reservations and node labels, cached with a short age ----------------------------


class ResourceCache:
    """IPPools, IPReservations and node labels, re-read when older than ``max_age`` seconds.

    Pool edits therefore take effect within ``max_age``; an allocation that finds no usable
    pool or runs out re-reads at once before it fails, so a pool created a moment ago is seen.
    """

    def __init__(
        self,
        store: ResourceStore,
        *,
        max_age: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.max_age = max_age
        self.clock = clock
        self._pools: tuple[float, list[Pool]] | None = None
        self._reservations: tuple[float, Reservations] | None = None
        self._labels: dict[str, tuple[float, dict[str, str]]] = {}
        self._lock = asyncio.Lock()

    def _fresh(self, at: float) -> bool:
        return self.clock() - at < self.max_age

    def invalidate(self) -> None:
        self._pools = None
        self._reservations = None
        self._labels.clear()

    async def pools(self, *, fresh: bool = False) -> list[Pool]:
        cached = self._pools
        if cached is not None and not fresh and self._fresh(cached[0]):
            return cached[1]
        async with self._lock:
            cached = self._pools
            if cached is not None and not fresh and self._fresh(cached[0]):
                return cached[1]
            now = self.clock()
            pools: list[Pool] = []
            for res in await self.store.list("IPPool"):
                try:
                    pools.append(Pool.from_resource(res))
                except ValidationError as exc:
                    log.warning("ignoring IPPool: %s", exc)
            self._pools = (now, pools)
            return pools

    async def reservations(self, *, fresh: bool = False) -> Reservations:
        cached = self._reservations
        if cached is not None and not fresh and self._fresh(cached[0]):
            return cached[1]
        now = self.clock()
        res = Reservations.from_resources(await self.store.list("IPReservation"))
        self._reservations = (now, res)
        return res

    async def node_labels(self, node: str, *, fresh: bool = False) -> dict[str, str]:
        cached = self._labels.get(node)
        if cached is not None and not fresh and self._fresh(cached[0]):
            return cached[1]
        now = self.clock()
        res = await self.store.get("Node", node)
        labels: dict[str, str] = {}
        if res is None:
            log.debug("Node(%s) does not exist; selecting pools with no labels", node)
        else:
            labels = dict((res.get("metadata", {}) or {}).get("labels") or {})
        self._labels[node] = (now, labels)
        return labels


# -- a planned write ---------------------------------------------------------------------------


@dataclass
class _Plan:
    """Blocks, affinities and handle deltas to write together in one transaction."""

    # cidr -> (new block or None for delete, expected mod revision; 0 = must not exist)
    blocks: dict[Network, tuple[Block | None, int]] = field(default_factory=dict)
    # affinity key -> (value or None for delete, expected revision)
    affinities: dict[str, tuple[bytes | None, int]] = field(default_factory=dict)
    # handle id -> block cidr -> change in count
    handles: dict[str, dict[str, int]] = field(default_factory=dict)
    # handle id -> drop the block entry entirely (release by handle)
    handle_drops: dict[str, set[str]] = field(default_factory=dict)
    ips: list[str] = field(default_factory=list)

    def add_ips(self, block: Block, ordinals: Sequence[int], handle: str | None) -> None:
        self.ips.extend(block.ip_with_prefix(o) for o in ordinals)
        if handle and ordinals:
            d = self.handles.setdefault(handle, {})
            key = block.cidr_text
            d[key] = d.get(key, 0) + len(ordinals)

    def empty(self) -> bool:
        return not (self.blocks or self.affinities or self.handles or self.handle_drops)


@dataclass(eq=False)
class _OneAddress:
    """A queued one-address AutoAssign; ``done`` gets its result once some request served it."""

    args: AutoAssignArgs
    handle: str
    done: asyncio.Future[AutoAssignResult]


def _one_result(version: int, ip: str) -> AutoAssignResult:
    return AutoAssignResult(ipv4=[ip]) if version == 4 else AutoAssignResult(ipv6=[ip])


def _same_request(a: AutoAssignArgs, b: AutoAssignArgs) -> bool:
    """Whether two one-address requests may share a block write: same family, pools, use."""
    return (
        a.num4 == b.num4
        and a.use == b.use
        and (a.ipv4_pools if a.num4 else a.ipv6_pools) == (b.ipv4_pools if b.num4 else b.ipv6_pools)
    )


class _Exhausted(Exception):
    """Internal: no block can be claimed; the message says why."""


class _BlockLimit(_Exhausted):
    """Internal: the node is at MaxBlocksPerHost."""


# -- the allocator -----------------------------------------------------------------------------


class Allocator:
    def __init__(
        self,
        kv: KVStore,
        resources: ResourceCache,
        *,
        retries: int = DATASTORE_RETRIES,
        match: SelectorMatch = default_match,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.kv = kv
        self.resources = resources
        self.retries = retries
        self.match = match
        self.wall_clock = wall_clock
        self._blocks: dict[Network, tuple[Block, int]] = {}
        self._affinity: dict[tuple[str, int], dict[Network, tuple[str, int]]] = {}
        self._handles: OrderedDict[str, tuple[Handle | None, int]] = OrderedDict()
        self._node_locks: dict[str, asyncio.Lock] = {}
        # Per node: one-address requests queued for its lock, in arrival order (auto_assign).
        self._waiting: dict[str, list[_OneAddress]] = {}
        self._key_cidrs: dict[str, Network] = {}
        # Per (node, version): the node's affine blocks in address order, and how many of the
        # first ones are known full. The affine step starts there, so a node with many full
        # blocks costs one block look-up per allocation, not one per block. Any change to
        # the node's affinities drops both; a block of the node gaining free addresses (a
        # release, or a fresher read) resets the count.
        self._affine_order: dict[tuple[str, int], list[Network]] = {}
        self._affine_full: dict[tuple[str, int], int] = {}
        # (version, requested pools, node or "", use) -> (pools, labels, chosen) (_pools_for)
        self._selected: dict[
            tuple[int, tuple[str, ...], str, str],
            tuple[list[Pool], Mapping[str, str], list[Pool]],
        ] = {}
        self.stats = {"txns": 0, "conflicts": 0, "reads": 0}

    # -- cache plumbing ------------------------------------------------------------------------

    def _lock(self, node: str) -> asyncio.Lock:
        lock = self._node_locks.get(node)
        if lock is None:
            lock = self._node_locks[node] = asyncio.Lock()
        return lock

    def _cache_block(self, cidr: Network, block: Block | None, rev: int) -> None:
        if block is None:
            self._blocks.pop(cidr, None)
            return
        cur = self._blocks.get(cidr)
        if cur is None or cur[1] <= rev:
            self._set_block(cidr, block, rev, cur)

    def _set_block(
        self, cidr: Network, block: Block, rev: int, old: tuple[Block, int] | None
    ) -> None:
        self._blocks[cidr] = (block, rev)
        if block.affinity and (old is None or len(block.unallocated) > len(old[0].unallocated)):
            self._affine_full.pop((block.host, cidr.version), None)

    def _affinities_changed(self, node: str, version: int) -> None:
        self._affine_order.pop((node, version), None)
        self._affine_full.pop((node, version), None)

    def _cache_handle(self, handle: str, value: Handle | None, rev: int) -> None:
        self._handles[handle] = (value, rev)
        self._handles.move_to_end(handle)
        while len(self._handles) > HANDLE_CACHE_SIZE:
            self._handles.popitem(last=False)

    def _cache_affinity(self, host: str, cidr: Network, state: str | None, rev: int) -> None:
        m = self._affinity.get((host, cidr.version))
        if m is None:
            return  # we only track nodes whose affinity list we have read
        if state is None:
            m.pop(cidr, None)
        else:
            m[cidr] = (state, rev)
        self._affinities_changed(host, cidr.version)

    def _absorb(self, kvs: Iterable[KV], compared: Iterable[str]) -> None:
        """Replace cached entries by the store's current values (absent = deleted)."""
        seen = {kv.key: kv for kv in kvs}
        for key in compared:
            kv = seen.get(key)
            self._absorb_one(key, kv)

    def _absorb_one(self, key: str, kv: KV | None) -> None:
        cidr = keys.parse_block_key(key)
        if cidr is not None:
            if kv is None:
                self._cache_block(cidr, None, 0)
            else:
                block = Block.from_json(kv.value)
                self._set_block(cidr, block, kv.mod_revision, self._blocks.get(cidr))
            return
        aff = keys.parse_affinity_key(key)
        if aff is not None:
            host, acidr = aff
            if kv is None:
                self._cache_affinity(host, acidr, None, 0)
            else:
                self._cache_affinity(host, acidr, affinity_state(kv.value), kv.mod_revision)
            return
        handle = keys.parse_handle_key(key)
        if handle is not None:
            if kv is None:
                self._cache_handle(handle, None, 0)
            else:
                self._cache_handle(handle, Handle.from_json(kv.value), kv.mod_revision)

    async def _read(self, key: str) -> KV | None:
        self.stats["reads"] += 1
        kv = await self.kv.get(key)
        self._absorb_one(key, kv)
        return kv

    async def _block(self, cidr: Network, *, fresh: bool = False) -> tuple[Block, int] | None:
        if not fresh:
            cached = self._blocks.get(cidr)
            if cached is not None:
                return cached
        await self._read(keys.block_key(cidr))
        return self._blocks.get(cidr)

    async def _handle(self, handle: str, *, fresh: bool = False) -> tuple[Handle | None, int]:
        """A handle and its revision. A cached "absent" is never trusted: that is read again."""
        if not fresh:
            cached = self._handles.get(handle)
            if cached is not None and cached[0] is not None:
                return cached
        await self._read(keys.handle_key(handle))
        return self._handles.get(handle, (None, 0))

    async def get_handle(self, handle_id: str) -> Handle | None:
        """The handle as stored now (a cached present handle is trusted)."""
        return (await self._handle(handle_id))[0]

    async def _affine(
        self, node: str, version: int, *, fresh: bool = False
    ) -> dict[Network, tuple[str, int]]:
        m = self._affinity.get((node, version))
        if m is not None and not fresh:
            return m
        self.stats["reads"] += 1
        kvs, _ = await self.kv.list(keys.affinity_prefix(node, version))
        m = {}
        for kv in kvs:
            parsed = keys.parse_affinity_key(kv.key)
            if parsed is not None and parsed[0] == node:
                m[parsed[1]] = (affinity_state(kv.value), kv.mod_revision)
        self._affinity[(node, version)] = m
        self._affinities_changed(node, version)
        return m

    async def _list_blocks(self, version: int | None = None) -> dict[Network, tuple[Block, int]]:
        """Every block (of one version) in the store, refreshing the cache with them."""
        self.stats["reads"] += 1
        kvs, _ = await self.kv.list(keys.block_prefix(version))
        listed: dict[Network, tuple[Block, int]] = {}
        for kv in kvs:
            cidr = self._key_cidrs.get(kv.key)
            if cidr is None:
                cidr = keys.parse_block_key(kv.key)
                if cidr is None:
                    continue
                self._key_cidrs[kv.key] = cidr
            cached = self._blocks.get(cidr)
            if cached is not None and cached[1] == kv.mod_revision:
                listed[cidr] = cached  # unchanged since we last saw it: no need to parse
                continue
            try:
                listed[cidr] = (Block.from_json(kv.value), kv.mod_revision)
            except ValidationError as exc:
                log.warning("ignoring unreadable block %s: %s", kv.key, exc)
        for cidr in [c for c in self._blocks if version is None or c.version == version]:
            if cidr not in listed:
                del self._blocks[cidr]
        for cidr, (block, rev) in listed.items():
            old = self._blocks.get(cidr)
            if old is None or old[1] != rev:
                self._set_block(cidr, block, rev, old)
        return listed

    async def _block_revisions(self, version: int) -> dict[Network, int]:
        """Every block (of one version) that exists, with its mod revision; no contents."""
        self.stats["reads"] += 1
        kvs, _ = await self.kv.list(keys.block_prefix(version), keys_only=True)
        out: dict[Network, int] = {}
        for kv in kvs:
            cidr = self._key_cidrs.get(kv.key)
            if cidr is None:
                cidr = keys.parse_block_key(kv.key)
                if cidr is None:
                    continue
                self._key_cidrs[kv.key] = cidr
            out[cidr] = kv.mod_revision
        return out

    async def get_config(self) -> tuple[IPAMConfig, int]:
        kv = await self._read(keys.IPAM_CONFIG_KEY)
        if kv is None:
            return IPAMConfig(), 0
        return IPAMConfig.from_json(kv.value), kv.mod_revision

    async def set_config(
        self,
        *,
        strict_affinity: bool | None = None,
        auto_allocate_blocks: bool | None = None,
        max_blocks_per_host: int | None = None,
    ) -> IPAMConfig:
        """Change the fields given (None: keep), compare-and-swap on the config key.

        Calico's two cross-field rules hold for the result: StrictAffinity and
        AutoAllocateBlocks cannot both be off (no address could ever be handed out), and
        MaxBlocksPerHost needs StrictAffinity (a node at its limit would otherwise borrow, so
        the limit would mean nothing in some places and something in others).
        """
        if max_blocks_per_host is not None and max_blocks_per_host < 0:
            raise ValidationError(
                f"{max_blocks_per_host} is negative",
                resource="IPAMConfig",
                field="maxBlocksPerHost",
            )
        for _ in range(self.retries):
            cfg, rev = await self.get_config()
            if strict_affinity is not None:
                cfg.strict_affinity = strict_affinity
            if auto_allocate_blocks is not None:
                cfg.auto_allocate_blocks = auto_allocate_blocks
            if max_blocks_per_host is not None:
                cfg.max_blocks_per_host = max_blocks_per_host
            if not cfg.strict_affinity and not cfg.auto_allocate_blocks:
                raise ValidationError(
                    "cannot disable StrictAffinity and AutoAllocateBlocks at the same time",
                    resource="IPAMConfig",
                    field="autoAllocateBlocks",
                )
            if cfg.max_blocks_per_host > 0 and not cfg.strict_affinity:
                raise ValidationError(
                    f"MaxBlocksPerHost ({cfg.max_blocks_per_host}) requires StrictAffinity to "
                    "be enabled: set both, e.g. 'calicoctl ipam configure --strictaffinity=true "
                    f"--max-blocks-per-host={cfg.max_blocks_per_host}'",
                    resource="IPAMConfig",
                    field="maxBlocksPerHost",
                )
            res = await self.kv.txn(
                [(keys.IPAM_CONFIG_KEY, rev)], [Put(keys.IPAM_CONFIG_KEY, cfg.to_json())]
            )
            if res.succeeded:
                return cfg
        raise RetriesExhaustedError("gave up updating the IPAM config: it kept changing under us")

    # -- commit --------------------------------------------------------------------------------

    async def _commit(self, plan: _Plan) -> bool:
        compares: list[tuple[str, int]] = []
        ops: list[Op] = []
        for cidr, (block, rev) in plan.blocks.items():
            if block is None:
                key = _block_key(cidr)
                ops.append(Delete(key))
            else:
                key = block.key
                block.bump()
                ops.append(Put(key, block.to_json()))
            compares.append((key, rev))
        for key, (value, rev) in plan.affinities.items():
            compares.append((key, rev))
            ops.append(Delete(key) if value is None else Put(key, value))
        new_handles: list[tuple[str, Handle | None]] = []
        handle_ids: Iterable[str] = plan.handles
        if plan.handle_drops or len(plan.handles) > 1:
            handle_ids = sorted(plan.handles.keys() | plan.handle_drops.keys())
        for handle_id in handle_ids:
            current, rev = self._handles.get(handle_id, (None, 0))
            h = current.copy() if current is not None else Handle()
            for cidr_s in plan.handle_drops.get(handle_id, ()):
                h.blocks.pop(cidr_s, None)
            for cidr_s, delta in plan.handles.get(handle_id, {}).items():
                if delta >= 0:
                    h.add(cidr_s, delta)
                else:
                    h.remove(cidr_s, -delta)
            key = keys.handle_key(handle_id)
            compares.append((key, rev))
            if h.empty():
                if rev:
                    ops.append(Delete(key))
                new_handles.append((handle_id, None))
            else:
                ops.append(Put(key, h.to_json()))
                new_handles.append((handle_id, h))
        self.stats["txns"] += 1
        result = await self.kv.txn(compares, ops)
        if not result.succeeded:
            self.stats["conflicts"] += 1
            self._absorb(result.current, [k for k, _ in compares])
            return False
        rev = result.revision
        for cidr, (block, _) in plan.blocks.items():
            self._cache_block(cidr, block, rev)
        for key, (value, _) in plan.affinities.items():
            parsed = keys.parse_affinity_key(key)
            if parsed is not None:
                state = None if value is None else affinity_state(value)
                self._cache_affinity(parsed[0], parsed[1], state, rev)
        for handle_id, new_h in new_handles:
            self._cache_handle(handle_id, new_h, rev if new_h is not None else 0)
        return True

    def _conflict(self, conflicts: int, what: str) -> int:
        conflicts += 1
        if conflicts >= self.retries:
            raise RetriesExhaustedError(
                f"gave up {what} after {conflicts} compare-and-swap conflicts: the IPAM "
                "blocks are under heavy contention; retry the request"
            )
        return conflicts

    # -- auto-assign ---------------------------------------------------------------------------

    async def auto_assign(self, args: AutoAssignArgs) -> AutoAssignResult:
        if not args.node:
            raise ValidationError("node is required for automatic IP assignment")
        if args.num4 < 0 or args.num6 < 0:
            raise ValidationError("the number of addresses requested cannot be negative")
        if args.num4 == 0 and args.num6 == 0:
            return AutoAssignResult()
        node = args.node
        lock = self._lock(node)
        single = args.num4 + args.num6 == 1 and args.handle is not None
        queued: _OneAddress | None = None
        if single and args.handle is not None and lock.locked():
            # Queued while another request holds the node: whoever holds it next may serve
            # this one in its own transaction (group commit), so a node starting many pods at
            # once pays one block write per batch, not one per pod in turn.
            done = asyncio.get_running_loop().create_future()
            queued = _OneAddress(args, args.handle, done)
            self._waiting.setdefault(node, []).append(queued)
        try:
            async with lock:
                if queued is not None and queued.done.done():
                    return queued.done.result()
                if single:
                    served = await self._assign_batch(node, args)
                    if served is not None:
                        return served
                return await self._assign_general(args)
        finally:
            if queued is not None:
                self._unqueue(node, queued)

    def _unqueue(self, node: str, one: _OneAddress) -> None:
        waiting = self._waiting.get(node)
        if waiting is not None and one in waiting:
            waiting.remove(one)
            if not waiting:
                del self._waiting[node]

    async def _assign_general(self, args: AutoAssignArgs) -> AutoAssignResult:
        result = AutoAssignResult()
        try:
            if args.num4:
                result.ipv4 = await self._assign_family(4, args.num4, args, args.ipv4_pools)
            if args.num6:
                result.ipv6 = await self._assign_family(6, args.num6, args, args.ipv6_pools)
        except BaseException:
            taken = result.ipv4 + result.ipv6
            if taken:
                log.info("rolling back %d addresses of a failed assignment", len(taken))
                await self._rollback(taken, args.handle)
            raise
        return result

    async def _assign_batch(self, node: str, args: AutoAssignArgs) -> AutoAssignResult | None:
        """Serve ``args`` (one address, a handle) and the node's queued one-address requests
        that ask for the same family and pools, from the node's first affine block with room,
        in one transaction: the block once, each handle (new, so compared as absent) once. It
        is the general path's choice and write for each of them, minus the plan.

        ``None`` when ``args`` itself needs the general path's care (reservations, a pending
        affinity, a block to read or claim, a handle that already holds addresses, a bad pool
        name) or the write lost a race. Queued requests not served here (no room left in the
        block, or they need that care too) wait for their own turn. If the write fails
        outright, the requests it served get its error as well.
        """
        handle = args.handle
        if handle is None or self._holds_addresses(handle):
            return None
        handle_key = keys.handle_key(handle)  # a handle no key can hold fails here, alone
        version = 4 if args.num4 else 6
        requested = args.ipv4_pools if version == 4 else args.ipv6_pools
        try:
            pools = await self._pools_for(version, requested, node, args.use, fresh=False)
        except (ValidationError, ResourceExhaustedError):
            return None
        if await self.resources.reservations():
            return None
        key = (node, version)
        order, affine = self._affine_order.get(key), self._affinity.get(key)
        if order is None or affine is None:
            return None
        for cidr, cached in self._affine_walk(node, version, order):
            if cached is None:
                return None
            if self._in_pools(cidr, pools):
                break
        else:
            return None
        if affine[cidr][0] != STATE_CONFIRMED:
            return None
        block, rev = cached
        new = block.copy()
        ordinal = new.auto_assign(1, handle, args.attrs, new_handle=True)[0]
        others = self._batch_from_queue(node, args, new)
        new.bump()
        held_json = Handle({new.cidr_text: 1}).to_json()
        compares = [(new.key, rev)]
        ops: list[Op] = [Put(new.key, new.to_json())]
        for hkey in (handle_key, *(k for _, _, k in others)):
            compares.append((hkey, 0))
            ops.append(Put(hkey, held_json))
        self.stats["txns"] += 1
        try:
            result = await self.kv.txn(compares, ops)
        except Exception as exc:
            for other, _, _ in others:
                other.done.set_exception(exc)
                other.done.exception()  # read: a caller that went away never will
            raise
        if not result.succeeded:
            self.stats["conflicts"] += 1
            self._absorb(result.current, [k for k, _ in compares])
            return None
        rev = result.revision
        self._cache_block(cidr, new, rev)
        self._cache_handle(handle, Handle({new.cidr_text: 1}), rev)
        for other, other_ordinal, _ in others:
            self._cache_handle(other.handle, Handle({new.cidr_text: 1}), rev)
            other.done.set_result(_one_result(version, new.ip_with_prefix(other_ordinal)))
        return _one_result(version, new.ip_with_prefix(ordinal))

    def _batch_from_queue(
        self, node: str, args: AutoAssignArgs, block: Block
    ) -> list[tuple[_OneAddress, int, str]]:
        """Take from ``node``'s queue, in order, the requests like ``args`` (one address, same
        family and pools, a handle holding nothing yet and not taken already) that still fit
        in ``block``, assigning each its ordinal there; with each, its handle's key. A handle
        no key can hold is left to fail on its own turn, not in this batch."""
        waiting = self._waiting.get(node)
        if not waiting:
            return []
        taken: list[tuple[_OneAddress, int, str]] = []
        handles = {args.handle}
        for one in waiting:
            if not block.unallocated:
                break
            if (
                one.args is args
                or one.done.done()
                or one.handle in handles
                or not _same_request(one.args, args)
            ):
                continue
            if self._holds_addresses(one.handle):
                continue
            try:
                handle_key = keys.handle_key(one.handle)
            except ValidationError:
                continue
            ordinal = block.auto_assign(1, one.handle, one.args.attrs, new_handle=True)[0]
            taken.append((one, ordinal, handle_key))
            handles.add(one.handle)
        return taken

    async def _rollback(self, ips: Sequence[str], handle: str | None) -> None:
        try:
            await self.release_ips([ReleaseOptions(ip, handle) for ip in ips])
        except Exception:  # the original error matters more; check/GC will find these
            log.exception("could not roll back %s", ", ".join(ips))

    async def _pools_for(
        self, version: int, requested: Sequence[str], node: str, use: str, *, fresh: bool
    ) -> list[Pool]:
        pools = await self.resources.pools(fresh=fresh)
        labels: Mapping[str, str] = _NO_LABELS
        needs_labels = not requested and any(
            (p.node_selector or "all()").strip() not in ("", "all()")
            for p in pools
            if p.version == version
        )
        if needs_labels:
            labels = await self.resources.node_labels(node, fresh=fresh)
        # The choice depends only on these, and the cache hands out the same pools list and
        # labels dict until it re-reads them: remember it per request shape.
        key = (version, tuple(requested), node if needs_labels else "", use)
        hit = self._selected.get(key)
        if hit is not None and hit[0] is pools and hit[1] is labels:
            return hit[2]
        chosen = select_pools(pools, version, requested, node, labels, use, self.match)
        if len(self._selected) >= SELECTED_CACHE_SIZE:
            self._selected.clear()
        self._selected[key] = (pools, labels, chosen)
        return chosen

    async def _assign_family(
        self, version: int, num: int, args: AutoAssignArgs, requested: Sequence[str]
    ) -> list[str]:
        try:
            pools = await self._pools_for(version, requested, args.node, args.use, fresh=False)
        except (ValidationError, ResourceExhaustedError):
            pools = await self._pools_for(version, requested, args.node, args.use, fresh=True)
        got: list[str] = []
        try:
            try:
                await self._assign_loop(version, num, args, pools, got)
            except ResourceExhaustedError:
                # Before failing, look again with fresh pools: one may just have been added.
                fresh = await self._pools_for(version, requested, args.node, args.use, fresh=True)
                if fresh == pools:
                    raise
                await self._assign_loop(version, num, args, fresh, got)
        except BaseException:
            if got:
                await self._rollback(got, args.handle)
            raise
        return got

    async def _assign_loop(
        self, version: int, num: int, args: AutoAssignArgs, pools: list[Pool], got: list[str]
    ) -> None:
        reservations = await self.resources.reservations()
        conflicts = 0
        what = f"assigning IPv{version} addresses to node {args.node}"
        while len(got) < num:
            rem = num - len(got)
            plan = await self._plan_affine(version, args, pools, reservations, rem)
            if plan is None:
                cfg, _ = await self.get_config()
                try:
                    plan = await self._plan_claim(version, args, pools, reservations, rem, cfg)
                except _BlockLimit as exc:
                    # Calico does not borrow once the node is at its block limit.
                    raise self._exhausted(
                        version, num, len(got), args.node, pools, str(exc)
                    ) from None
                except _Exhausted as exc:
                    if cfg.strict_affinity:
                        reason = f"{exc}; StrictAffinity is true, so no address is borrowed"
                        raise self._exhausted(
                            version, num, len(got), args.node, pools, reason
                        ) from None
                    plan = await self._plan_borrow(version, args, pools, reservations, rem)
                    if plan is None:
                        raise self._exhausted(
                            version, num, len(got), args.node, pools,
                            f"{exc}, and no other node's block has a free address",
                        ) from None
                if plan is None:
                    # A fresh read showed affine space after all: plan that instead.
                    conflicts = self._conflict(conflicts, what)
                    continue
            if await self._commit(plan):
                got.extend(plan.ips)
            else:
                conflicts = self._conflict(conflicts, what)

    def _exhausted(
        self, version: int, num: int, have: int, node: str, pools: list[Pool], reason: str
    ) -> ResourceExhaustedError:
        names = ", ".join(p.label for p in pools)
        got = f" (got {have})" if have else ""
        return ResourceExhaustedError(
            f"could not assign {num} IPv{version} address{'es' if num != 1 else ''} to node "
            f"{node}{got} from pools {names}: {reason}",
            resource=f"Node({node})",
            reason="pools exhausted",
        )

    def _in_pools(self, cidr: Network, pools: Sequence[Pool]) -> bool:
        return any(p.contains_block(cidr) for p in pools)

    async def _plan_affine(
        self,
        version: int,
        args: AutoAssignArgs,
        pools: Sequence[Pool],
        reservations: Reservations,
        rem: int,
    ) -> _Plan | None:
        node = args.node
        affine = await self._affine(node, version)
        key = (node, version)
        order = self._affine_order.get(key)
        if order is None:
            order = self._affine_order[key] = sorted(affine, key=lambda c: int(c.network_address))
        plan = _Plan()
        # A handle this allocator has never seen holding addresses (nearly every request: one
        # handle per pod) cannot have an attribute entry to reuse; should that be wrong, the
        # commit's compare on the handle (must not exist) fails and the retry knows better.
        new_handle = not self._holds_addresses(args.handle)
        for cidr, cached in self._affine_walk(node, version, order):
            if not self._in_pools(cidr, pools) or (reservations and reservations.covers(cidr)):
                continue
            if cached is None:
                cached = await self._block(cidr)
                if cached is None:
                    continue  # an affinity without its block: the claim step creates it
                if cached[0].host != node:
                    continue  # a stale affinity; the block belongs to someone else now
            block, rev = cached
            pred = reservations.predicate(cidr) if reservations else None
            if pred is not None and block.num_free(pred) == 0:
                continue
            new = block.copy()
            ords = new.auto_assign(rem, args.handle, args.attrs, pred, new_handle=new_handle)
            if not ords:
                continue
            plan.blocks[cidr] = (new, rev)
            plan.add_ips(new, ords, args.handle)
            state, arev = affine[cidr]
            if state != STATE_CONFIRMED:
                plan.affinities[keys.affinity_key(node, cidr)] = (
                    affinity_json(STATE_CONFIRMED),
                    arev,
                )
            rem -= len(ords)
            if rem <= 0:
                break  # before the walk looks at another block
        return plan if plan.ips else None

    def _affine_walk(
        self, node: str, version: int, order: Sequence[Network]
    ) -> Iterator[tuple[Network, tuple[Block, int] | None]]:
        """The node's affine blocks that may have room, in address order, each with its cached
        block (``None``: not cached). Blocks cached as another node's are skipped; so are full
        ones, and the leading full ones are remembered, so the next walk starts after them:
        a node with many full blocks costs one look-up per allocation, not one per block."""
        key = (node, version)
        leading_full = True
        for idx in range(self._affine_full.get(key, 0), len(order)):
            cidr = order[idx]
            cached = self._blocks.get(cidr)
            if cached is not None:
                if cached[0].host != node:
                    leading_full = False
                    continue  # not ours any more
                if not cached[0].unallocated:
                    if leading_full:
                        self._affine_full[key] = idx + 1
                    continue  # full: the common case for all but one block
            leading_full = False
            yield cidr, cached

    def _holds_addresses(self, handle: str | None) -> bool:
        """Whether the cache knows ``handle`` to hold addresses (absent or unseen: not)."""
        known = self._handles.get(handle) if handle else None
        return known is not None and known[0] is not None

    async def _plan_claim(
        self,
        version: int,
        args: AutoAssignArgs,
        pools: Sequence[Pool],
        reservations: Reservations,
        rem: int,
        cfg: IPAMConfig,
    ) -> _Plan | None:
        """A plan that claims one block for the node and allocates from it.

        Returns None (with nothing to report) when a refresh shows affine space after all, so
        the caller plans the affine step again; raises _Exhausted when no block can be claimed.
        """
        node = args.node
        before = dict(await self._affine(node, version))
        affine = await self._affine(node, version, fresh=True)
        if affine != before:
            return None  # another process claimed for this node; use that first
        if not cfg.auto_allocate_blocks:
            raise _Exhausted("every affine block is full and AutoAllocateBlocks is false")
        owned = [c for c in affine if self._in_pools(c, pools)]
        limit = cfg.effective_max_blocks(args.max_blocks_per_host)
        # Which blocks exist, by key only: a claim must not list every block's contents (in a
        # big cluster that is megabytes, for one new block every 64 allocations).
        existing = await self._block_revisions(version)
        # Our own affine blocks may have changed too (borrowers, releases): re-plan if so.
        # Only those written since we cached them are read again.
        for cidr in owned:
            rev = existing.get(cidr)
            if rev is None:
                continue
            cached = self._blocks.get(cidr)
            if cached is None or cached[1] != rev:
                cached = await self._block(cidr, fresh=True)
            if cached is not None and cached[0].host == node:
                pred = reservations.predicate(cidr) if reservations else None
                if cached[0].num_free(pred) > 0 and not reservations.covers(cidr):
                    return None
        # An affinity of ours whose block does not exist (a claim someone left half done).
        for cidr in sorted(owned, key=lambda c: int(c.network_address)):
            if cidr not in existing and not reservations.covers(cidr):
                return self._new_block_plan(cidr, args, reservations, rem, affine, {})
        if len(owned) >= limit:
            raise _BlockLimit(
                f"node {node} already has {len(owned)} IPv{version} blocks in these pools and "
                f"the per-host block limit (MaxBlocksPerHost) is {limit}; raise it with "
                "'calicoctl ipam configure --max-blocks-per-host=N' or free addresses"
            )
        for pool in pools:
            for cidr in block_walk(pool, node):
                if cidr in existing or reservations.covers(cidr):
                    continue
                return self._new_block_plan(cidr, args, reservations, rem, affine, {})
        # No unclaimed block left: take over an empty one nobody has used for a while.
        now = self.wall_clock()
        listed = await self._list_blocks(version)
        for pool in pools:
            for cidr in walk_order(pool, node, listed):
                block, rev = listed[cidr]
                if not block.empty() or block.host == node or reservations.covers(cidr):
                    continue
                claimed_at = parse_rfc3339(block.affinity_claim_time or "") or 0.0
                if block.affinity and now - claimed_at < EMPTY_BLOCK_MIN_RECLAIM_AGE:
                    continue
                takeover: dict[str, tuple[bytes | None, int]] = {}
                if block.host:
                    other = keys.affinity_key(block.host, cidr)
                    kv = await self._read(other)
                    if kv is not None:
                        takeover[other] = (None, kv.mod_revision)
                plan = self._new_block_plan(cidr, args, reservations, rem, affine, takeover)
                plan.blocks[cidr] = (plan.blocks[cidr][0], rev)
                log.info("reclaiming empty block %s from %r for %s", cidr, block.host, node)
                return plan
        raise _Exhausted("every block of these pools is claimed and in use")

    def _new_block_plan(
        self,
        cidr: Network,
        args: AutoAssignArgs,
        reservations: Reservations,
        rem: int,
        affine: Mapping[Network, tuple[str, int]],
        extra_affinities: dict[str, tuple[bytes | None, int]],
    ) -> _Plan:
        block = Block.new(cidr, args.node)
        pred = reservations.predicate(cidr) if reservations else None
        ords = block.auto_assign(rem, args.handle, args.attrs, pred)
        plan = _Plan()
        plan.blocks[cidr] = (block, 0)
        plan.affinities.update(extra_affinities)
        plan.affinities[keys.affinity_key(args.node, cidr)] = (
            affinity_json(STATE_CONFIRMED),
            affine.get(cidr, ("", 0))[1],
        )
        plan.add_ips(block, ords, args.handle)
        log.info("claiming block %s for node %s", cidr, args.node)
        return plan

    async def _plan_borrow(
        self,
        version: int,
        args: AutoAssignArgs,
        pools: Sequence[Pool],
        reservations: Reservations,
        rem: int,
    ) -> _Plan | None:
        existing = await self._list_blocks(version)
        plan = _Plan()
        for pool in pools:
            for cidr in walk_order(pool, args.node, existing):
                if rem <= 0:
                    break
                block, rev = existing[cidr]
                if block.host == args.node or reservations.covers(cidr):
                    continue
                pred = reservations.predicate(cidr) if reservations else None
                if block.num_free(pred) == 0:
                    continue
                new = block.copy()
                ords = new.auto_assign(rem, args.handle, args.attrs, pred)
                if ords:
                    plan.blocks[cidr] = (new, rev)
                    plan.add_ips(new, ords, args.handle)
                    rem -= len(ords)
        if plan.ips:
            log.info("node %s borrows %d addresses from others' blocks", args.node, len(plan.ips))
            return plan
        return None

    # -- assign one address --------------------------------------------------------------------

    async def assign_ip(
        self, ip_text: str, handle: str | None, attrs: Mapping[str, str], node: str
    ) -> str:
        ip = parse_ip(ip_text)
        pools = await self.resources.pools()
        pool = pool_for((p for p in pools if not p.disabled), ip)
        if pool is None:
            pools = await self.resources.pools(fresh=True)
            pool = pool_for((p for p in pools if not p.disabled), ip)
        if pool is None:
            raise ValidationError(f"{ip} is in no enabled IP pool; create a pool that contains it")
        cidr = pool.block_for(ip)
        conflicts = 0
        async with self._lock(node) if node else _nolock():
            while True:
                cfg, _ = await self.get_config()
                cached = await self._block(cidr)
                plan = _Plan()
                if cached is None:
                    if not node:
                        raise ValidationError(f"block {cidr} does not exist and no node was given")
                    affine = await self._affine(node, cidr.version)
                    block = Block.new(cidr, node)
                    plan.blocks[cidr] = (block, 0)
                    plan.affinities[keys.affinity_key(node, cidr)] = (
                        affinity_json(STATE_CONFIRMED),
                        affine.get(cidr, ("", 0))[1],
                    )
                else:
                    block = cached[0].copy()
                    plan.blocks[cidr] = (block, cached[1])
                    if cfg.strict_affinity and block.host != node:
                        raise ValidationError(
                            f"{ip} is in block {cidr} affine to {block.affinity or 'no node'} and "
                            f"StrictAffinity is true, so node {node} cannot use it"
                        )
                ordinal = block.ip_to_ordinal(ip)
                block.assign(ordinal, handle, attrs)
                plan.add_ips(block, [ordinal], handle)
                if await self._commit(plan):
                    return str(ip)
                conflicts = self._conflict(conflicts, f"assigning {ip}")

    # -- release -------------------------------------------------------------------------------

    async def _block_cidr_for(self, ip: Address, pools: Sequence[Pool]) -> Network | None:
        pool = pool_for(pools, ip)
        if pool is not None:
            return pool.block_for(ip)
        for cidr in self._blocks:
            if cidr.version == ip.version and ip in cidr:
                return cidr
        for cidr in await self._list_blocks(ip.version):
            if ip in cidr:
                return cidr
        return None

    async def release_ips(self, requests: Sequence[ReleaseOptions]) -> list[str]:
        """Release addresses; returns those that were not allocated."""
        pools = await self.resources.pools()
        by_block: dict[Network, list[tuple[Address, ReleaseOptions]]] = {}
        not_allocated: list[str] = []
        for req in requests:
            ip = parse_ip(req.ip)
            cidr = await self._block_cidr_for(ip, pools)
            if cidr is None:
                not_allocated.append(str(ip))
            else:
                by_block.setdefault(cidr, []).append((ip, req))
        for cidr, items in by_block.items():
            not_allocated.extend(await self._release_in_block(cidr, items))
        return not_allocated

    async def _release_in_block(
        self, cidr: Network, items: list[tuple[Address, ReleaseOptions]]
    ) -> list[str]:
        conflicts = 0
        while True:
            cached = await self._block(cidr, fresh=conflicts > 0)
            if cached is None:
                return [str(ip) for ip, _ in items]
            block, rev = cached
            new = block.copy()
            reqs = [
                (new.ip_to_ordinal(ip), req.handle or None, req.sequence_number)
                for ip, req in items
            ]
            missing, by_handle = new.release(reqs)
            not_allocated = [str(new.ordinal_to_ip(o)) for o in missing]
            if not by_handle and len(missing) == len(reqs):
                return not_allocated
            plan = _Plan()
            delete = new.empty() and new.affinity is None
            plan.blocks[cidr] = (None if delete else new, rev)
            for handle_id, n in by_handle.items():
                h, _ = await self._handle(handle_id)
                if h is not None and str(cidr) in h.blocks:
                    plan.handles.setdefault(handle_id, {})[str(cidr)] = -n
            if await self._commit(plan):
                return not_allocated
            conflicts = self._conflict(conflicts, f"releasing addresses in {cidr}")

    async def release_by_handle(self, handle_id: str) -> list[str]:
        """Release every address of a handle; an unknown handle releases nothing."""
        conflicts = 0
        while True:
            h, _ = await self._handle(handle_id, fresh=conflicts > 0)
            if h is None:
                return []
            plan = _Plan()
            released: list[str] = []
            for cidr_s in sorted(h.blocks):
                cidr = ipaddress.ip_network(cidr_s, strict=False)
                cached = await self._block(cidr, fresh=conflicts > 0)
                plan.handle_drops.setdefault(handle_id, set()).add(cidr_s)
                if cached is None:
                    continue
                block, rev = cached
                new = block.copy()
                ords = new.release_by_handle(handle_id)
                if not ords:
                    continue
                released.extend(str(new.ordinal_to_ip(o)) for o in ords)
                delete = new.empty() and new.affinity is None
                plan.blocks[cidr] = (None if delete else new, rev)
            if not h.blocks:
                plan.handle_drops.setdefault(handle_id, set())
            if await self._commit(plan):
                return released
            conflicts = self._conflict(conflicts, f"releasing handle {handle_id}")

    # -- affinities ----------------------------------------------------------------------------

    async def claim_affinity(self, cidr_text: str, node: str) -> tuple[list[str], list[str]]:
        """Claim every block inside ``cidr`` for ``node``; returns (claimed, failed)."""
        if not node:
            raise ValidationError("node is required to claim block affinity")
        try:
            net = ipaddress.ip_network(cidr_text, strict=False)
        except ValueError as exc:
            raise ValidationError(f"{cidr_text!r} is not a CIDR") from exc
        pools = await self.resources.pools(fresh=True)
        pool = next((p for p in pools if p.contains_block(net)), None)
        if pool is None:
            raise ValidationError(f"{net} is not inside any IP pool")
        if net.prefixlen > pool.block_size:
            raise ValidationError(f"{net} is smaller than the pool's block size /{pool.block_size}")
        claimed: list[str] = []
        failed: list[str] = []
        async with self._lock(node):
            affine = await self._affine(node, net.version, fresh=True)
            for cidr in net.subnets(new_prefix=pool.block_size):
                conflicts = 0
                while True:
                    cached = await self._block(cidr, fresh=True)
                    plan = _Plan()
                    akey = keys.affinity_key(node, cidr)
                    arev = affine.get(cidr, ("", 0))[1]
                    if cached is None:
                        plan.blocks[cidr] = (Block.new(cidr, node), 0)
                    elif cached[0].host != node:
                        failed.append(str(cidr))
                        break
                    elif affine.get(cidr, ("", 0))[0] == STATE_CONFIRMED:
                        claimed.append(str(cidr))
                        break
                    plan.affinities[akey] = (affinity_json(STATE_CONFIRMED), arev)
                    if await self._commit(plan):
                        claimed.append(str(cidr))
                        break
                    conflicts = self._conflict(conflicts, f"claiming {cidr} for {node}")
        return claimed, failed

    async def release_affinity(self, node: str, cidr_text: str = "") -> list[str]:
        """Release the node's affinity for ``cidr``'s blocks, or for all its empty blocks.

        An empty block is deleted with its affinity; a block still in use named explicitly
        keeps its addresses and loses its affinity (so it is only borrowed from afterwards).
        """
        if not node:
            raise ValidationError("node is required to release block affinity")
        released: list[str] = []
        async with self._lock(node):
            targets: list[Network] = []
            if cidr_text:
                try:
                    net = ipaddress.ip_network(cidr_text, strict=False)
                except ValueError as exc:
                    raise ValidationError(f"{cidr_text!r} is not a CIDR") from exc
                affine = await self._affine(node, net.version, fresh=True)
                targets = [c for c in affine if c.subnet_of(net)]  # type: ignore[arg-type]
                if not targets:
                    raise NotFoundError(f"node {node} has no affinity for a block in {net}")
            else:
                for version in (4, 6):
                    targets.extend(await self._affine(node, version, fresh=True))
            for cidr in targets:
                conflicts = 0
                while True:
                    affine = await self._affine(node, cidr.version)
                    if cidr not in affine:
                        break
                    akey = keys.affinity_key(node, cidr)
                    plan = _Plan()
                    plan.affinities[akey] = (None, affine[cidr][1])
                    cached = await self._block(cidr, fresh=conflicts > 0)
                    if cached is not None and cached[0].host == node:
                        block, rev = cached
                        if block.empty():
                            plan.blocks[cidr] = (None, rev)
                        elif cidr_text:
                            new = block.copy()
                            new.affinity = None
                            new.affinity_claim_time = None
                            plan.blocks[cidr] = (new, rev)
                        else:
                            break  # node-wide release keeps blocks that are in use
                    if await self._commit(plan):
                        released.append(str(cidr))
                        break
                    conflicts = self._conflict(conflicts, f"releasing affinity {cidr} of {node}")
        return released

    # -- queries -------------------------------------------------------------------------------

    async def get_assignment(self, ip_text: str) -> Assignment:
        ip = parse_ip(ip_text)
        pools = await self.resources.pools()
        cidr = await self._block_cidr_for(ip, pools)
        if cidr is None:
            return Assignment(str(ip), False)
        cached = await self._block(cidr, fresh=True)
        if cached is None:
            return Assignment(str(ip), False)
        block = cached[0]
        ordinal = block.ip_to_ordinal(ip)
        attr = block.attribute_of(ordinal)
        out = Assignment(str(ip), attr is not None, str(cidr), block.affinity or "")
        if attr is not None:
            out.handle = block.handle_of(ordinal)
            out.attrs = {str(k): str(v) for k, v in (attr.get("secondary") or {}).items()}
            out.sequence_number = block.seq_of(ordinal)
        return out

    async def utilization(self, pool_filter: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Per pool: capacity, in use, reserved, free and per-block figures (``ipam show``).

        ``free`` counts addresses neither allocated nor reserved: a block's free unreserved
        ordinals, plus every unreserved address of the pool's blocks nobody has claimed yet.
        With no filter, blocks that lie in no pool (their pool was deleted) come last under an
        entry with empty name and cidr, as Calico reports them.
        """
        pools = await self.resources.pools(fresh=True)
        reservations = await self.resources.reservations(fresh=True)
        blocks = await self._list_blocks()
        names = set(pool_filter)
        nets = {ipaddress.ip_network(f, strict=False) for f in pool_filter if _is_cidr(f)}
        wanted = [p for p in pools if not pool_filter or p.name in names or p.cidr in nets]
        ordered = sorted(blocks, key=lambda c: (c.version, int(c.network_address)))
        placed: set[Network] = set()
        out = []

        def block_row(cidr: Network) -> dict[str, Any]:
            b = blocks[cidr][0]
            pred = reservations.predicate(cidr) if reservations else None
            return {
                "cidr": str(cidr),
                "affinity": b.affinity or "",
                "capacity": b.size,
                "in_use": b.in_use(),
                "reserved": reservations.count_in(cidr),
                "free": b.num_free(pred),
            }

        for p in sorted(wanted, key=lambda p: (p.version, int(p.cidr.network_address))):
            rows = [block_row(c) for c in ordered if c not in placed and p.contains_block(c)]
            placed.update(ipaddress.ip_network(r["cidr"]) for r in rows)
            reserved = reservations.count_in(p.cidr)
            # Unclaimed space: the pool minus its blocks, minus what is reserved there.
            unclaimed = p.cidr.num_addresses - sum(r["capacity"] for r in rows)
            unclaimed -= reserved - sum(r["reserved"] for r in rows)
            out.append(
                {
                    "name": p.name,
                    "cidr": str(p.cidr),
                    "capacity": p.cidr.num_addresses,
                    "in_use": sum(r["in_use"] for r in rows),
                    "reserved": reserved,
                    "free": max(0, unclaimed) + sum(r["free"] for r in rows),
                    "blocks": rows,
                }
            )
        if not pool_filter:
            orphans = [block_row(c) for c in ordered if c not in placed]
            if orphans:
                out.append(
                    {
                        "name": "",
                        "cidr": "",
                        "capacity": sum(r["capacity"] for r in orphans),
                        "in_use": sum(r["in_use"] for r in orphans),
                        "reserved": sum(r["reserved"] for r in orphans),
                        "free": sum(r["free"] for r in orphans),
                        "blocks": orphans,
                    }
                )
        return out

    async def borrowed(self) -> tuple[list[dict[str, str]], int]:
        """Allocations whose node is not the block's affine node (``show --show-borrowed``).

        Includes allocations in blocks with no affinity. Returns the rows and the number of
        allocations with no ``node`` attribute, which cannot be classified.
        """
        blocks = await self._list_blocks()
        rows: list[dict[str, str]] = []
        unclassified = 0
        for cidr in sorted(blocks, key=lambda c: (c.version, int(c.network_address))):
            block = blocks[cidr][0]
            owner = block.affinity or ""
            owner = owner.split(":", 1)[1] if ":" in owner else owner
            for o in block.allocated_ordinals():
                sec = (block.attribute_of(o) or {}).get("secondary") or {}
                node = sec.get(ATTR_NODE)
                if not node:
                    unclassified += 1
                    continue
                if node == owner:
                    continue
                kind, to = "", ""
                if sec.get(ATTR_POD):
                    kind, to = ATTR_POD, f"{sec.get(ATTR_NAMESPACE, '')}/{sec[ATTR_POD]}"
                elif sec.get(ATTR_TYPE):
                    kind = str(sec[ATTR_TYPE])
                rows.append(
                    {
                        "ip": str(block.ordinal_to_ip(o)),
                        "borrowing_node": str(node),
                        "block": str(cidr),
                        "block_owner": owner,
                        "type": kind,
                        "allocated_to": to,
                    }
                )
        return rows, unclassified

    async def snapshot(self) -> tuple[list[tuple[Block, int]], dict[str, tuple[Handle, int]]]:
        """Every block and handle in the store (for ``ipam check``)."""
        blocks = await self._list_blocks()
        kvs, _ = await self.kv.list(keys.HANDLE_PREFIX)
        handles: dict[str, tuple[Handle, int]] = {}
        for kv in kvs:
            hid = keys.parse_handle_key(kv.key)
            if hid is not None:
                try:
                    handles[hid] = (Handle.from_json(kv.value), kv.mod_revision)
                except ValueError:
                    log.warning("ignoring unreadable handle %s", kv.key)
        return list(blocks.values()), handles


def _is_cidr(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


class _nolock:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


__all__ = [
    "Allocator",
    "AlreadyExistsError",
    "Assignment",
    "AutoAssignArgs",
    "AutoAssignResult",
    "ReleaseOptions",
    "ResourceCache",
]
