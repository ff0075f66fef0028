"""The chains that exist whatever the endpoints: Felix's ``rules/static.go`` (no IPVS/BPF/WG).

filter  cali-FORWARD  clear our marks except accept → from-hep-forward (if not yet accepted) →
                      ``-i cali+`` from-wl-dispatch → ``-o cali+`` to-wl-dispatch →
                      to-hep-forward → cali-cidr-block
        cali-INPUT    IPIP/VXLAN only from known hosts (all-hosts-net / all-vxlan-net) →
                      ``-i cali+`` goto cali-wl-to-host → host endpoint policy
        cali-wl-to-host  (v6: router ICMPv6) → from-wl-dispatch → DefaultEndpointToHostAction
        cali-OUTPUT   accepted already → accept; to workloads → return; IPIP/VXLAN to hosts →
                      allow; host endpoint egress policy for non-DNAT'd traffic
        cali-failsafe-in/-out, cali-cidr-block
raw     cali-PREROUTING  clear marks, mark workload traffic (scratch0), rpf-skip, strict RPF for
                         workloads, untracked host endpoint policy, accept if accepted
        cali-OUTPUT, cali-failsafe-in/-out (+ reversed ports), cali-rpf-skip
mangle  cali-PREROUTING  established/accepted → allow, pre-DNAT host endpoint policy
        cali-POSTROUTING forwarded → return, host egress policy for DNAT'd host traffic

Felix hooks each ``cali-X`` from the kernel chain ``X`` with one inserted jump (``hooks``), and
appends "accept if the accept mark is set" + "set the accept mark" to ``FORWARD``.
"""

from __future__ import annotations

from collections.abc import Iterable

from .. import names
from ..config import ProtoPort
from ..generic import (
    ACCEPT,
    DROP,
    NOTRACK,
    RETURN,
    Action,
    Chain,
    Rule,
    Term,
    clear_mark,
    goto,
    set_mark,
)
from ..generic import jump as j
from .context import Context

ICMPV6_ROUTER_TYPES = (130, 131, 132, 133, 135, 136)


def _accept_if_accepted(ctx: Context, action: Action, comment: str = "") -> Rule:
    a = ctx.marks.accept
    return Rule((("mark", a, a),), action, (comment,) if comment else ())


def _failsafe_rules(ports: Iterable[ProtoPort], v: int, *, src_ports: bool,
                    net_is_src: bool) -> list[Rule]:
    out = []
    for pp in ports:
        terms: list[Term] = [("proto", pp.protocol),
                             ("sports" if src_ports else "dports", ((pp.port, pp.port),))]
        if pp.net:
            if (":" in pp.net) != (v == 6):
                continue
            terms.append(("src_net" if net_is_src else "dst_net", pp.net))
        out.append(Rule(tuple(terms), ACCEPT))
    return out


def failsafe_chains(ctx: Context, table: str) -> list[Chain]:
    cfg, v = ctx.config, ctx.ip_version
    fin = _failsafe_rules(cfg.failsafe_inbound, v, src_ports=False, net_is_src=True)
    fout = _failsafe_rules(cfg.failsafe_outbound, v, src_ports=False, net_is_src=False)
    if table == "raw":
        # Before conntrack: let the replies to failsafe flows through too.
        fin += _failsafe_rules(cfg.failsafe_outbound, v, src_ports=True, net_is_src=True)
        fout += _failsafe_rules(cfg.failsafe_inbound, v, src_ports=True, net_is_src=False)
    return [Chain(names.FAILSAFE_IN, tuple(fin)), Chain(names.FAILSAFE_OUT, tuple(fout))]


