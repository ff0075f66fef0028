"""Pod start-up on a 3-node lab: CNI ADD wall time, and time until the pod is reachable under
its policy from a pod on another node.

    python bench/pod_startup.py [--pods 100] [--nodes 3] [--policy-setup-timeout S] [--json]

What it does (root; the lab runs on a private state dir under /tmp and is always taken down):

1. ``calico-lab up --nodes N`` (VXLAN); a namespace ``bench`` whose pods only accept TCP 80
   from ``role == 'client'`` (``default-deny`` + ``allow-clients``, applied with calicoctl), and
   two client pods, ``client-a`` on node-1 and ``client-b`` on node-2;
2. for each pod in turn, round-robin over the nodes: ``pod add`` as the lab does it (netns, the
   node's CNI chain through ``ip netns exec``, the pod server), timing
   - **CNI ADD**: the chain's plugin runs (``calico``, then ``portmap``), exec to exit;
   - **pod add**: the whole lab step (netns, namespace profile check, CNI, pod server);
   - **reachable**: from the start of the pod add until a TCP connection from the client on
     another node succeeds (probes of 50 ms, back to back, at most 10 s: a dropped SYN costs
     one probe, so this is the resolution). Before the pod's node programmed its endpoint
     there is no route to it; after, the policy decides.

``--policy-setup-timeout S`` sets the CNI plugin's ``policy_setup_timeout_seconds`` on every
node: ADD then returns only once the node's driver programmed the endpoint (longer ADD, a pod
reachable as soon as it starts).

Targets: ADD median <= 250 ms, reachable median <= 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from libcalico.netns import have_root

BIN = Path(sys.executable).parent
TARGET_ADD_MS = 250.0
TARGET_REACHABLE_MS = 1000.0
PROBE_S = 0.05
REACHABLE_BOUND_S = 10.0

POLICIES = """\
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  name: default-deny
  namespace: bench
spec:
  selector: all()
  types: [Ingress]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  name: allow-clients
  namespace: bench
spec:
  selector: app == 'bench'
  types: [Ingress]
  ingress:
  - action: Allow
    protocol: TCP
    source:
      selector: role == 'client'
    destination:
      ports: [80]
