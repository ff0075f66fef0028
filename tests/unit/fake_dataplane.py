"""A strict fake dataplane for calc_graph streams, and builders for the resources tests feed it.

``FakeDataplane.apply(message)`` keeps the state a Felix dataplane driver would program and
raises ``ProtocolViolation`` on anything a real driver could not apply safely:

- any message other than ``ConfigUpdate``/``Encapsulation`` before the first ``ConfigUpdate``;
- an IP-set delta for an unknown set, adding a member already present or removing one that is
  not; removing an unknown set or one a policy/profile still references;
- a policy/profile referencing an IP set that was not sent; removing an unknown policy/profile
  or one an endpoint still references;
- an endpoint referencing a policy or profile that was not sent; removing an unknown endpoint;
- removing an unknown namespace, service account, route, VTEP, host or pool;
- ``InSync`` twice, or sequence numbers that do not count up by one.

``state()`` is the programmed state as plain comparable values, so scenario tests can assert
that different input orders and flush patterns end in the same place.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format

from libcalico import keys
from libcalico.api.felix import felixbackend_pb2 as fb
from libcalico.client.syncer import Update
from libcalico.model.names import wep_name


class ProtocolViolation(AssertionError):
    pass


_SET_FIELDS = (
    "src_ip_set_ids",
    "dst_ip_set_ids",
    "src_named_port_ip_set_ids",
    "dst_named_port_ip_set_ids",
    "dst_ip_port_set_ids",
    "not_src_ip_set_ids",
    "not_dst_ip_set_ids",
    "not_src_named_port_ip_set_ids",
    "not_dst_named_port_ip_set_ids",
)


def _rule_sets(rules: Iterable[fb.Rule]) -> set[str]:
    out: set[str] = set()
    for r in rules:
        for f in _SET_FIELDS:
            out.update(getattr(r, f))
    return out


def _policy_key(pid: fb.PolicyID) -> tuple[str, str, str]:
    return (pid.kind, pid.namespace, pid.name)


def _tier_policies(tiers: Iterable[fb.TierInfo]) -> set[tuple[str, str, str]]:
    out = set()
    for t in tiers:
        for p in (*t.ingress_policies, *t.egress_policies):
            out.add(_policy_key(p))
    return out


def _dict(msg: Any) -> dict[str, Any]:
    d: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return d


class FakeDataplane:
    def __init__(self, name: str = "") -> None:
        self.name = name
        self.config: dict[str, str] | None = None
        self.encap: dict[str, Any] | None = None
        self.ipsets: dict[str, tuple[int, set[str]]] = {}
        self.policies: dict[tuple[str, str, str], fb.Policy] = {}
        self.profiles: dict[str, fb.Profile] = {}
        self.weps: dict[tuple[str, str, str], fb.WorkloadEndpoint] = {}
        self.heps: dict[str, fb.HostEndpoint] = {}
        self.namespaces: dict[str, dict[str, str]] = {}
        self.service_accounts: dict[tuple[str, str], dict[str, str]] = {}
        self.routes: dict[str, fb.RouteUpdate] = {}
        self.vteps: dict[str, fb.VXLANTunnelEndpointUpdate] = {}
        self.hosts: dict[str, fb.HostMetadataUpdate] = {}
        self.pools: dict[str, fb.IPAMPool] = {}
        self.in_sync = False
        self.messages = 0
        self.batches = 0
        self.kinds: list[str] = []
        self._last_seq: int | None = None

    # -- applying ---------------------------------------------------------------------------

    def apply_batches(self, batches: Iterable[Any]) -> None:
        for b in batches:
            self.apply_all(b.messages)
            self.batches += 1

    def apply_all(self, messages: Iterable[fb.ToDataplane]) -> None:
        for m in messages:
            self.apply(m)

    def _fail(self, what: str) -> None:
        raise ProtocolViolation(f"[{self.name}] message #{self.messages}: {what}")

    def apply(self, msg: fb.ToDataplane) -> None:
        kind = msg.WhichOneof("payload")
        self.messages += 1
        self.kinds.append(kind or "")
        if msg.sequence_number:
            if self._last_seq is not None and msg.sequence_number != self._last_seq + 1:
                self._fail(f"sequence number {msg.sequence_number} after {self._last_seq}")
            self._last_seq = msg.sequence_number
        if self.config is None and kind not in ("config_update", "encapsulation"):
            self._fail(f"{kind} before the first ConfigUpdate")
        handler = getattr(self, f"_on_{kind}", None) if kind else None
        if handler is None or kind is None:
            self._fail(f"unexpected message {kind}")
        else:
            handler(getattr(msg, kind))

    def _on_config_update(self, m: fb.ConfigUpdate) -> None:
        self.config = dict(m.config)

    def _on_encapsulation(self, m: fb.Encapsulation) -> None:
        self.encap = _dict(m)

    def _on_in_sync(self, m: fb.InSync) -> None:
        if self.in_sync:
            self._fail("InSync twice")
        self.in_sync = True

    def _on_ipset_update(self, m: fb.IPSetUpdate) -> None:
        members = set(m.members)
        if len(members) != len(m.members):
            self._fail(f"IPSetUpdate {m.id} has duplicate members")
        self.ipsets[m.id] = (m.type, members)

    def _on_ipset_delta_update(self, m: fb.IPSetDeltaUpdate) -> None:
        if m.id not in self.ipsets:
            self._fail(f"delta for unknown IP set {m.id}")
        members = self.ipsets[m.id][1]
        for a in m.added_members:
            if a in members:
                self._fail(f"delta adds {a} already in {m.id}")
            members.add(a)
        for r in m.removed_members:
            if r not in members:
                self._fail(f"delta removes {r} not in {m.id}")
            members.discard(r)

    def _referenced_sets(self) -> set[str]:
        out: set[str] = set()
        for p in self.policies.values():
            out |= _rule_sets(p.inbound_rules) | _rule_sets(p.outbound_rules)
        for pr in self.profiles.values():
            out |= _rule_sets(pr.inbound_rules) | _rule_sets(pr.outbound_rules)
        return out

    def _on_ipset_remove(self, m: fb.IPSetRemove) -> None:
        if m.id not in self.ipsets:
            self._fail(f"remove of unknown IP set {m.id}")
        if m.id in self._referenced_sets():
            self._fail(f"remove of IP set {m.id} still referenced by a policy/profile")
        del self.ipsets[m.id]

    def _check_sets(self, what: str, rules: Iterable[fb.Rule]) -> None:
        missing = _rule_sets(rules) - set(self.ipsets)
        if missing:
            self._fail(f"{what} references IP sets never sent: {sorted(missing)}")

    def _on_active_policy_update(self, m: fb.ActivePolicyUpdate) -> None:
        key = _policy_key(m.id)
        self._check_sets(f"policy {key}", [*m.policy.inbound_rules, *m.policy.outbound_rules])
        self.policies[key] = m.policy

    def _referenced_policies(self) -> set[tuple[str, str, str]]:
        out: set[tuple[str, str, str]] = set()
        for w in self.weps.values():
            out |= _tier_policies(w.tiers)
        for h in self.heps.values():
            for tiers in (h.tiers, h.untracked_tiers, h.pre_dnat_tiers, h.forward_tiers):
                out |= _tier_policies(tiers)
        return out

    def _on_active_policy_remove(self, m: fb.ActivePolicyRemove) -> None:
        key = _policy_key(m.id)
        if key not in self.policies:
            self._fail(f"remove of unknown policy {key}")
        if key in self._referenced_policies():
            self._fail(f"remove of policy {key} still used by an endpoint")
        del self.policies[key]

    def _on_active_profile_update(self, m: fb.ActiveProfileUpdate) -> None:
        self._check_sets(
            f"profile {m.id.name}", [*m.profile.inbound_rules, *m.profile.outbound_rules]
        )
        self.profiles[m.id.name] = m.profile

    def _on_active_profile_remove(self, m: fb.ActiveProfileRemove) -> None:
        if m.id.name not in self.profiles:
            self._fail(f"remove of unknown profile {m.id.name}")
        used = {p for w in self.weps.values() for p in w.profile_ids}
        used |= {p for h in self.heps.values() for p in h.profile_ids}
        if m.id.name in used:
            self._fail(f"remove of profile {m.id.name} still used by an endpoint")
        del self.profiles[m.id.name]

    def _check_endpoint(self, what: str, profile_ids: Iterable[str], *tier_lists: Any) -> None:
        for tiers in tier_lists:
            missing = _tier_policies(tiers) - set(self.policies)
            if missing:
                self._fail(f"{what} references policies never sent: {sorted(missing)}")
        missing_profiles = set(profile_ids) - set(self.profiles)
        if missing_profiles:
            self._fail(f"{what} references profiles never sent: {sorted(missing_profiles)}")

    def _on_workload_endpoint_update(self, m: fb.WorkloadEndpointUpdate) -> None:
        key = (m.id.orchestrator_id, m.id.workload_id, m.id.endpoint_id)
        self._check_endpoint(f"workload {key}", m.endpoint.profile_ids, m.endpoint.tiers)
        self.weps[key] = m.endpoint

    def _on_workload_endpoint_remove(self, m: fb.WorkloadEndpointRemove) -> None:
        key = (m.id.orchestrator_id, m.id.workload_id, m.id.endpoint_id)
        if key not in self.weps:
            self._fail(f"remove of unknown workload {key}")
        del self.weps[key]

    def _on_host_endpoint_update(self, m: fb.HostEndpointUpdate) -> None:
        e = m.endpoint
        self._check_endpoint(
            f"host endpoint {m.id.endpoint_id}",
            e.profile_ids,
            e.tiers,
            e.untracked_tiers,
            e.pre_dnat_tiers,
            e.forward_tiers,
        )
        self.heps[m.id.endpoint_id] = e

    def _on_host_endpoint_remove(self, m: fb.HostEndpointRemove) -> None:
        if m.id.endpoint_id not in self.heps:
            self._fail(f"remove of unknown host endpoint {m.id.endpoint_id}")
        del self.heps[m.id.endpoint_id]

    def _on_namespace_update(self, m: fb.NamespaceUpdate) -> None:
        self.namespaces[m.id.name] = dict(m.labels)

    def _on_namespace_remove(self, m: fb.NamespaceRemove) -> None:
        if m.id.name not in self.namespaces:
            self._fail(f"remove of unknown namespace {m.id.name}")
        del self.namespaces[m.id.name]

    def _on_service_account_update(self, m: fb.ServiceAccountUpdate) -> None:
        self.service_accounts[(m.id.namespace, m.id.name)] = dict(m.labels)

    def _on_service_account_remove(self, m: fb.ServiceAccountRemove) -> None:
        key = (m.id.namespace, m.id.name)
        if key not in self.service_accounts:
            self._fail(f"remove of unknown service account {key}")
        del self.service_accounts[key]

    def _on_route_update(self, m: fb.RouteUpdate) -> None:
        self.routes[m.dst] = m

    def _on_route_remove(self, m: fb.RouteRemove) -> None:
        if m.dst not in self.routes:
            self._fail(f"remove of unknown route {m.dst}")
        del self.routes[m.dst]

    def _on_vtep_update(self, m: fb.VXLANTunnelEndpointUpdate) -> None:
        self.vteps[m.node] = m

    def _on_vtep_remove(self, m: fb.VXLANTunnelEndpointRemove) -> None:
        if m.node not in self.vteps:
            self._fail(f"remove of unknown VTEP {m.node}")
        del self.vteps[m.node]

    def _on_host_metadata_update(self, m: fb.HostMetadataUpdate) -> None:
        self.hosts[m.hostname] = m

    def _on_host_metadata_remove(self, m: fb.HostMetadataRemove) -> None:
        if m.hostname not in self.hosts:
            self._fail(f"remove of unknown host {m.hostname}")
        del self.hosts[m.hostname]

    def _on_ipam_pool_update(self, m: fb.IPAMPoolUpdate) -> None:
        self.pools[m.id] = m.pool

    def _on_ipam_pool_remove(self, m: fb.IPAMPoolRemove) -> None:
        if m.id not in self.pools:
            self._fail(f"remove of unknown pool {m.id}")
        del self.pools[m.id]

    # -- inspection --------------------------------------------------------------------------

    def assert_in_sync(self) -> None:
        if not self.in_sync:
            raise ProtocolViolation(f"[{self.name}] never received InSync")

    def state(self) -> dict[str, Any]:
        """Everything programmed, as plain values (order-insensitive where the protocol is)."""
        return {
            "config": self.config,
            "encap": self.encap,
            "ipsets": {k: (t, sorted(m)) for k, (t, m) in sorted(self.ipsets.items())},
            "policies": {k: _dict(v) for k, v in sorted(self.policies.items())},
            "profiles": {k: _dict(v) for k, v in sorted(self.profiles.items())},
            "weps": {k: _dict(v) for k, v in sorted(self.weps.items())},
            "heps": {k: _dict(v) for k, v in sorted(self.heps.items())},
            "namespaces": dict(sorted(self.namespaces.items())),
            "service_accounts": dict(sorted(self.service_accounts.items())),
            "routes": {k: _dict(v) for k, v in sorted(self.routes.items())},
            "vteps": {k: _dict(v) for k, v in sorted(self.vteps.items())},
            "hosts": {k: _dict(v) for k, v in sorted(self.hosts.items())},
            "pools": {k: _dict(v) for k, v in sorted(self.pools.items())},
        }

    def members(self, set_id: str) -> set[str]:
        return set(self.ipsets[set_id][1])

    def policy_names(self, tiers: Iterable[fb.TierInfo], direction: str = "ingress") -> list[str]:
        out = []
        for t in tiers:
            for p in getattr(t, f"{direction}_policies"):
                out.append(f"{t.name}/{p.namespace + '/' if p.namespace else ''}{p.name}")
        return out


# -- resource builders ----------------------------------------------------------------------

_REV = [0]


def update(
    kind: str, name: str, value: dict[str, Any] | None, namespace: str | None = None
) -> Update:
    _REV[0] += 1
    return Update(keys.resource_key(kind, name, namespace), value, _REV[0], "")


def resource(
    kind: str,
    name: str,
    spec: dict[str, Any],
    namespace: str | None = None,
    labels: dict[str, str] | None = None,
    **meta: Any,
) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, **meta}
    if namespace:
        md["namespace"] = namespace
    if labels:
        md["labels"] = labels
    return {"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": md, "spec": spec}


def wep(
    ns: str,
    pod: str,
    node: str,
    ip: str,
    labels: dict[str, str] | None = None,
    sa: str = "",
    ports: list[dict[str, Any]] | None = None,
    profiles: list[str] | None = None,
) -> Update:
    name = wep_name(node, "k8s", pod, "eth0")
    spec: dict[str, Any] = {
        "orchestrator": "k8s",
        "node": node,
        "pod": pod,
        "endpoint": "eth0",
        "interfaceName": f"cali{abs(hash((ns, pod))) % 10**11:011d}",
        "ipNetworks": [f"{ip}/32"],
        "profiles": profiles
        if profiles is not None
        else [f"kns.{ns}"] + ([f"ksa.{ns}.{sa}"] if sa else []),
    }
    if sa:
        spec["serviceAccountName"] = sa
    if ports:
        spec["ports"] = ports
    return update(
        "WorkloadEndpoint", name, resource("WorkloadEndpoint", name, spec, ns, labels), ns
    )


def wep_delete(ns: str, pod: str, node: str) -> Update:
    return update("WorkloadEndpoint", wep_name(node, "k8s", pod, "eth0"), None, ns)


def namespace(ns: str, labels: dict[str, str] | None = None) -> Update:
    apply = {f"pcns.{k}": v for k, v in (labels or {}).items()}
    apply["pcns.projectcalico.org/name"] = ns
    spec = {
        "ingress": [{"action": "Allow"}],
        "egress": [{"action": "Allow"}],
        "labelsToApply": apply,
    }
    return update("Profile", f"kns.{ns}", resource("Profile", f"kns.{ns}", spec))


def service_account(ns: str, sa: str, labels: dict[str, str] | None = None) -> Update:
    apply = {f"pcsa.{k}": v for k, v in (labels or {}).items()}
    apply["pcsa.projectcalico.org/name"] = sa
    name = f"ksa.{ns}.{sa}"
    return update("Profile", name, resource("Profile", name, {"labelsToApply": apply}))


def network_policy(ns: str, name: str, spec: dict[str, Any]) -> Update:
    return update("NetworkPolicy", name, resource("NetworkPolicy", name, spec, ns), ns)


def global_policy(name: str, spec: dict[str, Any]) -> Update:
    return update("GlobalNetworkPolicy", name, resource("GlobalNetworkPolicy", name, spec))


def tier(name: str, order: float | None, default_action: str = "Deny") -> Update:
    spec: dict[str, Any] = {"defaultAction": default_action}
    if order is not None:
        spec["order"] = order
    return update("Tier", name, resource("Tier", name, spec))


def network_set(
    ns: str, name: str, nets: list[str], labels: dict[str, str] | None = None
) -> Update:
    return update("NetworkSet", name, resource("NetworkSet", name, {"nets": nets}, ns, labels), ns)


def global_network_set(name: str, nets: list[str], labels: dict[str, str] | None = None) -> Update:
    return update(
        "GlobalNetworkSet", name, resource("GlobalNetworkSet", name, {"nets": nets}, None, labels)
    )


def node(
    name: str,
    ip: str,
    vxlan_addr: str = "",
    asn: int | None = None,
    labels: dict[str, str] | None = None,
    mac: str = "",
) -> Update:
    bgp: dict[str, Any] = {"ipv4Address": ip}
    if asn is not None:
        bgp["asNumber"] = asn
    spec: dict[str, Any] = {"bgp": bgp}
    if vxlan_addr:
        spec["ipv4VXLANTunnelAddr"] = vxlan_addr
    if mac:
        spec["vxlanTunnelMACAddr"] = mac
    return update("Node", name, resource("Node", name, spec, None, labels))


def ip_pool(
    name: str,
    cidr: str,
    vxlan: str = "Never",
    ipip: str = "Never",
    nat: bool = False,
    block_size: int = 26,
) -> Update:
    spec = {
        "cidr": cidr,
        "vxlanMode": vxlan,
        "ipipMode": ipip,
        "natOutgoing": nat,
        "blockSize": block_size,
        "nodeSelector": "all()",
    }
    return update("IPPool", name, resource("IPPool", name, spec))


def block(cidr: str, owner: str | None, allocations: dict[int, str] | None = None) -> Update:
    """An IPAM block; ``allocations`` maps ordinal -> the node of the pod holding it."""
    import ipaddress

    size = ipaddress.ip_network(cidr).num_addresses
    allocs: list[int | None] = [None] * size
    attrs: list[dict[str, Any]] = []
    for ordinal, host in sorted((allocations or {}).items()):
        allocs[ordinal] = len(attrs)
        attrs.append(
            {"handle_id": f"h{ordinal}", "secondary": {"node": host, "pod": f"p{ordinal}"}}
        )
    value = {
        "cidr": cidr,
        "affinity": f"host:{owner}" if owner else None,
        "allocations": allocs,
        "unallocated": [i for i in range(size) if allocs[i] is None],
        "attributes": attrs,
        "deleted": False,
    }
    _REV[0] += 1
    return Update(keys.block_key(cidr), value, _REV[0], "")


def block_delete(cidr: str) -> Update:
    _REV[0] += 1
    return Update(keys.block_key(cidr), None, _REV[0], "")


def affinity(host: str, cidr: str, state: str = "confirmed") -> Update:
    _REV[0] += 1
    return Update(keys.affinity_key(host, cidr), {"state": state, "deleted": False}, _REV[0], "")


def felix_config(name: str, spec: dict[str, Any]) -> Update:
    return update("FelixConfiguration", name, resource("FelixConfiguration", name, spec))


def delete(u: Update) -> Update:
    """The deletion of whatever ``u`` created."""
    _REV[0] += 1
    return Update(u.key, None, _REV[0], "")
