"""Per-node event sequencer: coalesce what changed, flush it in Felix's dependency order.

Stages only *mark* keys dirty (IP sets, policies, profiles, endpoints, node-local routes); the
value sent is read from current state at flush time, so there is at most one pending update per
key, a delta folds into a pending full update (an IP set added in this cycle is sent with its
current members and no delta), and an add followed by a remove within one cycle sends nothing.
Cluster-wide kinds (namespaces, VTEPs, host metadata, pools, routes' facts) are tracked once in
their stages and shared; IP-set deltas are one message per set per flush for all nodes.

Flush order (Felix's ``EventSequencer.Flush``, §2.2), except that Encapsulation follows
ConfigUpdate so both precede everything else, as a driver needs them before the snapshot:

1. ConfigUpdate, Encapsulation
2. IP-set adds, IP-set deltas, policy updates, profile updates, endpoint updates
3. endpoint removes, profile removes, policy removes, IP-set removes
4. service accounts, namespaces (removes first)
5. route removes, VTEP removes, VTEP adds, route adds (a route never precedes its VTEP)
6. host metadata removes/updates, IP pool removes/updates

A node's first flush is a snapshot: ``settle`` records the current state as sent without
building messages and ``snapshot`` renders everything in the order above. Later subscribers to
an established node get ``snapshot`` too, taken after that flush's deltas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from libcalico.api.felix import felixbackend_pb2 as fb

from .policy_resolver import PolicyKey
from .records import ItemKey
from .route_resolver import route_remove

if TYPE_CHECKING:
    from .active_rules import PolicyTable
    from .config_batcher import ConfigBatcher
    from .encap_resolver import EncapsulationResolver
    from .ipsets import IPSetRegistry
    from .passthru import Passthru
    from .profile_decoder import ProfileDecoder
    from .route_resolver import RouteResolver
    from .vxlan_resolver import VXLANResolver

MAX_MEMBERS_PER_MESSAGE = 20_000  # a larger set is sent as an update plus deltas


class GlobalStages(Protocol):
    """The cluster-wide stages a node's flush reads from."""

    ipsets: IPSetRegistry
    policies: PolicyTable
    config: ConfigBatcher
    encap: EncapsulationResolver
    profiles: ProfileDecoder
    vxlan: VXLANResolver
    routes: RouteResolver
    passthru: Passthru


class NodeState(Protocol):
    """What the node view tells its sequencer about the node's desired state."""

    def ipset_needed(self, set_id: str) -> bool: ...

    def needed_ipsets(self) -> list[str]: ...

    def policy_active(self, key: PolicyKey) -> bool: ...

    def active_policies(self) -> list[PolicyKey]: ...

    def profile_active(self, name: str) -> bool: ...

    def active_profiles(self) -> list[str]: ...

    def endpoint_message(self, key: ItemKey) -> fb.ToDataplane | None: ...

    def endpoint_fingerprint(self, key: ItemKey) -> tuple[Any, ...] | None: ...

    def endpoint_keys(self) -> list[ItemKey]: ...

    def local_route(self, dst: str) -> bool: ...

    def local_routes(self) -> list[str]: ...


def ipset_messages(g: GlobalStages, set_id: str) -> list[fb.ToDataplane]:
    return g.ipsets.full_messages(set_id, MAX_MEMBERS_PER_MESSAGE)


def endpoint_remove(key: ItemKey, wep_id: tuple[str, str, str] | None) -> fb.ToDataplane:
    if key[0] == "hep":
        return fb.ToDataplane(
            host_endpoint_remove=fb.HostEndpointRemove(id=fb.HostEndpointID(endpoint_id=key[2]))
        )
    assert wep_id is not None
    return fb.ToDataplane(
        workload_endpoint_remove=fb.WorkloadEndpointRemove(
            id=fb.WorkloadEndpointID(
                orchestrator_id=wep_id[0], workload_id=wep_id[1], endpoint_id=wep_id[2]
            )
        )
    )


