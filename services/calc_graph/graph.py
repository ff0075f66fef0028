"""The calculation graph: one shared graph for the cluster, a view per subscribed node.

``build_graph()`` below is the only place stages are connected; its docstring is the map.
``CalcGraph`` holds the stages and runs the two things that are not wiring: applying datastore
updates (``on_updates``/``on_status``) and flushing (``flush``), which turns what changed into
one batch per subscriber in dependency order. Everything here is synchronous and single-threaded;
the driver calls it from the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace

from libcalico.api.felix import felixbackend_pb2 as fb
from libcalico.runtime.log import get_logger
from libcalico.runtime.telemetry import (
    context_from_traceparent,
    get_tracer,
    inject_traceparent,
    link_from_traceparent,
)

from .active_rules import ActiveRules, PolicyTable
from .bgp_view import BGPView
from .config_batcher import ConfigBatcher
from .dispatcher import Dispatcher, UpdateLike
from .encap_resolver import EncapsulationResolver
from .fanout import Batch, BGPSubscriber, Subscriber, in_sync_message
from .ipsets import IPSetRegistry
from .label_index import LabelSetTable
from .local_endpoints import EndpointIndex
from .node_view import NodeView
from .passthru import Passthru
from .policy_resolver import PolicySorter
from .profile_decoder import ProfileDecoder
from .route_resolver import RouteResolver
from .rule_scanner import KIND_GLOBAL_NETWORK_POLICY, KIND_NETWORK_POLICY, RuleScanner
from .vxlan_resolver import VXLANResolver

log = get_logger(__name__)

MAX_LINKS = 32


@contextmanager
def _flush_span(traceparent: str, causes: Iterable[str]) -> Iterator[trace.Span]:
    """One span per flush: a child of the latest change it carries, linked to the others, so
    every batch's ``traceparent`` leads back to each datastore write it reflects."""
    links = [link for tp in causes if (link := link_from_traceparent(tp)) is not None]
    parent = context_from_traceparent(traceparent) if traceparent else None
    with get_tracer().start_as_current_span(
        "calc_graph.flush", context=parent, links=links
    ) as span:
        yield span


