"""Dispatch chains: from an interface name to that endpoint's chain. Felix's ``rules/dispatch.go``.

iptables: names are sorted and split on the character after their common prefix. A prefix
shared by several interfaces gets a child chain (``cali-from-wl-dispatch-<c>``) reached by a
wildcard ``goto``; a lone interface is matched directly in the root. Every chain ends with the
end rules, for workloads a DROP "Unknown interface", so a veth that appears before its
endpoint is known is fail-closed.

nftables: the workload root chains hold one verdict-map lookup (``iifname vmap
@filter-cali-fw-dispatch``) before the same end rule; the map's elements are what changes
when an endpoint comes or goes (see ``workload_vmaps``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from .. import names
from ..generic import RETURN, Chain, Rule, Term, goto
from .context import Context


def _prefix_tree(iface_names: Iterable[str]) -> tuple[str, list[str], dict[str, list[str]]]:
    sorted_names = sorted(set(iface_names))
    common = os.path.commonprefix(sorted_names)  # noqa: RUF071 - strings, not paths if sorted_names else ""
    prefixes: list[str] = []
    by_prefix: dict[str, list[str]] = {}
    for n in sorted_names:
        p = n[: len(common) + 1] if len(n) > len(common) else common
        if p not in by_prefix:
            prefixes.append(p)
            by_prefix[p] = []
        by_prefix[p].append(n)
    return common, prefixes, by_prefix


def _single(
    root: str,
    iface_names: Iterable[str],
    endpoint_pfx: str,
    match: Callable[[str], Term],
    end_rules: list[Rule],
    tree: bool,
) -> list[Chain]:
    common, prefixes, by_prefix = _prefix_tree(iface_names)
    children: list[Chain] = []
    root_rules: list[Rule] = []
    for p in prefixes:
        members = by_prefix[p]
        if tree and len(members) > 1:
            child = f"{root}-{p[len(common):]}"
            root_rules.append(Rule((match(p + "+"),), goto(child)))
            child_rules = [
                Rule((match(n),), goto(names.endpoint_chain(endpoint_pfx, n))) for n in members
            ]
            children.append(Chain(child, tuple(child_rules + end_rules)))
        else:
            for n in members:
                root_rules.append(Rule((match(n),), goto(names.endpoint_chain(endpoint_pfx, n))))
    return [*children, Chain(root, tuple(root_rules + end_rules))]


def workload_dispatch(ctx: Context, iface_names: Iterable[str]) -> list[Chain]:
    """``cali-from-wl-dispatch`` / ``cali-to-wl-dispatch`` (+ iptables children)."""
    end = [Rule((), ctx.deny, ("Unknown interface",))]
    if ctx.nft:
        return [
            Chain(names.FROM_WL_DISPATCH, (Rule((("iif_vmap", names.FROM_WL_VMAP),)), *end)),
            Chain(names.TO_WL_DISPATCH, (Rule((("oif_vmap", names.TO_WL_VMAP),)), *end)),
        ]
    ifaces = list(iface_names)
    return [
        *_single(names.FROM_WL_DISPATCH, ifaces, names.WL_FROM_PFX, lambda n: ("iif", n), end,
                 True),
        *_single(names.TO_WL_DISPATCH, ifaces, names.WL_TO_PFX, lambda n: ("oif", n), end,
                 True),
    ]


def workload_vmaps(iface_names: Iterable[str]) -> dict[str, dict[str, str]]:
    """nftables verdict-map contents: map name → {iface: chain to goto}."""
    ifaces = sorted(set(iface_names))
    return {
        names.FROM_WL_VMAP: {n: names.endpoint_chain(names.WL_FROM_PFX, n) for n in ifaces},
        names.TO_WL_VMAP: {n: names.endpoint_chain(names.WL_TO_PFX, n) for n in ifaces},
    }


def host_dispatch(
    ctx: Context,
    iface_names: Iterable[str],
    default_iface: str,
    *,
    from_chain: str,
    to_chain: str,
    from_pfx: str,
    to_pfx: str,
    skip_workloads: bool,
) -> list[Chain]:
    """Host-endpoint dispatch for one table. Empty names → chains that just return.

    ``from_chain``/``to_chain`` may be "" to render only one direction. With a wildcard host
    endpoint (interfaceName ``*``) the chains end by going to its chains; traffic to a local
    workload skips wildcard egress policy.
    """
    ifaces = [n for n in iface_names if n != default_iface]
    from_end: list[Rule] = []
    to_end: list[Rule] = []
    if default_iface:
        from_end = [Rule((), goto(names.endpoint_chain(from_pfx, default_iface)))]
        if skip_workloads:
            to_end = [Rule((("oif", w),), RETURN,
                           ("Skip egress WHEP policy for traffic to local workload",))
                      for w in ctx.wildcards()]
        to_end.append(Rule((), goto(names.endpoint_chain(to_pfx, default_iface))))
    tree = not ctx.nft
    out: list[Chain] = []
    if from_chain:
        out += _single(from_chain, ifaces, from_pfx, lambda n: ("iif", n), from_end, tree)
    if to_chain:
        out += _single(to_chain, ifaces, to_pfx, lambda n: ("oif", n), to_end, tree)
    return out
