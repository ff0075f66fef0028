"""Free TCP ports on loopback.

A port is free when we could bind it a moment ago; another process may still take it before the
caller binds. Callers that start servers on these ports retry with a new port when binding
fails (``EtcdServer.start`` does).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable


def free_port(host: str = "127.0.0.1", exclude: Iterable[int] = ()) -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    excluded = set(exclude)
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in excluded:
            return port
    raise RuntimeError("no free port found")


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free ports."""
    ports: list[int] = []
    for _ in range(count):
        ports.append(free_port(host, exclude=ports))
    return ports