class CalcGraph:
    """The stages (attributes named by role) plus update application, subscribers and flush."""

    def __init__(self) -> None:
        self.dispatcher = Dispatcher()
        self.labels = LabelSetTable()
        self.ipsets = IPSetRegistry()
        self.endpoints = EndpointIndex(self.labels, self.ipsets)
        self.scanner = RuleScanner()
        self.sorter = PolicySorter()
        self.rules_by_node: dict[str, ActiveRules] = {}
        self.policies = PolicyTable(self.scanner, self.sorter, self.rules_by_node)
        self.routes = RouteResolver()
        self.vxlan = VXLANResolver()
        self.passthru = Passthru()
        self.encap = EncapsulationResolver()
        self.config = ConfigBatcher()
        self.profiles = ProfileDecoder()
        self.bgp = BGPView(self.routes)
        self.views: dict[str, NodeView] = {}
        self.bgp_subscribers: list[BGPSubscriber] = []
        self.datastore_in_sync = False
        self.in_sync = False
        self.revision = 0
        self.flushes = 0
        self._traceparent = ""  # the latest change's; the flush span is its child
        self._causes: dict[str, None] = {}  # earlier changes in this cycle; linked, at most 32
        self._dirty = False
        # Wall clock when the oldest change of this cycle arrived: the datastore's watch events
        # carry no commit time, so SyncBatch.datastore_commit_unix_ns is this (the drivers'
        # policy-programming latency starts here, a watch hop after the etcd commit).
        self._first_change_ns = 0
        self.on_flush_needed: Callable[[], None] = lambda: None

    # -- inputs ------------------------------------------------------------------------------

    def on_updates(self, updates: Iterable[UpdateLike]) -> None:
        dispatch = self.dispatcher.dispatch
        if not self._first_change_ns:
            self._first_change_ns = time.time_ns()
        for update in updates:
            dispatch(update)
            rev = getattr(update, "revision", 0)
            if rev > self.revision:
                self.revision = rev
            tp = getattr(update, "traceparent", "")
            if tp and tp != self._traceparent:
                if self._traceparent and len(self._causes) < MAX_LINKS:
                    self._causes[self._traceparent] = None
                self._traceparent = tp
        self._dirty = True

    def on_status(self, status: Any) -> None:
        if getattr(status, "name", str(status)) == "IN_SYNC" and not self.datastore_in_sync:
            self.datastore_in_sync = True
            self._dirty = True
            self.on_flush_needed()

    # -- subscribers -------------------------------------------------------------------------

    def subscribe(self, sub: Subscriber) -> None:
        view = self.views.get(sub.node)
        if view is None:
            view = NodeView(sub.node, self)
            self.views[sub.node] = view
            view.open()
            log.info("node view opened", node=sub.node, endpoints=len(view.endpoints))
        view.new_subscribers.append(sub)
        self._dirty = True
        self.on_flush_needed()

    def unsubscribe(self, sub: Subscriber) -> None:
        view = self.views.get(sub.node)
        if view is None:
            return
        for lst in (view.subscribers, view.new_subscribers):
            if sub in lst:
                lst.remove(sub)
        sub.close()
        if not view.subscribers and not view.new_subscribers:
            view.close()
            del self.views[sub.node]
            self._dirty = True
            log.info("node view closed", node=sub.node)

    def subscribe_bgp(self, sub: BGPSubscriber) -> None:
        self.bgp_subscribers.append(sub)
        self._dirty = True
        self.on_flush_needed()

    def unsubscribe_bgp(self, sub: BGPSubscriber) -> None:
        if sub in self.bgp_subscribers:
            self.bgp_subscribers.remove(sub)
        sub.close()
        if not any(s.node == sub.node for s in self.bgp_subscribers):
            self.bgp.forget(sub.node)

    # -- flush -------------------------------------------------------------------------------

    @property
    def dirty(self) -> bool:
        return self._dirty

    def _globals_dirty(self) -> bool:
        return bool(
            self.config.global_dirty
            or self.config.dirty_nodes
            or self.encap.dirty
            or self.ipsets.changed
            or self.profiles.namespaces.dirty
            or self.profiles.service_accounts.dirty
            or self.vxlan.vteps.dirty
            or self.routes.dirty
            or self.passthru.hosts.dirty
            or self.passthru.pools.dirty
        )

    def flush(self) -> int:
        """Send what changed since the last flush; returns the number of messages queued."""
        if not self._dirty:
            return 0
        self._dirty = False
        self.flushes += 1
        becomes_in_sync = self.datastore_in_sync and not self.in_sync
        if becomes_in_sync:
            self.in_sync = True
            # Label statistics are complete now: re-file selectors under their best hints.
            moved = self.policies.index.rehint() + self.ipsets.index.rehint()
            log.info("in sync", selectors_rehinted=moved, stats=self.stats())
        queued = 0
        with _flush_span(self._traceparent, self._causes) as span:
            traceparent = inject_traceparent() or self._traceparent
            globals_dirty = self._globals_dirty()
            for name in self.routes.nodes_changed:
                view = self.views.get(name)
                if view is not None:
                    view.seq.all_routes_dirty = True
            if self.routes.pools_changed:
                for view in self.views.values():
                    view.seq.all_routes_dirty = True
            dropped: list[Subscriber] = []
            for view in list(self.views.values()):
                queued += self._flush_view(view, globals_dirty, traceparent, dropped)
            for sub in dropped:
                log.warning("subscriber cut off", node=sub.node, reason=sub.error)
                self.unsubscribe(sub)
            for bsub in self.bgp_subscribers:
                if not bsub.sent_once or self.bgp.is_dirty(bsub.node) or becomes_in_sync:
                    update = self.bgp.update_for(bsub.node, self.in_sync)
                    update.traceparent = traceparent
                    bsub.offer(update)
                    bsub.sent_once = True
            span.set_attribute("calico.flush.messages", queued)
            span.set_attribute("calico.flush.nodes", len(self.views))
            span.set_attribute("calico.datastore.revision", self.revision)
        self.ipsets.end_flush()
        self.routes.end_flush()
        self.vxlan.end_flush()
        self.passthru.end_flush()
        self.encap.end_flush()
        self.config.end_flush()
        self.profiles.end_flush()
        self.bgp.end_flush()
        self._traceparent = ""
        self._causes = {}
        self._first_change_ns = 0
        return queued

    def _flush_view(
        self, view: NodeView, globals_dirty: bool, traceparent: str, dropped: list[Subscriber]
    ) -> int:
        queued = 0
        seq = view.seq
        if seq.fresh or not view.subscribers:
            # Nobody to send a delta to (a first subscriber, or a hand-over from one that left
            # to one that arrived since the last flush): record the current state as sent.
            seq.settle(self)
        elif (
            globals_dirty
            or seq.has_local_changes()
            or (self.in_sync and not all(s.in_sync_sent for s in view.subscribers))
        ):
            msgs = seq.delta(self)
            for sub in view.subscribers:
                out = msgs
                if self.in_sync and not sub.in_sync_sent:
                    out = [*msgs, in_sync_message()]
                    sub.in_sync_sent = True
                if not out:
                    continue
                if sub.offer(Batch(out, traceparent, self.revision,
                                   commit_unix_ns=self._first_change_ns)):
                    queued += len(out)
                else:
                    dropped.append(sub)
        if view.new_subscribers:
            snapshot = seq.snapshot(self)
            if self.in_sync:
                snapshot.append(in_sync_message())
            for sub in view.new_subscribers:
                sub.in_sync_sent = self.in_sync
                if sub.offer(Batch(snapshot, traceparent, self.revision, snapshot=True)):
                    queued += len(snapshot)
                    view.subscribers.append(sub)
                else:
                    dropped.append(sub)
            view.new_subscribers = []
        return queued

    # -- introspection (tests, bench, status) ------------------------------------------------

    def stats(self) -> dict[str, int]:
        return {
            "items": len(self.endpoints.items),
            "label_sets": len(self.labels),
            "policies": len(self.policies.policies),
            "active_ipsets": len(self.ipsets.sets),
            "node_views": len(self.views),
            "routes": len(self.routes.entries),
            "ipset_evaluations": self.ipsets.index.evaluations,
            "policy_evaluations": self.policies.index.evaluations,
        }


