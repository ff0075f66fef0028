"""nftables text for ``generic`` rules: the same chains as iptables, in one table per family.

Felix's nftables mode keeps one table ``calico`` per family (``ip`` / ``ip6``) and
namespaces every chain with its iptables table ("layer"): ``filter-cali-FORWARD``,
``raw-cali-PREROUTING``, ``nat-cali-OUTPUT``… so the same iptables name can exist in several
layers. Jumps, gotos and verdict maps are namespaced the same way. Base chains
(``filter-FORWARD``…) take the place of the kernel-chain hooks; their priorities follow the
iptables tables they stand in for (raw -300, mangle -150, dstnat -100, filter 0, srcnat +10).

Each rule carries ``comment "cali:<id>[; <comment>…]"`` with the ID computed as in iptables
(running SHA-224 over the namespaced chain name and the rule with ``HASH`` for the ID).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..generic import Action, Chain, Rule, Term
from ..iptables.hash import PLACEHOLDER, rule_hashes
from ..iptables.render import escape_comment
from ..names import nft_set_name

TABLE = "calico"
MAX_COMMENT = 128

# Base chain name → (type, hook, priority); the rules in them are the hooks.
BASE_CHAINS: dict[str, tuple[str, str, int]] = {
    "raw-PREROUTING": ("filter", "prerouting", -300),
    "raw-OUTPUT": ("filter", "output", -300),
    "mangle-PREROUTING": ("filter", "prerouting", -150),
    "mangle-POSTROUTING": ("filter", "postrouting", -150),
    "nat-PREROUTING": ("nat", "prerouting", -100),
    "nat-OUTPUT": ("nat", "output", -100),
    "nat-POSTROUTING": ("nat", "postrouting", 110),
    "filter-INPUT": ("filter", "input", 0),
    "filter-FORWARD": ("filter", "forward", 0),
    "filter-OUTPUT": ("filter", "output", 0),
}

_TRANSPORT = {"tcp": "tcp", "udp": "udp", "sctp": "sctp", 6: "tcp", 17: "udp", 132: "sctp"}


def family(ip_version: int) -> str:
    return "ip" if ip_version == 4 else "ip6"


def layered(layer: str, name: str) -> str:
    return name if name.startswith(layer + "-") else f"{layer}-{name}"


def _ports(ranges: Sequence[tuple[int, int]]) -> str:
    return "{ " + ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges) + " }"


def _iface(name: str) -> str:
    return '"' + (name[:-1] + "*" if name.endswith("+") else name) + '"'


def _ct(states: str, neg: bool) -> str:
    op = "!= " if neg else ""
    if states == "DNAT":
        return f"ct status {op}dnat"
    return f"ct state {op}{states.lower()}"


def term(t: Term, ipv: str, transport: str, layer: str) -> str:
    k = t[0]
    neg = k.startswith("!")
    base = k[1:] if neg else k
    op = "!= " if neg else ""
    if base == "proto":
        return f"meta l4proto {op}{t[1]}"
    if base in ("src_net", "dst_net"):
        return f"{ipv} {base[0]}addr {op}{t[1]}"
    if base in ("src_set", "dst_set"):
        return f"{ipv} {base[0]}addr {op}@{nft_set_name(t[1])}"
    if base in ("src_ipport_set", "dst_ipport_set"):
        d = base[0]
        return f"{ipv} {d}addr . meta l4proto . th {d}port {op}@{nft_set_name(t[1])}"
    if base in ("sports", "dports"):
        return f"{transport} {base[0]}port {op}{_ports(t[1])}"
    if base in ("icmp", "icmp6"):
        proto = "icmp" if base == "icmp" else "icmpv6"
        if t[2] is None:
            return f"{proto} type {op}{t[1]}"
        if neg:
            return f"{proto} type . {proto} code != {{ {t[1]} . {t[2]} }}"
        return f"{proto} type {t[1]} {proto} code {t[2]}"
    if k == "mark_clear":
        return f"meta mark & {t[1]:#x} == 0"
    if k == "mark_not_clear":
        return f"meta mark & {t[1]:#x} != 0"
    if base == "mark":
        return f"meta mark & {t[2]:#x} {'!=' if neg else '=='} {t[1]:#x}"
    if k == "iif":
        return f"iifname {_iface(t[1])}"
    if k == "oif":
        return f"oifname {_iface(t[1])}"
    if base == "ct":
        return _ct(t[1], neg)
    if base == "dst_type":
        return f"fib daddr type {op}{t[1].lower()}"
    if base == "src_type":
        key = "saddr . oif" if t[2] else "saddr"
        return f"fib {key} type {op}{t[1].lower()}"
    if k == "rpf_failed":
        return "fib saddr . mark . iif oif 0"
    if k == "iif_vmap":
        return f"iifname vmap @{layered(layer, t[1])}"
    if k == "oif_vmap":
        return f"oifname vmap @{layered(layer, t[1])}"
    raise ValueError(f"no nftables rendering for match {t!r}")


def action(a: Action, layer: str, fully_random: bool = True) -> str:
    k = a[0]
    if k in ("accept", "drop", "reject", "return", "notrack"):
        return str(k)
    if k in ("jump", "goto"):
        return f"{k} {layered(layer, a[1])}"
    if k == "set_mark":
        return f"meta mark set mark or {a[1]:#x}"
    if k == "clear_mark":
        return f"meta mark set mark & {a[1] ^ 0xFFFFFFFF:#x}"
    if k == "set_masked_mark":
        return f"meta mark set mark & {a[2] ^ 0xFFFFFFFF:#x} ^ {a[1]:#x}"
    if k == "log":
        return f'log prefix "{a[1]}: " level info'
    rand = " fully-random" if fully_random else ""
    if k == "masq":
        return f"masquerade to :{a[1]}{rand}" if a[1] else f"masquerade{rand}"
    if k == "snat":
        return f"snat to {a[1]}{rand}"
    if k == "dnat":
        return f"dnat to {a[1]}"
    raise ValueError(f"no nftables rendering for action {a!r}")


def rule_body(rule: Rule, ip_version: int, layer: str, fully_random: bool = True) -> str:
    ipv = family(ip_version)
    transport = "th"
    for t in rule.match:
        if t[0] == "proto":
            transport = _TRANSPORT.get(t[1], "th")
            break
    parts = [term(t, ipv, transport, layer) for t in rule.match]
    if rule.action is not None:
        parts.append(action(rule.action, layer, fully_random))
    if not parts:
        parts.append("counter")
    return " ".join(parts)


def _comment(h: str, comments: Sequence[str]) -> str:
    text = "; ".join([f"cali:{h}", *(escape_comment(c) for c in comments)])
    return text[:MAX_COMMENT]


def render_chain(chain: Chain, ip_version: int, layer: str,
                 fully_random: bool = True) -> tuple[str, ...]:
    """``add rule`` lines for the chain's rules (chain name namespaced by layer)."""
    fam = family(ip_version)
    name = layered(layer, chain.name)
    bodies = [rule_body(r, ip_version, layer, fully_random) for r in chain.rules]
    comments = [r.comment for r in chain.rules]
    hashes = rule_hashes(
        name,
        (f"{name} {PLACEHOLDER} {b} {' '.join(c)}".rstrip()
         for b, c in zip(bodies, comments, strict=True)),
    )
    return tuple(
        f'add rule {fam} {TABLE} {name} {b} comment "{_comment(h, c)}"'
        for b, c, h in zip(bodies, comments, hashes, strict=True)
    )


def base_chain_decl(ip_version: int, name: str) -> str:
    kind, hook, prio = BASE_CHAINS[name]
    return (f"add chain {family(ip_version)} {TABLE} {name} "
            f"{{ type {kind} hook {hook} priority {prio}; policy accept; }}")
