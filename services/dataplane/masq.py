"""NAT outgoing: which pools masquerade, and where the rules come from.

The rules themselves are the policy compiler's: ``cali-nat-outgoing`` in the nat table (from
``cali-POSTROUTING``) masquerades traffic whose source is in ``cali40masq-ipam-pools`` and whose
destination is not in ``cali40all-ipam-pools``; both sets are filled by the compiler from the
``IPAMPoolUpdate`` messages, which the driver therefore always forwards to it. This manager
keeps the same pools from the stream so the driver can say what it expects (``masq_cidrs``) in
logs and tests, and so a pool change marks the nat table for a read-back on the next apply,
catching a hand-flushed ``cali-nat-outgoing`` sooner than the periodic refresh would.
"""

from __future__ import annotations

from .state import ClusterState


def masq_cidrs(st: ClusterState) -> list[str]:
    """CIDRs of pools with ``natOutgoing``, as the masq-ipam-pools set should hold them."""
    return sorted(p.cidr for p in st.pools.values() if p.masquerade)


class MasqManager:
    def __init__(self) -> None:
        self._last: list[str] | None = None

    def changed(self, st: ClusterState) -> bool:
        """Whether the set of natOutgoing pools changed since the last call."""
        now = masq_cidrs(st)
        if now != self._last:
            self._last = now
            return True
        return False
