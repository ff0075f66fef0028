"""NAT-table chains: natOutgoing (Felix's ``rules/nat.go``), floating IPs, tunnel source fix.

``cali-nat-outgoing`` MASQUERADEs traffic from a natOutgoing pool (``cali40masq-ipam-pools``)
to anywhere outside every pool (``! cali40all-ipam-pools``); it is empty while no pool of that
IP version has natOutgoing. ``NATOutgoingAddress`` turns it into SNAT, ``NATPortRange`` adds
per-protocol port-range rules, and ``IptablesNATOutgoingInterfaceFilter`` limits the egress
interface. ``cali-POSTROUTING`` also masquerades host-sourced traffic leaving a tunnel device
with the wrong source address.
"""

from __future__ import annotations

from collections.abc import Iterable

from .. import names
from ..generic import RETURN, Action, Chain, Rule, Term
from ..generic import jump as j
from .context import Context


def _nat_rule(ctx: Context, proto: str, action: Action) -> Rule:
    terms: list[Term] = [
        ("src_set", ctx.set_name(names.IPSET_MASQ_POOLS)),
        ("!dst_set", ctx.set_name(names.IPSET_ALL_POOLS)),
    ]
    if proto:
        terms.append(("proto", proto))
    if ctx.config.nat_outgoing_interface_filter:
        terms.append(("oif", ctx.config.nat_outgoing_interface_filter))
    return Rule(tuple(terms), action)


def nat_outgoing_chain(ctx: Context, active: bool) -> Chain:
    cfg = ctx.config
    rules: list[Rule] = []
    if active:
        default: Action = ("masq", "")
        if cfg.nat_outgoing_address:
            default = ("snat", cfg.nat_outgoing_address)
        if cfg.nat_port_range:
            lo, hi = cfg.nat_port_range
            ports = f"{lo}-{hi}"
            ranged: Action = ("masq", ports)
            if cfg.nat_outgoing_address:
                ranged = ("snat", f"{cfg.nat_outgoing_address}:{ports}")
            rules = [
                _nat_rule(ctx, "tcp", ranged), _nat_rule(ctx, "tcp", RETURN),
                _nat_rule(ctx, "udp", ranged), _nat_rule(ctx, "udp", RETURN),
                _nat_rule(ctx, "", default),
            ]
        else:
            rules = [_nat_rule(ctx, "", default)]
    return Chain(names.NAT_OUTGOING, tuple(rules))


def nat_chains(ctx: Context, nat_outgoing_active: bool,
               fips: Iterable[tuple[str, str]]) -> list[Chain]:
    """``fips``: (external IP, internal IP) pairs of this IP version's floating IPs."""
    cfg, v = ctx.config, ctx.ip_version
    pairs = sorted(set(fips))
    dnat = tuple(Rule((("dst_net", ext),), ("dnat", internal)) for ext, internal in pairs)
    snat = tuple(
        Rule((("dst_net", internal), ("src_net", internal)), ("snat", ext))
        for ext, internal in sorted(pairs, key=lambda p: p[1])
    )
    post: list[Rule] = [Rule((), j(names.FIP_SNAT)), Rule((), j(names.NAT_OUTGOING))]
    tunnels = []
    if v == 4 and cfg.ipip_enabled and cfg.ipip_tunnel_addr:
        tunnels.append("tunl0")
    if v == 4 and cfg.vxlan_enabled and cfg.vxlan_tunnel_addr:
        tunnels.append("vxlan.calico")
    if v == 6 and cfg.vxlan_enabled_v6 and cfg.vxlan_tunnel_addr_v6:
        tunnels.append("vxlan-v6.calico")
    for t in tunnels:
        post.append(Rule((("oif", t), ("!src_type", "LOCAL", True), ("src_type", "LOCAL", False)),
                         ("masq", "")))
    return [
        Chain(names.PREROUTING, (Rule((), j(names.FIP_DNAT)),)),
        Chain(names.POSTROUTING, tuple(post)),
        Chain(names.OUTPUT, (Rule((), j(names.FIP_DNAT)),)),
        nat_outgoing_chain(ctx, nat_outgoing_active),
        Chain(names.FIP_DNAT, dnat),
        Chain(names.FIP_SNAT, snat),
    ]
