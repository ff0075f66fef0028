"""``calico-lab`` subcommands for nodes, pods and namespaces (the library is ``libcalico.lab``).

    calico-lab up --nodes N [--mode M] [--two-subnets] [--ipam calico-ipam|host-local]
                  [--as-number AS] [--netns-prefix P]
    calico-lab pod add <node> <ns>/<name> [--labels k=v,...] [--publish HOST:CONT[/proto]]
    calico-lab pod del <ns>/<name> [--force]
    calico-lab pod check <ns>/<name>
    calico-lab pod list [-o wide|json]
    calico-lab exec <ns>/<name> -- <cmd> [args...]
    calico-lab probe <from-pod> <to-pod-or-IP> --port P --protocol tcp|udp|icmp [--timeout S]
    calico-lab ns add <name> [--labels k=v,...]
    calico-lab ns label <name> k=v [k2=v2 ...] [k3-]
    calico-lab ns list

Exit status: 0 on success, 1 with a one-line reason on stderr otherwise; ``probe`` exits 0
when the connection works and 1 when it does not; ``exec`` exits with the command's status.
Pod and namespace commands hold the lab lock shared (so they run side by side, and never
while ``up`` or ``down`` runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from libcalico.cli.lab.control_plane import LabError, Layout
from libcalico.lab.nodes import IPAM_TYPES, MODES, NodeOptions

COMMANDS = ("pod", "exec", "probe", "ns")
__all__ = ["COMMANDS", "NodeOptions", "add_commands", "node_options", "run"]


def add_up_options(up: argparse.ArgumentParser) -> None:
    g = up.add_argument_group("lab nodes")
    g.add_argument("--mode", choices=list(MODES), default=None,
                   help="encapsulation of the default IP pool 10.244.0.0/16 "
                   "[default: vxlan when the pool is created; unchanged otherwise]")
    g.add_argument("--two-subnets", action="store_true", default=None,
                   help="two underlay subnets joined by a router namespace (odd nodes on "
                   "172.30.1.0/24, even on 172.30.2.0/24), for CrossSubnet modes")
    g.add_argument("--ipam", choices=list(IPAM_TYPES), default=None,
                   help="IPAM plugin in the nodes' CNI config (host-local uses each node's "
                   "pod CIDR 10.245.<i>.0/24) [default: calico-ipam]")
    g.add_argument("--as-number", type=int, default=None, metavar="AS",
                   help="set spec.bgp.asNumber on every node [default: the cluster's]")
    g.add_argument("--netns-prefix", default=None, metavar="P",
                   help="prefix of every namespace the lab makes [default: none for "
                   "/run/calico-lab, else derived from the state dir]")


def node_options(args: argparse.Namespace) -> NodeOptions:
    return NodeOptions(
        mode=getattr(args, "mode", None), two_subnets=getattr(args, "two_subnets", None),
        ipam=getattr(args, "ipam", None), netns_prefix=getattr(args, "netns_prefix", None),
        as_number=getattr(args, "as_number", None),
    )


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``pod``, ``exec``, ``probe`` and ``ns``; add the node flags to ``up``."""
    if "up" in sub.choices:
        add_up_options(sub.choices["up"])

    pod = sub.add_parser("pod", help="add, delete, check and list lab pods")
    psub = pod.add_subparsers(dest="pod_command", metavar="<pod command>")
    psub.required = True
    p = psub.add_parser("add", parents=[common], help="create a pod on a node")
    p.add_argument("node", help="node-1, node-2, ...")
    p.add_argument("pod", metavar="<ns>/<name>")
    p.add_argument("--labels", default="", metavar="k=v,...")
    p.add_argument("--publish", action="append", default=[], metavar="HOST:CONTAINER[/proto]",
                   help="a host port on the node forwarded to the pod (portmap); repeatable")
    p = psub.add_parser("del", parents=[common], help="delete a pod")
    p.add_argument("pod", metavar="<ns>/<name>")
    p.add_argument("--force", action="store_true",
                   help="remove the pod even when CNI DEL fails")
    p = psub.add_parser("check", parents=[common], help="run CNI CHECK for a pod")
    p.add_argument("pod", metavar="<ns>/<name>")
    p = psub.add_parser("list", parents=[common], help="list pods")
    p.add_argument("-o", "--output", choices=["wide", "json"], default=None)

    p = sub.add_parser("exec", parents=[common], help="run a command in a pod's namespace")
    p.add_argument("pod", metavar="<ns>/<name>")
    # REMAINDER: the command's own options must not be parsed as ours. Options of ours given
    # after the pod (``--state-dir DIR``) are picked out of it before the ``--`` (see _exec).
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- <cmd>",
                   help="the command and its arguments, after --")

    p = sub.add_parser("probe", parents=[common],
                       help="try one connection from a pod; exit 0 if it works, 1 if not")
    p.add_argument("source", metavar="<from-pod>")
    p.add_argument("target", metavar="<to-pod-or-IP>")
    p.add_argument("--port", type=int, default=80)
    p.add_argument("--protocol", choices=["tcp", "udp", "icmp"], default="tcp")
    p.add_argument("--timeout", type=float, default=1.5, help="seconds, at most 2 [1.5]")

    ns = sub.add_parser("ns", help="Kubernetes namespaces (kns.<name> profiles)")
    nsub = ns.add_subparsers(dest="ns_command", metavar="<ns command>")
    nsub.required = True
    p = nsub.add_parser("add", parents=[common], help="create a namespace")
    p.add_argument("name")
    p.add_argument("--labels", default="", metavar="k=v,...")
    p = nsub.add_parser("label", parents=[common], help="set (k=v) or remove (k-) labels")
    p.add_argument("name")
    p.add_argument("changes", nargs="+", metavar="k=v|k-")
    nsub.add_parser("list", parents=[common], help="list namespaces and their labels")


