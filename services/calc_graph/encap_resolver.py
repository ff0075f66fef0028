"""Encapsulation resolver: which encapsulations the IP pools need, as one ``Encapsulation``.

IPIP is needed if any pool has ``ipipMode`` other than Never, VXLAN (v4 or v6 by the pool's
family) likewise for ``vxlanMode``, and no-encap if some pool has neither. Felix restarts when
this changes, so it is sent at the head of a node's stream (right after ``ConfigUpdate``) and
again only when the answer changes.
"""

from __future__ import annotations

from typing import Any

from libcalico.api.felix import felixbackend_pb2 as fb


def _on(mode: Any) -> bool:
    return str(mode or "Never") not in ("Never", "")


class EncapsulationResolver:
    def __init__(self) -> None:
        self._pools: dict[str, tuple[bool, bool, bool]] = {}  # name -> (ipip, vxlan, ipv6)
        self.message = self._compute()
        self.dirty = False

    def on_pool(self, name: str, value: dict[str, Any] | None) -> None:
        if value is None:
            self._pools.pop(name, None)
        else:
            spec = value.get("spec") or {}
            self._pools[name] = (
                _on(spec.get("ipipMode")),
                _on(spec.get("vxlanMode")),
                ":" in str(spec.get("cidr") or ""),
            )
        msg = self._compute()
        if msg != self.message:
            self.message = msg
            self.dirty = True

    def _compute(self) -> fb.ToDataplane:
        enc = fb.Encapsulation()
        for ipip, vxlan, v6 in self._pools.values():
            enc.ipip_enabled |= ipip
            if vxlan:
                if v6:
                    enc.vxlan_enabled_v6 = True
                else:
                    enc.vxlan_enabled = True
            if not ipip and not vxlan:
                enc.no_encap_enabled = True
        return fb.ToDataplane(encapsulation=enc)

    def end_flush(self) -> None:
        self.dirty = False
