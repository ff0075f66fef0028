"""``ipam show``: wired to ``libcalico.ipam_show``, which formats Calico's IPAM tables.

Until that module lands the command says so and exits 1, rather than printing a table that
does not match Calico's.
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
    except ImportError as exc:
        raise CommandFailed(
            "calicoctl ipam show is not available yet in this build (libcalico.ipam_show "
            "has not landed)"
        ) from exc
    target = target_from_args(args)
    result: int = ipam_show.run_show(args, out, target, connector)
    return result
