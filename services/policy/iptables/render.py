"""iptables text for ``generic`` rules and chains, in Felix's fragment order.

A rule renders as ``-A <chain> -m comment --comment "cali:<id>" [comments] <match> <action>``;
its ID is hashed over the same line with ``HASH`` in place of the ID comment (``hash.py``).
Comments keep only shell-safe characters (others become ``_``) and at most 256 of them, as
Felix does, because iptables-restore has no quoting to rely on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..generic import Action, Chain, Rule, Term
from .hash import PLACEHOLDER, rule_hashes

_UNSAFE = re.compile(r"[^\w @%+=:,./-]", re.ASCII)
MAX_COMMENT = 256


def escape_comment(text: str) -> str:
    return _UNSAFE.sub("_", text)[:MAX_COMMENT]


def _ports(ranges: Sequence[tuple[int, int]]) -> str:
    return ",".join(str(a) if a == b else f"{a}:{b}" for a, b in ranges)


def _icmp(kind: str, neg: bool, t: int, c: int | None) -> str:
    value = str(t) if c is None else f"{t}/{c}"
    bang = "! " if neg else ""
    if kind == "icmp":
        return f"-m icmp {bang}--icmp-type {value}"
    return f"-m icmp6 {bang}--icmpv6-type {value}"


def _set_dir(kind: str) -> str:
    return "src" if "src" in kind else "dst"


def term(t: Term) -> str:
    k = t[0]
    neg = k.startswith("!")
    base = k[1:] if neg else k
    bang = "! " if neg else ""
    if base == "proto":
        return f"{bang}-p {t[1]}"
    if base == "src_net":
        return f"{bang}--source {t[1]}"
    if base == "dst_net":
        return f"{bang}--destination {t[1]}"
    if base in ("src_set", "dst_set"):
        return f"-m set {bang}--match-set {t[1]} {_set_dir(base)}"
    if base in ("src_ipport_set", "dst_ipport_set"):
        d = _set_dir(base)
        return f"-m set {bang}--match-set {t[1]} {d},{d}"
    if base == "sports":
        return f"-m multiport {bang}--source-ports {_ports(t[1])}"
    if base == "dports":
        return f"-m multiport {bang}--destination-ports {_ports(t[1])}"
    if base in ("icmp", "icmp6"):
        return _icmp(base, neg, t[1], t[2])
    if k == "mark_clear":
        return f"-m mark --mark 0/{t[1]:#x}"
    if k == "mark_not_clear":
        return f"-m mark ! --mark 0/{t[1]:#x}"
    if base == "mark":
        return f"-m mark {bang}--mark {t[1]:#x}/{t[2]:#x}"
    if k == "iif":
        return f"--in-interface {t[1]}"
    if k == "oif":
        return f"--out-interface {t[1]}"
    if base == "ct":
        return f"-m conntrack {bang}--ctstate {t[1]}"
    if base == "dst_type":
        return f"-m addrtype {bang}--dst-type {t[1]}"
    if base == "src_type":
        limit = " --limit-iface-out" if t[2] else ""
        return f"-m addrtype {bang}--src-type {t[1]}{limit}"
    if k == "rpf_failed":
        return "-m rpfilter --invert --validmark"
    raise ValueError(f"no iptables rendering for match {t!r}")


def action(a: Action, masq_fully_random: bool = True) -> str:
    k = a[0]
    if k == "accept":
        return "--jump ACCEPT"
    if k == "drop":
        return "--jump DROP"
    if k == "reject":
        return "--jump REJECT"
    if k == "return":
        return "--jump RETURN"
    if k == "notrack":
        return "--jump NOTRACK"
    if k == "jump":
        return f"--jump {a[1]}"
    if k == "goto":
        return f"--goto {a[1]}"
    if k == "set_mark":
        return f"--jump MARK --set-mark {a[1]:#x}/{a[1]:#x}"
    if k == "clear_mark":
        return f"--jump MARK --set-mark 0/{a[1]:#x}"
    if k == "set_masked_mark":
        return f"--jump MARK --set-mark {a[1]:#x}/{a[2]:#x}"
    if k == "log":
        return f'--jump LOG --log-prefix "{a[1]}: " --log-level 5'
    rand = " --random-fully" if masq_fully_random else ""
    if k == "masq":
        return f"--jump MASQUERADE --to-ports {a[1]}{rand}" if a[1] else f"--jump MASQUERADE{rand}"
    if k == "snat":
        return f"--jump SNAT --to-source {a[1]}{rand}"
    if k == "dnat":
        return f"--jump DNAT --to-destination {a[1]}"
    raise ValueError(f"no iptables rendering for action {a!r}")


def rule_body(rule: Rule, masq_fully_random: bool = True) -> str:
    """Everything after the ID comment: comments, matches, action."""
    parts = [f'-m comment --comment "{escape_comment(c)}"' for c in rule.comment]
    parts += [term(t) for t in rule.match]
    if rule.action is not None:
        parts.append(action(rule.action, masq_fully_random))
    return " ".join(parts)


def render_chain(chain: Chain, masq_fully_random: bool = True) -> tuple[str, ...]:
    """The chain's ``-A`` lines, each carrying its ``cali:`` ID."""
    bodies = [rule_body(r, masq_fully_random) for r in chain.rules]
    name = chain.name
    hashes = rule_hashes(name, (f"-A {name} {PLACEHOLDER} {b}".rstrip() for b in bodies))
    return tuple(
        f'-A {name} -m comment --comment "cali:{h}" {b}'.rstrip()
        for h, b in zip(hashes, bodies, strict=True)
    )


def render_hooks(kernel_chain: str, rules: Sequence[Rule], *, insert: bool,
                 masq_fully_random: bool = True) -> list[str]:
    """Lines for rules we place in a kernel chain.

    Inserted rules are hashed as a chain named after the kernel chain, appended ones as a chain
    named ``<chain>*appends*`` (Felix's trick to keep the two sets of IDs apart).
    """
    bodies = [rule_body(r, masq_fully_random) for r in rules]
    seed = kernel_chain if insert else f"{kernel_chain}*appends*"
    hashes = rule_hashes(seed, (f"-A {seed} {PLACEHOLDER} {b}".rstrip() for b in bodies))
    verb = f"-I {kernel_chain} {{n}}" if insert else f"-A {kernel_chain}"
    return [
        f'{verb.format(n=i + 1)} -m comment --comment "cali:{h}" {b}'.rstrip()
        for i, (h, b) in enumerate(zip(hashes, bodies, strict=True))
    ]
