"""Workload interface plumbing: the veth between a node and a pod, as Calico's CNI plugin does it.

Host side ``cali`` + 11 hex chars of SHA-1 of the workload id, MAC ``ee:ee:ee:ee:ee:ee``, proxy
ARP and the sysctls Calico sets; pod side ``eth0`` with a /32 (/128), a link route to
169.254.1.1 and a default route through it (IPv6: through the host veth's link-local address);
a /32 host route to the pod on the node.

Why ``ip -batch`` and not pyroute2 here: the CNI plugin is a fresh process per pod, and
importing pyroute2 alone takes ~110 ms of the 250 ms ADD budget, while one ``ip -batch`` exec
per namespace costs about a millisecond (measured on this machine; see bench/cni.py). The
long-running dataplane driver, which pays imports once, uses pyroute2.

The veth is created from the node's side with its far end placed into the pod's namespace by
path. The pod namespace is entered with ``setns(2)`` on the calling thread only for the writes
that must happen inside it (its ``ip -batch`` child inherits the namespace), and always left.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import ipaddress
import json
import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

HOST_MAC = "ee:ee:ee:ee:ee:ee"
GATEWAY_V4 = "169.254.1.1"
# The link-local address the kernel derives from HOST_MAC (EUI-64); pods route IPv6 through it.
GATEWAY_V6 = "fe80::ecee:eeff:feee:eeee"
CLONE_NEWNET = 0x40000000
IFNAMSIZ = 15


class PlumbingError(RuntimeError):
    pass


def host_veth_name(workload_id: str, prefix: str = "cali") -> str:
    """``cali`` + the first 11 hex chars of SHA-1 of ``<namespace>.<pod>`` (15 chars in all)."""
    digest = hashlib.sha1(workload_id.encode()).hexdigest()
    return (prefix + digest)[:IFNAMSIZ]


@dataclass(frozen=True)
class WorkloadInterface:
    host_ifname: str
    container_ifname: str
    container_mac: str
    addresses: tuple[str, ...]  # with /32 or /128
    mtu: int


@dataclass
class PodNetworkSpec:
    netns_path: str
    host_ifname: str
    container_ifname: str = "eth0"
    addresses: Sequence[str] = ()  # pod addresses, any prefix; narrowed to /32, /128
    mtu: int = 1500
    # Extra routes inside the pod (CNI ``routes``); the default route is added unless
    # ``include_default_routes`` is false and routes are given.
    routes: Sequence[str] = ()
    include_default_routes: bool = True
    allow_ip_forwarding: bool = False
    sysctl_overrides: dict[str, str] = field(default_factory=dict)


_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def in_netns(path: str) -> Iterator[None]:
    """Run the block (and any child process it starts) inside the namespace at ``path``."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path, os.O_RDONLY)
    except OSError as exc:
        os.close(own)
        raise PlumbingError(f"cannot open network namespace {path}: {exc.strerror}") from exc
    try:
        setns(target, path)
        try:
            yield
        finally:
            setns(own, "the plugin's own namespace")
    finally:
        os.close(target)
        os.close(own)


