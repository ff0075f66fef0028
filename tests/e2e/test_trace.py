"""One trace from ``calicoctl apply`` to the kernel writes of the node that hosts the pod.

A lab of two nodes with one pod on node-2; ``calicoctl apply`` of a policy selecting that pod
with ``CALICO_TRACE_FILE`` set (as the lab prints and the demo does). The spans reach
``<state>/traces.jsonl`` from five processes through batching exporters, so the test polls the
file (bounded) for the trace of that command and checks its shape: calicoctl → datastore →
calc_graph → the node's dataplane driver → ``iptables*-restore`` with counts and sizes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from libcalico.netns import have_root
from libcalico.tracetree import SpanNode, build_tree, load_spans, walk

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow
POLL_S = 20.0

POLICY = """\
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  name: traced
  namespace: shop
spec:
  selector: app == 'api'
  ingress:
  - action: Allow
    protocol: TCP
    destination:
      ports: [8080]
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Path]:
    if not have_root():
        pytest.skip("the lab's nodes need root to create network namespaces")
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed; run scripts/setup.sh")
    root = Path(tempfile.mkdtemp(prefix="lab-trace-", dir="/tmp"))
    try:
        _lab(root, "up", "--nodes", "2")
        _lab(root, "pod", "add", "node-2", "shop/api", "--labels", "app=api")
        yield root
    finally:
        _lab(root, "down", "--purge", check=False)
        shutil.rmtree(root, ignore_errors=True)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CALICO_")}


def _lab(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(BIN / "calico-lab"), *args, "--state-dir", str(root)],
                          capture_output=True, text=True, timeout=120, env=_env(),
                          stdin=subprocess.DEVNULL, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"calico-lab {' '.join(args)}: {proc.stdout}{proc.stderr}")
    return proc


def _calicoctl_trace_id(trace_file: Path, since_ns: int) -> str | None:
    for s in load_spans(trace_file):
        if (s.get("service") == "calicoctl" and not s.get("parent_span_id")
                and s["name"] == "calicoctl apply" and s["start_ns"] >= since_ns):
            return str(s["trace_id"])
    return None


def test_calicoctl_apply_is_one_trace_down_to_the_kernel_writes(lab: Path) -> None:
    trace_file = lab / "traces.jsonl"
    manifest = lab / "traced.yaml"
    manifest.write_text(POLICY)
    env = _env()
    env["CALICO_DATASTORE"] = f"unix://{lab}/sock/datastore.sock"
    env["CALICO_TRACE_FILE"] = str(trace_file)
    since = time.time_ns()
    subprocess.run([str(BIN / "calicoctl"), "apply", "-f", str(manifest)], env=env,
                   check=True, capture_output=True, timeout=60)

    deadline = time.monotonic() + POLL_S
    writes: list[SpanNode] = []
    roots: list[SpanNode] = []
    while time.monotonic() < deadline:
        tid = _calicoctl_trace_id(trace_file, since)
        if tid is not None:
            roots = build_tree(load_spans(trace_file), tid)
            # "exec <tool>" for a one-off process, "write <tool>" for the driver's
            # long-lived restore process: either way the kernel write itself.
            writes = [n for n in walk(roots)
                      if n.span["name"].startswith(("exec iptables", "write iptables"))
                      and n.span.get("service") == "dataplane"]
            services = {n.span.get("service") for n in walk(roots)}
            # Five processes export in batches: wait until every hop's span is in the file.
            if writes and len(roots) == 1 and {"datastore", "calc_graph"} <= services:
                break
        time.sleep(0.2)
    assert writes, f"no kernel write in the calicoctl trace within {POLL_S}s"
    assert len(roots) == 1, [r.span["name"] for r in roots]

    services = {n.span.get("service") for n in walk(roots)}
    assert {"calicoctl", "datastore", "calc_graph", "dataplane"} <= services
    (root,) = roots
    assert root.span["service"] == "calicoctl" and not root.linked

    # The chain is parent to child, no links needed: every hop continues the trace.
    def path_to(target: SpanNode) -> list[str]:
        def find(node: SpanNode, acc: list[str]) -> list[str] | None:
            acc = [*acc, f"{node.span.get('service')}:{node.span['name']}"]
            if node is target:
                return acc
            for child in node.children:
                found = find(child, acc)
                if found:
                    return found
            return None
        return find(root, []) or []

    write = writes[0]
    chain = [hop.split(":")[0] for hop in path_to(write)]
    assert chain[0] == "calicoctl" and chain[-2:] == ["dataplane", "dataplane"]
    assert chain.index("datastore") < chain.index("calc_graph") < chain.index("dataplane")
    attrs = write.span["attributes"]
    assert attrs["calico.node"] == "node-2"  # only the node with the selected pod programs it
    assert attrs["calico.tool"].endswith("-restore")
    assert attrs["calico.lines"] > 0 and attrs["calico.bytes"] > attrs["calico.lines"]
    assert attrs["calico.chains"] >= 1
    assert not write.children  # the trace ends in the kernel write

    # calico-lab trace prints the same tree.
    out = _lab(lab, "trace", write.span["trace_id"]).stdout
    assert "[calicoctl] calicoctl apply" in out and write.span["name"] in out
    assert "node=node-2" in out and "lines=" in out and "chains=" in out
    last = _lab(lab, "trace", "--last").stdout
    assert last.splitlines()[0] == out.splitlines()[0]


