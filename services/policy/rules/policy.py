"""Policy and profile chains: one Felix ``Rule`` becomes one or more rendered rules.

Follows Felix's ``rules/policy.go``. A rule matches when every field matches and, within a
list field, any element does. iptables can AND matches but not OR them, and a multiport match
holds 15 port slots, so a rule with several positive CIDRs, more than one port group or named
ports is rendered as *match blocks* first::

    set scratch0/scratch1 to their initial value (one rule)
    block per OR-ed field: each alternative sets the block's bit      (positive blocks)
                           each alternative clears scratch0             (negated blocks)
    the main rule with the remaining matches + "scratch0 set"

The first positive block writes scratch0 directly; later ones write scratch1 and AND it into
scratch0. Then the action: allow sets the accept mark and RETURNs, pass sets the pass mark and
RETURNs, deny sets the drop mark and drops (or rejects), log logs and falls through. Trailing
RETURNs are stripped (they are no-ops at the end of a chain).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from libcalico.api.felix import felixbackend_pb2 as fb

from .. import names
from ..generic import RETURN, Chain, Rule, Term, clear_mark, set_mark
from .context import Context

Ranges = tuple[tuple[int, int], ...]

_LOG_SPEC = re.compile(r"%[tknp]")


def split_ports(ports: Iterable[tuple[int, int]]) -> list[Ranges]:
    """Groups of ports that fit one multiport match (15 slots; a range takes 2)."""
    splits: list[Ranges] = []
    cur: list[tuple[int, int]] = []
    slots = 15
    for first, last in ports:
        need = 1 if first == last else 2
        if slots < need:
            splits.append(tuple(cur))
            cur, slots = [], 15
        cur.append((first, last))
        slots -= need
    if cur:
        splits.append(tuple(cur))
    return splits


def _ranges(prs: Sequence[fb.PortRange]) -> list[tuple[int, int]]:
    return [(p.first, p.last or p.first) for p in prs]


def _filter_nets(nets: Sequence[str], v: int, negated: bool) -> tuple[list[str], bool]:
    """Nets of this IP version, and whether the rule must be dropped for this version."""
    if not nets:
        return [], False
    want6 = v == 6
    out = []
    for n in nets:
        if (":" in n) != want6:
            continue
        if negated and n in ("0.0.0.0/0", "::/0"):
            return [], True  # "not everything" can never match
        out.append(n)
    return out, not out


def _protocol(p: fb.Protocol) -> str | int | None:
    which = p.WhichOneof("number_or_name")
    if which == "name":
        return p.name.lower()
    if which == "number":
        return p.number
    return None


def _icmp_version(p: str | int | None) -> int:
    if p in ("icmp", 1):
        return 4
    if p in ("icmpv6", "ipv6-icmp", 58):
        return 6
    return 0


class _Blocks:
    """Felix's matchBlockBuilder: OR-ed alternatives rendered ahead of the main rule."""

    def __init__(self, ctx: Context) -> None:
        self.all_pass = ctx.marks.scratch0
        self.this_pass = ctx.marks.scratch1
        self.rules: list[Rule] = []
        self.used = False
        self.done_first_positive = False

    def _initial(self, initial_bits: int) -> None:
        if not self.used:
            self.rules.append(Rule((), ("set_masked_mark", initial_bits,
                                        self.all_pass | self.this_pass)))
            self.used = True

    def _positive_bit(self) -> int:
        return self.this_pass if self.done_first_positive else self.all_pass

    def _finish_positive(self) -> None:
        if not self.done_first_positive:
            self.done_first_positive = True
            return
        self.rules.append(Rule((("mark_clear", self.this_pass),), clear_mark(self.all_pass)))

    def ports(self, proto: str | int | None, splits: list[Ranges], named: Sequence[str],
              direction: str, ctx: Context) -> None:
        self._initial(0)
        bit = self._positive_bit()
        for split in splits:
            terms: list[Term] = []
            if proto is not None:
                terms.append(("proto", proto))
            terms.append((f"{direction}ports", split))
            self.rules.append(Rule(tuple(terms), set_mark(bit)))
        for set_id in named:
            self.rules.append(
                Rule(((f"{'src' if direction == 's' else 'dst'}_ipport_set",
                       ctx.set_name(set_id)),), set_mark(bit))
            )
        self._finish_positive()

    def cidrs(self, cidrs: Sequence[str], direction: str) -> None:
        self._initial(0)
        bit = self._positive_bit()
        for c in cidrs:
            self.rules.append(Rule(((f"{direction}_net", c),), set_mark(bit)))
        self._finish_positive()

    def negated_cidrs(self, cidrs: Sequence[str], direction: str) -> None:
        self._initial(self.all_pass)
        for c in cidrs:
            self.rules.append(Rule(((f"{direction}_net", c),), clear_mark(self.all_pass)))


