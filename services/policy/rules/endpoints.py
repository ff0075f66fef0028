"""Per-endpoint chains: ``cali-tw-``/``cali-fw-`` for workloads, ``cali-th-``/``cali-fh-``
(+ ``-thfw-``/``-fhfw-`` for applyOnForward) for host endpoints. Felix's ``rules/endpoints.go``.

Order inside one chain:

1. admin down → drop everything ("Endpoint admin disabled"), nothing else;
2. conntrack: RELATED,ESTABLISHED → allow (setting the accept mark first when "allow" is
   RETURN), INVALID → deny (unless ``DisableConntrackInvalidCheck``); not in untracked chains;
3. host endpoints: jump to the failsafe chain;
4. clear the accept and pass marks;
5. workload egress: drop VXLAN (udp 4789) and IPIP (proto 4) from the pod;
6. each tier with policies in this direction: clear pass ("Start of tier X"), then per policy
   "if pass clear → jump cali-pi/po-…" and "if accept set → RETURN"; then, unless the tier's
   default action is Pass or all its policies are staged, "if pass clear → drop" ("End of
   tier X. Drop if no policies passed packet");
7. profiles: jump cali-pri/pro-…, RETURN if accepted;
8. drop ("Drop if no profiles matched").

Untracked (raw) and pre-DNAT (mangle) chains stop after step 6 without end-of-tier drops or
profiles: the filter table still has its say.
"""

from __future__ import annotations

from collections.abc import Sequence

from libcalico.api.felix import felixbackend_pb2 as fb

from .. import names
from ..generic import NOTRACK, RETURN, Action, Chain, Rule, action_title, clear_mark, jump, set_mark
from .context import Context

NORMAL, UNTRACKED, PRE_DNAT, FORWARD = "normal", "untracked", "pre_dnat", "forward"


def _conntrack(ctx: Context, allow: Action) -> list[Rule]:
    out = []
    if allow != ("accept",):
        out.append(Rule((("ct", "RELATED,ESTABLISHED"),), set_mark(ctx.marks.accept)))
    out.append(Rule((("ct", "RELATED,ESTABLISHED"),), allow))
    if not ctx.config.disable_conntrack_invalid:
        out.append(Rule((("ct", "INVALID"),), ctx.deny))
    return out


def endpoint_chain(
    ctx: Context,
    name: str,
    tiers: Sequence[fb.TierInfo],
    profiles: Sequence[str],
    *,
    ingress: bool,
    chain_type: str = NORMAL,
    failsafe: str = "",
    admin_up: bool = True,
    allow: Action = ("accept",),
    drop_vxlan: bool = False,
    drop_ipip: bool = False,
) -> Chain:
    marks = ctx.marks
    deny = ctx.deny
    title = action_title(deny)
    if not admin_up:
        return Chain(name, (Rule((), deny, ("Endpoint admin disabled",)),))
    rules: list[Rule] = []
    if chain_type != UNTRACKED:
        rules += _conntrack(ctx, allow)
    if failsafe:
        rules.append(Rule((), jump(failsafe)))
    rules.append(Rule((), clear_mark(marks.accept | marks.pass_)))
    if drop_vxlan:
        rules.append(Rule((("proto", 17), ("dports", ((ctx.config.vxlan_port,) * 2,))), deny,
                          (f"{title} VXLAN encapped packets originating in workloads",)))
    if drop_ipip:
        rules.append(Rule((("proto", 4),), deny,
                          (f"{title} IPinIP encapped packets originating in workloads",)))
    pfx = names.POLICY_IN_PFX if ingress else names.POLICY_OUT_PFX
    any_tier = False
    for tier in tiers:
        pols = tier.ingress_policies if ingress else tier.egress_policies
        if not pols:
            continue
        any_tier = True
        rules.append(Rule((), clear_mark(marks.pass_), (f"Start of tier {tier.name}",)))
        end_of_tier_drop = False
        for pid in pols:
            if names.is_staged(pid.kind):
                continue
            end_of_tier_drop = True
            target = names.policy_chain(pfx, pid.kind, pid.namespace, pid.name)
            rules.append(Rule((("mark_clear", marks.pass_),), jump(target)))
            if chain_type == UNTRACKED:
                rules.append(Rule((("mark", marks.accept, marks.accept),), NOTRACK))
            rules.append(Rule((("mark", marks.accept, marks.accept),), RETURN,
                              ("Return if policy accepted",)))
        if (chain_type in (NORMAL, FORWARD) and end_of_tier_drop
                and tier.default_action != "Pass"):
            rules.append(Rule((("mark_clear", marks.pass_),), deny,
                              (f"End of tier {tier.name}. {title} if no policies passed packet",)))
    if not any_tier and chain_type == FORWARD:
        rules.append(Rule((), set_mark(marks.accept), ("Allow forwarded traffic by default",)))
        rules.append(Rule((), RETURN, ("Return for accepted forward traffic",)))
    if chain_type == NORMAL:
        ppfx = names.PROFILE_IN_PFX if ingress else names.PROFILE_OUT_PFX
        for prof in profiles:
            rules.append(Rule((), jump(names.profile_chain(ppfx, prof))))
            rules.append(Rule((("mark", marks.accept, marks.accept),), RETURN,
                              ("Return if profile accepted",)))
        rules.append(Rule((), deny, (f"{title} if no profiles matched",)))
    return Chain(name, tuple(rules))