def _set_calico_conf(lab: Path, node: str, **fields: object) -> dict[str, object]:
    import json

    path = lab / "nodes" / node / "10-calico.conflist"
    conflist = json.loads(path.read_text())
    before = dict(conflist["plugins"][0])
    conflist["plugins"][0].update(fields)
    path.write_text(json.dumps(conflist, indent=2))
    return before


def test_cni_add_waits_until_the_dataplane_programmed_the_endpoint(lab: Path) -> None:
    """``policy_setup_timeout_seconds``: ADD returns once node-2's driver wrote the endpoint's
    status file; with a status dir nothing writes to, it returns after the timeout, warning."""
    from libcalico import endpoint_status

    before = _set_calico_conf(lab, "node-2", policy_setup_timeout_seconds=5)
    status_dir = lab / "nodes" / "node-2" / "endpoint-status"
    assert before["endpoint_status_dir"] == str(status_dir)
    try:
        _lab(lab, "pod", "add", "node-2", "shop/waited", "--labels", "app=api")
        # Checked after ADD returned: the file was there when the plugin returned.
        status = endpoint_status.read(status_dir, endpoint_status.filename(
            "k8s", "shop/waited", "eth0"))
        assert status is not None and status["status"] == "up" and status["node"] == "node-2"
        log = (lab / "logs" / "cni.log").read_text()
        assert "node--2-k8s-waited-eth0 programmed by the dataplane after" in log

        _set_calico_conf(lab, "node-2", policy_setup_timeout_seconds=0.5,
                         endpoint_status_dir=str(lab / "nobody-writes-here"))
        t0 = time.monotonic()
        _lab(lab, "pod", "add", "node-2", "shop/late", "--labels", "app=api")
        assert time.monotonic() - t0 >= 0.5
        log = (lab / "logs" / "cni.log").read_text()
        assert "node--2-k8s-late-eth0 not programmed within policy_setup_timeout_seconds=0.5" \
            in log
    finally:
        _set_calico_conf(lab, "node-2", **before)
        for pod in ("shop/waited", "shop/late"):
            _lab(lab, "pod", "del", pod, check=False)
    # The endpoint's status file goes with it (the driver hears of the deletion: poll).
    gone = status_dir / endpoint_status.filename("k8s", "shop/waited", "eth0")
    deadline = time.monotonic() + POLL_S
    while gone.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not gone.exists()


def _node_metrics(lab: Path, node: str) -> dict[str, float]:
    """The node's driver's /metrics (127.0.0.1 inside the node's namespace), as name -> value."""
    from libcalico.lab.nodes import NODE_METRICS_PORT, default_prefix

    code = ("import urllib.request,sys;sys.stdout.write(urllib.request.urlopen("
            f"'http://127.0.0.1:{NODE_METRICS_PORT}/metrics',timeout=5).read().decode())")
    out = subprocess.run(["ip", "netns", "exec", f"{default_prefix(lab)}{node}", sys.executable,
                          "-c", code], capture_output=True, text=True, check=True,
                         timeout=30).stdout
    values: dict[str, float] = {}
    for line in out.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_node_metrics_count_policy_programming(lab: Path) -> None:
    """Per node: the policy-programming and pod-readiness histograms and Felix-style counters
    on the driver's metrics endpoint grow with a policy change and a new pod."""
    before = _node_metrics(lab, "node-2")
    env = _env()
    env["CALICO_DATASTORE"] = f"unix://{lab}/sock/datastore.sock"
    manifest = lab / "metrics.yaml"
    manifest.write_text(POLICY.replace("name: traced", "name: metered").replace("8080", "8081"))
    subprocess.run([str(BIN / "calicoctl"), "apply", "-f", str(manifest)], env=env,
                   check=True, capture_output=True, timeout=60)
    _lab(lab, "pod", "add", "node-2", "shop/metered", "--labels", "app=api")
    try:
        policy = "calico_dataplane_policy_programming_seconds_count"
        ready = "calico_dataplane_pod_network_ready_seconds_count"
        restore = next(k for k in before if k.startswith("calico_dataplane_exec_total{")
                       and "restore" in k and "ip6" not in k)
        lines = restore.replace("exec_total", "exec_input_lines_total")
        deadline = time.monotonic() + POLL_S
        while True:
            after = _node_metrics(lab, "node-2")
            grown = (after[policy] >= before[policy] + 2 and after[ready] >= before[ready] + 1
                     and after[restore] > before[restore] and after[lines] > before[lines])
            if grown or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert grown, {k: (before.get(k), after.get(k)) for k in (policy, ready, restore, lines)}
        # The drivers' first apply after InSync read every owner back: counted as resyncs.
        assert after['calico_dataplane_resyncs_total{kind="iptables"}'] >= 1
        assert 'calico_dataplane_exec_total{tool="ipset"}' in after
        # Latencies are wall time from calc_graph's receipt of the change: small, not zero.
        mean = ((after["calico_dataplane_policy_programming_seconds_sum"]
                 - before["calico_dataplane_policy_programming_seconds_sum"])
                / (after[policy] - before[policy]))
        assert 0 < mean < 5
    finally:
        _lab(lab, "pod", "del", "shop/metered", check=False)
