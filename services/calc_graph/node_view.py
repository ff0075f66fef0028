"""A subscribed node's slice of the graph: local endpoints -> active rules -> policy resolver ->
event sequencer.

A view exists only while the node has a subscriber; at 1,000 nodes with one subscriber each the
per-node cost is its own endpoints (about 250), their policies and the IP sets those reference.
Opening a view replays the node's endpoints through it; closing it releases everything it holds
(policy matches, profile references, IP sets), so a reconnecting node starts clean.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from libcalico.api.felix import felixbackend_pb2 as fb

from .active_rules import ActiveRules
from .event_sequencer import EventSequencer
from .fanout import Subscriber
from .policy_resolver import PolicyKey, ResolvedTiers
from .records import EndpointRecord, ItemKey

if TYPE_CHECKING:
    from .graph import CalcGraph


class NodeView:
    def __init__(self, name: str, graph: CalcGraph) -> None:
        self.name = name
        self._g = graph
        self.endpoints: dict[ItemKey, EndpointRecord] = {}
        self._routes: dict[str, int] = {}
        # The sequencer reads this view's state; a weak reference keeps the two from forming a
        # cycle that would outlive the view once the heap is frozen (see driver.HeapPolicy).
        self.seq = EventSequencer(name, weakref.proxy(self))
        self.rules = ActiveRules(name, graph.policies, graph.ipsets, self.seq)
        self.subscribers: list[Subscriber] = []
        self.new_subscribers: list[Subscriber] = []

    def open(self) -> None:
        self._g.rules_by_node[self.name] = self.rules
        self._g.endpoints.local_listeners[self.name] = self.endpoint_changed
        for ep in self._g.endpoints.local(self.name):
            self.endpoint_changed(None, ep)

    def close(self) -> None:
        for ep in list(self.endpoints.values()):
            self.endpoint_changed(ep, None)
        for name in list(self.rules.profile_counts):
            self.rules.profile_refs((name,), -self.rules.profile_counts[name])
        self._g.endpoints.local_listeners.pop(self.name, None)
        self._g.rules_by_node.pop(self.name, None)

    # -- local endpoints ---------------------------------------------------------------------

    def endpoint_changed(self, old: EndpointRecord | None, new: EndpointRecord | None) -> None:
        policies = self._g.policies
        if new is not None:
            policies.track(self.name, new)
            self.rules.profile_refs(new.profile_ids, 1)
            self.endpoints[new.key] = new
            if new.kind == "wep":
                self._route_refs(new.nets, 1)
            self.seq.dirty_endpoints.add(new.key)
        if old is not None:
            policies.untrack(self.name, old)
            self.rules.profile_refs(old.profile_ids, -1)
            if new is None:
                self.endpoints.pop(old.key, None)
            if old.kind == "wep":
                self._route_refs(old.nets, -1)
            self.seq.dirty_endpoints.add(old.key)

    def _route_refs(self, nets: tuple[str, ...], delta: int) -> None:
        for dst in nets:
            before = self._routes.get(dst, 0)
            n = before + delta
            if n > 0:
                self._routes[dst] = n
            else:
                self._routes.pop(dst, None)
            if (before == 0) != (n <= 0):  # the node's own /32 appeared or went
                self.seq.dirty_routes.add(dst)

    # -- NodeState for the sequencer ---------------------------------------------------------

    def ipset_needed(self, set_id: str) -> bool:
        return set_id in self.rules.ipset_counts

    def needed_ipsets(self) -> list[str]:
        return list(self.rules.ipset_counts)

    def policy_active(self, key: PolicyKey) -> bool:
        return key in self.rules.policy_counts

    def active_policies(self) -> list[PolicyKey]:
        return list(self.rules.policy_counts)

    def profile_active(self, name: str) -> bool:
        return name in self.rules.profile_counts

    def active_profiles(self) -> list[str]:
        return list(self.rules.profile_counts)

    def endpoint_keys(self) -> list[ItemKey]:
        return list(self.endpoints)

    def local_route(self, dst: str) -> bool:
        return dst in self._routes

    def local_routes(self) -> list[str]:
        return list(self._routes)

    def endpoint_fingerprint(self, key: ItemKey) -> tuple[Any, ...] | None:
        """Everything the endpoint's message is made of, as comparable values (first the
        workload ID, which a remove needs): equal fingerprints, equal messages."""
        ep = self.endpoints.get(key)
        if ep is None:
            return None
        return (
            ep.wep_id,
            ep.kind,
            ep.iface,
            ep.mac,
            ep.profile_ids,
            ep.nets,
            ep.ipv4_nat,
            ep.ipv6_nat,
            ep.allow_spoofed,
            tuple(sorted(ep.annotations.items())) if ep.annotations else None,
            ep.expected_v4,
            ep.expected_v6,
            self._tiers(ep).key,
        )

    def endpoint_message(self, key: ItemKey) -> fb.ToDataplane | None:
        ep = self.endpoints.get(key)
        if ep is None:
            return None
        tiers = self._tiers(ep)
        if ep.kind == "hep":
            return fb.ToDataplane(
                host_endpoint_update=fb.HostEndpointUpdate(
                    id=fb.HostEndpointID(endpoint_id=key[2]),
                    endpoint=fb.HostEndpoint(
                        name=ep.iface,
                        profile_ids=ep.profile_ids,
                        tiers=tiers.normal,
                        untracked_tiers=tiers.untracked,
                        pre_dnat_tiers=tiers.pre_dnat,
                        forward_tiers=tiers.forward,
                        expected_ipv4_addrs=ep.expected_v4,
                        expected_ipv6_addrs=ep.expected_v6,
                    ),
                )
            )
        orch, workload, endpoint = ep.wep_id
        wep = fb.WorkloadEndpoint(
            state="active",
            name=ep.iface,
            mac=ep.mac,
            profile_ids=ep.profile_ids,
            ipv4_nets=ep.ipv4_nets,
            ipv6_nets=ep.ipv6_nets,
            tiers=tiers.normal,
            ipv4_nat=[fb.NatInfo(ext_ip=e, int_ip=i) for e, i in ep.ipv4_nat],
            ipv6_nat=[fb.NatInfo(ext_ip=e, int_ip=i) for e, i in ep.ipv6_nat],
            allow_spoofed_source_prefixes=ep.allow_spoofed,
            annotations=ep.annotations or {},
        )
        return fb.ToDataplane(
            workload_endpoint_update=fb.WorkloadEndpointUpdate(
                id=fb.WorkloadEndpointID(
                    orchestrator_id=orch, workload_id=workload, endpoint_id=endpoint
                ),
                endpoint=wep,
            )
        )

    def _tiers(self, ep: EndpointRecord) -> ResolvedTiers:
        ls = ep.label_set
        sorter = self._g.sorter
        cached = ls.cache
        if cached is not None and cached[0] == sorter.generation:
            result: ResolvedTiers = cached[1]
            return result
        result = sorter.resolve(self._g.policies.policies_of(ls))
        ls.cache = (sorter.generation, result)
        return result