def workload_chains(ctx: Context, ep: fb.WorkloadEndpoint) -> list[Chain]:
    """``cali-tw-<iface>`` (ingress policy) and ``cali-fw-<iface>`` (egress policy)."""
    admin_up = ep.state == "active"
    cfg = ctx.config
    return [
        endpoint_chain(ctx, names.endpoint_chain(names.WL_TO_PFX, ep.name), ep.tiers,
                       ep.profile_ids, ingress=True, admin_up=admin_up, allow=ctx.filter_allow),
        endpoint_chain(ctx, names.endpoint_chain(names.WL_FROM_PFX, ep.name), ep.tiers,
                       ep.profile_ids, ingress=False, admin_up=admin_up, allow=ctx.filter_allow,
                       drop_vxlan=not cfg.allow_vxlan_from_workloads,
                       drop_ipip=not cfg.allow_ipip_from_workloads),
    ]


def host_filter_chains(ctx: Context, iface: str, ep: fb.HostEndpoint) -> list[Chain]:
    """Filter-table chains for a host endpoint: normal policy (th/fh) and applyOnForward."""
    allow = ctx.filter_allow
    return [
        endpoint_chain(ctx, names.endpoint_chain(names.HOST_TO_PFX, iface), ep.tiers,
                       ep.profile_ids, ingress=False, failsafe=names.FAILSAFE_OUT, allow=allow),
        endpoint_chain(ctx, names.endpoint_chain(names.HOST_FROM_PFX, iface), ep.tiers,
                       ep.profile_ids, ingress=True, failsafe=names.FAILSAFE_IN, allow=allow),
        endpoint_chain(ctx, names.endpoint_chain(names.HOST_TO_FWD_PFX, iface), ep.forward_tiers,
                       ep.profile_ids, ingress=False, chain_type=FORWARD, allow=allow),
        endpoint_chain(ctx, names.endpoint_chain(names.HOST_FROM_FWD_PFX, iface),
                       ep.forward_tiers, ep.profile_ids, ingress=True, chain_type=FORWARD,
                       allow=allow),
    ]


def host_raw_chains(ctx: Context, iface: str, ep: fb.HostEndpoint) -> list[Chain]:
    """Raw-table chains applying untracked (doNotTrack) policy; allow means NOTRACK+ACCEPT."""
    return [
        endpoint_chain(ctx, names.endpoint_chain(names.HOST_TO_PFX, iface), ep.untracked_tiers,
                       (), ingress=False, chain_type=UNTRACKED, failsafe=names.FAILSAFE_OUT,
                       allow=("accept",)),
        endpoint_chain(ctx, names.endpoint_chain(names.HOST_FROM_PFX, iface),
                       ep.untracked_tiers, (), ingress=True, chain_type=UNTRACKED,
                       failsafe=names.FAILSAFE_IN, allow=("accept",)),
    ]


def host_mangle_chains(ctx: Context, iface: str, ep: fb.HostEndpoint) -> list[Chain]:
    """Mangle-table chains: pre-DNAT ingress policy, and normal egress for DNAT'd host traffic."""
    out = [
        endpoint_chain(ctx, names.endpoint_chain(names.HOST_TO_PFX, iface), ep.tiers,
                       ep.profile_ids, ingress=False, failsafe=names.FAILSAFE_OUT,
                       allow=RETURN),
    ]
    if ep.pre_dnat_tiers:
        out.append(endpoint_chain(
            ctx, names.endpoint_chain(names.HOST_FROM_PFX, iface), ep.pre_dnat_tiers, (),
            ingress=True, chain_type=PRE_DNAT, failsafe=names.FAILSAFE_IN,
            allow=ctx.mangle_allow))
    return out
