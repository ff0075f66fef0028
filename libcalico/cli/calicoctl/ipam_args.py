"""The ``calicoctl ipam`` argument parsers (argparse only, so ``--help`` stays fast)::

    calicoctl ipam show      [--ip IP | --show-blocks | --show-borrowed | --show-configuration]
    calicoctl ipam check     [-o FILE] [--show-all-ips] [--show-problem-ips]
    calicoctl ipam release   (--ip IP | --from-report FILE [--from-report FILE ...]) [--force]
    calicoctl ipam configure [--strictaffinity true|false] [--max-blocks-per-host N]

Every ipam command takes ``--ipam TARGET``: the IPAM service (else ``$CALICO_IPAM``, else the
lab's ``unix:///run/calico-lab/sock/ipam.sock``). Values Calico parses itself (the boolean of
``--strictaffinity``, the number of ``--max-blocks-per-host``) are kept as strings here and
checked by the command, so the errors are Calico's.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

IPAM_COMMANDS = ("show", "check", "release", "configure")


def _ipam_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ipam",
        metavar="TARGET",
        default=None,
        help="IPAM service address: unix:///path.sock or host:port "
        "(else $CALICO_IPAM, then the lab's socket)",
    )


def add_ipam_parser(
    sub: Any,
    connection_options: Callable[..., None],
    parser_class: type[argparse.ArgumentParser],
) -> None:
    """Add ``ipam`` and its commands to the top-level subparsers ``sub``."""
    p = sub.add_parser(
        "ipam",
        help="IP address management.",
        description="IP address management, through the calico-py IPAM service.",
    )
    ipam = p.add_subparsers(dest="ipam_command", metavar="<ipam-command>",
                            parser_class=parser_class)
    ipam.required = True

    show = ipam.add_parser(
        "show",
        help="Show IP address usage.",
        description="Show IP address usage by pool, or blocks, borrowed IPs, one IP or the "
        "IPAM configuration.",
    )
    which = show.add_mutually_exclusive_group()
    which.add_argument("--ip", metavar="IP", help="report whether IP is in use")
    which.add_argument("--show-blocks", action="store_true", help="add a row per block")
    which.add_argument(
        "--show-borrowed", action="store_true", help="list IPs borrowed from other nodes' blocks"
    )
    which.add_argument(
        "--show-configuration", action="store_true", help="show the IPAM configuration"
    )

    check = ipam.add_parser(
        "check",
        help="Check IPAM for leaks and inconsistencies.",
        description="Cross-check IPAM allocations against WorkloadEndpoints and Nodes: "
        "addresses allocated but not in use (leaks), in use but not allocated, handles "
        "without addresses.",
    )
    check.add_argument("-o", "--output", metavar="FILE",
                       help="write the report (JSON) here, for 'ipam release --from-report'")
    check.add_argument("--show-all-ips", action="store_true",
                       help="print every IP that is checked")
    check.add_argument("--show-problem-ips", action="store_true",
                       help="print every IP that is leaked or not allocated properly")

    release = ipam.add_parser(
        "release",
        help="Release IP addresses.",
        description="Release one address, or every leak of an 'ipam check' report. This "
        "does not remove the address from an endpoint still using it.",
    )
    release.add_argument("--ip", metavar="IP", help="the address to release")
    release.add_argument(
        "--from-report",
        metavar="REPORT",
        action="append",
        default=[],
        help="release the leaks of this report; given several times, only leaks found in "
        "every report",
    )
    release.add_argument("--force", action="store_true",
                         help="release even though the datastore is not locked")

    configure = ipam.add_parser(
        "configure",
        help="Configure IPAM.",
        description="Modify the IPAM configuration.",
    )
    configure.add_argument(
        "--strictaffinity",
        metavar="true|false",
        help="when true, addresses are never borrowed from other nodes' blocks",
    )
    configure.add_argument(
        "--max-blocks-per-host",
        metavar="N",
        help="the most blocks one node may have affinity for (needs --strictaffinity=true)",
    )

    for parser in (show, check, release, configure):
        _ipam_option(parser)
        connection_options(parser, top=False)
