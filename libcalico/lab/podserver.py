"""The lab's pod server: what every lab pod runs, like Kubernetes e2e's agnhost, for one node.

One process per node serves every pod of that node: for each pod it enters the pod's network
namespace (``setns`` on its only thread), opens TCP and UDP sockets on ports 80 and 81 there,
and returns; a socket stays in the namespace it was made in, so one ``selectors`` loop serves
them all. (The kernel answers ping.) Measured: ~10 MB RSS for the process however many pods it
serves, against ~10 MB *per pod* for a process per pod -- see ``bench/cni.py``.

What a client gets:

- TCP: after the client's first bytes (or 0.3 s of silence) one line, ``<ns>/<pod> <client-ip>``,
  then the connection is closed; an HTTP request gets the same as an HTTP/1.0 response
  (``GET /clientip`` answers ``<client-ip>:<port>``), so ``curl http://<pod-ip>/`` works.
- UDP: every datagram is answered with the same line.

Control: a unix socket (``--control``; one JSON request per line, one JSON answer per line)::

    {"op": "add", "pod": "default/web-1", "netns": "/var/run/netns/pod-default.web-1"}
    {"op": "del", "pod": "default/web-1"}
    {"op": "list"}

At start it serves every pod whose record under ``--pods-dir`` (``<ns>/<pod>.json``, written by
``calico-lab pod add``) names this node, so a restarted server picks its pods up again.

Only the standard library is imported, to keep the process small.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import selectors
import signal
import socket
import sys
import time
from typing import Any

PORTS = (80, 81)
CLONE_NEWNET = 0x40000000
SILENCE_S = 0.3
CONN_TIMEOUT_S = 5.0
HTTP_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"OPTIONS ")

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def _listen(kind: int, port: int) -> socket.socket:
    """A dual-stack socket on ``port`` when IPv6 is on in the namespace, else IPv4 only."""
    try:
        sock = socket.socket(socket.AF_INET6, kind)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        addr: tuple[Any, ...] = ("::", port)
    except OSError:
        sock = socket.socket(socket.AF_INET, kind)
        addr = ("0.0.0.0", port)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError:
        sock.close()
        if addr[0] == "::":
            sock = socket.socket(socket.AF_INET, kind)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", port))
        else:
            raise
    if kind == socket.SOCK_STREAM:
        sock.listen(64)
    sock.setblocking(False)
    return sock


def _client_ip(addr: Any) -> tuple[str, int]:
    host, port = str(addr[0]), int(addr[1])
    if host.startswith("::ffff:"):
        host = host[7:]
    return host, port


class PodServer:
    def __init__(self, node: str) -> None:
        self.node = node
        self.sel = selectors.DefaultSelector()
        self.pods: dict[str, list[socket.socket]] = {}
        self.conns: dict[socket.socket, tuple[str, float, float]] = {}  # pod, silence, deadline
        self.own_ns = os.open("/proc/self/ns/net", os.O_RDONLY)
        self.running = True

    # -- pods ----------------------------------------------------------------------------------

    def add_pod(self, pod: str, netns: str) -> None:
        if pod in self.pods:
            self.del_pod(pod)
        target = os.open(netns, os.O_RDONLY)
        socks: list[socket.socket] = []
        try:
            _setns(target)
            try:
                for port in PORTS:
                    socks.append(_listen(socket.SOCK_STREAM, port))
                    socks.append(_listen(socket.SOCK_DGRAM, port))
            finally:
                _setns(self.own_ns)
        except OSError:
            for s in socks:
                s.close()
            raise
        finally:
            os.close(target)
        for s in socks:
            kind = "tcp" if s.type == socket.SOCK_STREAM else "udp"
            self.sel.register(s, selectors.EVENT_READ, (kind, pod))
        self.pods[pod] = socks
        print(f"serving {pod} ({netns}) on tcp/udp {PORTS}", flush=True)

    def del_pod(self, pod: str) -> bool:
        socks = self.pods.pop(pod, None)
        if socks is None:
            return False
        for s in socks:
            self.sel.unregister(s)
            s.close()
        for conn, (p, _, _) in list(self.conns.items()):
            if p == pod:
                self._close(conn)
        print(f"stopped serving {pod}", flush=True)
        return True

    # -- traffic -------------------------------------------------------------------------------

    def _reply(self, pod: str, peer: Any, request: bytes) -> bytes:
        ip, port = _client_ip(peer)
        line = f"{pod} {ip}\n"
        if request.startswith(HTTP_METHODS):
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 1 else b"/"
            body = f"{ip}:{port}\n" if path.startswith(b"/clientip") else f"{pod}\n"
            return (f"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                    f"{len(body)}\r\nConnection: close\r\n\r\n{body}").encode()
        return line.encode()

    def _accept(self, sock: socket.socket, pod: str) -> None:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        conn.setblocking(False)
        now = time.monotonic()
        self.conns[conn] = (pod, now + SILENCE_S, now + CONN_TIMEOUT_S)
        self.sel.register(conn, selectors.EVENT_READ, ("conn", pod))

    def _answer(self, conn: socket.socket, pod: str, request: bytes) -> None:
        try:
            conn.setblocking(True)
            conn.settimeout(1.0)
            conn.sendall(self._reply(pod, conn.getpeername(), request))
        except OSError:
            pass
        self._close(conn)

    def _close(self, conn: socket.socket) -> None:
        if conn in self.conns:
            del self.conns[conn]
            try:
                self.sel.unregister(conn)
            except (KeyError, ValueError):
                pass
        conn.close()

    def _udp(self, sock: socket.socket, pod: str) -> None:
        try:
            data, peer = sock.recvfrom(2048)
            sock.sendto(self._reply(pod, peer, data), peer)
        except OSError:
            pass

    # -- control -------------------------------------------------------------------------------

    def handle_control(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        try:
            if op == "add":
                self.add_pod(str(request["pod"]), str(request["netns"]))
                return {"ok": True}
            if op == "del":
                return {"ok": True, "served": self.del_pod(str(request["pod"]))}
            if op == "list":
                return {"ok": True, "pods": sorted(self.pods), "ports": list(PORTS)}
            return {"ok": False, "error": f"unknown op {op!r}"}
        except (OSError, KeyError) as exc:
            return {"ok": False, "error": str(exc)}

    def _control(self, sock: socket.socket) -> None:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(2.0)
            try:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                reply = self.handle_control(json.loads(data or b"{}"))
            except (OSError, ValueError) as exc:
                reply = {"ok": False, "error": str(exc)}
            try:
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                pass

    # -- loop ----------------------------------------------------------------------------------

    def serve(self, control_path: str) -> None:
        try:
            os.unlink(control_path)
        except FileNotFoundError:
            pass
        ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ctl.bind(control_path)
        ctl.listen(16)
        self.sel.register(ctl, selectors.EVENT_READ, ("control", ""))
        try:
            while self.running:
                for key, _ in self.sel.select(timeout=0.1):
                    kind, pod = key.data
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if kind == "tcp":
                        self._accept(sock, pod)
                    elif kind == "udp":
                        self._udp(sock, pod)
                    elif kind == "conn":
                        try:
                            data = sock.recv(4096)
                        except OSError:
                            data = b""
                        self._answer(sock, pod, data)
                    else:
                        self._control(sock)
                now = time.monotonic()
                for conn, (pod, silence, _deadline) in list(self.conns.items()):
                    if now >= silence:
                        self._answer(conn, pod, b"")
        finally:
            ctl.close()
            try:
                os.unlink(control_path)
            except FileNotFoundError:
                pass


def records_for_node(pods_dir: str, node: str) -> list[dict[str, Any]]:
    out = []
    try:
        namespaces = os.listdir(pods_dir)
    except FileNotFoundError:
        return []
    for ns in sorted(namespaces):
        d = os.path.join(pods_dir, ns)
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(d, name)) as f:
                    rec = json.load(f)
            except (OSError, ValueError):
                continue
            if rec.get("node") == node and rec.get("state") == "running":
                out.append(rec)
    return out


def rss_kb(pid: int | str = "self") -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="podserver", description=__doc__.split("\n\n")[0])
    p.add_argument("--node", required=True)
    p.add_argument("--control", required=True, help="unix socket path for add/del/list")
    p.add_argument("--pods-dir", default="", help="pod records to serve at start")
    args = p.parse_args(argv)
    server = PodServer(args.node)

    def stop(_sig: int, _frame: object) -> None:
        server.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for rec in records_for_node(args.pods_dir, args.node) if args.pods_dir else []:
        try:
            server.add_pod(f"{rec['namespace']}/{rec['name']}", str(rec["netns_path"]))
        except (OSError, KeyError) as exc:
            print(f"cannot serve {rec.get('namespace')}/{rec.get('name')}: {exc}", flush=True)
    print(f"podserver for {args.node} ready on {args.control}", flush=True)
    server.serve(args.control)
    sys.exit(0)


def request(control_path: str, req: dict[str, Any], timeout: float = 3.0) -> dict[str, Any]:
    """Send one control request (for the lab); raises OSError when the server is not there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(control_path)
        s.sendall(json.dumps(req).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    reply: dict[str, Any] = json.loads(data or b"{}")
    return reply


if __name__ == "__main__":
    main()
