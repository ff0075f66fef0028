"""The policy compiler's truth tables end to end: ``calicoctl`` in, the lab's drivers enforcing.

One lab (``calico-lab up --nodes 3 --mode vxlan`` on a private state dir, always brought down)
with namespaces x, y, z labelled as ``tests.kernel.truth.scenarios`` expects and the nine pods
a, b, c spread over the three nodes (every namespace has a pod on every node, so two thirds of
the pairs cross the VXLAN tunnel). For each chosen scenario step:

1. the step's resources are written as YAML and applied with the real ``calicoctl apply -f``
   (deletes with ``calicoctl delete -f``, pod labels with ``calicoctl label``, namespace labels
   with ``calico-lab ns label``);
2. the oracle (``tests.kernel.truth.oracle``) computes the expected matrix for the world the lab
   really has (the pods' IPAM addresses, the four named ports lab pods carry, no service
   account);
3. every ordered pair is probed on TCP 80, TCP 81, UDP 80 and ICMP echo from the pods' own
   namespaces (``libcalico.lab.probe``, many at once on a thread pool) until the matrix equals
   the oracle's or a bound passes; cells still wrong are probed again with a longer timeout
   before they count, and a mismatch prints both matrices.

Scenario addresses are the harness's fixed ones; its pods' ``/32``s are rewritten to the lab
pods' addresses and its node-2 block to the /26 of the lab node running x/c (the pool is the
same). The oracle evaluates the rewritten resources, so the verdicts stay exact. After each
scenario everything it created is deleted, labels are put back and the test waits for the
all-allowed matrix, so scenarios stay independent.

Enforcement is observed, not signalled: a step passes as soon as a probe round matches. A step
whose expected matrix equals the previous one (``calico-order`` step 2, the first steps of
``calico-tier-order-change`` and ``calico-gnp-namespace-label-change``) therefore passes at
once and proves only that nothing broke; the step after it shows the change was applied.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from libcalico.lab.probe import probe
from libcalico.model import wep_name
from libcalico.netns import have_root
from tests.kernel.truth.oracle import K8S_API, PROBES, Oracle, World
from tests.kernel.truth.scenarios import (
    NAMED_PORTS,
    NAMESPACES,
    NODES,
    POD_IPS,
    POD_KEYS,
    POOL,
    SCENARIOS,
    Apply,
    Delete,
    LabelNamespace,
    LabelPod,
    Op,
    Scenario,
    apply_op,
    base_world,
)

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
LAB_NODES = ("node-1", "node-2", "node-3")
PAIRS = tuple((s, d) for s in POD_KEYS for d in POD_KEYS if s != d)
Matrix = dict[tuple[str, str, str], bool]

ENFORCE_TIMEOUT = 30.0  # seconds for the drivers to make the matrix match
POLL_TIMEOUT = 0.4  # per probe while polling; a probe the oracle expects to fail costs this
CONFIRM_TIMEOUT = 1.5  # per probe when re-checking cells that still differ at the bound
WORKERS = 64

# A representative subset: default deny, pod/namespace selectors, AND/OR, ipBlock except,
# ports/named ports/endPort, policy update/delete, namespace and pod label changes, Calico
# order/Deny/Pass/tiers/GNP/NetworkSet/nets+notNets/ICMP.
CHOSEN = (
    "k8s-default-deny-ingress",
    "k8s-default-deny-egress",
    "k8s-allow-from-namespace-selector",
    "k8s-pod-and-namespace-selector",
    "k8s-pod-or-namespace-selector",
    "k8s-ipblock-except",
    "k8s-named-port-tcp",
    "k8s-named-port-udp",
    "k8s-endport",
    "k8s-policy-update",
    "k8s-policy-delete",
    "k8s-namespace-label-change",
    "k8s-peer-pod-label-change",
    "calico-order",
    "calico-deny-before-allow",
    "calico-tier-order-change",
    "calico-pass-to-default-tier",
    "calico-networkset-update",
    "calico-globalnetworkset-source",
    "calico-many-nets",
    "calico-notnets",
    "calico-notports",
    "calico-icmp-deny",
    "calico-icmp-type",
    "calico-gnp-namespace-label-change",
    # Need what lab pods do not have; kept in the list so the skip is visible.
    "calico-service-accounts",
    "k8s-named-port-per-pod",
)
# What lab pods lack (``libcalico.lab.pods``: no serviceAccountName, only the serve-* ports).
LAB_GAPS = {
    "calico-service-accounts": "lab pods run without a service account (the CNI writes no "
    "serviceAccountName), so serviceAccounts rules cannot match sa-b",
    "k8s-named-port-per-pod": "lab pods carry only the serve-<port>-<proto> named ports, not "
    "the per-pod 'web' port",
}


def _skip_reason() -> str | None:
    if not have_root():
        return "the lab's nodes need root to create network namespaces"
    if shutil.which("etcd") is None:
        return "etcd is not installed; run scripts/setup.sh"
    return None


def _node_of(key: str) -> str:
    ns, pod = key.split("/")
    return LAB_NODES[(NAMESPACES.index(ns) + "abc".index(pod)) % len(LAB_NODES)]


@dataclass
class LabPod:
    key: str
    node: str
    ip: str
    netns_path: str


@dataclass
class TruthLab:
    root: Path
    pods: dict[str, LabPod] = field(default_factory=dict)
    ns_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    pod_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(WORKERS))

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALICO_")}
        env["CALICO_DATASTORE"] = f"unix://{self.root}/sock/datastore.sock"
        return env

    def lab(self, *args: str, timeout: float = 240) -> str:
        argv = [str(BIN / "calico-lab"), *args, "--state-dir", str(self.root)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env=self._env(), stdin=subprocess.DEVNULL, check=False)
        if proc.returncode != 0:
            raise AssertionError(f"calico-lab {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def calicoctl(self, *args: str, stdin: str | None = None) -> str:
        proc = subprocess.run([str(BIN / "calicoctl"), *args], capture_output=True, text=True,
                              timeout=60, env=self._env(), input=stdin, check=False)
        if proc.returncode != 0:
            raise AssertionError(f"calicoctl {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{stdin or ''}\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def apply(self, resources: Sequence[Mapping[str, Any]], verb: str = "apply") -> None:
        if resources:
            text = yaml.safe_dump_all([dict(r) for r in resources], sort_keys=False)
            self.calicoctl(verb, "-f", "-", stdin=text)

    def label_namespace(self, ns: str, labels: Mapping[str, str]) -> None:
        old = self.ns_labels[ns]
        changes = [f"{k}={v}" for k, v in labels.items() if old.get(k) != v]
        changes += [f"{k}-" for k in old if k not in labels]
        if changes:
            self.lab("ns", "label", ns, *changes)
        self.ns_labels[ns] = dict(labels)

    def label_pod(self, key: str, labels: Mapping[str, str]) -> None:
        ns, name = key.split("/")
        wep = wep_name(self.pods[key].node, "k8s", name, "eth0")
        old = self.pod_labels[key]
        for k, v in labels.items():
            if old.get(k) != v:
                self.calicoctl("label", "workloadendpoint", wep, "-n", ns, f"{k}={v}",
                               "--overwrite")
        for k in old:
            if k not in labels:
                self.calicoctl("label", "workloadendpoint", wep, "-n", ns, k, "--remove")
        self.pod_labels[key] = dict(labels)

    def probe_cells(self, cells: list[tuple[str, str, str]], timeout: float) -> Matrix:
        def one(cell: tuple[str, str, str]) -> bool:
            src, dst, name = cell
            pkt = PROBES[name]
            return probe(self.pods[src].netns_path, self.pods[dst].ip, pkt.port or 0,
                         pkt.protocol, timeout).ok

        return dict(zip(cells, self.pool.map(one, cells), strict=True))

    def enforce(self, expected: Matrix) -> tuple[Matrix, float]:
        """Probe until the matrix equals ``expected`` or ``ENFORCE_TIMEOUT`` passes."""
        t0 = time.monotonic()
        cells = list(expected)
        while True:
            actual = self.probe_cells(cells, POLL_TIMEOUT)
            if actual == expected:
                return actual, time.monotonic() - t0
            if time.monotonic() - t0 > ENFORCE_TIMEOUT:
                # A probe the oracle allows may have lost a packet: ask those cells again.
                wrong = [c for c in cells if actual[c] != expected[c]]
                actual.update(self.probe_cells(wrong, CONFIRM_TIMEOUT))
                return actual, time.monotonic() - t0


# -- the world the lab has ------------------------------------------------------------------


def lab_world(lab: TruthLab) -> World:
    world = base_world()
    for key, pod in world.pods.items():
        pod.ip = lab.pods[key].ip
        pod.node = lab.pods[key].node
        pod.ports = NAMED_PORTS  # lab pods serve these four names, no "web"
    return world


def address_map(lab: TruthLab) -> dict[str, str]:
    """The harness's addresses -> the lab's: pod /32s, the pool, node-2's block (x/c's /26)."""
    out = {f"{POD_IPS[k]}/32": f"{lab.pods[k].ip}/32" for k in POD_KEYS}
    out[POOL] = POOL  # the lab's pool is the harness's (10.244.0.0/16)
    c_block = ipaddress.ip_network(f"{lab.pods['x/c'].ip}/26", strict=False)
    out[NODES["node-2"].block] = str(c_block)
    return out


def rewrite(value: Any, addresses: Mapping[str, str]) -> Any:
    text = json.dumps(value)
    pattern = re.compile("|".join(re.escape(f'"{a}"') for a in addresses))
    return json.loads(pattern.sub(lambda m: f'"{addresses[m.group(0)[1:-1]]}"', text))


def rewrite_op(op: Op, addresses: Mapping[str, str]) -> Op:
    if isinstance(op, Apply):
        return Apply(rewrite(dict(op.resource), addresses))
    return op


def delete_doc(kind: str, name: str, namespace: str) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name}
    if namespace:
        md["namespace"] = namespace
    if kind == "K8sNetworkPolicy":
        return {"apiVersion": K8S_API, "kind": "NetworkPolicy", "metadata": md,
                "spec": {"podSelector": {}}}
    return {"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": md, "spec": {}}


def _ident(r: Mapping[str, Any]) -> tuple[str, str, str]:
    kind = "K8sNetworkPolicy" if r.get("apiVersion") == K8S_API else r["kind"]
    return kind, r["metadata"].get("namespace") or "", r["metadata"]["name"]


# -- reporting ------------------------------------------------------------------------------


def _grid(title: str, m: Matrix, probe_name: str, other: Matrix | None = None) -> list[str]:
    lines = [title, "      " + "".join(f"{k.replace('/', ''):^5}" for k in POD_KEYS)]
    for s in POD_KEYS:
        cells = []
        for d in POD_KEYS:
            if s == d:
                cells.append("  -  ")
                continue
            v = "." if m[(s, d, probe_name)] else "X"
            differs = other is not None and other[(s, d, probe_name)] != m[(s, d, probe_name)]
            cells.append(f" [{v}] " if differs else f"  {v}  ")
        lines.append(f"{s.replace('/', ''):>5} " + "".join(cells))
    return lines


def format_mismatch(expected: Matrix, actual: Matrix) -> str:
    out = []
    for name in PROBES:
        if all(expected[(s, d, name)] == actual[(s, d, name)] for s, d in PAIRS):
            continue
        left = _grid(f"{name}: expected (oracle)", expected, name)
        right = _grid(f"{name}: actual (probed)", actual, name, expected)
        width = max(len(x) for x in left) + 4
        out += [f"{a:<{width}}{b}" for a, b in zip(left, right, strict=True)] + [""]
    wrong = sorted(k for k in expected if expected[k] != actual[k])
    out.append(f"{len(wrong)} mismatching probes: " + ", ".join(
        f"{s}->{d} {p} expected {'allow' if expected[(s, d, p)] else 'deny'}"
        for s, d, p in wrong[:20]))
    return "\n".join(out)


# -- fixture --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def truth_lab() -> Iterator[TruthLab]:
    """One 3-node VXLAN lab with namespaces x, y, z and pods a, b, c in each, no policy.

    Module scope: every scenario reuses it. ``calico-lab down --purge`` runs pass or fail."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="tl-", dir="/tmp"))
    lab = TruthLab(root)
    try:
        lab.lab("up", "--nodes", str(len(LAB_NODES)), "--mode", "vxlan")
        for ns, labels in base_world().namespaces.items():
            own = {k: v for k, v in labels.items() if k != "kubernetes.io/metadata.name"}
            lab.lab("ns", "add", ns, "--labels", ",".join(f"{k}={v}" for k, v in own.items()))
            lab.ns_labels[ns] = dict(labels)

        def add(key: str) -> None:
            labels = base_world().pods[key].labels
            lab.lab("pod", "add", _node_of(key), key,
                    "--labels", ",".join(f"{k}={v}" for k, v in labels.items()))
            lab.pod_labels[key] = dict(labels)

        with ThreadPoolExecutor(3) as pool:
            list(pool.map(add, POD_KEYS))
        for key in POD_KEYS:
            ns, name = key.split("/")
            rec = json.loads((root / "pods" / ns / f"{name}.json").read_text())
            lab.pods[key] = LabPod(key, rec["node"], rec["ips"][0], rec["netns_path"])
        yield lab
    finally:
        lab.pool.shutdown(wait=True)
        subprocess.run([str(BIN / "calico-lab"), "down", "--purge", "--state-dir", str(root)],
                       capture_output=True, timeout=240, check=False)
        shutil.rmtree(root, ignore_errors=True)