"""


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    if not s:
        return 0.0
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 1) if values else 0.0,
            "p99": round(pct(values, 99), 1), "min": round(min(values), 1) if values else 0.0,
            "max": round(max(values), 1) if values else 0.0}


def run_bench(pods: int, nodes: int, policy_timeout: float = 0.0) -> dict[str, Any]:
    from libcalico.cli.lab.control_plane import Layout
    from libcalico.lab import pods as labpods
    from libcalico.lab import probe
    from libcalico.lab.nodes import LabNodes

    root = Path(tempfile.mkdtemp(prefix="bench-pods-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALICO_")}

    def lab_cli(*args: str) -> None:
        subprocess.run([str(BIN / "calico-lab"), *args, "--state-dir", str(root)], check=True,
                       capture_output=True, env=env, timeout=300, stdin=subprocess.DEVNULL)

    try:
        lab_cli("up", "--nodes", str(nodes))
        layout = Layout(root)
        lab = LabNodes(layout)
        if policy_timeout:
            for n in range(1, nodes + 1):
                path = lab.conflist_path(f"node-{n}")
                conflist = json.loads(path.read_text())
                conflist["plugins"][0]["policy_setup_timeout_seconds"] = policy_timeout
                path.write_text(json.dumps(conflist, indent=2))
        ctl_env = dict(env, CALICO_DATASTORE=layout.target("datastore"))
        manifest = root / "bench-policies.yaml"
        manifest.write_text(POLICIES)
        subprocess.run([str(BIN / "calicoctl"), "apply", "-f", str(manifest)], check=True,
                       capture_output=True, env=ctl_env, timeout=60)
        clients = {
            "node-1": labpods.add(lab, "node-1", "bench", "client-a", {"role": "client"}, []),
            "node-2": labpods.add(lab, "node-2", "bench", "client-b", {"role": "client"}, []),
        }
        add_ms: list[float] = []
        pod_add_ms: list[float] = []
        reach_ms: list[float] = []
        unreachable: list[str] = []
        for i in range(pods):
            node = f"node-{i % nodes + 1}"
            client = clients["node-2" if node == "node-1" else "node-1"]
            t0 = time.perf_counter()
            rec = labpods.add(lab, node, "bench", f"p{i}", {"app": "bench"}, [])
            t_added = time.perf_counter()
            add_ms.append(rec["cni_seconds"] * 1000)
            pod_add_ms.append((t_added - t0) * 1000)
            deadline = t_added + REACHABLE_BOUND_S
            while True:
                res = probe.probe(client["netns_path"], rec["ips"][0], 80, "tcp", PROBE_S)
                now = time.perf_counter()
                if res.ok:
                    reach_ms.append((now - t0) * 1000)
                    break
                if now > deadline:
                    unreachable.append(f"bench/p{i}")
                    break
        return {
            "pods": pods, "nodes": nodes, "policy_setup_timeout_seconds": policy_timeout,
            "cni_add_ms": summary(add_ms),
            "pod_add_ms": summary(pod_add_ms),
            "reachable_ms": summary(reach_ms),
            # Growth with the pod count, as opposed to noise: the first and last tenth's medians.
            "cni_add_ms_first_last_tenth": [
                round(statistics.median(add_ms[:max(1, pods // 10)]), 1),
                round(statistics.median(add_ms[-max(1, pods // 10):]), 1)],
            "reachable_ms_first_last_tenth": [
                round(statistics.median(reach_ms[:max(1, pods // 10)]), 1),
                round(statistics.median(reach_ms[-max(1, pods // 10):]), 1)] if reach_ms else [],
            "unreachable": unreachable,
            "targets": {"cni_add_median_ms": TARGET_ADD_MS,
                        "reachable_median_ms": TARGET_REACHABLE_MS},
            "met": {
                "cni_add": bool(add_ms) and statistics.median(add_ms) <= TARGET_ADD_MS,
                "reachable": (not unreachable and bool(reach_ms)
                              and statistics.median(reach_ms) <= TARGET_REACHABLE_MS),
            },
        }
    finally:
        subprocess.run([str(BIN / "calico-lab"), "down", "--purge", "--state-dir", str(root)],
                       capture_output=True, env=env, timeout=300, check=False)
        shutil.rmtree(root, ignore_errors=True)


def table(r: dict[str, Any]) -> str:
    wait = r["policy_setup_timeout_seconds"]
    lines = [f"pod start-up: {r['pods']} pods over {r['nodes']} nodes (vxlan), one at a time; "
             + (f"ADD waits for the dataplane (<= {wait:g} s)" if wait else
                "ADD does not wait for the dataplane"),
             f"{'measure':<34} {'median':>9} {'p99':>9} {'min':>9} {'max':>9}  target"]
    rows = (
        ("CNI ADD (calico + portmap), ms", "cni_add_ms", f"<= {TARGET_ADD_MS:.0f}"),
        ("lab pod add (netns..server), ms", "pod_add_ms", ""),
        ("reachable from another node, ms", "reachable_ms", f"<= {TARGET_REACHABLE_MS:.0f}"),
    )
    for label, key, target in rows:
        s = r[key]
        lines.append(f"{label:<34} {s['median']:>9.1f} {s['p99']:>9.1f} {s['min']:>9.1f} "
                     f"{s['max']:>9.1f}  {target}")
    lines.append(f"first/last tenth medians: ADD {r['cni_add_ms_first_last_tenth']} ms, "
                 f"reachable {r['reachable_ms_first_last_tenth']} ms")
    lines.append(f"load average when done: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if r["unreachable"]:
        lines.append(f"not reachable within {REACHABLE_BOUND_S:g}s: {', '.join(r['unreachable'])}")
    met = r["met"]
    lines.append(f"targets: ADD {'met' if met['cni_add'] else 'MISSED'}, reachable "
                 f"{'met' if met['reachable'] else 'MISSED'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--policy-setup-timeout", type=float, default=0.0, metavar="S",
                        help="the CNI plugin's policy_setup_timeout_seconds [0: off]")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if not have_root():
        print("bench/pod_startup.py needs root (network namespaces)", file=sys.stderr)
        return 2
    if args.nodes < 2:
        print("--nodes must be at least 2 (reachability is from another node)", file=sys.stderr)
        return 2
    result = run_bench(args.pods, args.nodes, args.policy_setup_timeout)
    print(json.dumps(result) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
