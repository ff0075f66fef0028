"""The flavour-neutral rule model both renderers (iptables, nftables) consume.

Chain builders in ``rules/`` produce ``Chain`` values; ``iptables.render`` and
``nftables.render`` turn them into text. The model is tuples, not objects, because a full
program is 100k+ rules and building/comparing them is the hot path: a chain is "changed"
exactly when its tuple differs from the one last emitted.

Match terms (first element is the kind, the rest are arguments)::

    ("proto", p) ("!proto", p)                 p: name str or number int
    ("src_net", cidr) ("!src_net", cidr) ("dst_net", cidr) ("!dst_net", cidr)
    ("src_set", name) ("!src_set", name) ("dst_set", name) ("!dst_set", name)
    ("src_ipport_set", n) ("!src_ipport_set", n) ("dst_ipport_set", n) ("!dst_ipport_set", n)
    ("sports", ranges) ("!sports", ranges) ("dports", ranges) ("!dports", ranges)
                                               ranges: tuple of (first, last)
    ("icmp", type, code|None) ("!icmp", …) ("icmp6", …) ("!icmp6", …)
    ("mark_clear", bits) ("mark_not_clear", bits) ("mark", value, mask) ("!mark", value, mask)
    ("iif", name) ("oif", name)               a trailing "+" is a prefix wildcard
    ("ct", "RELATED,ESTABLISHED") ("!ct", "DNAT")
    ("dst_type", "LOCAL") ("!dst_type", "LOCAL")
    ("src_type", t, limit_out) ("!src_type", t, limit_out)
    ("rpf_failed",)
    ("iif_vmap", map) ("oif_vmap", map)        nftables only

Actions::

    ("accept",) ("drop",) ("reject",) ("return",) ("notrack",)
    ("jump", chain) ("goto", chain)
    ("set_mark", bits) ("clear_mark", bits) ("set_masked_mark", value, mask)
    ("log", prefix) ("masq", to_ports) ("snat", to_addr) ("dnat", to_addr)
"""

from __future__ import annotations

from typing import Any, NamedTuple

Term = tuple[Any, ...]
Action = tuple[Any, ...]

ACCEPT: Action = ("accept",)
DROP: Action = ("drop",)
REJECT: Action = ("reject",)
RETURN: Action = ("return",)
NOTRACK: Action = ("notrack",)


class Rule(NamedTuple):
    match: tuple[Term, ...] = ()
    action: Action | None = None
    comment: tuple[str, ...] = ()


class Chain(NamedTuple):
    name: str
    rules: tuple[Rule, ...]


def jump(chain: str) -> Action:
    return ("jump", chain)


def goto(chain: str) -> Action:
    return ("goto", chain)


def set_mark(bits: int) -> Action:
    return ("set_mark", bits)


def clear_mark(bits: int) -> Action:
    return ("clear_mark", bits)


def deny_action(name: str) -> Action:
    """``IptablesFilterDenyAction``: DROP or REJECT."""
    return REJECT if name == "REJECT" else DROP


def action_title(action: Action) -> str:
    """How Felix spells an action in comments ("Drop if no profiles matched")."""
    titles = {"drop": "Drop", "reject": "Reject", "accept": "Accept", "return": "Return"}
    return titles.get(action[0], str(action[0]))


def referenced_chains(chain: Chain) -> list[str]:
    return [str(r.action[1]) for r in chain.rules
            if r.action and r.action[0] in ("jump", "goto")]