class EventSequencer:
    def __init__(self, node: str, state: NodeState) -> None:
        self.node = node
        self._state = state
        self.dirty_ipsets: set[str] = set()
        self.dirty_policies: set[PolicyKey] = set()
        self.dirty_profiles: set[str] = set()
        self.dirty_endpoints: set[ItemKey] = set()
        self.dirty_routes: set[str] = set()
        self.all_routes_dirty = False
        self.sent_ipsets: set[str] = set()
        self.sent_policies: set[PolicyKey] = set()
        self.sent_profiles: set[str] = set()
        # What each sent endpoint message was built from (``endpoint_fingerprint``): storing
        # the messages themselves cost a protobuf copy per endpoint per node.
        self.sent_endpoints: dict[ItemKey, tuple[Any, ...]] = {}
        # The node's own workload /32s sent as routes; cluster-wide routes' existence at the
        # last flush is tracked once by the route resolver.
        self.local_sent: set[str] = set()
        self.fresh = True

    def has_local_changes(self) -> bool:
        return bool(
            self.dirty_ipsets
            or self.dirty_policies
            or self.dirty_profiles
            or self.dirty_endpoints
            or self.dirty_routes
            or self.all_routes_dirty
        )

    def _clear(self) -> None:
        if self.dirty_ipsets:
            self.dirty_ipsets = set()
        if self.dirty_policies:
            self.dirty_policies = set()
        if self.dirty_profiles:
            self.dirty_profiles = set()
        if self.dirty_endpoints:
            self.dirty_endpoints = set()
        if self.dirty_routes:
            self.dirty_routes = set()
        self.all_routes_dirty = False

    # -- first flush ------------------------------------------------------------------------

    def settle(self, g: GlobalStages) -> None:
        """Record the node's whole current state as sent (its subscribers get ``snapshot``)."""
        s = self._state
        self.sent_ipsets = set(s.needed_ipsets())
        self.sent_policies = set(s.active_policies())
        self.sent_profiles = set(s.active_profiles())
        self.sent_endpoints = {}
        for key in s.endpoint_keys():
            fp = s.endpoint_fingerprint(key)
            if fp is not None:
                self.sent_endpoints[key] = fp
        self.local_sent = set(s.local_routes())
        self.fresh = False
        self._clear()

    def snapshot(self, g: GlobalStages) -> list[fb.ToDataplane]:
        out = [g.config.message(self.node), g.encap.message]
        for set_id in self.sent_ipsets:
            out.extend(ipset_messages(g, set_id))
        out.extend(g.policies.parsed_policy(k).message for k in self.sent_policies)
        out.extend(g.policies.parsed_profile(n).message for n in self.sent_profiles)
        for key in self.sent_endpoints:
            msg = self._state.endpoint_message(key)
            if msg is not None:
                out.append(msg)
        out.extend(g.profiles.service_accounts.snapshot())
        out.extend(g.profiles.namespaces.snapshot())
        out.extend(g.vxlan.vteps.snapshot())
        out.extend(g.routes.snapshot_for(self.node, self.local_sent))
        out.extend(g.passthru.hosts.snapshot())
        out.extend(g.passthru.pools.snapshot())
        return out

    # -- later flushes ----------------------------------------------------------------------

    def _untouched(self, g: GlobalStages) -> bool:
        """Nothing in this flush concerns the node: the common case for most nodes."""
        if self.has_local_changes():
            return False
        if (
            g.config.is_dirty(self.node)
            or g.encap.dirty
            or g.routes.dirty
            or g.vxlan.vteps.dirty
            or g.profiles.namespaces.dirty
            or g.profiles.service_accounts.dirty
            or g.passthru.hosts.dirty
            or g.passthru.pools.dirty
        ):
            return False
        changed = g.ipsets.changed
        if len(changed) < len(self.sent_ipsets):
            return not any(c in self.sent_ipsets for c in changed)
        return not any(c in changed for c in self.sent_ipsets)

    def delta(self, g: GlobalStages) -> list[fb.ToDataplane]:
        if self._untouched(g):
            return []
        s = self._state
        out: list[fb.ToDataplane] = []
        if g.config.is_dirty(self.node):
            out.append(g.config.message(self.node))
        if g.encap.dirty:
            out.append(g.encap.message)

        # IP sets: adds (full members), then this cycle's shared deltas for sets already sent.
        added: list[str] = []
        removed: list[str] = []
        for set_id in self.dirty_ipsets:
            needed = s.ipset_needed(set_id)
            if needed and set_id not in self.sent_ipsets:
                added.append(set_id)
            elif not needed and set_id in self.sent_ipsets:
                removed.append(set_id)
        for set_id in added:
            out.extend(ipset_messages(g, set_id))
        changed = g.ipsets.changed
        if changed:
            small, large = (
                (changed, self.sent_ipsets)
                if len(changed) < len(self.sent_ipsets)
                else (self.sent_ipsets, changed)
            )
            gone = set(removed)
            for set_id in small:
                if set_id in large and set_id not in gone:
                    msg = g.ipsets.delta_message(set_id)
                    if msg is not None:
                        out.append(msg)
        self.sent_ipsets.update(added)

        policy_removes = []
        for key in self.dirty_policies:
            if s.policy_active(key):
                out.append(g.policies.parsed_policy(key).message)
                self.sent_policies.add(key)
            elif key in self.sent_policies:
                policy_removes.append(key)
        profile_removes = []
        for name in self.dirty_profiles:
            if s.profile_active(name):
                out.append(g.policies.parsed_profile(name).message)
                self.sent_profiles.add(name)
            elif name in self.sent_profiles:
                profile_removes.append(name)
        endpoint_removes = []
        for key in self.dirty_endpoints:
            fp = s.endpoint_fingerprint(key)
            if fp is not None:
                if self.sent_endpoints.get(key) != fp:
                    msg = s.endpoint_message(key)
                    if msg is not None:
                        out.append(msg)
                    self.sent_endpoints[key] = fp
            elif key in self.sent_endpoints:
                endpoint_removes.append(key)

        for key in endpoint_removes:
            out.append(endpoint_remove(key, self.sent_endpoints.pop(key)[0]))
        for name in profile_removes:
            out.append(
                fb.ToDataplane(
                    active_profile_remove=fb.ActiveProfileRemove(id=fb.ProfileID(name=name))
                )
            )
            self.sent_profiles.discard(name)
        for key in policy_removes:
            kind, namespace, name = key
            out.append(
                fb.ToDataplane(
                    active_policy_remove=fb.ActivePolicyRemove(
                        id=fb.PolicyID(name=name, namespace=namespace, kind=kind)
                    )
                )
            )
            self.sent_policies.discard(key)
        for set_id in removed:
            out.append(fb.ToDataplane(ipset_remove=fb.IPSetRemove(id=set_id)))
            self.sent_ipsets.discard(set_id)

        for table in (g.profiles.service_accounts, g.profiles.namespaces):
            if table.dirty:
                rm, up = table.changes()
                out.extend(rm)
                out.extend(up)

        routes = g.routes
        if self.all_routes_dirty:
            dsts = set(routes.entries)
            dsts.update(routes.dirty)
            dsts.update(self.local_sent)
            dsts.update(s.local_routes())
        elif self.dirty_routes:
            dsts = routes.dirty | self.dirty_routes
        else:
            dsts = routes.dirty
        route_removes: list[fb.ToDataplane] = []
        route_updates: list[fb.ToDataplane] = []
        local_now = s.local_route
        local_sent = self.local_sent
        shared = None
        if dsts is routes.dirty:
            small, big = (
                (routes.dirty, local_sent)
                if len(routes.dirty) < len(local_sent)
                else (local_sent, routes.dirty)
            )
            if not any(d in big for d in small):
                shared = routes.shared_changes(self.node)  # the common case: shared lists
        if shared is not None:
            route_removes, route_updates = shared
            dsts = set()
        for dst in dsts:
            local = local_now(dst)
            msg = routes.route_for(self.node, dst, local)
            if msg is not None:
                route_updates.append(msg)
            elif dst in local_sent or routes.existed(dst):
                route_removes.append(route_remove(dst))
            if local:
                local_sent.add(dst)
            else:
                local_sent.discard(dst)
        out.extend(route_removes)
        if g.vxlan.vteps.dirty:
            rm, up = g.vxlan.vteps.changes()
            out.extend(rm)
            out.extend(up)
        out.extend(route_updates)

        for table in (g.passthru.hosts, g.passthru.pools):
            if table.dirty:
                rm, up = table.changes()
                out.extend(rm)
                out.extend(up)
        self._clear()
        return out