def setns(fd: int, what: str) -> None:
    """Move the calling thread into the network namespace open at ``fd``."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise PlumbingError(f"setns into {what}: {os.strerror(err)}")


def _ip_batch(commands: Sequence[str], *, family: str = "") -> None:
    argv = ["ip", *([family] if family else []), "-batch", "-"]
    proc = subprocess.run(
        argv, input="\n".join(commands) + "\n", capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise PlumbingError(f"ip -batch failed: {proc.stderr.strip()} (commands: {commands})")


def _ip_json(args: Sequence[str]) -> list[dict[str, object]]:
    proc = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise PlumbingError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return json.loads(proc.stdout or "[]")  # type: ignore[no-any-return]


def _write_sysctl(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise PlumbingError(f"sysctl {path}={value}: {exc.strerror}") from exc


def _host_sysctls(ifname: str, v4: bool, v6: bool) -> dict[str, str]:
    out: dict[str, str] = {}
    if v4:
        base = f"/proc/sys/net/ipv4/conf/{ifname}"
        out |= {
            f"{base}/route_localnet": "1",
            f"/proc/sys/net/ipv4/neigh/{ifname}/proxy_delay": "0",
            f"{base}/proxy_arp": "1",
            f"{base}/forwarding": "1",
        }
    if v6:
        base6 = f"/proc/sys/net/ipv6/conf/{ifname}"
        out |= {
            f"{base6}/disable_ipv6": "0",
            f"{base6}/accept_ra": "0",
            f"{base6}/proxy_ndp": "1",
            f"{base6}/forwarding": "1",
        }
    return out


def setup_pod_network(spec: PodNetworkSpec) -> WorkloadInterface:
    """Create and configure the veth pair; raises PlumbingError (and removes what it made)."""
    nets = [ipaddress.ip_interface(a) for a in spec.addresses]
    host_addrs = [
        f"{n.ip}/{32 if n.version == 4 else 128}" for n in nets
    ]
    v4 = any(n.version == 4 for n in nets)
    v6 = any(n.version == 6 for n in nets)
    if host_veth_exists(spec.host_ifname):
        # A leftover from a failed ADD or a missed DEL for the same workload: Calico replaces it.
        delete_host_veth(spec.host_ifname)
    try:
        # Created from the node side with the far end placed straight into the pod (``netns``
        # takes the namespace's path), and given Calico's MAC before it comes up so the pod's
        # first ARP for the gateway is answered by proxy ARP from a stable address.
        _ip_batch([
            f"link add {spec.host_ifname} mtu {spec.mtu} type veth peer name "
            f"{spec.container_ifname} mtu {spec.mtu} netns {spec.netns_path}",
            f"link set {spec.host_ifname} address {HOST_MAC}",
        ])
        for path, value in _host_sysctls(spec.host_ifname, v4, v6).items():
            _write_sysctl(path, value)
        _ip_batch([
            f"link set {spec.host_ifname} up",
            *(f"route replace {a} dev {spec.host_ifname} scope link" for a in host_addrs
              if ":" not in a),
            # Inside ``ip -batch`` there is no ``-6``; the address itself selects the family.
            *(f"route replace {a} dev {spec.host_ifname}" for a in host_addrs if ":" in a),
        ])
        with in_netns(spec.netns_path):
            if v6:
                for key in ("accept_dad", "disable_ipv6"):
                    _write_sysctl(
                        f"/proc/sys/net/ipv6/conf/{spec.container_ifname}/{key}", "0"
                    )
            if spec.allow_ip_forwarding:
                _write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")
                if v6:
                    _write_sysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1")
            cmds = [f"link set {spec.container_ifname} up"]
            cmds += [f"addr add {a} dev {spec.container_ifname}" for a in host_addrs]
            default = spec.include_default_routes or not spec.routes
            if v4:
                cmds.append(f"route replace {GATEWAY_V4}/32 dev {spec.container_ifname} scope link")
                if default:
                    cmds.append(
                        f"route replace default via {GATEWAY_V4} dev {spec.container_ifname}"
                    )
            if v6 and default:
                cmds.append(
                    f"route replace ::/0 via {GATEWAY_V6} dev {spec.container_ifname}"
                )
            for route in spec.routes:
                gw = GATEWAY_V6 if ":" in route else GATEWAY_V4
                cmds.append(f"route replace {route} via {gw} dev {spec.container_ifname}")
            _ip_batch(cmds)
            link = _ip_json(["link", "show", "dev", spec.container_ifname])
            mac = str(link[0].get("address", "")) if link else ""
    except Exception:
        delete_host_veth(spec.host_ifname)
        raise
    return WorkloadInterface(
        host_ifname=spec.host_ifname,
        container_ifname=spec.container_ifname,
        container_mac=mac,
        addresses=tuple(host_addrs),
        mtu=spec.mtu,
    )


def link_exists(ifname: str) -> bool:
    """Whether the interface exists in the calling thread's namespace.

    ``/sys/class/net`` shows the namespace sysfs was mounted in, not the one ``setns`` entered,
    so this reads the per-thread ``/proc`` view instead.
    """
    with open("/proc/thread-self/net/dev") as f:
        return any(line.split(":", 1)[0].strip() == ifname for line in f.readlines()[2:])


def host_veth_exists(host_ifname: str) -> bool:
    return link_exists(host_ifname)


def delete_host_veth(host_ifname: str) -> bool:
    """Remove the veth (both ends go with it); False when it was already gone."""
    if not host_veth_exists(host_ifname):
        return False
    proc = subprocess.run(
        ["ip", "link", "del", host_ifname], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0 and host_veth_exists(host_ifname):
        raise PlumbingError(f"deleting {host_ifname}: {proc.stderr.strip()}")
    return True


def check_pod_network(
    netns_path: str, container_ifname: str, addresses: Sequence[str], host_ifname: str
) -> list[str]:
    """What is missing compared with a previous result; an empty list means all is in place."""
    problems: list[str] = []
    if not host_veth_exists(host_ifname):
        problems.append(f"host interface {host_ifname} is missing")
    with in_netns(netns_path):
        links = (
            _ip_json(["addr", "show", "dev", container_ifname])
            if link_exists(container_ifname) else []
        )
        if not links:
            return [*problems, f"interface {container_ifname} is missing in {netns_path}"]
        have = {
            f"{a['local']}/{a['prefixlen']}"
            for a in links[0].get("addr_info", [])  # type: ignore[attr-defined]
        }
        for addr in addresses:
            ip = ipaddress.ip_interface(addr)
            want = f"{ip.ip}/{32 if ip.version == 4 else 128}"
            if want not in have:
                problems.append(f"address {want} is missing on {container_ifname}")
        if any(ipaddress.ip_interface(a).version == 4 for a in addresses):
            routes = _ip_json(["route", "show", "default"])
            if not any(r.get("gateway") == GATEWAY_V4 for r in routes):
                problems.append(f"default route via {GATEWAY_V4} is missing")
    return problems
