"""The dataplane driver: desired state from the Sync stream, applied to the kernel in Felix's order.

::

    BatchSource ──batches──> Driver.on_batch ── per message, by payload ──┐
      (calc_graph Sync,          │                                        │
       or a queue)               │  ClusterState (routes, VTEPs, hosts,   │ PolicyManager
                                 │  pools, encap, Felix params)           │ (compiler queue)
                                 │  EndpointManager (local WEPs)          │
                                 v                                        v
                         apply loop (one task; batches arriving meanwhile are coalesced)
                           1. compile policy → chains, hooks, sets into the rule owners
                           2. derive: MTU, blackholes (blocks), VXLAN, IPIP, workload sysctls
                           3. write, in order:  IP-set creates/updates
                                                devices → neighbours/FDB → routes
                                                iptables tables / nftables
                                                IP-set deletes → conntrack → MTU file
                           4. report: endpoint up/down/error, DataplaneInSync (once)
      LinkWatcher ─ link events ─> link cache, endpoint interfaces, pending routes ─> wake
      refresh timer ─ per owner group ─> mark_resync ─> wake (read-back repairs drift)

Rules the loop keeps:

- **Nothing is written before the first ``InSync``** (as Felix): the snapshot may arrive in
  several batches and a partial one must not replace a complete kernel state (a restarted
  driver would otherwise cut the traffic of endpoints it has not heard about yet).
- The first apply after ``InSync`` reads every owner back and is a **mark-and-sweep**: objects
  recognisably ours (``cali-`` chains and ``cali:`` hooks, ``cali4*`` sets, the ``calico`` nft
  tables, routes with protocol 80 or via ``cali*``, the VXLAN device's entries) that nothing
  wants are removed; everything else is left alone.
- A failed write (``KernelError``/``OSError``) marks its owner for read-back and the apply is
  retried with exponential backoff (``retry_min`` … ``retry_max``); the other stages still run.
  Anything else is a bug and ends the driver (crash-only; the supervisor restarts it).
- A stream restart (``RESET``) starts a new generation: desired state is forgotten, the kernel
  is left as it is, and the next ``InSync`` sweeps again.

Tracing: each apply is one span ``dataplane.apply``, a child of the newest batch's
``traceparent`` it programs (linking the other batches' ones), so a ``calicoctl apply`` trace
ends in every node's kernel writes: the runner's ``exec <tool>`` / ``write <tool>`` spans (a
one-off process, or the long-lived writers of ``sessions``) and ``netlink routes`` when routes
were written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace

from libcalico import endpoint_status
from libcalico.api.felix import felixbackend_pb2 as fb
from libcalico.runtime.telemetry import context_from_traceparent, get_tracer, link_from_traceparent

from .blocks import BlockManager
from .commands import KernelError
from .conntrack import ConntrackManager
from .endpoints import EndpointManager, wep_id, wep_key
from .ipip import IPIPManager
from .masq import MasqManager
from .mtu import MTUManager
from .owners.links import LinkWatcher
from .owners.netlink import Link, Netlink
from .owners.routes import LinkCache, RouteOwner
from .policy import COMPILED, IPTABLES, PolicyManager
from .state import HANDLED as STATE_KINDS
from .state import ClusterState
from .status import StatusReporter
from .stream import Batch, BatchSource, Reset
from .vxlan import VXLANManager

log = logging.getLogger(__name__)

REFRESH_GROUPS = ("iptables", "ipsets", "routes")


@dataclass
class DriverSettings:
    node: str
    flavor: str = IPTABLES
    iptables_refresh: float = 90.0
    ipsets_refresh: float = 90.0
    routes_refresh: float = 90.0
    retry_min: float = 0.1
    retry_max: float = 30.0
    endpoint_status_dir: str | None = None  # status file per local endpoint (CNI waits on it)


@dataclass(frozen=True)
class ApplyReport:
    """Handed to observers (metrics) after every apply."""

    seconds: float
    failed_stages: tuple[str, ...]
    batch_latencies: tuple[float, ...]  # of the batches this apply programmed
    # Wall seconds from the change's commit (calc_graph's receipt of the watch event, carried
    # as SyncBatch.datastore_commit_unix_ns) to this apply's end, per batch programmed.
    policy_latencies: tuple[float, ...] = ()
    # Wall seconds from a new local endpoint's commit to its first "up" (pod network ready).
    ready_latencies: tuple[float, ...] = ()


@dataclass
class ApplyStats:
    applies: int = 0
    failures: int = 0
    last_failed_stages: list[str] = field(default_factory=list)
    last_seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    resyncs: dict[str, int] = field(default_factory=dict)  # stream restarts, owner read-backs


class Driver:
    def __init__(
        self,
        settings: DriverSettings,
        *,
        nl: Netlink,
        links: LinkCache,
        state: ClusterState,
        policy: PolicyManager,
        endpoints: EndpointManager,
        routes: RouteOwner,
        blocks: BlockManager,
        vxlan: VXLANManager,
        ipip: IPIPManager,
        mtu: MTUManager,
        conntrack: ConntrackManager,
        masq: MasqManager,
        reporter: StatusReporter,
    ) -> None:
        self.settings = settings
        self.nl = nl
        self.links = links
        self.state = state
        self.policy = policy
        self.endpoints = endpoints
        self.routes = routes
        self.blocks = blocks
        self.vxlan = vxlan
        self.ipip = ipip
        self.mtu = mtu
        self.conntrack = conntrack
        self.masq = masq
        self.reporter = reporter
        self.in_sync = False
        self.generation = 0
        self.stats = ApplyStats()
        self._wake = asyncio.Event()
        self._received = 0  # batches received (this generation and before)
        self.applied = 0  # value of _received covered by the last successful apply
        self._applied_cond = asyncio.Condition()
        self._in_sync_reported = False
        self._sweep_pending = False
        self._retry_delay: float | None = None
        self._links_fresh = False
        self._addr_owners: dict[str, int] = {}
        self._last_refresh = dict.fromkeys(REFRESH_GROUPS, time.monotonic())
        self.batch_latencies: list[float] = []  # seconds from receipt to programmed
        self._receipts: deque[tuple[int, float]] = deque()
        self.observers: list[Callable[[ApplyReport], None]] = []
        self._traceparents: list[str] = []  # of the batches received since the last apply
        self._commits: deque[tuple[int, int]] = deque(maxlen=10000)  # (_received, commit ns)
        self._ep_since: dict[Any, int] = {}  # new local endpoint -> commit ns, until it is up

    # -- input -----------------------------------------------------------------------------

    def on_batch(self, messages: Sequence[fb.ToDataplane]) -> None:
        for msg in messages:
            kind = msg.WhichOneof("payload")
            if kind is None:
                continue
            if kind == "in_sync":
                if not self.in_sync:
                    log.info("datastore in sync: applying, then sweeping what is not wanted")
                    self.in_sync = True
                    self._sweep_pending = True
                continue
            if kind in COMPILED:
                self.policy.on_message(msg, kind)
            if kind in STATE_KINDS:
                self.state.on_message(msg, kind)
            if kind == "workload_endpoint_update":
                self.endpoints.on_update(msg.workload_endpoint_update)
            elif kind == "workload_endpoint_remove":
                self.endpoints.on_remove(msg.workload_endpoint_remove)
        self._received += 1
        self._wake.set()

    def new_generation(self) -> None:
        """The stream restarted: forget desired state, keep the kernel, wait for InSync."""
        self.generation += 1
        self.stats.resyncs["stream"] = self.stats.resyncs.get("stream", 0) + 1
        self.in_sync = False
        self._sweep_pending = False
        # Tell the (possibly new) calc_graph again once this generation's snapshot is applied.
        self._in_sync_reported = False
        self.policy.new_generation()
        self.state.reset()
        self.endpoints.reset()
        self.routes.reset_desired()
        for manager in (self.blocks, self.vxlan, self.ipip):
            manager.reset()
        log.info("stream restarted (generation %d): waiting for a fresh snapshot",
                 self.generation)

    def on_link_event(self, link: Link, deleted: bool) -> None:
        self.links.apply_event(link, deleted)
        ours = self.endpoints.iface_event(link.name, link.index, deleted)
        if not deleted and link.name in self.routes.pending_ifaces:
            self.routes.iface_appeared(link.name)
            ours = True
        if link.name in (self.vxlan.device.name, self.ipip.device.name):
            self.vxlan.device.mark_resync()
            self.ipip.device.mark_resync()
            ours = True
        if ours:
            self._wake.set()

    def on_link_events_lost(self) -> None:
        """The link watcher lost events (socket overrun or error): re-read the links."""
        self._links_fresh = False
        self.endpoints.reconfigure_all()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    # -- apply -----------------------------------------------------------------------------

    def _mark_resync(self, groups: Sequence[str]) -> None:
        t = self.policy.owners
        if "iptables" in groups:
            for table in t.tables.values():
                table.mark_resync()
            t.nft.mark_resync()
        if "ipsets" in groups:
            t.ipsets.mark_resync()
        if "routes" in groups:
            self.routes.mark_resync()
            self.vxlan.device.mark_resync()
            self.vxlan.neighbours.mark_resync()
            self.vxlan.fdb.mark_resync()
            self.ipip.device.mark_resync()
            self._links_fresh = False
            self.state.dirty = True
        now = time.monotonic()
        for g in groups:
            self._last_refresh[g] = now
            self.stats.resyncs[g] = self.stats.resyncs.get(g, 0) + 1

    async def _stage(self, name: str, failures: list[str],
                     fn: Callable[[], Awaitable[Any]]) -> None:
        t0 = time.perf_counter()
        t0_ns = time.time_ns()
        try:
            wrote = await fn()
            if name == "routes" and wrote is True:  # netlink route writes: a span after the fact
                get_tracer().start_span(
                    "netlink routes", start_time=t0_ns,
                    attributes={"calico.tool": "netlink", "calico.node": self.settings.node},
                ).end()
        except (KernelError, OSError) as exc:
            log.warning("dataplane %s failed (will retry): %s", name, exc)
            failures.append(name)
        finally:
            self.stats.stage_seconds[name] = time.perf_counter() - t0

    async def apply_once(self) -> bool:
        """One pass over every stage; returns whether every write succeeded."""
        if not self.in_sync:
            return False
        tps, self._traceparents = self._traceparents, []
        parent = context_from_traceparent(tps[-1]) if tps else None
        links = [link for tp in dict.fromkeys(tps[:-1])
                 if (link := link_from_traceparent(tp)) is not None][:32]
        with get_tracer().start_as_current_span(
            "dataplane.apply", context=parent, links=links,
            attributes={"calico.node": self.settings.node, "calico.batches": len(tps)},
        ) as span:
            ok = await self._apply_once()
            if not ok:
                span.set_status(trace.StatusCode.ERROR, ",".join(self.stats.last_failed_stages))
            return ok

    async def _apply_once(self) -> bool:
        covered = self._received
        started = time.perf_counter()
        allow = True  # in sync: deletions of what nothing wants are allowed
        if self._sweep_pending:
            self._mark_resync(REFRESH_GROUPS)
            self._sweep_pending = False
        failures: list[str] = []
        st = self.state
        owners = self.policy.owners

        t0 = time.perf_counter()
        self.policy.compile()  # a compiler exception is a bug: it ends the driver
        self.stats.stage_seconds["compile"] = time.perf_counter() - t0
        if self.masq.changed(st):
            owners.table(4, "nat").mark_resync()

        async def refresh_links() -> None:
            if not self._links_fresh:
                await self.links.refresh()
                self._links_fresh = True

        await self._stage("links", failures, refresh_links)
        self.mtu.update(st, self.links.by_name.values())
        if st.dirty:
            async def derive() -> None:
                if st.vteps or st.ipip_enabled:
                    self._addr_owners = await self.nl.address_owners()
                self.blocks.prepare(st)
                self.vxlan.prepare(st, self.mtu.host_mtu, self._iface_of)
                self.ipip.prepare(st, self.mtu.host_mtu, self._iface_of)
                st.dirty = False

            await self._stage("derive", failures, derive)

        async def sysctls() -> None:
            self.endpoints.configure_interfaces()

        await self._stage("interfaces", failures, sysctls)
        # In the nftables flavor nothing is wanted of ipset, but this is also the owner's
        # read-back: without it the sweep never learns of an iptables-era node's cali sets.
        await self._stage("ipsets", failures, owners.ipsets.apply_updates)

        async def devices() -> None:
            await self.vxlan.device.apply(allow)
            await self.ipip.device.apply(allow)

        await self._stage("devices", failures, devices)

        async def neighbours() -> None:
            await self.vxlan.neighbours.apply(allow)
            await self.vxlan.fdb.apply(allow)

        await self._stage("neighbours", failures, neighbours)
        await self._stage("routes", failures, lambda: self.routes.apply(allow))
        # IPv4 and IPv6 rules are independent: write both families at once (raw, mangle,
        # nat, filter in order within each), which halves the latency of a typical change.
        async def family(v: int) -> None:
            for tkey in sorted((k for k in owners.tables if k[0] == v),
                               key=lambda k: _TABLE_ORDER[k[1]]):
                table = owners.tables[tkey]
                await self._stage(f"iptables-v{v}-{tkey[1]}", failures,
                                  lambda t=table: t.apply(allow))  # type: ignore[misc]

        await asyncio.gather(*(family(v) for v in sorted({k[0] for k in owners.tables})))
        await self._stage("nftables", failures, lambda: owners.nft.apply(allow))
        await self._stage("ipset-deletes", failures, lambda: owners.ipsets.apply_deletes(allow))
        await self._stage("conntrack", failures, self.conntrack.flush)

        async def mtu_file() -> None:
            self.mtu.write()

        await self._stage("mtu-file", failures, mtu_file)

        updates, removed = self.endpoints.status_changes(apply_ok=not failures)
        now_ns = time.time_ns()
        ready: list[float] = []
        status_dir = self.settings.endpoint_status_dir
        for key, status, ep in updates:
            self.reporter.endpoint(wep_id(key), status, ep.endpoint)
            if status == "up" and key in self._ep_since:
                ready.append(max(0, now_ns - self._ep_since.pop(key)) / 1e9)
            if status_dir:
                endpoint_status.write(status_dir, endpoint_status.filename(*key), {
                    "status": status, "ifaceName": ep.ifname, "node": self.settings.node,
                    "nets": list(ep.nets), "unix_ns": now_ns})
        for key in removed:
            self.reporter.endpoint_removed(wep_id(key))
            self._ep_since.pop(key, None)
            if status_dir:
                endpoint_status.remove(status_dir, endpoint_status.filename(*key))

        self.stats.applies += 1
        self.stats.last_seconds = time.perf_counter() - started
        self.stats.last_failed_stages = failures
        if failures:
            self.stats.failures += 1
            self._notify(ApplyReport(self.stats.last_seconds, tuple(failures), (),
                                     ready_latencies=tuple(ready)))
            return False
        if not self._in_sync_reported:
            self.reporter.in_sync()
            self._in_sync_reported = True
            log.info("dataplane in sync after %.3fs apply", self.stats.last_seconds)
        done = time.perf_counter()
        programmed: list[float] = []
        while self._receipts and self._receipts[0][0] <= covered:
            programmed.append(done - self._receipts.popleft()[1])
        self.batch_latencies.extend(programmed)
        del self.batch_latencies[:-10000]
        policy = []
        while self._commits and self._commits[0][0] <= covered:
            policy.append(max(0, now_ns - self._commits.popleft()[1]) / 1e9)
        self._notify(ApplyReport(self.stats.last_seconds, (), tuple(programmed), tuple(policy),
                                 tuple(ready)))
        async with self._applied_cond:
            self.applied = covered
            self._applied_cond.notify_all()
        return True

    def _notify(self, report: ApplyReport) -> None:
        for fn in self.observers:
            fn(report)

    def _iface_of(self, ip: str) -> str | None:
        idx = self._addr_owners.get(ip)
        return self.links.name(idx) if idx is not None else None

    async def wait_applied(self, count: int | None = None, timeout: float = 30.0) -> None:
        """Wait until every batch received so far (or ``count`` batches) is programmed."""
        target = self._received if count is None else count

        async def cond() -> None:
            async with self._applied_cond:
                await self._applied_cond.wait_for(lambda: self.applied >= target)

        await asyncio.wait_for(cond(), timeout)

    async def warm_up(self) -> None:
        """Start-up work done while the snapshot is still on its way: open the netlink
        socket and learn the interfaces, so the first apply is only the writes."""
        try:
            await self.nl.open()
            await self.links.refresh()
            self._links_fresh = True
        except (KernelError, OSError) as exc:
            log.warning("warm-up failed (the first apply will retry): %s", exc)

    # -- loops -----------------------------------------------------------------------------

    async def _ingest(self, source: BatchSource) -> None:
        async for item in source.items():
            if isinstance(item, Reset):
                self.new_generation()
            else:
                self._on_source_batch(item)

    def _on_source_batch(self, batch: Batch) -> None:
        commit = batch.commit_unix_ns or time.time_ns()
        for msg in batch.messages:
            if msg.WhichOneof("payload") == "workload_endpoint_update":
                key = wep_key(msg.workload_endpoint_update.id)
                if key not in self.endpoints.endpoints:
                    self._ep_since.setdefault(key, commit)
        self.on_batch(batch.messages)
        if batch.commit_unix_ns:
            self._commits.append((self._received, batch.commit_unix_ns))
        if batch.traceparent:
            self._traceparents.append(batch.traceparent)
            del self._traceparents[:-64]
        self._receipts.append((self._received, batch.received or time.perf_counter()))

    async def _apply_loop(self) -> None:
        while True:
            if self._retry_delay is not None:
                try:
                    await asyncio.wait_for(self._wake.wait(), self._retry_delay)
                except TimeoutError:
                    pass
            else:
                await self._wake.wait()
            self._wake.clear()
            if not self.in_sync:
                continue
            ok = await self.apply_once()
            if ok:
                self._retry_delay = None
            else:
                prev = self._retry_delay or self.settings.retry_min / 2
                self._retry_delay = min(prev * 2, self.settings.retry_max)
                log.info("retrying the failed stages in %.2fs", self._retry_delay)

    async def _refresh_loop(self) -> None:
        s = self.settings
        intervals = {"iptables": s.iptables_refresh, "ipsets": s.ipsets_refresh,
                     "routes": s.routes_refresh}
        tick = max(0.05, min(intervals.values()) / 4)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            due = [g for g, iv in intervals.items() if now - self._last_refresh[g] >= iv]
            if due and self.in_sync:
                self._mark_resync(due)
                self._wake.set()

    async def run(self, source: BatchSource, *, watch_links: bool = True) -> None:
        """Run until the source ends (tests) or the task is cancelled (the process)."""
        await self.warm_up()
        async with asyncio.TaskGroup() as tg:
            loops = [
                tg.create_task(self._apply_loop(), name="dataplane-apply"),
                tg.create_task(self._refresh_loop(), name="dataplane-refresh"),
                tg.create_task(self.reporter.run(), name="dataplane-report"),
            ]
            if watch_links:
                watcher = LinkWatcher(self.on_link_event, on_lost=self.on_link_events_lost)
                loops.append(tg.create_task(watcher.run(), name="dataplane-links"))
            await self._ingest(source)
            for t in loops:
                t.cancel()


_TABLE_ORDER = {"raw": 0, "mangle": 1, "nat": 2, "filter": 3}

