"""``version``: the client's version, then the cluster's from ClusterInformation ``default``.

Laid out as calicoctl prints it (label, padding, value). A cluster without ClusterInformation
reports ``unknown``; an unreachable datastore is an error after the client lines.
"""

from __future__ import annotations

import argparse
from typing import TextIO

from libcalico.cli.calicoctl.commands.common import (
    CommandFailed,
    Connector,
    cluster_error,
    run_async,
    session,
    target_from_args,
)
from libcalico.errors import CalicoError, NotFoundError


def client_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return "v" + version("calico-py")
    except PackageNotFoundError:
        return "unknown"


def run(args: argparse.Namespace, out: TextIO, connector: Connector) -> int:
    print("Client Version:   ", client_version(), file=out)
    print("Git commit:       ", "unknown", file=out)
    out.flush()
    target = target_from_args(args)

    async def _go() -> dict[str, object]:
        async with session(connector, target) as ds:
            try:
                info = await ds.get("ClusterInformation", "default")
            except NotFoundError:
                return {}
            spec = info.get("spec")
            return spec if isinstance(spec, dict) else {}

    try:
        spec = run_async(_go())
    except CalicoError as exc:
        raise CommandFailed(
            f"Unable to retrieve Cluster Version or Type: {cluster_error(exc)}"
        ) from exc
    print("Cluster Version:  ", spec.get("calicoVersion") or "unknown", file=out)
    print("Cluster Type:     ", spec.get("clusterType") or "unknown", file=out)
    return 0
