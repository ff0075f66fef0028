"""MTU detection and the MTU file the CNI plugin reads (Felix's ``mtu.go``).

Host MTU: the smallest MTU among interfaces that are up and match ``MTUIfacePattern``
(``^((en|wl|ww|sl|ib)[Pcopsvx].*|(eth|wlan|wwan).*)`` by default); 1460 when none match.
Pod MTU: the smallest over the enabled encapsulations of (configured MTU, else host MTU minus
the overhead: IPIP 20, VXLAN 50), or the host MTU with no encapsulation. It is written to the
MTU file (``/var/lib/calico/mtu`` by default; the lab sets one per node) atomically and only
when it changes, so the CNI plugin gives new pods an MTU that fits the tunnel.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

from .owners.netlink import Link
from .state import ClusterState

log = logging.getLogger(__name__)

DEFAULT_HOST_MTU = 1460
IPIP_OVERHEAD = 20
VXLAN_OVERHEAD = 50


def host_mtu(links: Iterable[Link], pattern: str) -> int:
    rx = re.compile(pattern)
    mtus = [lk.mtu for lk in links if lk.up and rx.match(lk.name) and lk.mtu]
    return min(mtus) if mtus else DEFAULT_HOST_MTU


def pod_mtu(st: ClusterState, host: int) -> int:
    candidates = []
    if st.vxlan_enabled:
        candidates.append(st.params.vxlan_mtu or host - VXLAN_OVERHEAD)
    if st.ipip_enabled:
        candidates.append(st.params.ipip_mtu or host - IPIP_OVERHEAD)
    return min(candidates) if candidates else host


class MTUManager:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.host_mtu = DEFAULT_HOST_MTU
        self.pod_mtu = 0
        self._written: int | None = None

    def update(self, st: ClusterState, links: Iterable[Link]) -> None:
        self.host_mtu = host_mtu(links, st.params.mtu_iface_pattern)
        self.pod_mtu = pod_mtu(st, self.host_mtu)

    def write(self) -> bool:
        """Write the pod MTU if it changed; raises OSError (retried by the driver)."""
        if self.path is None or not self.pod_mtu or self._written == self.pod_mtu:
            return False
        try:
            if self.path.read_text().strip() == str(self.pod_mtu):
                self._written = self.pod_mtu
                return False
        except OSError:
            pass
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(f"{self.pod_mtu}\n")
        tmp.replace(self.path)
        self._written = self.pod_mtu
        log.info("pod MTU %d written to %s (host MTU %d)", self.pod_mtu, self.path,
                 self.host_mtu)
        return True
