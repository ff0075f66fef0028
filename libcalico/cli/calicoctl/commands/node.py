"""``calicoctl node status``: the BGP sessions of a node, read from its BIRD control socket.

Run inside a node it reads Calico's socket ``/var/run/calico/bird.ctl``; from the lab's host,
``--node NAME`` reads ``<state dir>/nodes/NAME/bird/bird.ctl`` (unix sockets live in the
filesystem, so no namespace has to be entered). ``--bird-socket`` names one directly.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import TextIO

from libcalico.bird_socket import BirdSocketError, format_node_status, peer_status
from libcalico.cli.calicoctl.commands.common import CommandFailed

NODE_SOCKET = "/var/run/calico/bird.ctl"
LAB_STATE_DIR = "/run/calico-lab"


def socket_path(args: argparse.Namespace) -> Path:
    if getattr(args, "bird_socket", None):
        return Path(args.bird_socket)
    if getattr(args, "node", None):
        state = str(args.state_dir or os.environ.get("CALICO_STATE_DIR") or LAB_STATE_DIR)
        return Path(state) / "nodes" / str(args.node) / "bird" / "bird.ctl"
    return Path(NODE_SOCKET)


def run_status(args: argparse.Namespace, out: TextIO) -> int:
    path = socket_path(args)
    if not path.exists():
        out.write(format_node_status(None))
        raise CommandFailed(f"no BIRD control socket at {path}"
                            + ("" if getattr(args, "node", None) else
                               "; from the lab's host use --node NAME"))
    try:
        peers = asyncio.run(peer_status(str(path)))
    except BirdSocketError as exc:
        out.write(format_node_status(None))
        raise CommandFailed(str(exc)) from exc
    out.write(format_node_status(peers))
    return 0
