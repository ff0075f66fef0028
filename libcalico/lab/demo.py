"""``calico-lab demo``: the README's first command, end to end on a real lab.

1. brings up a 3-node lab (``--mode``, vxlan by default); a lab already running on the state
   dir in another mode is taken down first, one in the same mode is reused;
2. adds four pods over two namespaces, at least one per node, in parallel:
   ``shop/web`` (node-1), ``shop/api`` (node-2), ``shop/db`` (node-3), ``ops/admin`` (node-3);
3. prints who can open TCP port 80 on whom (every ordered pair, probed in parallel) as a
   matrix: ``ok`` / ``x`` / ``·`` for the pod itself;
4. writes ``default-deny.yaml`` (a NetworkPolicy selecting every pod of ``shop`` with no
   ingress rule) to the state dir, prints it, ``calicoctl apply -f`` it, and shows the matrix
   once the probes say it is enforced;
5. the same with ``allow-web-to-api.yaml`` (``app == 'api'`` accepts TCP 80 from
   ``app == 'web'``);
6. leaves the lab running and says how to explore it and take it down.

Enforcement is waited for by re-probing until the matrix is the one the policy implies, bounded
by ``ENFORCE_TIMEOUT_S`` (no fixed sleeps); a matrix that does not converge is printed as it is
and the demo exits 1.

``calicoctl`` runs as a user would run it, with ``CALICO_DATASTORE`` and
``CALICO_TRACE_FILE=<state>/traces.jsonl`` set (tracing in calicoctl is opt-in; the lab sets
it for the commands it runs and prints it), so each apply is one trace from calicoctl through
the datastore and calc_graph to every node's kernel writes: ``calico-lab trace --last``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from libcalico.cli.lab.control_plane import LabError, Layout

BIN = Path(sys.executable).parent
DEFAULT_STATE_DIR = "/run/calico-lab"
PORT = 80
PROBE_TIMEOUT_S = 1.0
ENFORCE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class DemoPod:
    node: str
    ref: str
    labels: str


PODS = (
    DemoPod("node-1", "shop/web", "app=web"),
    DemoPod("node-2", "shop/api", "app=api"),
    DemoPod("node-3", "shop/db", "app=db"),
    DemoPod("node-3", "ops/admin", "app=admin"),
)
REFS = tuple(p.ref for p in PODS)

DENY = """\
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  name: default-deny
  namespace: shop
spec:
  selector: all()
  types:
  - Ingress
"""

ALLOW = """\
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  name: allow-web-to-api
  namespace: shop
spec:
  order: 100
  selector: app == 'api'
  types:
  - Ingress
  ingress:
  - action: Allow
    protocol: TCP
    source:
      selector: app == 'web'
    destination:
      ports:
      - 80
