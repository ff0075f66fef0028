"""``calicoctl`` entry point: argument parsing and the one place errors become exit status 1.

Verbs and flags follow Calico's calicoctl::

    calicoctl [--datastore TARGET] [-c CONFIG] [-l LEVEL] <command> ...

      create   -f FILE [--skip-exists] [-n NS]
      apply    -f FILE [-n NS]
      replace  -f FILE [-n NS]
      delete   (KIND [NAME...] | -f FILE) [-s/--skip-not-exists] [-n NS]
      get      (KIND [NAME...] | -f FILE) [-o ps|wide|yaml|json|custom-columns=A,B]
               [-n NS | -A] [--export]
      patch    KIND NAME -p PATCH [-t strategic|merge] [-n NS]
      label    KIND NAME (key=value [--overwrite] | key --remove) [-n NS]
      validate -f FILE
      version
      ipam     show [--ip IP | --show-blocks | --show-borrowed | --show-configuration]
               check [-o FILE] | release (--ip IP | --from-report FILE) [--force]
               configure [--strictaffinity true|false] [--max-blocks-per-host N]
               (through the IPAM service: --ipam TARGET, $CALICO_IPAM or the lab's socket)
      node     status

``-f`` takes a file, ``-`` for stdin, or a directory (its .yaml/.yml/.json files, ``-R`` to
recurse). The connection options (``--datastore``, ``-c``) are accepted before or after the
command. Every failure -- bad arguments, bad input, a refused write, an unreachable datastore --
prints one line on stderr and exits 1; success exits 0.

Only argparse is imported at start-up: each command imports the model, the client and gRPC
when it runs, so ``calicoctl --help`` and ``calicoctl validate`` never load gRPC.

Tracing is opt-in: with ``CALICO_TRACE_FILE`` (e.g. the lab's ``<state>/traces.jsonl``) or an
OTLP endpoint in the environment, the command runs in one span, ``calicoctl <command>``, that
is the parent of every RPC it makes, so a trace shows the command and what each service did.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn, TextIO

from libcalico.cli.calicoctl.ipam_args import add_ipam_parser

PROG = "calicoctl"
OUTPUT_FORMATS = ("ps", "wide", "yaml", "yml", "json")


class UsageError(Exception):
    """Bad command-line arguments (printed as Calico's ``Invalid option`` line)."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _connection_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # On subcommands the defaults are suppressed so that a value given before the command
    # is not overwritten by the subcommand's default.
    default = None if top else argparse.SUPPRESS
    parser.add_argument(
        "--datastore",
        metavar="TARGET",
        default=default,
        help="datastore service address: unix:///path.sock or host:port "
        "(else $CALICO_DATASTORE, then the config file, then the lab's socket)",
    )
    parser.add_argument(
        "-c",
        "--config",
        metavar="CONFIG",
        default=default,
        help="CalicoAPIConfig file with spec.datastoreEndpoint "
        "[default: /etc/calico/calicoctl.cfg]",
    )
    parser.add_argument(
        "--allow-version-mismatch",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="accepted for compatibility; versions are not compared",
    )


def _file_options(parser: argparse.ArgumentParser, *, required: bool, verb: str) -> None:
    parser.add_argument(
        "-f",
        "--filename",
        required=required,
        metavar="FILENAME",
        help=f'file to {verb} resources from; "-" reads stdin; a directory reads its '
        ".yaml, .yml and .json files",
    )
    parser.add_argument(
        "-R", "--recursive", action="store_true", help="recurse into directories given to -f"
    )
    parser.add_argument(
        "--skip-empty", action="store_true", help="do not fail when -f holds no resources"
    )


def _namespace_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-n",
        "--namespace",
        metavar="NS",
        default="",
        help="namespace of namespaced kinds (default: 'default')",
    )