# -- the test -------------------------------------------------------------------------------

_BY_NAME = {s.name: s for s in SCENARIOS}
_PARAMS = [
    pytest.param(_BY_NAME[name], id=name, marks=(
        [pytest.mark.skip(reason=LAB_GAPS[name])] if name in LAB_GAPS else
        [pytest.mark.xfail(strict=True, reason=_BY_NAME[name].xfail)]
        if _BY_NAME[name].xfail else []))
    for name in CHOSEN
]


def run_scenario(lab: TruthLab, scenario: Scenario) -> list[str]:
    addresses = address_map(lab)
    world = lab_world(lab)
    base_ns = {ns: dict(v) for ns, v in world.namespaces.items()}
    base_pods = {k: dict(p.labels) for k, p in world.pods.items()}
    created: dict[tuple[str, str, str], Mapping[str, Any]] = {}
    failures: list[str] = []
    try:
        for i, step in enumerate(scenario.steps, 1):
            applies: list[Mapping[str, Any]] = []
            deletes: list[dict[str, Any]] = []
            for raw in step.ops:
                op = rewrite_op(raw, addresses)
                apply_op(world, op)
                match op:
                    case Apply(resource=r):
                        applies.append(r)
                        created[_ident(r)] = r
                    case Delete(kind=kind, name=name, namespace=ns):
                        deletes.append(delete_doc(kind, name, ns))
                        created.pop((kind, ns, name), None)
                    case LabelNamespace(namespace=ns, labels=labels):
                        lab.label_namespace(ns, labels)
                    case LabelPod(pod=pod, labels=labels):
                        lab.label_pod(pod, labels)
            lab.apply(applies)
            lab.apply(deletes, "delete")
            expected = Oracle(world).matrix(PAIRS)
            actual, seconds = lab.enforce(expected)
            print(f"{scenario.name} step {i}/{len(scenario.steps)}"
                  f"{' (' + step.note + ')' if step.note else ''}: "
                  f"{sum(expected.values())}/{len(expected)} allowed, "
                  f"{'matched' if actual == expected else 'still differs'} after {seconds:.2f}s")
            if actual != expected:
                failures.append(f"{scenario.name} step {i} ({step.note or scenario.doc}):\n"
                                f"{format_mismatch(expected, actual)}")
                break
    finally:
        # Policies before what they use (tiers, sets), then labels back, then all-allowed.
        docs = [delete_doc(kind, name, ns) for kind, ns, name in created]
        lab.apply([d for d in docs if d["kind"] not in ("Tier",)], "delete")
        lab.apply([d for d in docs if d["kind"] == "Tier"], "delete")
        for ns, labels in base_ns.items():
            lab.label_namespace(ns, labels)
        for key, labels in base_pods.items():
            lab.label_pod(key, labels)
    expected = Oracle(lab_world(lab)).matrix(PAIRS)
    actual, _ = lab.enforce(expected)
    assert actual == expected, "not back to no policy:\n" + format_mismatch(expected, actual)
    return failures


@pytest.mark.parametrize("scenario", _PARAMS)
def test_truth_table_on_lab(truth_lab: TruthLab, scenario: Scenario) -> None:
    failures = run_scenario(truth_lab, scenario)
    assert not failures, "\n\n".join(failures)
