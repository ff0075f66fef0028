"""The node's policy model: what the ToDataplane stream has said so far, plus what changed.

``PolicyModel.apply`` folds one message into the model and records the keys it touched in a
``Changes`` (coalesced per batch: an IP set rewritten and then patched in the same batch is
just rewritten; added then removed is removed). The compiler turns ``Changes`` into chains.
Messages that do not affect policy rendering (routes, VTEPs, services, wireguard…) are
ignored here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from libcalico.api.felix import felixbackend_pb2 as fb

from .config import CompilerConfig

PolicyKey = tuple[str, str, str]  # (kind, namespace, name)
WepKey = tuple[str, str, str]  # (orchestrator, workload, endpoint)


def policy_key(pid: fb.PolicyID) -> PolicyKey:
    return (pid.kind, pid.namespace, pid.name)


def wep_key(wid: fb.WorkloadEndpointID) -> WepKey:
    return (wid.orchestrator_id, wid.workload_id, wid.endpoint_id)


@dataclass
class IPSet:
    set_type: int
    members: set[str]


@dataclass
class Changes:
    config: bool = False
    static: bool = False
    ipsets_full: set[str] = field(default_factory=set)
    ipsets_delta: dict[str, tuple[set[str], set[str]]] = field(default_factory=dict)
    ipsets_removed: set[str] = field(default_factory=set)
    policies: set[PolicyKey] = field(default_factory=set)
    profiles: set[str] = field(default_factory=set)
    weps: set[WepKey] = field(default_factory=set)
    heps: set[str] = field(default_factory=set)

    def set_full(self, set_id: str) -> None:
        self.ipsets_full.add(set_id)
        self.ipsets_delta.pop(set_id, None)
        self.ipsets_removed.discard(set_id)

    def set_removed(self, set_id: str) -> None:
        self.ipsets_removed.add(set_id)
        self.ipsets_full.discard(set_id)
        self.ipsets_delta.pop(set_id, None)

    def set_delta(self, set_id: str, added: set[str], removed: set[str]) -> None:
        if set_id in self.ipsets_full:
            return  # the rewrite will carry the final membership
        prev_add, prev_rem = self.ipsets_delta.get(set_id, (set(), set()))
        new_add = (prev_add - removed) | added
        new_rem = (prev_rem - added) | removed
        self.ipsets_delta[set_id] = (new_add, new_rem)


class PolicyModel:
    def __init__(self, config: CompilerConfig) -> None:
        self.base_config = config
        self.config = config
        self._felix_params: dict[str, str] = {}
        self.encap: fb.Encapsulation | None = None
        self.ipsets: dict[str, IPSet] = {}
        self.policies: dict[PolicyKey, fb.Policy] = {}
        self.profiles: dict[str, fb.Profile] = {}
        self.weps: dict[WepKey, fb.WorkloadEndpoint] = {}
        self.heps: dict[str, fb.HostEndpoint] = {}
        self.pools: dict[str, fb.IPAMPool] = {}
        self.hosts: dict[str, tuple[str, str]] = {}

    def _recompute_config(self) -> None:
        cfg = self.base_config.with_felix(self._felix_params) if self._felix_params \
            else self.base_config
        if self.encap is not None:
            cfg = cfg.with_felix({
                "IpInIpEnabled": str(self.encap.ipip_enabled),
                "VXLANEnabled": str(self.encap.vxlan_enabled),
                "VXLANEnabledV6": str(self.encap.vxlan_enabled_v6),
            })
        self.config = cfg

    def apply(self, msg: fb.ToDataplane, ch: Changes) -> None:
        kind = msg.WhichOneof("payload")
        if kind == "config_update":
            self._felix_params = dict(msg.config_update.config)
            self._recompute_config()
            ch.config = True
        elif kind == "encapsulation":
            self.encap = msg.encapsulation
            self._recompute_config()
            ch.config = True
        elif kind == "ipset_update":
            u = msg.ipset_update
            self.ipsets[u.id] = IPSet(u.type, set(u.members))
            ch.set_full(u.id)
        elif kind == "ipset_delta_update":
            d = msg.ipset_delta_update
            s = self.ipsets.get(d.id)
            if s is None:
                return  # a delta for a set we never saw: nothing to patch
            added, removed = set(d.added_members), set(d.removed_members)
            s.members -= removed
            s.members |= added
            ch.set_delta(d.id, added, removed)
        elif kind == "ipset_remove":
            if self.ipsets.pop(msg.ipset_remove.id, None) is not None:
                ch.set_removed(msg.ipset_remove.id)
        elif kind == "active_policy_update":
            k = policy_key(msg.active_policy_update.id)
            self.policies[k] = msg.active_policy_update.policy
            ch.policies.add(k)
        elif kind == "active_policy_remove":
            k = policy_key(msg.active_policy_remove.id)
            if self.policies.pop(k, None) is not None:
                ch.policies.add(k)
        elif kind == "active_profile_update":
            name = msg.active_profile_update.id.name
            self.profiles[name] = msg.active_profile_update.profile
            ch.profiles.add(name)
        elif kind == "active_profile_remove":
            name = msg.active_profile_remove.id.name
            if self.profiles.pop(name, None) is not None:
                ch.profiles.add(name)
        elif kind == "workload_endpoint_update":
            wk = wep_key(msg.workload_endpoint_update.id)
            self.weps[wk] = msg.workload_endpoint_update.endpoint
            ch.weps.add(wk)
        elif kind == "workload_endpoint_remove":
            wk = wep_key(msg.workload_endpoint_remove.id)
            if self.weps.pop(wk, None) is not None:
                ch.weps.add(wk)
        elif kind == "host_endpoint_update":
            hk = msg.host_endpoint_update.id.endpoint_id
            self.heps[hk] = msg.host_endpoint_update.endpoint
            ch.heps.add(hk)
        elif kind == "host_endpoint_remove":
            hk = msg.host_endpoint_remove.id.endpoint_id
            if self.heps.pop(hk, None) is not None:
                ch.heps.add(hk)
        elif kind == "ipam_pool_update":
            self.pools[msg.ipam_pool_update.id] = msg.ipam_pool_update.pool
            ch.static = True
        elif kind == "ipam_pool_remove":
            if self.pools.pop(msg.ipam_pool_remove.id, None) is not None:
                ch.static = True
        elif kind == "host_metadata_update":
            h = msg.host_metadata_update
            self.hosts[h.hostname] = (h.ipv4_addr, h.ipv6_addr)
            ch.static = True
        elif kind == "host_metadata_remove":
            if self.hosts.pop(msg.host_metadata_remove.hostname, None) is not None:
                ch.static = True

    # Derived state the static chains and the compiler's own sets need.

    def pool_cidrs(self, v: int, masquerade_only: bool = False) -> set[str]:
        return {
            p.cidr for p in self.pools.values()
            if (":" in p.cidr) == (v == 6) and (p.masquerade or not masquerade_only)
        }

    def host_addrs(self, v: int) -> set[str]:
        out = set()
        for v4, v6 in self.hosts.values():
            addr = v4 if v == 4 else v6
            if addr:
                addr = addr.split("/")[0]
                out.add(f"{addr}/{32 if v == 4 else 128}")
        return out

    def rpf_skip(self) -> list[tuple[str, str]]:
        return sorted(
            (ep.name, prefix)
            for ep in self.weps.values() for prefix in ep.allow_spoofed_source_prefixes
        )

    def floating_ips(self, v: int) -> list[tuple[str, str]]:
        out = []
        for ep in self.weps.values():
            for nat in (ep.ipv4_nat if v == 4 else ep.ipv6_nat):
                out.append((nat.ext_ip, nat.int_ip))
        return sorted(out)