def build_parser() -> _Parser:
    parser = _Parser(
        prog=PROG,
        description="Manage Calico resources in the calico-py datastore.",
    )
    _connection_options(parser, top=True)
    parser.add_argument(
        "-l",
        "--log-level",
        default="error",
        choices=("panic", "fatal", "error", "warn", "warning", "info", "debug"),
        help="log level for diagnostics on stderr [default: error]",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=_Parser)
    sub.required = True

    for verb, helptext in (
        ("create", "Create resources by file, directory or stdin."),
        ("apply", "Create or replace resources by file, directory or stdin."),
        ("replace", "Replace existing resources by file, directory or stdin."),
    ):
        p = sub.add_parser(verb, help=helptext, description=helptext)
        _file_options(p, required=True, verb=verb)
        _namespace_option(p)
        _connection_options(p, top=False)
        if verb == "create":
            p.add_argument(
                "--skip-exists",
                action="store_true",
                help="skip resources that already exist and count them as created",
            )

    p = sub.add_parser(
        "delete",
        help="Delete resources by file, directory, stdin or kind and name.",
        description="Delete resources by file, directory, stdin or kind and name.",
    )
    p.add_argument("kind", nargs="?", metavar="KIND")
    p.add_argument("names", nargs="*", metavar="NAME")
    _file_options(p, required=False, verb="delete")
    p.add_argument(
        "-s",
        "--skip-not-exists",
        action="store_true",
        help="skip resources that do not exist and count them as deleted",
    )
    _namespace_option(p)
    _connection_options(p, top=False)

    p = sub.add_parser(
        "get",
        help="Show resources by file, directory, stdin or kind and name.",
        description="Show resources by file, directory, stdin or kind and name. Kinds are "
        "case-insensitive and may be plural or an alias (ippool, ippools, pool, ...).",
    )
    p.add_argument("kind", nargs="?", metavar="KIND")
    p.add_argument("names", nargs="*", metavar="NAME")
    _file_options(p, required=False, verb="get")
    p.add_argument(
        "-o",
        "--output",
        default="ps",
        metavar="OUTPUT",
        help="one of: ps, wide, yaml, json, custom-columns=COL,... [default: ps]",
    )
    _namespace_option(p)
    p.add_argument(
        "-A",
        "-a",
        "--all-namespaces",
        action="store_true",
        help="list across all namespaces (adds a NAMESPACE column)",
    )
    p.add_argument(
        "--export",
        action="store_true",
        help="strip cluster-specific metadata from resources fetched by name",
    )
    _connection_options(p, top=False)

    p = sub.add_parser(
        "patch",
        help="Patch a resource in place.",
        description="Patch a resource with a JSON or YAML merge patch, e.g. "
        """-p '{"spec":{"natOutgoing":false}}'.""",
    )
    p.add_argument("kind", metavar="KIND")
    p.add_argument("name", metavar="NAME")
    p.add_argument("-p", "--patch", required=True, metavar="PATCH", help="the merge patch")
    p.add_argument(
        "-t",
        "--type",
        default="strategic",
        choices=("strategic", "merge", "json"),
        help="patch type: strategic and merge both apply a merge patch; json is not "
        "implemented (as in Calico)",
    )
    _namespace_option(p)
    _connection_options(p, top=False)

    p = sub.add_parser(
        "label",
        help="Add, update or remove a label of a resource.",
        description="Add or update a label (key=value), or remove one (key --remove).",
    )
    p.add_argument("kind", metavar="KIND")
    p.add_argument("name", metavar="NAME")
    p.add_argument("label", metavar="key=value|key")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--overwrite", action="store_true", help="replace the value of an existing key"
    )
    group.add_argument("--remove", action="store_true", help="remove the key")
    _namespace_option(p)
    _connection_options(p, top=False)

    p = sub.add_parser(
        "validate",
        help="Validate resources by file, directory or stdin without a datastore.",
        description="Validate resources by file, directory or stdin without a datastore.",
    )
    _file_options(p, required=True, verb="validate")
    p.add_argument(
        "--allow-version-mismatch", action="store_true", default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )

    p = sub.add_parser(
        "version",
        help="Show client and cluster versions.",
        description="Show client and cluster versions.",
    )
    _connection_options(p, top=False)

    p = sub.add_parser("node", help="Calico node management.",
                       description="Calico node management.")
    node = p.add_subparsers(dest="node_command", metavar="<node-command>", parser_class=_Parser)
    node.required = True
    status = node.add_parser("status", help="Show the BGP status of this node.",
                             description="Show the BGP status of this node.")
    status.add_argument("--node", help="a lab node's name: read its BIRD socket from the "
                        "lab's state dir instead of /var/run/calico/bird.ctl")
    status.add_argument("--state-dir", help="the lab's state dir [default: $CALICO_STATE_DIR "
                        "or /run/calico-lab]")
    status.add_argument("--bird-socket", help="BIRD's control socket, named directly")

    add_ipam_parser(sub, _connection_options, _Parser)
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse and check combinations argparse cannot express. Raises UsageError."""
    args = build_parser().parse_args(list(argv))
    if args.command in ("get", "delete"):
        if args.filename and args.kind:
            raise UsageError("give either KIND [NAME...] or -f FILENAME, not both")
        if not args.filename and not args.kind:
            raise UsageError("KIND or -f FILENAME is required")
        if args.command == "delete" and args.kind and not args.names:
            raise UsageError("delete needs at least one NAME")
    if args.command == "get":
        output = "yaml" if args.output == "yml" else args.output
        if output.startswith("custom-columns="):
            if not output.split("=", 1)[1].strip(","):
                raise UsageError("need to specify at least one column")
        elif output not in OUTPUT_FORMATS:
            raise UsageError(f"unrecognized output format '{args.output}'")
        args.output = output
    return args


def run(
    argv: Sequence[str],
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    connector: Any = None,
) -> int:
    """Run one command; returns the exit status. Never raises for expected failures.
    ``connector`` replaces the real datastore connection (tests)."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    try:
        args = parse_args(argv)
    except UsageError as exc:
        print(
            f"Invalid option: '{PROG} {' '.join(argv)}' ({exc}). "
            "Use flag '--help' to read about a specific subcommand.",
            file=err,
        )
        return 1
    _setup_logging(args.log_level)

    from libcalico.cli.calicoctl.commands import dispatch
    from libcalico.cli.calicoctl.commands.common import CommandFailed

    try:
        if tracing_configured(os.environ):
            return _traced(args, out, connector)
        return dispatch(args, out, connector)
    except CommandFailed as exc:
        print(one_line(str(exc)), file=err)
        return 1
    except KeyboardInterrupt:
        print("Interrupted", file=err)
        return 1


