"""Dataplane driver: cold start of a busy node vs the raw write floor, then one new endpoint.

    sudo python bench/dataplane.py [--endpoints 200] [--policies 1000] [--sets 500]
                                   [--set-size 20] [--new 40] [--flavor iptables|nftables]
                                   [--backend nft|legacy] [--no-ipv6] [--json]

1. **cold start**: a fresh namespace gets ``--endpoints`` workload veths (host side
   ``cali…``, as the CNI leaves them); a real ``Driver`` on a thread inside it receives one
   snapshot (``--sets`` IP sets of ``--set-size`` members, ``--policies`` policies of three
   rules referencing the sets, a profile, the endpoints each with five ingress and five egress
   policies) followed by ``InSync``, and is timed until that apply has programmed everything:
   compile, IP sets, routes, sysctls, the rules of every table, read-back included.
2. **floor**: what the driver left in the kernel is saved (``ipset save``, ``iptables-save``
   per IP version, or ``nft list ruleset``, and the routes) and written into a second fresh
   namespace with the same veths by the tools alone, one exec each (``ipset restore``,
   ``iptables-restore``, ``ip -batch`` for routes). ``ratio`` = cold / floor (target <= 2).
3. **one new endpoint**: ``--new`` times, a veth is created (not timed, as the CNI would),
   then one batch with its ``WorkloadEndpointUpdate`` and an IP-set delta adding its address
   goes into the running driver (link watcher on); the time from the batch's arrival to the
   end of the apply that programmed it is recorded: median and p99.

The driver writes as in production, through ``SessionRunner``: nft-backend restores go to
long-lived ``iptables-restore`` processes and nft scripts to one libnftables context (see
``services/dataplane/sessions.py`` for why). The floors exec each tool once per write, as a
driver without those writers would.

Everything runs in network namespaces that are always deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from libcalico.api.felix import felixbackend_pb2 as fb
from libcalico.netns import delete_netns
from services.dataplane import messages as m
from services.dataplane.commands import ExecRunner
from services.dataplane.driver import Driver, DriverSettings
from services.dataplane.flavors import build_driver
from services.dataplane.netns_loop import NetnsLoop
from services.dataplane.sessions import SessionRunner
from services.dataplane.status import ListSink
from services.dataplane.stream import QueueSource
from services.policy import examples as ex

KNS = "kns.bench"


def iface(e: int) -> str:
    return f"cali{e:011d}"


def pod_ip(e: int) -> str:
    return f"10.200.{e >> 8}.{e & 255}"


def workload(args: argparse.Namespace) -> list[fb.ToDataplane]:
    msgs = [m.config(Ipv6Support=str(args.ipv6).lower())]
    for s in range(args.sets):
        base = s * args.set_size
        msgs.append(ex.ipset(f"s:bench{s:04d}", [
            f"10.{(base + i) >> 16 & 255}.{(base + i) >> 8 & 255}.{(base + i) & 255}/32"
            for i in range(args.set_size)]))
    pols = [ex.pid(f"pol-{p:05d}", "bench") for p in range(args.policies)]
    for p, pid in enumerate(pols):
        a, b = f"s:bench{p % args.sets:04d}", f"s:bench{(p * 7 + 3) % args.sets:04d}"
        msgs.append(ex.policy(pid, inbound=[
            ex.rule("allow", protocol="tcp", dst_ports=[8000 + p % 1000], src_ip_set_ids=[a]),
            ex.rule("allow", protocol="udp", dst_ports=[53], src_ip_set_ids=[b]),
        ], outbound=[ex.rule("allow", protocol="tcp", dst_ip_set_ids=[b])]))
    msgs.append(ex.profile(KNS, [ex.rule()], [ex.rule()]))
    for e in range(args.endpoints):
        msgs.append(endpoint(e, pols, args))
    return msgs


def endpoint(e: int, pols: list[fb.PolicyID], args: argparse.Namespace) -> fb.ToDataplane:
    mine = [pols[(e * 5 + k) % len(pols)] for k in range(5)]
    return ex.wep(iface(e), f"bench/pod{e}", profiles=[KNS], ipv4=[f"{pod_ip(e)}/32"],
                  tiers=[ex.tier("default", ingress=mine, egress=mine)])


def sh(ns: str, argv: list[str], text: str | None = None) -> str:
    proc = subprocess.run(["ip", "netns", "exec", ns, *argv], input=text, text=True,
                          capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} in {ns}: {proc.stderr[:2000]}")
    return proc.stdout


def timed(ns: str, argv: list[str], text: str) -> float:
    """Seconds for one tool exec inside ``ns`` (``nsenter``, so no /sys remount is timed)."""
    t = time.perf_counter()
    proc = subprocess.run(["nsenter", f"--net=/var/run/netns/{ns}", *argv], input=text,
                          text=True, capture_output=True, check=False)
    took = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} in {ns}: {proc.stderr[:2000]}")
    return took


@contextmanager
def namespace(name: str, veths: int) -> Iterator[str]:
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        sh(name, ["ip", "link", "set", "lo", "up"])
        cmds = []
        for e in range(veths):
            cmds += [f"link add {iface(e)} type veth peer name p{e:011d}",
                     f"link set {iface(e)} address ee:ee:ee:ee:ee:ee",
                     f"link set {iface(e)} up", f"link set p{e:011d} up"]
        if cmds:
            sh(name, ["ip", "-batch", "-"], "\n".join(cmds) + "\n")
        yield name
    finally:
        delete_netns(name)


def save_state(ns: str, flavor: str, backend: str, ipv6: bool) -> dict[str, str]:
    state = {"ipset": sh(ns, ["ipset", "save"]),
             "routes": sh(ns, ["ip", "route", "show", "table", "main"])}
    if flavor == "iptables":
        state["v4"] = sh(ns, [f"iptables-{backend}-save"])
        if ipv6:
            state["v6"] = sh(ns, [f"ip6tables-{backend}-save"])
    else:
        state["nft"] = sh(ns, ["nft", "list", "ruleset"])
    return state


def floor(ns: str, state: dict[str, str], flavor: str, backend: str) -> dict[str, float]:
    out: dict[str, float] = {}
    if state["ipset"].strip():
        out["ipset"] = timed(ns, ["ipset", "restore"], state["ipset"])
    routes = [f"route replace {ln.strip()}" for ln in state["routes"].splitlines()
              if " dev cali" in ln or ln.startswith("blackhole")]
    out["routes"] = timed(ns, ["ip", "-batch", "-"], "\n".join(routes) + "\n")
    if flavor == "iptables":
        out["iptables"] = timed(ns, [f"iptables-{backend}-restore"], state["v4"])
        if "v6" in state:
            out["ip6tables"] = timed(ns, [f"ip6tables-{backend}-restore"], state["v6"])
    else:
        out["nft"] = timed(ns, ["nft", "-f", "-"], state["nft"])
    return out


async def cold_start(d: Driver, msgs: list[fb.ToDataplane]) -> float:
    await d.warm_up()  # what a started driver has done before its stream is in sync
    t = time.perf_counter()
    d.on_batch([*msgs, m.in_sync()])
    ok = await d.apply_once()
    took = time.perf_counter() - t
    if not ok:
        raise RuntimeError(f"cold start failed in stages {d.stats.last_failed_stages}")
    return took


async def new_endpoints(d: Driver, ns: str, args: argparse.Namespace) -> list[float]:
    source = QueueSource()
    task = asyncio.create_task(d.run(source, watch_links=True))
    pols = [ex.pid(f"pol-{p:05d}", "bench") for p in range(args.policies)]
    out = []
    try:
        await asyncio.sleep(0.2)
        for i in range(args.new):
            e = args.endpoints + i
            proc = await asyncio.create_subprocess_exec(
                "ip", "-batch", "-", stdin=asyncio.subprocess.PIPE)
            await proc.communicate(
                f"link add {iface(e)} type veth peer name p{e:011d}\n"
                f"link set {iface(e)} address ee:ee:ee:ee:ee:ee\n"
                f"link set {iface(e)} up\nlink set p{e:011d} up\n".encode())
            await asyncio.sleep(0.05)  # the CNI is done; the link event has landed
            before = len(d.batch_latencies)
            source.put([ex.ipset_delta(f"s:bench{e % args.sets:04d}",
                                       added=[f"{pod_ip(e)}/32"]), endpoint(e, pols, args)])
            while len(d.batch_latencies) == before:
                await asyncio.sleep(0.001)
                if task.done():
                    task.result()
            out.append(d.batch_latencies[-1])
        # The same writes as the last endpoint's, through the tools alone (idempotent).
        owners = d.policy.owners
        texts = [(["ipset", "restore"], owners.ipsets.stats.last_restore)]
        for (v, table), t in sorted(owners.tables.items()):
            if table == "filter" and t.stats.last_restore:
                texts.append(([f"{'ip6' if v == 6 else 'ip'}tables-{args.backend}-restore",
                               "--noflush", "--wait", "10"], t.stats.last_restore))
        if args.flavor == "nftables":
            texts = [(["nft", "-f", "-"], owners.nft.stats.last_script)]
        d.stats.stage_seconds["endpoint-floor"] = sum(
            [await asyncio.to_thread(timed, ns, argv, text) for argv, text in texts])
    finally:
        source.close()
        await asyncio.wait_for(task, 30)
    return out


def bench(args: argparse.Namespace) -> dict[str, Any]:
    t = time.perf_counter()
    msgs = workload(args)
    build_s = time.perf_counter() - t
    tag = f"cpdpb{os.getpid() % 100000}"
    with namespace(f"{tag}-drv", args.endpoints) as ns:
        with NetnsLoop(ns) as loop:
            async def make() -> tuple[Driver, SessionRunner]:
                # Built on the namespace's thread: the writers' sockets belong to it.
                runner = SessionRunner(ExecRunner())
                return build_driver(
                    DriverSettings(node="bench-node", flavor=args.flavor), sink=ListSink(),
                    runner=runner, iptables_backend=args.backend, mtu_file=None,
                    ipv6=args.ipv6), runner

            d, runner = loop.run(make())
            cold = loop.run(cold_start(d, msgs), timeout=600)
            stages = dict(d.stats.stage_seconds)
            state = save_state(ns, args.flavor, args.backend, args.ipv6)
            latencies = loop.run(new_endpoints(d, ns, args), timeout=600)
            endpoint_floor = d.stats.stage_seconds.get("endpoint-floor", 0.0)
            loop.run(runner.close())
    rules = sum(ln.startswith("-A ") for k in ("v4", "v6") for ln in state.get(k, "").splitlines())
    rules += state.get("nft", "").count(' comment "cali:')
    with namespace(f"{tag}-raw", args.endpoints) as ns:
        parts = floor(ns, state, args.flavor, args.backend)
    floor_s = sum(parts.values())
    lat = sorted(latencies)
    p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))] if lat else 0.0
    return {
        "args": {k: getattr(args, k) for k in ("endpoints", "policies", "sets", "set_size",
                                              "new", "flavor", "backend", "ipv6")},
        "build_s": round(build_s, 3),
        "rules": rules,
        "routes": state["routes"].count(" dev cali"),
        "cold_s": round(cold, 3),
        "cold_stages_s": {k: round(v, 3) for k, v in stages.items() if v >= 0.0005},
        "floor_s": round(floor_s, 3),
        "floor_parts_s": {k: round(v, 3) for k, v in parts.items()},
        "cold_ratio": round(cold / floor_s, 2) if floor_s else None,
        "new_endpoint_median_ms": round(statistics.median(lat) * 1000, 1) if lat else None,
        "new_endpoint_p99_ms": round(p99 * 1000, 1),
        "new_endpoint_max_ms": round(lat[-1] * 1000, 1) if lat else None,
        "new_endpoint_floor_ms": round(endpoint_floor * 1000, 1),
    }


def table(r: dict[str, Any]) -> str:
    a = r["args"]
    fl = a["flavor"] if a["flavor"] == "nftables" else f"iptables-{a['backend']}"
    lines = [
        f"dataplane driver ({fl}, {'IPv4+IPv6' if a['ipv6'] else 'IPv4'}): {a['endpoints']} "
        f"endpoints, {a['policies']} policies, {a['sets']} sets x {a['set_size']}; "
        f"{r['rules']} rules and {r['routes']} routes programmed",
        "",
    ]
    rows = [
        ("measure", "value", "detail"),
        ("cold start to programmed", f"{r['cold_s']} s",
         ", ".join(f"{k} {v}" for k, v in r["cold_stages_s"].items())),
        ("raw write floor", f"{r['floor_s']} s",
         ", ".join(f"{k} {v}" for k, v in r["floor_parts_s"].items())),
        ("ratio (target <= 2)", f"{r['cold_ratio']}", "cold / floor, same run"),
        ("new endpoint: median", f"{r['new_endpoint_median_ms']} ms",
         f"batch arrival to programmed, {a['new']} endpoints (target <= 50 ms)"),
        ("new endpoint: p99", f"{r['new_endpoint_p99_ms']} ms",
         f"max {r['new_endpoint_max_ms']} ms"),
        ("new endpoint: floor", f"{r['new_endpoint_floor_ms']} ms",
         "the last endpoint's set/rule writes through the tools alone"),
    ]
    widths = [max(len(str(row[i])) for row in rows) for i in range(3)]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
              for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoints", type=int, default=200)
    p.add_argument("--policies", type=int, default=1000)
    p.add_argument("--sets", type=int, default=500)
    p.add_argument("--set-size", type=int, default=20)
    p.add_argument("--new", type=int, default=40)
    p.add_argument("--flavor", choices=("iptables", "nftables"), default="iptables")
    p.add_argument("--backend", choices=("nft", "legacy"), default="nft")
    p.add_argument("--no-ipv6", dest="ipv6", action="store_false",
                   help="IPv4 only (Felix's default renders IPv6 too)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/dataplane.py needs root to create network namespaces", file=sys.stderr)
        return 2
    result = bench(args)
    print(json.dumps(result) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
