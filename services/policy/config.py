"""The compiler's view of Felix configuration: the parameters that change rendered rules.

Values come from three places, later wins: ``CompilerConfig()`` defaults (Felix's), the
``PolicyCompiler(config)`` argument, then every ``ConfigUpdate`` / ``Encapsulation`` message in
the stream. ``ConfigUpdate.config`` carries Felix parameter names (``IptablesMarkMask``,
``DefaultEndpointToHostAction``, ``FailsafeInboundHostPorts``…) as strings; unknown names are
ignored because Felix sends ~200 parameters and most are not about rule rendering.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from libcalico.errors import ValidationError

from .marks import DEFAULT_MARK_MASK


@dataclass(frozen=True)
class ProtoPort:
    protocol: str
    port: int
    net: str = ""


DEFAULT_FAILSAFE_IN = (
    ProtoPort("tcp", 22), ProtoPort("udp", 68), ProtoPort("tcp", 179), ProtoPort("tcp", 2379),
    ProtoPort("tcp", 2380), ProtoPort("tcp", 5473), ProtoPort("tcp", 6443),
    ProtoPort("tcp", 6666), ProtoPort("tcp", 6667),
)
DEFAULT_FAILSAFE_OUT = (
    ProtoPort("udp", 53), ProtoPort("udp", 67), ProtoPort("tcp", 179), ProtoPort("tcp", 2379),
    ProtoPort("tcp", 2380), ProtoPort("tcp", 5473), ProtoPort("tcp", 6443),
    ProtoPort("tcp", 6666), ProtoPort("tcp", 6667),
)


@dataclass(frozen=True)
class CompilerConfig:
    mark_mask: int = DEFAULT_MARK_MASK
    interface_prefixes: tuple[str, ...] = ("cali",)
    filter_deny_action: str = "DROP"  # DROP | REJECT
    filter_allow_action: str = "ACCEPT"  # ACCEPT | RETURN
    mangle_allow_action: str = "ACCEPT"  # ACCEPT | RETURN
    endpoint_to_host_action: str = "DROP"  # DROP | RETURN | ACCEPT
    failsafe_inbound: tuple[ProtoPort, ...] = DEFAULT_FAILSAFE_IN
    failsafe_outbound: tuple[ProtoPort, ...] = DEFAULT_FAILSAFE_OUT
    log_prefix: str = "calico-packet"
    disable_conntrack_invalid: bool = False
    allow_vxlan_from_workloads: bool = False
    allow_ipip_from_workloads: bool = False
    vxlan_port: int = 4789
    ipip_enabled: bool = False
    vxlan_enabled: bool = False
    vxlan_enabled_v6: bool = False
    ipip_tunnel_addr: str = ""
    vxlan_tunnel_addr: str = ""
    vxlan_tunnel_addr_v6: str = ""
    nat_outgoing_address: str = ""
    nat_port_range: tuple[int, int] | None = None
    nat_outgoing_interface_filter: str = ""
    ipv6_support: bool = True
    masq_fully_random: bool = True
    raw: Mapping[str, str] = field(default_factory=dict, compare=False)

    def with_felix(self, params: Mapping[str, str]) -> CompilerConfig:
        """A copy with Felix's string parameters applied (names are case-insensitive)."""
        p = {k.lower(): v.strip() for k, v in params.items()}
        changes: dict[str, object] = {}

        def has(name: str) -> bool:
            return name.lower() in p and p[name.lower()] != ""

        def get(name: str) -> str:
            return p[name.lower()]

        if has("IptablesMarkMask"):
            changes["mark_mask"] = int(get("IptablesMarkMask"), 0)
        if has("InterfacePrefix"):
            changes["interface_prefixes"] = tuple(
                x.strip() for x in get("InterfacePrefix").split(",") if x.strip()
            )
        for felix_name, attr, allowed in (
            ("IptablesFilterDenyAction", "filter_deny_action", ("DROP", "REJECT")),
            ("IptablesFilterAllowAction", "filter_allow_action", ("ACCEPT", "RETURN")),
            ("IptablesMangleAllowAction", "mangle_allow_action", ("ACCEPT", "RETURN")),
            ("DefaultEndpointToHostAction", "endpoint_to_host_action",
             ("DROP", "RETURN", "ACCEPT")),
        ):
            if has(felix_name):
                value = get(felix_name).upper()
                if value not in allowed:
                    raise ValidationError(f"{felix_name}: {value!r} is not one of {allowed}")
                changes[attr] = value
        if has("FailsafeInboundHostPorts"):
            changes["failsafe_inbound"] = parse_proto_ports(get("FailsafeInboundHostPorts"))
        if has("FailsafeOutboundHostPorts"):
            changes["failsafe_outbound"] = parse_proto_ports(get("FailsafeOutboundHostPorts"))
        if has("LogPrefix"):
            changes["log_prefix"] = get("LogPrefix")
        for felix_name, attr in (
            ("DisableConntrackInvalidCheck", "disable_conntrack_invalid"),
            ("AllowVXLANPacketsFromWorkloads", "allow_vxlan_from_workloads"),
            ("AllowIPIPPacketsFromWorkloads", "allow_ipip_from_workloads"),
            ("IpInIpEnabled", "ipip_enabled"),
            ("VXLANEnabled", "vxlan_enabled"),
            ("VXLANEnabledV6", "vxlan_enabled_v6"),
            ("Ipv6Support", "ipv6_support"),
        ):
            if has(felix_name):
                changes[attr] = parse_bool(felix_name, get(felix_name))
        if has("VXLANPort"):
            changes["vxlan_port"] = int(get("VXLANPort"))
        for felix_name, attr in (
            ("IpInIpTunnelAddr", "ipip_tunnel_addr"),
            ("IPv4VXLANTunnelAddr", "vxlan_tunnel_addr"),
            ("IPv6VXLANTunnelAddr", "vxlan_tunnel_addr_v6"),
            ("NATOutgoingAddress", "nat_outgoing_address"),
            ("IptablesNATOutgoingInterfaceFilter", "nat_outgoing_interface_filter"),
        ):
            if has(felix_name):
                changes[attr] = get(felix_name)
        if has("NATPortRange"):
            lo, _, hi = get("NATPortRange").partition(":")
            changes["nat_port_range"] = (int(lo), int(hi or lo))
        merged = dict(self.raw)
        merged.update(params)
        changes["raw"] = merged
        return replace(self, **changes)  # type: ignore[arg-type]


def parse_bool(name: str, value: str) -> bool:
    v = value.lower()
    if v in ("true", "1", "yes", "y", "t"):
        return True
    if v in ("false", "0", "no", "n", "f"):
        return False
    raise ValidationError(f"{name}: {value!r} is not a boolean")


def parse_proto_ports(text: str) -> tuple[ProtoPort, ...]:
    """Felix's ``<proto>:<port>`` / ``<proto>:<net>:<port>`` list (``none`` = empty).

    An IPv6 net is written in brackets: ``tcp:[fd00::/8]:22``.
    """
    if text.strip().lower() == "none":
        return ()
    out: list[ProtoPort] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        proto, _, rest = item.partition(":")
        net = ""
        if rest.startswith("["):
            net, _, port = rest[1:].partition("]:")
        elif ":" in rest:
            net, _, port = rest.rpartition(":")
        else:
            port = rest
        if not port:
            proto, port = "tcp", proto
        try:
            if net:
                ipaddress.ip_network(net, strict=False)
            out.append(ProtoPort(proto.lower(), int(port), net))
        except ValueError as exc:
            raise ValidationError(f"bad failsafe port entry {item!r}: {exc}") from exc
    return tuple(out)