def _err(msg: str) -> int:
    print(f"calico-lab: {msg}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace, layout: Layout) -> int:
    from libcalico.errors import CalicoError
    from libcalico.lab.nodes import LabNodes

    try:
        if args.command == "probe":
            return _probe(LabNodes(layout), args)
        if args.command == "exec":
            return _exec(layout, args)
        with layout.locked(exclusive=False):
            lab = LabNodes(layout)
            if args.command == "pod":
                return _pod(lab, args)
            return _ns(layout, args)
    except (LabError, CalicoError) as exc:
        return _err(str(exc))


def _pod(lab: Any, args: argparse.Namespace) -> int:
    from libcalico.lab import namespaces, pods

    if args.pod_command == "list":
        return _pod_list(pods.list_pods(lab), args.output)
    ns, name = pods.parse_ref(args.pod)
    if args.pod_command == "add":
        labels = namespaces.parse_labels(args.labels)
        rec = pods.add(lab, args.node, ns, name, labels, pods.parse_publish(args.publish),
                       report=lambda line: print(line, flush=True))
        print(f"pod {ns}/{name} on {rec['node']}: {', '.join(rec['ips'])} (eth0; host side "
              f"{rec['interface']}; netns {rec['netns']})")
        return 0
    if args.pod_command == "check":
        pods.check(lab, ns, name)
        print(f"pod {ns}/{name}: CNI CHECK passed")
        return 0
    rec = pods.delete(lab, ns, name, force=args.force)
    print(f"pod {ns}/{name} deleted (was on {rec['node']})")
    return 0


def _pod_list(recs: list[dict[str, Any]], output: str | None) -> int:
    if output == "json":
        print(json.dumps(recs, indent=2, sort_keys=True))
        return 0
    from libcalico.cli.calicoctl.output import render_table

    headers = ["NAMESPACE", "NAME", "NODE", "IP", "STATE"]
    if output == "wide":
        headers += ["INTERFACE", "NETNS", "LABELS"]
    rows = []
    for r in recs:
        row = [r["namespace"], r["name"], r["node"], ",".join(r.get("ips") or []) or "-",
               r.get("state", "")]
        if output == "wide":
            row += [r.get("interface") or "-", r["netns"],
                    ",".join(f"{k}={v}" for k, v in sorted((r.get("labels") or {}).items()))
                    or "-"]
        rows.append(row)
    print(render_table(headers, rows), end="")
    return 0


def _exec(layout: Layout, args: argparse.Namespace) -> int:
    from pathlib import Path

    from libcalico.lab import pods
    from libcalico.lab.nodes import LabNodes

    cmd = list(args.cmd)
    if "--" in cmd:
        ours, cmd = cmd[:cmd.index("--")], cmd[cmd.index("--") + 1:]
        if ours:
            opts = argparse.ArgumentParser(prog="calico-lab exec", add_help=False)
            opts.add_argument("--state-dir", default=str(layout.root))
            parsed, unknown = opts.parse_known_args(ours)
            if unknown:
                return _err(f"exec: unknown options before --: {' '.join(unknown)}")
            layout = Layout(Path(parsed.state_dir).resolve())
    if not cmd:
        return _err("exec needs a command after --")
    lab = LabNodes(layout)
    ns, name = pods.parse_ref(args.pod)
    argv = pods.exec_argv(lab, ns, name, cmd)
    sys.stdout.flush()
    os.execvp(argv[0], argv)
    return 1  # not reached


def _probe(lab: Any, args: argparse.Namespace) -> int:
    import ipaddress

    from libcalico.lab import pods, probe

    src_ns, src_name = pods.parse_ref(args.source)
    src = pods.load(lab, src_ns, src_name)
    try:
        target = str(ipaddress.ip_address(args.target))
        label = target
    except ValueError:
        dst_ns, dst_name = pods.parse_ref(args.target)
        dst = pods.load(lab, dst_ns, dst_name)
        if not dst.get("ips"):
            return _err(f"pod {dst_ns}/{dst_name} has no address")
        target = str(dst["ips"][0])
        label = f"{dst_ns}/{dst_name} ({target})"
    port = "" if args.protocol == "icmp" else f":{args.port}"
    res = probe.probe(src["netns_path"], target, args.port, args.protocol, args.timeout)
    verdict = "ok" if res.ok else "FAIL"
    print(f"{verdict}: {args.protocol} {src_ns}/{src_name} -> {label}{port}: {res.detail} "
          f"({res.seconds * 1000:.0f} ms)")
    return 0 if res.ok else 1


def _ns(layout: Layout, args: argparse.Namespace) -> int:
    from libcalico.lab import namespaces

    async def go() -> int:
        from libcalico.client import DatastoreClient

        async with DatastoreClient(layout.target("datastore"), timeout=20) as ds:
            if args.ns_command == "list":
                for name, labels in await namespaces.list_all(ds):
                    shown = ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"
                    print(f"{name:<24} {shown}")
                return 0
            if args.ns_command == "add":
                labels = namespaces.parse_labels(args.labels)
                profile = await namespaces.add(ds, args.name, labels)
            else:
                changes: dict[str, str | None] = {}
                for change in args.changes:
                    if change.endswith("-") and "=" not in change:
                        changes[change[:-1]] = None
                    else:
                        changes.update(namespaces.parse_labels(change))
                profile = await namespaces.relabel(ds, args.name, changes)
            labels = namespaces.labels_of(profile)
            shown = ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "no labels"
            print(f"namespace {args.name}: {shown} (profile {profile['metadata']['name']})")
            return 0

    return asyncio.run(go())