def build_graph() -> CalcGraph:
    """Wire the calculation graph.

    ::

      datastore Syncer ──on_updates/on_status──► CalcGraph ──► Dispatcher (by kind / IPAM key)
          │
          ├─ WorkloadEndpoint, HostEndpoint, (Global)NetworkSet ──► EndpointIndex
          │      (all items, by node) ──► LabelSetTable (interned label sets, labels
          │      inherited from profiles) ──┬──► IPSetRegistry: SelectorIndex of active IP-set
          │                                 │    selectors x all label sets; members refcounted
          │                                 └──► PolicyTable: SelectorIndex of policy selectors
          │                                      x label sets tracked by subscribed nodes
          ├─ Profile ──► LabelSetTable.set_profile_labels, PolicyTable (rules),
          │              ProfileDecoder (kns./ksa. ──► Namespace / ServiceAccount)
          ├─ NetworkPolicy, GlobalNetworkPolicy ──► PolicyTable ──► RuleScanner (parse once)
          ├─ Tier ──► PolicySorter
          ├─ Node ──► RouteResolver, VXLANResolver, Passthru (hosts), BGPView
          ├─ IPPool ──► RouteResolver, EncapsulationResolver, Passthru (pools), BGPView
          ├─ IPAM block ──► RouteResolver (block routes, borrowed /32s)
          ├─ IPAM affinity ──► BGPView (confirmed local blocks)
          ├─ FelixConfiguration, ClusterInformation ──► ConfigBatcher
          └─ BGPConfiguration, BGPPeer ──► BGPView

      per subscribed node (NodeView, opened by Sync(node), closed with its last subscriber):

      EndpointIndex ──local endpoints──► ActiveRules ──acquire/release──► IPSetRegistry
        (endpointHostnameFilter)          (policy/profile counts via PolicyTable matches;
                                           missing profile ⇒ deny-all stand-in)
                                              │
                                              ▼
                                          PolicyResolver (PolicySorter; memo per label set)
                                              │
                                              ▼
      global stages (IP-set members + shared deltas, config, encap, namespaces, VTEPs,
      route facts, hosts, pools) ───────► EventSequencer (dirty keys; Felix's flush order)
                                              │ flush(): snapshot for new subscribers,
                                              ▼ deltas for established ones
                                          Subscribers (bounded queues) ──► Sync(node) streams
      BGPView ──────────────────────────► BGPSubscribers (newest view) ──► BGPSync(node) streams

    Global stages are computed once for the cluster; a NodeView exists only while its node has
    a subscriber, and reads the global stages (IP-set members, VTEPs, routes, namespaces,
    hosts, pools, config) when it flushes.
    """
    g = CalcGraph()
    d = g.dispatcher

    # Label sets feed both selector indexes: IP-set selectors over every label set, policy
    # selectors over label sets that have an endpoint on a subscribed node.
    g.labels.listeners.append(g.ipsets)
    g.labels.listeners.append(g.policies)
    g.ipsets.index.hinter = g.labels.hint_for
    g.policies.index.hinter = g.labels.hint_for

    # Label-bearing items.
    d.register("WorkloadEndpoint", g.endpoints.on_workload_endpoint)
    d.register("HostEndpoint", g.endpoints.on_host_endpoint)
    d.register("NetworkSet", g.endpoints.on_network_set)
    d.register("GlobalNetworkSet", g.endpoints.on_global_network_set)

    # Profiles: labels to inherit, rules for ActiveRules, namespaces/service accounts.
    def on_profile(ns: str, name: str, value: dict[str, Any] | None) -> None:
        labels = ((value or {}).get("spec") or {}).get("labelsToApply")
        g.labels.set_profile_labels(name, labels)
        g.policies.on_profile(name, value)
        g.profiles.on_profile(name, value)

    d.register("Profile", on_profile)

    # Policies and tiers.
    d.register(
        "NetworkPolicy",
        lambda ns, name, v: g.policies.on_policy((KIND_NETWORK_POLICY, ns, name), v),
    )
    d.register(
        "GlobalNetworkPolicy",
        lambda ns, name, v: g.policies.on_policy((KIND_GLOBAL_NETWORK_POLICY, "", name), v),
    )

    def on_tier(ns: str, name: str, value: dict[str, Any] | None) -> None:
        g.sorter.on_tier(name, value)
        for view in g.views.values():  # tier order/default action re-orders every endpoint
            view.rules.endpoints_dirty(view.endpoints.values())

    d.register("Tier", on_tier)

    # Nodes: routes, VTEPs, host metadata, BGP view.
    d.register("Node", lambda ns, name, v: g.routes.on_node(name, v))
    d.register("Node", lambda ns, name, v: g.vxlan.on_node(name, v))
    d.register("Node", lambda ns, name, v: g.passthru.on_node(name, v))
    d.register("Node", lambda ns, name, v: g.bgp.on_node(name, v))

    # Pools: routes, encapsulation, IPAMPool passthru, BGP view.
    d.register("IPPool", lambda ns, name, v: g.routes.on_pool(name, v))
    d.register("IPPool", lambda ns, name, v: g.encap.on_pool(name, v))
    d.register("IPPool", lambda ns, name, v: g.passthru.on_pool(name, v))
    d.register("IPPool", lambda ns, name, v: g.bgp.on_pool(name, v))

    # IPAM: blocks give workload routes and borrowed addresses; affinities the BGP blocks.
    d.register_block(g.routes.on_block)
    d.register_affinity(g.bgp.on_affinity)

    # Configuration.
    d.register("FelixConfiguration", lambda ns, name, v: g.config.on_felix_configuration(name, v))
    d.register("ClusterInformation", lambda ns, name, v: g.config.on_cluster_information(name, v))
    d.register("BGPConfiguration", g.bgp.on_bgp_configuration)
    d.register("BGPPeer", g.bgp.on_bgp_peer)
    return g


def updates_of(messages: Iterable[fb.ToDataplane]) -> list[str]:
    """Payload names of messages, for logs and tests."""
    return [m.WhichOneof("payload") or "" for m in messages]