def log_prefix(ctx: Context, kind: str, namespace: str, name: str, tier: str) -> str:
    prefix = ctx.config.log_prefix or "calico-packet"
    if "%" not in prefix:
        return prefix

    def sub(m: re.Match[str]) -> str:
        spec = m.group(0)
        if spec == "%k":
            return names.kind_short(kind, namespace) if kind != "pro" else "pro"
        if spec == "%p":
            return f"{namespace}/{name}" if namespace else name
        if spec == "%n":
            return name
        return tier

    return _LOG_SPEC.sub(sub, prefix)


def rule_to_rules(r: fb.Rule, ctx: Context, log_pfx: str) -> list[Rule]:
    """One Felix rule → rendered rules for ``ctx.ip_version`` (empty if it does not apply)."""
    v = ctx.ip_version
    # Only the fields that are set: a typical rule sets three or four of its ~40 fields, and
    # reading them once is the difference on a 100k-rule program.
    f = {fd.name: val for fd, val in r.ListFields()}
    get = f.get
    if r.ip_version and r.ip_version != v:
        return []
    proto = _protocol(f["protocol"]) if "protocol" in f else None
    if ("icmp_type" in f or "icmp_type_code" in f or "not_icmp_type" in f
            or "not_icmp_type_code" in f) and _icmp_version(proto) not in (0, v):
        # An ICMP type match for the other family cannot load (-p icmp -m icmp6) and could
        # never match; Calico's validation pairs icmp with IPv4 and icmpv6 with IPv6.
        return []
    src_net: list[str] = []
    not_src_net: list[str] = []
    dst_net: list[str] = []
    not_dst_net: list[str] = []
    if "src_net" in f:
        src_net, drop = _filter_nets(f["src_net"], v, False)
        if drop:
            return []
    if "not_src_net" in f:
        not_src_net, drop = _filter_nets(f["not_src_net"], v, True)
        if drop:
            return []
    if "dst_net" in f:
        dst_net, drop = _filter_nets(f["dst_net"], v, False)
        if drop:
            return []
    if "not_dst_net" in f:
        not_dst_net, drop = _filter_nets(f["not_dst_net"], v, True)
        if drop:
            return []

    set_name = ctx.set_name
    blocks = _Blocks(ctx)
    src_ports = _ranges(f["src_ports"]) if "src_ports" in f else []
    src_named = list(get("src_named_port_ip_set_ids", ()))
    if src_ports or src_named:
        splits = split_ports(src_ports)
        if len(splits) + len(src_named) > 1:
            blocks.ports(proto, splits, src_named, "s", ctx)
            src_ports, src_named = [], []
    dst_ports = _ranges(f["dst_ports"]) if "dst_ports" in f else []
    dst_named = list(get("dst_named_port_ip_set_ids", ()))
    if dst_ports or dst_named:
        splits = split_ports(dst_ports)
        if len(splits) + len(dst_named) > 1:
            blocks.ports(proto, splits, dst_named, "d", ctx)
            dst_ports, dst_named = [], []
    if len(src_net) > 1:
        blocks.cidrs(src_net, "src")
        src_net = []
    if len(dst_net) > 1:
        blocks.cidrs(dst_net, "dst")
        dst_net = []
    if len(src_net) + len(not_src_net) > 1:
        blocks.negated_cidrs(not_src_net, "src")
        not_src_net = []
    if len(dst_net) + len(not_dst_net) > 1:
        blocks.negated_cidrs(not_dst_net, "dst")
        not_dst_net = []

    m: list[Term] = []
    if proto is not None:
        m.append(("proto", proto))
    if src_net:
        m.append(("src_net", src_net[0]))
    if "src_ip_set_ids" in f:
        m.extend(("src_set", set_name(i)) for i in f["src_ip_set_ids"])
    if src_ports:
        m.append(("sports", tuple(src_ports)))
    if src_named:
        m.append(("src_ipport_set", set_name(src_named[0])))
    if dst_net:
        m.append(("dst_net", dst_net[0]))
    if "dst_ip_set_ids" in f:
        m.extend(("dst_set", set_name(i)) for i in f["dst_ip_set_ids"])
    if "dst_ip_port_set_ids" in f:
        m.extend(("dst_ipport_set", set_name(i)) for i in f["dst_ip_port_set_ids"])
    if dst_ports:
        m.append(("dports", tuple(dst_ports)))
    if dst_named:
        m.append(("dst_ipport_set", set_name(dst_named[0])))
    icmp_kind = "icmp" if v == 4 else "icmp6"
    if "icmp_type_code" in f:
        m.append((icmp_kind, f["icmp_type_code"].type, f["icmp_type_code"].code))
    elif "icmp_type" in f:
        m.append((icmp_kind, f["icmp_type"], None))
    if "not_protocol" in f:
        np_ = _protocol(f["not_protocol"])
        if np_ is not None:
            m.append(("!proto", np_))
    if not_src_net:
        m.append(("!src_net", not_src_net[0]))
    if "not_src_ip_set_ids" in f:
        m.extend(("!src_set", set_name(i)) for i in f["not_src_ip_set_ids"])
    if "not_src_ports" in f:
        for split in split_ports(_ranges(f["not_src_ports"])):
            m.append(("!sports", split))
    if "not_src_named_port_ip_set_ids" in f:
        m.extend(("!src_ipport_set", set_name(i))
                 for i in f["not_src_named_port_ip_set_ids"])
    if not_dst_net:
        m.append(("!dst_net", not_dst_net[0]))
    if "not_dst_ip_set_ids" in f:
        m.extend(("!dst_set", set_name(i)) for i in f["not_dst_ip_set_ids"])
    if "not_dst_ports" in f:
        for split in split_ports(_ranges(f["not_dst_ports"])):
            m.append(("!dports", split))
    if "not_dst_named_port_ip_set_ids" in f:
        m.extend(("!dst_ipport_set", set_name(i))
                 for i in f["not_dst_named_port_ip_set_ids"])
    if "not_icmp_type_code" in f:
        m.append(("!" + icmp_kind, f["not_icmp_type_code"].type, f["not_icmp_type_code"].code))
    elif "not_icmp_type" in f:
        m.append(("!" + icmp_kind, f["not_icmp_type"], None))
    if blocks.used:
        m.append(("mark", blocks.all_pass, blocks.all_pass))
    match = tuple(m)

    out = blocks.rules
    action = r.action.lower() or "allow"
    marks = ctx.marks
    if action == "log":
        out.append(Rule(match, ("log", log_pfx)))
    elif action in ("allow", "pass", "next-tier", "deny"):
        bit = {"allow": marks.accept, "pass": marks.pass_, "next-tier": marks.pass_,
               "deny": marks.drop}[action]
        out.append(Rule(match, set_mark(bit)))
        then = RETURN if action != "deny" else ctx.deny
        out.append(Rule((("mark", bit, bit),), then))
    else:
        raise ValueError(f"unknown rule action {r.action!r}")
    annotations = f["metadata"].annotations if "metadata" in f else None
    if annotations:
        extra = tuple(f"{k}={annotations[k]}" for k in sorted(annotations))
        out = [x._replace(comment=x.comment + extra) for x in out]
    return out


