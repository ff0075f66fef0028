"""``calico-lab up | status | down``: run the control plane locally (see the package docstring
for the state dir).

    calico-lab up [--nodes N] [--state-dir DIR]   start etcd + services, wait until healthy
    calico-lab status [--state-dir DIR]           pid, alive, health, address of each process
    calico-lab down [--purge] [--state-dir DIR]   stop everything the lab started
    calico-lab demo [--mode M] [--state-dir DIR]  3 nodes, pods, policies, matrices (README)
    calico-lab trace [--last | ID] [--state-dir DIR]  one trace of <state>/traces.jsonl as a tree

``up`` is idempotent: what already runs healthy is left alone, what died is restarted. It exits
1 with the failing process's log tail when something does not become healthy (what did start
keeps running; ``down`` stops it). ``status`` exits 0 only when every process is alive and
SERVING. ``down`` exits 1 if a process survived SIGKILL.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from libcalico.cli.lab import control_plane, node_commands, nodes
from libcalico.cli.lab.control_plane import LabError, Layout

DEFAULT_STATE_DIR = "/run/calico-lab"
EXAMPLES = Path(__file__).resolve().parents[3].parent / "shared" / "examples" / "seed-manifests"


def _default_state_dir() -> str:
    return os.environ.get("CALICO_STATE_DIR") or DEFAULT_STATE_DIR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="calico-lab",
        description="Run calico-py's control plane (etcd and the services) on this machine.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        default=_default_state_dir(),
        help="where sockets, logs, pid files and etcd's data live "
        f"[default: $CALICO_STATE_DIR or {DEFAULT_STATE_DIR}]",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    sub.required = True
    p = sub.add_parser("up", parents=[common], help="start etcd and the control-plane services")
    p.add_argument(
        "--nodes", type=int, default=0, metavar="N",
        help="lab nodes to create: node-1..node-N, see 'lab nodes' below [default: 0]",
    )
    sub.add_parser("status", parents=[common], help="show each process of the lab")
    p = sub.add_parser("down", parents=[common], help="stop everything the lab started")
    p.add_argument(
        "--purge", action="store_true",
        help="also remove etcd's data, logs and traces from the state dir",
    )
    node_commands.add_commands(sub, common)
    from libcalico.lab.nodes import DEFAULT_MODE, MODES

    p = sub.add_parser("demo", parents=[common],
                       help="3 nodes, pods, a deny and an allow policy, connectivity matrices")
    p.add_argument("--mode", choices=list(MODES), default=DEFAULT_MODE,
                   help=f"encapsulation of the lab's pool [default: {DEFAULT_MODE}]")
    p = sub.add_parser("trace", parents=[common],
                       help="print one trace of <state>/traces.jsonl as a tree")
    p.add_argument("trace_id", nargs="?", metavar="ID", help="a trace id (32 hex)")
    p.add_argument("--last", action="store_true",
                   help="the newest trace started by calicoctl (the default without ID)")
    return parser


def _say(line: str) -> None:
    print(line, flush=True)


def cmd_up(
    layout: Layout, node_count: int, options: node_commands.NodeOptions | None = None
) -> int:
    if node_count < 0:
        print("calico-lab: --nodes must be 0 or more", file=sys.stderr)
        return 1
    with layout.locked():
        try:
            state = control_plane.up(layout, _say)
            nodes.create_nodes(layout, node_count, _say, options)
        except LabError as exc:
            print(f"calico-lab up failed: {exc}", file=sys.stderr)
            print(f"logs: {layout.root / 'logs'}; stop what started with: "
                  f"calico-lab down --state-dir {layout.root}", file=sys.stderr)
            return 1
    services = state.get("services")
    if not (isinstance(services, list) and "datastore" in services):
        print(f"\nThe lab is up without a datastore service (not built yet); state dir "
              f"{layout.root}.")
        return 0
    ds = layout.target("datastore")
    state_flag = "" if str(layout.root) == DEFAULT_STATE_DIR else f" --state-dir {layout.root}"
    example = EXAMPLES / "01-ippool-crosssubnet.yaml"
    manifest = str(example) if example.exists() else "pool.yaml"
    print(f"""
The lab is up (state dir {layout.root}). To use it:

  export CALICO_DATASTORE={ds}
  export CALICO_TRACE_FILE={layout.trace_file}   # optional: trace calicoctl too
  calicoctl apply -f {manifest}
  calicoctl get ippools -o wide
  calico-lab status{state_flag}
  calico-lab down{state_flag}

Logs: {layout.root / 'logs'}/   Traces: {layout.trace_file}""")
    return 0


def cmd_status(layout: Layout) -> int:
    from libcalico.cli.calicoctl.output import render_table

    rows = control_plane.status(layout)
    if not rows or not any(r.pid for r in rows):
        print(f"The lab is not running (state dir {layout.root}).")
        return 1
    print(render_table(
        ["NAME", "PID", "ALIVE", "HEALTH", "ADDRESS"],
        [[r.name, str(r.pid or "-"), "yes" if r.alive else "no", r.health, r.address]
         for r in rows],
    ), end="")
    healthy = all(r.alive and r.health == "SERVING" for r in rows)
    return 0 if healthy else 1


def cmd_down(layout: Layout, purge: bool) -> int:
    if not layout.root.exists():
        print(f"Nothing to stop (no state dir {layout.root}).")
        return 0
    with layout.locked():
        nodes_ok = nodes.delete_nodes(layout, _say)
        ok = control_plane.down(layout, _say, purge=purge) and nodes_ok
    if not ok:
        print("calico-lab down: some processes could not be stopped (see above)",
              file=sys.stderr)
        return 1
    print(f"The lab is down (state dir {layout.root}).")
    return 0


def run(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    layout = Layout(Path(args.state_dir).resolve())
    try:
        if args.command == "up":
            return cmd_up(layout, args.nodes, node_commands.node_options(args))
        if args.command in node_commands.COMMANDS:
            return node_commands.run(args, layout)
        if args.command == "status":
            return cmd_status(layout)
        if args.command in ("demo", "trace"):
            from libcalico.lab import demo

            if args.command == "demo":
                return demo.run(layout, args.mode)
            return demo.trace(layout, args.trace_id, None if args.trace_id else "calicoctl")
        return cmd_down(layout, args.purge)
    except BrokenPipeError:
        # Output piped into something that stopped reading (`| head`): nothing to report.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        # Typically a state dir this user cannot write (the default is under /run).
        print(f"calico-lab {args.command}: {exc.strerror or exc}: "
              f"{exc.filename or layout.root} (choose another with --state-dir)",
              file=sys.stderr)
        return 1


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