def filter_chains(ctx: Context) -> list[Chain]:
    cfg, v, marks = ctx.config, ctx.ip_version, ctx.marks
    allow, deny = ctx.filter_allow, ctx.deny
    vxlan = (v == 4 and cfg.vxlan_enabled) or (v == 6 and cfg.vxlan_enabled_v6)
    vx_ports = ((cfg.vxlan_port, cfg.vxlan_port),)
    all_hosts = ctx.set_name(names.IPSET_ALL_HOSTS)
    all_vxlan = ctx.set_name(names.IPSET_ALL_VXLAN)
    ipv = "IPv4" if v == 4 else "IPv6"

    fwd: list[Rule] = [
        Rule((), clear_mark(marks.all_calico & ~marks.accept)),
        Rule((("mark_clear", marks.accept),), j(names.FROM_HEP_FORWARD)),
    ]
    for w in ctx.wildcards():
        fwd.append(Rule((("iif", w),), j(names.FROM_WL_DISPATCH)))
        fwd.append(Rule((("oif", w),), j(names.TO_WL_DISPATCH)))
    fwd += [Rule((), j(names.TO_HEP_FORWARD)), Rule((), j(names.CIDR_BLOCK))]

    inp: list[Rule] = []
    if v == 4 and cfg.ipip_enabled:
        inp += [
            Rule((("proto", 4), ("src_set", all_hosts), ("dst_type", "LOCAL")), allow,
                 ("Allow IPIP packets from Calico hosts",)),
            Rule((("proto", 4),), deny,
                 (f"{_title(deny)} IPIP packets from non-Calico hosts",)),
        ]
    if vxlan:
        inp += [
            Rule((("proto", 17), ("dports", vx_ports), ("src_set", all_vxlan),
                  ("dst_type", "LOCAL")), allow,
                 (f"Allow {ipv} VXLAN packets from allowed hosts",)),
            Rule((("proto", 17), ("dports", vx_ports), ("dst_type", "LOCAL")), DROP,
                 (f"Drop {ipv} VXLAN packets from non-allowed hosts",)),
        ]
    for w in ctx.wildcards():
        inp.append(Rule((("iif", w),), goto(names.WL_TO_HOST)))
    inp += [
        _accept_if_accepted(ctx, allow),
        Rule((), clear_mark(marks.all_calico)),
        Rule((), j(names.FROM_HOST_ENDPOINT)),
        _accept_if_accepted(ctx, allow, "Host endpoint policy accepted packet."),
    ]

    wl_to_host: list[Rule] = []
    if v == 6:
        wl_to_host += [Rule((("proto", 58), ("icmp6", t, None)), allow)
                       for t in ICMPV6_ROUTER_TYPES]
    wl_to_host.append(Rule((), j(names.FROM_WL_DISPATCH)))
    host_action: Action = {"ACCEPT": ACCEPT, "RETURN": RETURN}.get(
        cfg.endpoint_to_host_action, DROP)
    wl_to_host.append(Rule((), host_action, ("Configured DefaultEndpointToHostAction",)))

    out: list[Rule] = [_accept_if_accepted(ctx, allow)]
    out += [Rule((("oif", w),), RETURN) for w in ctx.wildcards()]
    if v == 4 and cfg.ipip_enabled:
        out.append(Rule((("proto", 4), ("dst_set", all_hosts), ("src_type", "LOCAL", False)),
                        allow, ("Allow IPIP packets to other Calico hosts",)))
    if vxlan:
        out.append(Rule((("proto", 17), ("dports", vx_ports), ("src_type", "LOCAL", False),
                         ("dst_set", all_vxlan)), allow,
                        (f"Allow {ipv} VXLAN packets to other allowed hosts",)))
    out += [
        Rule((), clear_mark(marks.all_calico)),
        Rule((("!ct", "DNAT"),), j(names.TO_HOST_ENDPOINT)),
        _accept_if_accepted(ctx, allow, "Host endpoint policy accepted packet."),
    ]
    return [
        Chain(names.FILTER_FORWARD, tuple(fwd)),
        Chain(names.FILTER_INPUT, tuple(inp)),
        Chain(names.WL_TO_HOST, tuple(wl_to_host)),
        Chain(names.FILTER_OUTPUT, tuple(out)),
        Chain(names.CIDR_BLOCK, ()),
        *failsafe_chains(ctx, "filter"),
    ]


def _title(action: Action) -> str:
    return "Reject" if action[0] == "reject" else "Drop"