def rules_to_chain(name: str, rules: Sequence[fb.Rule], ctx: Context, comment: str,
                   log_pfx: str) -> Chain:
    out: list[Rule] = []
    for r in rules:
        out.extend(rule_to_rules(r, ctx, log_pfx))
    while out and out[-1].action == RETURN:
        out.pop()
    if not out:
        out.append(Rule())
    # Felix appends the chain's comment after the first rule's own (annotation) comments.
    out[0] = out[0]._replace(comment=(*out[0].comment, comment))
    return Chain(name, tuple(out))


def policy_chains(kind: str, namespace: str, name: str, policy: fb.Policy,
                  ctx: Context) -> list[Chain]:
    """``cali-pi-<id>`` and ``cali-po-<id>``; staged policies render nothing."""
    if names.is_staged(kind):
        return []
    label = f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"
    pfx = log_prefix(ctx, kind, namespace, name, policy.tier)
    return [
        rules_to_chain(names.policy_chain(names.POLICY_IN_PFX, kind, namespace, name),
                       policy.inbound_rules, ctx, f"{label} ingress", pfx),
        rules_to_chain(names.policy_chain(names.POLICY_OUT_PFX, kind, namespace, name),
                       policy.outbound_rules, ctx, f"{label} egress", pfx),
    ]


def profile_chains(name: str, profile: fb.Profile, ctx: Context) -> list[Chain]:
    pfx = log_prefix(ctx, "pro", "", name, "")
    return [
        rules_to_chain(names.profile_chain(names.PROFILE_IN_PFX, name), profile.inbound_rules,
                       ctx, f"Profile {name} ingress", pfx),
        rules_to_chain(names.profile_chain(names.PROFILE_OUT_PFX, name), profile.outbound_rules,
                       ctx, f"Profile {name} egress", pfx),
    ]

