"""Conntrack cleanup for workload addresses that went away (Felix's ``conntrack.go``).

Policy is enforced on new flows (each endpoint chain accepts ``RELATED,ESTABLISHED`` first), so
an established flow would outlive the endpoint and could be picked up by the next pod given the
same IP. After the apply in which an address stopped belonging to a local workload, the driver
runs ``conntrack --family ipv4 --delete --orig-src <ip>`` and ``… --reply-src <ip>``;
"0 flow entries" counts as success, failures are retried on later applies up to 3 times.
"""

from __future__ import annotations

import logging

from .commands import Runner

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
CONNTRACK = "conntrack"


class ConntrackManager:
    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self._pending: dict[str, int] = {}
        self.deleted_for: list[str] = []

    def ips_removed(self, ips: list[str]) -> None:
        for ip in ips:
            self._pending.setdefault(ip, 0)

    @property
    def pending(self) -> set[str]:
        return set(self._pending)

    async def flush(self) -> int:
        """Delete the flows of every pending address; returns how many were cleaned."""
        done = 0
        for ip in sorted(self._pending):
            fam = "ipv6" if ":" in ip else "ipv4"
            ok = True
            for direction in ("--orig-src", "--reply-src"):
                res = await self._runner.run([CONNTRACK, "--family", fam, "--delete",
                                              direction, ip])
                if res.returncode != 0 and "0 flow entries" not in res.stderr:
                    ok = False
                    log.warning("conntrack delete %s %s failed: %s", direction, ip,
                                res.stderr.strip())
            if ok:
                del self._pending[ip]
                self.deleted_for.append(ip)
                done += 1
            else:
                self._pending[ip] += 1
                if self._pending[ip] >= MAX_ATTEMPTS:
                    log.error("giving up on conntrack cleanup for %s", ip)
                    del self._pending[ip]
        return done
