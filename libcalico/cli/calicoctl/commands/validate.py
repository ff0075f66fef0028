"""``validate -f FILE``: parse and validate resources offline, without a datastore."""

from __future__ import annotations

import argparse
from typing import TextIO

from libcalico.cli.calicoctl.commands.common import (
    CommandFailed,
    cluster_error,
    load_resources,
    single_kind,
    validate_all,
)
from libcalico.errors import CalicoError


def run(args: argparse.Namespace, out: TextIO) -> int:
    try:
        resources = load_resources(args.filename, args.recursive, args.skip_empty)
    except CommandFailed as exc:
        # Calico's validate words this failure in lower case.
        raise CommandFailed(str(exc).replace("Failed to execute", "failed to execute", 1)) from exc
    if not resources:
        print("No resources specified", file=out)
        return 0
    kind = single_kind(resources)
    try:
        validate_all(resources, "")
    except CalicoError as exc:
        if len(resources) == 1:
            what = f"'{kind}' resource"
        else:
            what = f"any '{kind}' resources" if kind else "any resources"
        raise CommandFailed(f"failed to validate {what}: {cluster_error(exc)}") from exc
    noun = f"'{kind}' resource(s)" if kind else "resource(s)"
    print(f"Successfully validated {len(resources)} {noun}", file=out)
    return 0
