"""``ipam show``: wired to ``libcalico.ipam_show``, which formats Calico's IPAM tables.

The seam: ``libcalico.ipam_show.run_show(args, out, target, connector)`` (parsed arguments,
output stream, the ``DatastoreTarget`` and the connector every verb gets). Until a module with
that function lands, the command says so in one line and exits 1, rather than printing a table
that does not match Calico's.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any, TextIO

from libcalico.cli.calicoctl.commands.common import (
    CommandFailed,
    Connector,
    target_from_args,
)


def run(args: argparse.Namespace, out: TextIO, connector: Connector) -> int:
    try:
        ipam_show: Any = importlib.import_module("libcalico.ipam_show")
    except ImportError:
        ipam_show = None
    run_show = getattr(ipam_show, "run_show", None)
    if run_show is None:
        raise CommandFailed(
            "calicoctl ipam show is not available yet in this build (libcalico.ipam_show "
            "is not wired to calicoctl yet)"
        )
    target = target_from_args(args)
    result: int = run_show(args, out, target, connector)
    return result