"""

Matrix = dict[tuple[str, str], bool]


def expected(step: str) -> Matrix:
    """What each step implies for every ordered pair (source, destination)."""
    out: Matrix = {}
    for src in REFS:
        for dst in REFS:
            if src == dst:
                continue
            ok = True
            if step in ("deny", "allow") and dst.startswith("shop/"):
                ok = step == "allow" and (src, dst) == ("shop/web", "shop/api")
            out[(src, dst)] = ok
    return out


def format_matrix(matrix: Matrix) -> str:
    """Rows are sources, columns destinations."""
    width = max(len(r) for r in REFS) + 2
    lines = ["from \\ to".ljust(width) + "".join(r.ljust(width) for r in REFS)]
    for src in REFS:
        cells = []
        for dst in REFS:
            cell = "·" if src == dst else ("ok" if matrix.get((src, dst)) else "x")
            cells.append(cell.ljust(width))
        lines.append(src.ljust(width) + "".join(cells))
    return "\n".join(line.rstrip() for line in lines)


def parse_matrices(text: str) -> list[Matrix]:
    """Every matrix printed in ``text`` (the e2e test reads the demo's output with this)."""
    out: list[Matrix] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("from \\ to"):
            continue
        cols = line.split()[3:]
        m: Matrix = {}
        for row in lines[i + 1:i + 1 + len(cols)]:
            src, *cells = row.split()
            for dst, cell in zip(cols, cells, strict=True):
                if cell != "·":
                    m[(src, dst)] = cell == "ok"
        out.append(m)
    return out


class Demo:
    def __init__(self, layout: Layout, mode: str, say: Callable[[str], None]) -> None:
        self.layout = layout
        self.mode = mode
        self.say = say
        self.flag = ([] if str(layout.root) == DEFAULT_STATE_DIR
                     else ["--state-dir", str(layout.root)])

    # -- commands, run as a user runs them -----------------------------------------------------

    def lab(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALICO_")}
        argv = [str(BIN / "calico-lab"), *args, "--state-dir", str(self.layout.root)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL, check=False)
        if proc.returncode != 0:
            raise LabError(f"calico-lab {' '.join(args)} exited {proc.returncode}:\n"
                           f"{proc.stdout}{proc.stderr}")
        return proc

    def calicoctl_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALICO_")}
        env["CALICO_DATASTORE"] = self.layout.target("datastore")
        env["CALICO_TRACE_FILE"] = str(self.layout.trace_file)
        return env

    def calicoctl(self, *args: str) -> str:
        proc = subprocess.run([str(BIN / "calicoctl"), *args], capture_output=True, text=True,
                              timeout=60, env=self.calicoctl_env(), check=False)
        if proc.returncode != 0:
            raise LabError(f"calicoctl {' '.join(args)} exited {proc.returncode}:\n"
                           f"{proc.stdout}{proc.stderr}")
        return proc.stdout

    # -- steps -----------------------------------------------------------------------------

    def bring_up(self) -> None:
        from libcalico.lab.nodes import LabNodes

        running = self.layout.root.exists() and LabNodes(self.layout).nodes
        if running:
            current = LabNodes(self.layout).mode
            if current != self.mode:
                self.say(f"[1/6] a lab in mode {current} runs on {self.layout.root}: "
                         "taking it down first")
                self.lab("down", "--purge")
            else:
                self.say(f"[1/6] reusing the lab on {self.layout.root} (mode {self.mode}); "
                         "removing the demo's pods and policies from a previous run")
                self.reset()
        t0 = time.monotonic()
        self.say(f"[1/6] bringing up a 3-node lab (mode {self.mode}) ...")
        self.lab("up", "--nodes", "3", "--mode", self.mode)
        from libcalico.lab.nodes import BIRD_MODES

        agents = "a dataplane and a BGP driver" if self.mode in BIRD_MODES else "a dataplane driver"
        self.say(f"      up in {time.monotonic() - t0:.1f}s: etcd, datastore, ipam, policy, "
                 f"calc_graph; node-1..3 each with {agents}")

    def reset(self) -> None:
        from libcalico.lab import pods
        from libcalico.lab.nodes import LabNodes

        lab = LabNodes(self.layout)
        existing = {f"{r['namespace']}/{r['name']}" for r in pods.list_pods(lab)}
        for ref in REFS:
            if ref in existing:
                self.lab("pod", "del", ref, "--force")
        for name in ("default-deny", "allow-web-to-api"):
            subprocess.run([str(BIN / "calicoctl"), "delete", "networkpolicy", name, "-n",
                            "shop", "--skip-not-exists"], capture_output=True,
                           env=self.calicoctl_env(), timeout=60, check=False)

    def add_pods(self) -> None:
        t0 = time.monotonic()
        self.say(f"[2/6] adding {len(PODS)} pods in namespaces shop and ops, in parallel ...")

        def add(p: DemoPod) -> str:
            out = self.lab("pod", "add", p.node, p.ref, "--labels", p.labels).stdout
            return out.strip().splitlines()[-1]

        with ThreadPoolExecutor(max_workers=len(PODS)) as pool:
            for line in pool.map(add, PODS):
                self.say(f"      {line.split(' (eth0')[0]}")
        self.say(f"      {len(PODS)} pods in {time.monotonic() - t0:.1f}s")

    def probe_all(self) -> Matrix:
        from libcalico.lab import pods, probe
        from libcalico.lab.nodes import LabNodes

        lab = LabNodes(self.layout)
        recs = {ref: pods.load(lab, *ref.split("/")) for ref in REFS}
        pairs = [(s, d) for s in REFS for d in REFS if s != d]

        def one(pair: tuple[str, str]) -> bool:
            src, dst = recs[pair[0]], recs[pair[1]]
            return probe.probe(src["netns_path"], dst["ips"][0], PORT, "tcp",
                               PROBE_TIMEOUT_S).ok

        with ThreadPoolExecutor(max_workers=len(pairs)) as pool:
            return dict(zip(pairs, pool.map(one, pairs), strict=True))

    def show(self, step: str, title: str) -> bool:
        """Probe until the matrix is what ``step`` implies (bounded), then print it."""
        want = expected(step)
        t0 = time.monotonic()
        rounds = 0
        while True:
            got = self.probe_all()
            rounds += 1
            elapsed = time.monotonic() - t0
            if got == want or elapsed > ENFORCE_TIMEOUT_S:
                break
            self.say(f"      not there yet after {rounds} probe round"
                     f"{'s' if rounds > 1 else ''} ({elapsed:.1f}s): probing again ...")
        self.say(f"\n{title} (TCP {PORT}; rows: from, columns: to; "
                 f"{len(want)} probes in parallel):\n")
        self.say(format_matrix(got))
        if got != want:
            wrong = [f"{s}->{d}" for (s, d), ok in want.items() if got.get((s, d)) != ok]
            self.say(f"\n      NOT as expected after {elapsed:.1f}s: {', '.join(wrong)}")
            return False
        self.say(f"\n      as expected after {elapsed:.1f}s ({rounds} probe round"
                 f"{'s' if rounds > 1 else ''})\n")
        return True

    def apply(self, number: int, name: str, text: str, why: str) -> None:
        path = self.layout.root / f"{name}.yaml"
        path.write_text(text)
        self.say(f"[{number}/6] {why}: calicoctl apply -f {path}\n")
        for line in text.rstrip().splitlines():
            self.say(f"      {line}")
        self.say("")
        out = self.calicoctl("apply", "-f", str(path)).strip()
        self.say(f"      {out}")

    def run(self) -> int:
        self.bring_up()
        self.add_pods()
        ok = self.show("open", "[3/6] connectivity with no policy")
        self.apply(4, "default-deny", DENY, "deny all ingress to namespace shop")
        ok = self.show("deny", "[4/6] connectivity with default-deny") and ok
        self.apply(5, "allow-web-to-api", ALLOW, "let web reach api on TCP 80")
        ok = self.show("allow", "[5/6] connectivity with default-deny + allow-web-to-api") and ok
        self.explain()
        return 0 if ok else 1

    def explain(self) -> None:
        flag = " ".join(self.flag)
        sp = f" {flag}" if flag else ""
        self.say(f"""[6/6] the lab keeps running (state dir {self.layout.root}). Explore it:

  . .venv/bin/activate
  export CALICO_DATASTORE={self.layout.target("datastore")}
  export CALICO_TRACE_FILE={self.layout.trace_file}   # trace your calicoctl commands too
  calicoctl get networkpolicy -n shop -o wide
  calicoctl get workloadendpoints -A
  calico-lab pod list -o wide{sp}
  calico-lab probe shop/web shop/api --port 80{sp}
  calico-lab exec shop/db{sp} -- ip route
  calico-lab trace --last{sp}      # the last apply, from calicoctl to each node's kernel
  calico-lab status{sp}

Take it down with:  calico-lab down{sp}""")


def run(layout: Layout, mode: str) -> int:
    demo = Demo(layout, mode, lambda line: print(line, flush=True))
    try:
        return demo.run()
    except LabError as exc:
        print(f"calico-lab demo: {exc}", file=sys.stderr)
        print(f"the lab may be partly up; take it down with: calico-lab down"
              f"{' ' + ' '.join(demo.flag) if demo.flag else ''}", file=sys.stderr)
        return 1


def trace(layout: Layout, trace_id: str | None, root_service: str | None = None) -> int:
    """``calico-lab trace [--last|ID]``: one trace of ``<state>/traces.jsonl`` as a tree."""
    from libcalico.tracetree import build_tree, format_tree, last_trace_id, load_spans

    spans = load_spans(layout.trace_file)
    if not spans:
        print(f"calico-lab trace: no spans in {layout.trace_file}", file=sys.stderr)
        return 1
    tid = trace_id or last_trace_id(spans, root_service)
    if tid is None:
        print("calico-lab trace: no trace found"
              + (f" starting in {root_service}" if root_service else ""), file=sys.stderr)
        return 1
    roots = build_tree(spans, tid)
    sys.stdout.write(format_tree(roots))
    return 0 if roots else 1
