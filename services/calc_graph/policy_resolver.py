"""Policy resolver and sorter: the ordered tiers of policies that apply to an endpoint.

Ordering is Felix's (``felix/calc/policy_sorter.go``):

- tiers that have a Tier resource come first, ordered by ``order`` ascending with no order last,
  ties by name; tiers referenced by policies but without a Tier resource follow, by name. The
  built-in tiers (``kube-admin`` 1,000, ``default`` 1,000,000, ``kube-baseline`` 10,000,000)
  count as present with their built-in order until a Tier resource says otherwise;
- within a tier, policies by ``order`` ascending, a missing order sorting as +infinity, ties by
  ``name/namespace/kind``;
- a policy goes into the ingress list when it governs ingress and the egress list when it
  governs egress (no ``types`` means both); a tier appears only if it has a policy in it.

``doNotTrack`` policies go to the untracked tiers and ``preDNAT`` ones to the pre-DNAT tiers
(both with default action Pass, egress dropped for pre-DNAT); ``applyOnForward`` ones also to the
forward tiers. Workload endpoints carry only the normal tiers.

Results are memoised per label set: every endpoint with the same effective labels matches the
same policies. ``generation`` invalidates the memo whenever a tier or any policy's ordering
metadata changes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from libcalico.api.felix import felixbackend_pb2 as fb

BUILTIN_TIER_ORDERS = {"kube-admin": 1_000.0, "default": 1_000_000.0, "kube-baseline": 10_000_000.0}

PolicyKey = tuple[str, str, str]  # (kind, namespace, name)


class PolicyMeta:
    """What the sorter needs of a policy (its rules live in the rule scanner's cache)."""

    __slots__ = (
        "apply_on_forward",
        "do_not_track",
        "egress",
        "ingress",
        "key",
        "order",
        "policy_id",
        "pre_dnat",
        "sort_name",
        "tier",
    )

    def __init__(self, key: PolicyKey, spec: dict[str, Any], order: float) -> None:
        kind, namespace, name = key
        self.key = key
        self.tier = str(spec.get("tier") or "default")
        self.order = order
        types = [str(t).lower() for t in spec.get("types") or ()]
        self.ingress = not types or "ingress" in types
        self.egress = not types or "egress" in types
        self.do_not_track = bool(spec.get("doNotTrack"))
        self.pre_dnat = bool(spec.get("preDNAT"))
        self.apply_on_forward = bool(spec.get("applyOnForward")) or kind == "NetworkPolicy"
        self.sort_name = f"{name}/{namespace}/{kind}"
        self.policy_id = fb.PolicyID(name=name, namespace=namespace, kind=kind)

    def same_ordering(self, other: PolicyMeta) -> bool:
        return (
            self.tier == other.tier
            and self.order == other.order
            and self.ingress == other.ingress
            and self.egress == other.egress
            and self.do_not_track == other.do_not_track
            and self.pre_dnat == other.pre_dnat
            and self.apply_on_forward == other.apply_on_forward
        )


class ResolvedTiers:
    __slots__ = ("forward", "key", "normal", "pre_dnat", "untracked")

    def __init__(self) -> None:
        self.normal: list[fb.TierInfo] = []
        self.untracked: list[fb.TierInfo] = []
        self.pre_dnat: list[fb.TierInfo] = []
        self.forward: list[fb.TierInfo] = []
        self.key: tuple[Any, ...] = ()  # the same content has the same key


class PolicySorter:
    """Tier table and the ordering function."""

    def __init__(self) -> None:
        self._tiers: dict[str, tuple[float | None, str]] = {}
        self.generation = 0

    def on_tier(self, name: str, value: dict[str, Any] | None) -> None:
        if value is None:
            self._tiers.pop(name, None)
        else:
            spec = value.get("spec") or {}
            order = spec.get("order")
            self._tiers[name] = (
                float(order) if order is not None else None,
                str(spec.get("defaultAction") or "Deny"),
            )
        self.generation += 1

    def policy_changed(self) -> None:
        self.generation += 1

    def _tier_key(self, name: str) -> tuple[int, int, float, str]:
        tier = self._tiers.get(name)
        if tier is None:
            builtin = BUILTIN_TIER_ORDERS.get(name)
            if builtin is None:
                return (1, 1, math.inf, name)
            return (0, 0, builtin, name)
        order = tier[0]
        return (0, 1 if order is None else 0, order if order is not None else math.inf, name)

    def default_action(self, tier: str) -> str:
        t = self._tiers.get(tier)
        return t[1] if t is not None else "Deny"

    def resolve(self, policies: Iterable[PolicyMeta]) -> ResolvedTiers:
        by_tier: dict[str, list[PolicyMeta]] = {}
        for p in policies:
            by_tier.setdefault(p.tier, []).append(p)
        out = ResolvedTiers()
        for tier_name in sorted(by_tier, key=self._tier_key):
            pols = sorted(by_tier[tier_name], key=lambda p: (p.order, p.sort_name))
            action = self.default_action(tier_name)
            normal = fb.TierInfo(name=tier_name, default_action=action)
            untracked = fb.TierInfo(name=tier_name, default_action="Pass")
            pre_dnat = fb.TierInfo(name=tier_name, default_action="Pass")
            forward = fb.TierInfo(name=tier_name, default_action=action)
            for p in pols:
                if p.do_not_track:
                    _add(untracked, p, egress=True)
                elif p.pre_dnat:
                    _add(pre_dnat, p, egress=False)
                else:
                    if p.apply_on_forward:
                        _add(forward, p, egress=True)
                    _add(normal, p, egress=True)
            for ti, lst in (
                (normal, out.normal),
                (untracked, out.untracked),
                (pre_dnat, out.pre_dnat),
                (forward, out.forward),
            ):
                if ti.ingress_policies or ti.egress_policies:
                    lst.append(ti)
        out.key = tuple(
            tuple(
                (
                    t.name,
                    t.default_action,
                    tuple((p.kind, p.namespace, p.name) for p in t.ingress_policies),
                    tuple((p.kind, p.namespace, p.name) for p in t.egress_policies),
                )
                for t in lst
            )
            for lst in (out.normal, out.untracked, out.pre_dnat, out.forward)
        )
        return out


def _add(tier: fb.TierInfo, p: PolicyMeta, egress: bool) -> None:
    if p.ingress:
        tier.ingress_policies.append(p.policy_id)
    if egress and p.egress:
        tier.egress_policies.append(p.policy_id)