def raw_chains(ctx: Context, rpf_skip: Iterable[tuple[str, str]]) -> list[Chain]:
    """``rpf_skip``: (iface, prefix) pairs from workloads' allowSpoofedSourcePrefixes."""
    cfg, v, marks = ctx.config, ctx.ip_version, ctx.marks
    vxlan = (v == 4 and cfg.vxlan_enabled) or (v == 6 and cfg.vxlan_enabled_v6)
    s0, acc = marks.scratch0, marks.accept
    pre: list[Rule] = [Rule((), clear_mark(marks.all_calico))]
    if vxlan:
        pre.append(Rule((("proto", "udp"), ("dports", ((cfg.vxlan_port,) * 2,))), NOTRACK))
    pre += [Rule((("iif", w),), set_mark(s0)) for w in ctx.wildcards()]
    pre += [
        Rule((("mark", s0, s0),), j(names.RPF_SKIP)),
        Rule((("mark", s0, s0), ("rpf_failed",)), ctx.deny),
        Rule((("mark_clear", s0),), j(names.FROM_HOST_ENDPOINT)),
        Rule((("mark", acc, acc),), ACCEPT),
    ]
    out: list[Rule] = [Rule((), clear_mark(marks.all_calico)),
                       Rule((), j(names.TO_HOST_ENDPOINT))]
    if vxlan:
        out.append(Rule((("proto", "udp"), ("dports", ((cfg.vxlan_port,) * 2,))), NOTRACK))
    out.append(Rule((("mark", acc, acc),), ACCEPT))
    want6 = v == 6
    skip = tuple(
        Rule((("iif", iface), ("src_net", prefix)), ACCEPT)
        for iface, prefix in sorted(rpf_skip) if (":" in prefix) == want6
    )
    return [
        Chain(names.PREROUTING, tuple(pre)),
        Chain(names.OUTPUT, tuple(out)),
        Chain(names.RPF_SKIP, skip),
        *failsafe_chains(ctx, "raw"),
    ]


def mangle_chains(ctx: Context) -> list[Chain]:
    acc = ctx.marks.accept
    allow = ctx.mangle_allow
    pre = (
        Rule((("ct", "RELATED,ESTABLISHED"),), allow),
        Rule((("mark", acc, acc),), allow),
        Rule((), j(names.FROM_HOST_ENDPOINT)),
        Rule((("mark", acc, acc),), allow, ("Host endpoint policy accepted packet.",)),
    )
    post = (
        Rule((("mark", acc, acc),), RETURN),
        Rule((), clear_mark(ctx.marks.all_calico)),
        Rule((("ct", "DNAT"),), j(names.TO_HOST_ENDPOINT)),
        Rule((("mark", acc, acc),), RETURN, ("Host endpoint policy accepted packet.",)),
    )
    return [
        Chain(names.PREROUTING, pre),
        Chain(names.POSTROUTING, post),
        *failsafe_chains(ctx, "mangle"),
    ]


# (table, kernel chain, our chain) for the one jump Felix inserts at the top of each hook.
HOOKS = (
    ("raw", "PREROUTING", names.PREROUTING),
    ("raw", "OUTPUT", names.OUTPUT),
    ("mangle", "PREROUTING", names.PREROUTING),
    ("mangle", "POSTROUTING", names.POSTROUTING),
    ("nat", "PREROUTING", names.PREROUTING),
    ("nat", "POSTROUTING", names.POSTROUTING),
    ("nat", "OUTPUT", names.OUTPUT),
    ("filter", "INPUT", names.FILTER_INPUT),
    ("filter", "FORWARD", names.FILTER_FORWARD),
    ("filter", "OUTPUT", names.FILTER_OUTPUT),
)


def hook_rules(ctx: Context) -> list[tuple[str, str, str, Rule]]:
    """(table, kernel chain, "insert"|"append", rule) for the kernel chains we hook."""
    out = [(t, k, "insert", Rule((), j(ours))) for t, k, ours in HOOKS]
    acc = ctx.marks.accept
    out += [
        ("filter", "FORWARD", "append",
         Rule((("mark", acc, acc),), ctx.filter_allow, ("Policy explicitly accepted packet.",))),
        ("filter", "FORWARD", "append", Rule((), set_mark(acc))),
    ]
    return out
