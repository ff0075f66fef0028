"""Hosts as network namespaces: the lab's nodes and the kernel tests' machines.

A ``Topology`` owns every namespace it creates, all named ``<prefix>-<name>``, so cleanup can
find them again even after a crash (``Topology.remove_all(prefix)``). Nothing here adds a link,
address, route or rule to the machine's own namespace: the underlay bridge lives in a namespace
of its own, and each veth pair is created inside the underlay namespace with its far end placed
straight into the host namespace.

Layout::

    <prefix>-underlay          <prefix>-node-1            <prefix>-node-2
    ┌───────────────┐          ┌──────────────┐           ┌──────────────┐
    │ br0 ── u-node-1 ├─veth──┤ eth0 10.0.0.1 │           │ eth0 10.0.0.2 │
    │     ── u-node-2 ├─veth──┼──────────────┼──────────┤               │
    └───────────────┘          └──────────────┘           └──────────────┘

A second segment (``add_segment``) gets its own bridge namespace; ``add_router`` joins
segments through a namespace with one leg on each and forwarding on, for CrossSubnet tests.

Set-up is a handful of ``ip`` commands per host, not a hot path, so it runs them directly;
the dataplane driver uses netlink (pyroute2) instead.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

IP = "ip"


class NetnsError(RuntimeError):
    pass


def run(
    args: Sequence[str],
    *,
    netns: str | None = None,
    check: bool = True,
    input: str | None = None,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Run a command, inside ``netns`` when given, and raise NetnsError with its stderr."""
    argv = [IP, "netns", "exec", netns, *args] if netns else list(args)
    proc = subprocess.run(
        argv, input=input, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def list_netns() -> list[str]:
    out = run([IP, "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_pids(netns: str) -> list[int]:
    proc = run([IP, "netns", "pids", netns], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def kill_netns_processes(netns: str, grace: float = 2.0) -> None:
    """SIGTERM every process in the namespace, then SIGKILL what is left after ``grace``."""
    pids = netns_pids(netns)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _alive(p)]
        if pids:
            time.sleep(0.05)
    for pid in pids:
        _signal(pid, signal.SIGKILL)


def delete_netns(netns: str) -> None:
    kill_netns_processes(netns)
    run([IP, "netns", "delete", netns], check=False)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class Segment:
    """One L2 underlay: a bridge in a namespace of its own, and its subnet."""

    name: str
    netns: str
    subnet: ipaddress.IPv4Network
    next_host: int = 1


@dataclass
class Host:
    name: str
    netns: str
    segment: str
    address: ipaddress.IPv4Interface
    interface: str = "eth0"


@dataclass
class Topology:
    """Namespaces for hosts on one or more underlay segments. Always call ``destroy()``."""

    prefix: str
    segments: dict[str, Segment] = field(default_factory=dict)
    hosts: dict[str, Host] = field(default_factory=dict)
    routers: list[str] = field(default_factory=list)

    def ns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    # -- building --------------------------------------------------------------------------

    def add_segment(self, name: str, subnet: str) -> Segment:
        netns = self.ns(f"ul-{name}")
        self._create_netns(netns)
        run([IP, "-n", netns, "link", "add", "br0", "type", "bridge"])
        run([IP, "-n", netns, "link", "set", "br0", "up"])
        seg = Segment(name=name, netns=netns, subnet=ipaddress.IPv4Network(subnet))
        self.segments[name] = seg
        return seg

    def add_host(
        self,
        name: str,
        segment: str | None = None,
        address: str | None = None,
        default_via: str | None = "auto",
    ) -> Host:
        """A namespace with ``eth0`` on the segment's bridge, loopback up, forwarding on.

        ``default_via="auto"`` routes by default to the segment's last address: a node needs a
        default route for proxy ARP to answer its pods' ARP for 169.254.1.1, as on a real host.
        """
        seg = self.segments[segment] if segment else next(iter(self.segments.values()))
        netns = self.ns(name)
        self._create_netns(netns)
        iface = self._attach(seg, netns, f"u-{name}"[:15])
        if address is None:
            address = f"{seg.subnet[seg.next_host]}/{seg.subnet.prefixlen}"
            seg.next_host += 1
        run([IP, "-n", netns, "addr", "add", address, "dev", iface])
        run([IP, "-n", netns, "link", "set", iface, "up"])
        if default_via == "auto":
            default_via = str(seg.subnet[-2])
        if default_via:
            run([IP, "-n", netns, "route", "replace", "default", "via", default_via])
        sysctl(netns, "net.ipv4.ip_forward", "1")
        host = Host(name, netns, seg.name, ipaddress.IPv4Interface(address), iface)
        self.hosts[name] = host
        return host

    def add_router(self, name: str, legs: dict[str, str]) -> str:
        """A namespace with a leg (``<segment>: <address/prefix>``) on each segment."""
        netns = self.ns(name)
        self._create_netns(netns)
        for i, (seg_name, address) in enumerate(legs.items()):
            seg = self.segments[seg_name]
            iface = self._attach(seg, netns, f"r{i}-{name}"[:15], inner=f"eth{i}")
            run([IP, "-n", netns, "addr", "add", address, "dev", iface])
            run([IP, "-n", netns, "link", "set", iface, "up"])
        sysctl(netns, "net.ipv4.ip_forward", "1")
        self.routers.append(netns)
        return netns

    def add_route(self, host: str, dst: str, via: str) -> None:
        run([IP, "-n", self.hosts[host].netns, "route", "replace", dst, "via", via])

    def _create_netns(self, netns: str) -> None:
        if netns in list_netns():
            delete_netns(netns)
        run([IP, "netns", "add", netns])
        run([IP, "-n", netns, "link", "set", "lo", "up"])

    def _attach(self, seg: Segment, netns: str, outer: str, inner: str = "eth0") -> str:
        # Both ends are created inside the underlay namespace and the inner end is placed
        # straight into the host: the machine's own namespace never sees either.
        run([IP, "-n", seg.netns, "link", "add", outer, "type", "veth",
             "peer", "name", inner, "netns", netns])
        run([IP, "-n", seg.netns, "link", "set", outer, "master", "br0"])
        run([IP, "-n", seg.netns, "link", "set", outer, "up"])
        return inner

    # -- using -----------------------------------------------------------------------------

    def exec(
        self, host: str, args: Sequence[str], *, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        return run(args, netns=self._netns_of(host), check=check, timeout=timeout)

    def popen(self, host: str, args: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        """A long-running process inside a host's namespace (killed by ``destroy()``)."""
        argv = [IP, "netns", "exec", self._netns_of(host), *args]
        return subprocess.Popen(argv, **kw)  # type: ignore[call-overload, no-any-return]

    def _netns_of(self, host: str) -> str:
        return self.hosts[host].netns if host in self.hosts else self.ns(host)

    # -- tearing down ----------------------------------------------------------------------

    def destroy(self) -> None:
        self.remove_all(self.prefix)
        self.segments.clear()
        self.hosts.clear()
        self.routers.clear()

    @staticmethod
    def remove_all(prefix: str) -> list[str]:
        """Delete every namespace named ``<prefix>-*`` (and what runs in it); returns them."""
        gone = [n for n in list_netns() if n.startswith(f"{prefix}-")]
        # Hosts first, underlays last, so no veth is left dangling into a live bridge.
        for netns in sorted(gone, key=lambda n: "-ul-" in n):
            delete_netns(netns)
        return gone


def sysctl(netns: str, key: str, value: str) -> None:
    run(["sysctl", "-qw", f"{key}={value}"], netns=netns)


def have_root() -> bool:
    return os.geteuid() == 0
