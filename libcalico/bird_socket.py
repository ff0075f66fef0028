"""BIRD's control socket: ``show protocols`` and the ``calicoctl node status`` table.

BIRD's reply lines start with a four-digit code; ``-`` after it means more lines follow, a
space means the reply ends; a line starting with a space is another row of the previous code.
Returned lines are normalised to ``<code>-<text>``. ``0001``
greets, ``2002`` is the table header, ``1002`` the protocol rows, ``0000`` the end. Rows whose
name is ``Mesh_``/``Node_``/``Global_`` + address are Calico's peers. Unix sockets live in the
filesystem, not a network namespace, so the status of a lab node can be read from outside it.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from libcalico.cli.boxtable import box_table

PEER_TYPES = {"Mesh": "node-to-node mesh", "Node": "node specific", "Global": "global"}
_NAME = re.compile(r"^(Mesh|Node|Global)_(.+?)(?:_port_(\d+))?$")


class BirdSocketError(RuntimeError):
    pass


@dataclass(frozen=True)
class PeerStatus:
    address: str
    peer_type: str
    state: str
    since: str
    info: str


async def bird_command(socket_path: str, command: str, timeout: float = 2.0) -> list[str]:
    """Send one command and return the reply's text lines (codes stripped)."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(socket_path), timeout
        )
    except (OSError, TimeoutError) as exc:
        raise BirdSocketError(f"cannot connect to BIRD at {socket_path}: {exc}") from exc
    try:
        await asyncio.wait_for(_read_reply(reader), timeout)  # greeting
        writer.write(command.encode() + b"\n")
        await writer.drain()
        return await asyncio.wait_for(_read_reply(reader), timeout)
    except TimeoutError as exc:
        raise BirdSocketError(f"BIRD at {socket_path} did not answer {command!r}") from exc
    finally:
        writer.close()


async def _read_reply(reader: asyncio.StreamReader) -> list[str]:
    lines: list[str] = []
    code = ""
    while True:
        raw = await reader.readline()
        if not raw:
            return lines
        line = raw.decode(errors="replace").rstrip("\n")
        if line.startswith(" "):
            # A continuation row carries no code of its own: it belongs to the last one.
            lines.append(f"{code}-{line[1:]}")
            continue
        code, sep, text = line[:4], line[4:5], line[5:]
        if code.isdigit() and code.startswith(("8", "9")):
            raise BirdSocketError(f"BIRD error {code}: {text}")
        if code not in ("0000", "0001"):
            lines.append(f"{code}{sep}{text}")
        if sep == " ":
            return lines


def parse_protocols(lines: list[str]) -> list[PeerStatus]:
    peers = []
    for line in lines:
        if not line.startswith("1002"):
            continue
        fields = line[5:].split(None, 5)
        if len(fields) < 5 or fields[1] != "BGP":
            continue
        m = _NAME.match(fields[0])
        if not m:
            continue
        kind, addr, _port = m.groups()
        address = addr.replace("_", ".") if addr.count("_") == 3 else addr.replace("_", ":")
        since = fields[4].split(".")[0]
        info = fields[5].strip() if len(fields) > 5 else ""
        peers.append(PeerStatus(address, PEER_TYPES[kind], fields[3], since, info))
    return peers


async def peer_status(socket_path: str) -> list[PeerStatus]:
    return parse_protocols(await bird_command(socket_path, "show protocols"))


def format_node_status(peers: list[PeerStatus] | None) -> str:
    """The text ``calicoctl node status`` prints; ``None`` means BIRD is not running."""
    if peers is None:
        return "Calico process is running.\n\nThe BGP backend process (BIRD) is not running.\n"
    v4 = [p for p in peers if ":" not in p.address]
    out = ["Calico process is running.", "", "IPv4 BGP status"]
    if v4:
        headers = ["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"]
        rows = [[p.address, p.peer_type, p.state, p.since, p.info] for p in v4]
        out.append(box_table(headers, rows))
    else:
        out.append("No IPv4 peers found.")
    out += ["", "IPv6 BGP status", "No IPv6 peers found.", ""]
    return "\n".join(out) + "\n"
