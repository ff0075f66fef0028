"""``calico-lab probe``: can this pod reach that pod (or address) on this port and protocol?

The probe runs in the source pod's network namespace -- the calling thread enters it with
``setns`` for the socket it makes (``libcalico.cni.plumbing.in_netns``), or ``ping`` runs
there for ICMP -- so the packets leave through the pod's own ``eth0`` exactly like the pod's
traffic, and policy, routes and NAT on the way apply to them.

- ``tcp``: connected within the timeout (the lab's pod server answers with a line, which is
  reported). Refused, reset or no answer is a failure.
- ``udp``: a datagram out and the pod server's reply back within the timeout. (A datagram has
  no connection, so a silent drop and a missing server look the same: both fail.)
- ``icmp``: one echo request answered within the timeout.

The whole probe is bounded by ``timeout`` (default 1.5 s, at most 2 s) so a dropped packet
fails fast.
"""

from __future__ import annotations

import ipaddress
import math
import socket
import subprocess
import time
from dataclasses import dataclass

from libcalico.cni.plumbing import in_netns

MAX_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str
    seconds: float


def probe(
    netns_path: str, target: str, port: int, protocol: str, timeout: float = 1.5
) -> ProbeResult:
    timeout = min(max(timeout, 0.05), MAX_TIMEOUT_S)
    ip = ipaddress.ip_address(target)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    t0 = time.monotonic()
    protocol = protocol.lower()
    try:
        if protocol == "icmp":
            ok, detail = _ping(netns_path, str(ip), timeout)
        elif protocol == "tcp":
            ok, detail = _tcp(netns_path, family, str(ip), port, timeout)
        elif protocol == "udp":
            ok, detail = _udp(netns_path, family, str(ip), port, timeout)
        else:
            raise ValueError(f"unknown protocol {protocol!r}: use tcp, udp or icmp")
    except OSError as exc:
        ok, detail = False, exc.strerror or str(exc)
    return ProbeResult(ok, detail, time.monotonic() - t0)


def _tcp(netns: str, family: int, ip: str, port: int, timeout: float) -> tuple[bool, str]:
    with in_netns(netns):
        sock = socket.socket(family, socket.SOCK_STREAM)
    deadline = time.monotonic() + timeout
    with sock:
        sock.settimeout(timeout)
        try:
            sock.connect((ip, port))
        except TimeoutError:
            return False, "timed out connecting"
        except OSError as exc:
            return False, exc.strerror or str(exc)
        reply = b""
        try:
            sock.sendall(b"probe\n")
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            while not reply.endswith(b"\n"):
                chunk = sock.recv(1024)
                if not chunk:
                    break
                reply += chunk
        except OSError:
            pass
    text = reply.decode(errors="replace").strip()
    return True, f"connected{', reply: ' + text if text else ''}"


def _udp(netns: str, family: int, ip: str, port: int, timeout: float) -> tuple[bool, str]:
    with in_netns(netns):
        sock = socket.socket(family, socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(timeout)
        try:
            sock.connect((ip, port))
            sock.send(b"probe\n")
            reply = sock.recv(2048)
        except TimeoutError:
            return False, "no reply"
        except OSError as exc:
            return False, exc.strerror or str(exc)
    return True, f"reply: {reply.decode(errors='replace').strip()}"


def _ping(netns: str, ip: str, timeout: float) -> tuple[bool, str]:
    wait = max(1, math.floor(timeout))  # ping's -W takes whole seconds (fractions since 2019)
    cmd = ["ping", "-n", "-c", "1", "-W", f"{timeout:.2f}" if timeout < 1 else str(wait), ip]
    if ":" in ip:
        cmd.insert(1, "-6")
    with in_netns(netns):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 0.5,
                                  check=False)
        except subprocess.TimeoutExpired:
            return False, "no echo reply"
    if proc.returncode == 0:
        rtt = next((part for part in proc.stdout.split() if part.startswith("time=")), "")
        return True, f"echo reply{' ' + rtt if rtt else ''}"
    return False, "no echo reply"
