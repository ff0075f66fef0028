"""One module per calicoctl verb group; ``dispatch`` routes parsed arguments to them.

Every ``run`` takes the parsed arguments, the stream to print results on and (when it talks to
the datastore) a connector, ``connector(target)`` -> async context manager yielding a
``common.Datastore``; tests pass a fake one.
"""

from __future__ import annotations

import argparse
from typing import TextIO

from libcalico.cli.calicoctl.commands.common import CommandFailed, Connector, cluster_error
from libcalico.errors import CalicoError


def dispatch(
    args: argparse.Namespace, out: TextIO, connector: Connector | None = None
) -> int:
    """Run the command ``args`` names. Expected failures raise ``CommandFailed``."""
    if connector is None:
        from libcalico.cli.calicoctl.commands.common import connect

        connector = connect
    return _dispatch(args, out, connector)


def _dispatch(args: argparse.Namespace, out: TextIO, connector: Connector) -> int:
    command = args.command
    try:
        if command in ("create", "apply", "replace", "delete"):
            from libcalico.cli.calicoctl.commands import write

            return write.run(args, out, connector)
        if command == "get":
            from libcalico.cli.calicoctl.commands import get

            return get.run(args, out, connector)
        if command == "patch":
            from libcalico.cli.calicoctl.commands import patch

            return patch.run_patch(args, out, connector)
        if command == "label":
            from libcalico.cli.calicoctl.commands import patch

            return patch.run_label(args, out, connector)
        if command == "validate":
            from libcalico.cli.calicoctl.commands import validate

            return validate.run(args, out)
        if command == "version":
            from libcalico.cli.calicoctl.commands import version

            return version.run(args, out, connector)
        if command == "node":
            from libcalico.cli.calicoctl.commands import node

            return node.run_status(args, out)
        if command == "ipam":
            from libcalico.cli.calicoctl.commands import ipam

            return ipam.run(args, out, connector)
    except CalicoError as exc:
        # Anything a verb did not word itself: still one line naming resource/field/reason.
        raise CommandFailed(cluster_error(exc)) from exc
    raise CommandFailed(f"unknown command: {command!r}")