def tracing_configured(environ: Mapping[str, str]) -> bool:
    """calicoctl traces only when asked to: ``CALICO_TRACE_FILE`` (a path, not ``off``) or an
    OTLP endpoint in the environment. Otherwise OpenTelemetry's SDK is not set up."""
    trace_file = environ.get("CALICO_TRACE_FILE", "").strip()
    if trace_file and trace_file.lower() not in ("off", "none"):
        return True
    return any(
        environ.get(name) for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                                       "OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def _traced(args: argparse.Namespace, out: TextIO, connector: Any) -> int:
    """Run the command in one span, ``calicoctl <command>``, so that every RPC it makes (and
    the services' spans under them) share one trace."""
    from libcalico.cli.calicoctl.commands import dispatch
    from libcalico.runtime.telemetry import get_tracer, setup_tracing, shutdown_tracing

    setup_tracing("calicoctl")
    try:
        with get_tracer().start_as_current_span(f"calicoctl {args.command}") as span:
            span.set_attribute("calicoctl.command", str(args.command))
            code = dispatch(args, out, connector)
            span.set_attribute("calicoctl.exit_code", code)
            return code
    finally:
        shutdown_tracing()


def one_line(message: str) -> str:
    return " ".join(message.split("\n")).strip()


def _setup_logging(level: str) -> None:
    import logging

    names = {"panic": "CRITICAL", "fatal": "CRITICAL", "warn": "WARNING"}
    logging.basicConfig(
        level=names.get(level, level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
