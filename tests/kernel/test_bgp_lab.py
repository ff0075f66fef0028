"""BGP through the whole pipeline: lab nodes whose routes come from calico-bgp and BIRD.

``calico-lab up --mode bgp`` (a pool without encapsulation) runs ``calico-bgp`` in every node
namespace, fed by calc_graph's ``BGPSync`` over gRPC; each renders BIRD's config and runs
BIRD. Pods on different nodes then reach each other only through the routes BIRD writes
(``proto bird``): the dataplane programs no routes to remote blocks in this mode.

The user's walkthrough is applied with ``calicoctl apply -f`` from the seed manifests, copied
to a temp dir with only the node name and address changed. A GoBGP daemon in a namespace of
its own on the lab's underlay acts as the top-of-rack router.

One lab (3 nodes, one L2 segment) serves the module: it is always brought down with
``--purge``, and the top-of-rack namespace is deleted by the test that made it.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from libcalico.lab.nodes import default_prefix
from libcalico.netns import have_root, list_netns, run
from tests.paths import SEED_MANIFESTS

BIN = Path(sys.executable).parent
SEEDS = SEED_MANIFESTS
BLOCK_PREFIX = 26  # the lab pool's blockSize
TOR_ADDRESS = "172.30.1.250"
TOR_AS = 65000

pytestmark = [pytest.mark.kernel, pytest.mark.slow]


def _skip_reason() -> str | None:
    if not have_root():
        return "lab nodes need root to create network namespaces"
    for tool in ("etcd", "bird"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed; run scripts/setup.sh"
    return None


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


@dataclass
class Lab:
    root: Path

    @property
    def prefix(self) -> str:
        return default_prefix(self.root)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALICO_")}
        env["CALICO_DATASTORE"] = f"unix://{self.root}/sock/datastore.sock"
        return env

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(BIN / "calico-lab"), *args, "--state-dir", str(self.root)],
                              capture_output=True, text=True, timeout=180, env=self.env(),
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"calico-lab {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def calicoctl(self, *args: str) -> str:
        proc = subprocess.run([str(BIN / "calicoctl"), *args], capture_output=True, text=True,
                              timeout=60, env=self.env(), stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise AssertionError(f"calicoctl {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def node_status(self, node: str) -> str:
        return self.calicoctl("node", "status", "--node", node, "--state-dir", str(self.root))

    def netns(self, node: str) -> str:
        return f"{self.prefix}{node}"

    def bird_routes(self, node: str) -> str:
        """The node's routes BIRD wrote (``ip route show proto bird`` would not print the
        protocol, so the whole table is filtered)."""
        table = run(["ip", "-n", self.netns(node), "route", "show"]).stdout
        return "\n".join(line for line in table.splitlines() if " proto bird" in line)

    def pod_ip(self, ref: str) -> str:
        ns, name = ref.split("/")
        data = json.loads((self.root / "pods" / ns / f"{name}.json").read_text())
        return str(data["ips"][0]).split("/")[0]

    def probe(self, src: str, dst: str) -> str:
        return self.cli("probe", src, dst, "--timeout", "2").stdout


NODES = {"node-1": "172.30.1.1", "node-2": "172.30.1.2", "node-3": "172.30.1.3"}
PODS = {"node-1": "default/p1", "node-2": "default/p2", "node-3": "default/p3"}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """Three BGP-mode nodes with a pod each; brought down with ``--purge`` whatever happens."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab(Path(tempfile.mkdtemp(prefix="bgp-lab-", dir="/tmp")))
    try:
        lab.cli("up", "--nodes", "3", "--mode", "bgp")
        for node, pod in PODS.items():
            lab.cli("pod", "add", node, pod)
        yield lab
    finally:
        lab.cli("down", "--purge", check=False)
        shutil.rmtree(lab.root, ignore_errors=True)


def block_of(ip: str) -> str:
    return str(ipaddress.ip_network(f"{ip}/{BLOCK_PREFIX}", strict=False))


def blocks(lab: Lab) -> dict[str, str]:
    return {node: block_of(lab.pod_ip(pod)) for node, pod in PODS.items()}


def routes_to_remote_blocks(lab: Lab) -> bool:
    want = blocks(lab)
    for node in NODES:
        routes = lab.bird_routes(node)
        for other, block in want.items():
            if other != node and f"{block} via {NODES[other]} dev eth0 proto bird" not in routes:
                return False
    return True


ROW = re.compile(r"^\| (\S+) +\| (.+?) +\| (\S+) +\| (\d\d:\d\d:\d\d) \| (.+?) +\|$")


def status_rows(table: str) -> list[tuple[str, str, str, str]]:
    """(address, type, state, info) of each peer row of ``calicoctl node status``."""
    rows = []
    for line in table.splitlines():
        m = ROW.match(line)
        if m and m.group(1) != "PEER":
            rows.append((m.group(1), m.group(2), m.group(3), m.group(5)))
    return sorted(rows)


def test_mesh_then_the_walkthrough_with_calicoctl(lab: Lab, tmp_path: Path) -> None:
    # Mesh: every node learns every other node's block from BIRD; pods connect across nodes.
    wait_for(lambda: routes_to_remote_blocks(lab), "every node to learn the others' blocks")
    for node in NODES:
        cfg = (lab.root / "nodes" / node / "bird" / "bird.cfg").read_text()
        assert cfg.startswith(f"# Generated by calico-py's BGP driver for node {node}.")
    assert lab.probe("default/p1", "default/p2").startswith("ok:")
    assert lab.probe("default/p3", "default/p1").startswith("ok:")
    mesh = status_rows(lab.node_status("node-1"))
    assert mesh == [("172.30.1.2", "node-to-node mesh", "up", "Established"),
                    ("172.30.1.3", "node-to-node mesh", "up", "Established")]

    # The walkthrough, as the user runs it: node-1 becomes the route reflector, every node
    # peers with the reflectors, the mesh goes off (and the cluster AS becomes 63400).
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    rr = (SEEDS / "02-node-route-reflector.yaml").read_text()
    assert "master01" in rr and "100.100.137.200/24" in rr
    (seeds / "02-node-route-reflector.yaml").write_text(
        rr.replace("master01", "node-1").replace("100.100.137.200/24", "172.30.1.1/24"))
    for name in ("03-bgppeer-to-reflectors.yaml", "04-bgpconfiguration-no-mesh.yaml"):
        shutil.copy(SEEDS / name, seeds / name)
    for path in sorted(seeds.iterdir()):
        assert "Successfully applied 1" in lab.calicoctl("apply", "-f", str(path))

    def node_specific() -> bool:
        return (status_rows(lab.node_status("node-1")) == [
                    ("172.30.1.2", "node specific", "up", "Established"),
                    ("172.30.1.3", "node specific", "up", "Established")]
                and all(status_rows(lab.node_status(n)) == [
                    ("172.30.1.1", "node specific", "up", "Established")]
                    for n in ("node-2", "node-3")))

    wait_for(node_specific, "every session to turn node specific through the reflector", 45)
    # node-3 has one session, to node-1: node-2's block reaches it only by reflection, with
    # node-2 still the next hop.
    wait_for(lambda: routes_to_remote_blocks(lab), "the blocks back through the reflector")
    assert lab.probe("default/p1", "default/p2").startswith("ok:")
    assert lab.probe("default/p3", "default/p2").startswith("ok:")
    assert "as 63400" in (lab.root / "nodes" / "node-3" / "bird" / "bird.cfg").read_text()

    table = lab.node_status("node-2")
    lines = table.splitlines()
    assert lines[:3] == ["Calico process is running.", "", "IPv4 BGP status"]
    assert re.sub(r"\d\d:\d\d:\d\d", "HH:MM:SS", "\n".join(lines[3:8])) == "\n".join([
        "+--------------+---------------+-------+----------+-------------+",
        "| PEER ADDRESS |   PEER TYPE   | STATE |  SINCE   |    INFO     |",
        "+--------------+---------------+-------+----------+-------------+",
        "| 172.30.1.1   | node specific | up    | HH:MM:SS | Established |",
        "+--------------+---------------+-------+----------+-------------+",
    ])
    assert lines[8:] == ["", "IPv6 BGP status", "No IPv6 peers found.", ""]


def _gobgp_rib(tor: str) -> dict[str, Any]:
    proc = run(["gobgp", "-u", "127.0.0.1", "-p", "50051", "global", "rib", "-j"], netns=tor,
               check=False)
    try:
        rib = json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else {}
    except ValueError:
        return {}
    return rib if isinstance(rib, dict) else {}


def _best_next_hop(paths: list[dict[str, Any]]) -> str:
    for path in paths:
        if path.get("best"):
            for attr in path.get("attrs", []):
                if "nexthop" in attr:
                    return str(attr["nexthop"])
    return ""


@pytest.mark.skipif(shutil.which("gobgpd") is None, reason="gobgpd is not installed")
def test_gobgp_top_of_rack_learns_every_block_through_a_global_bgppeer(
    lab: Lab, tmp_path: Path,
) -> None:
    config = json.loads(lab.calicoctl("get", "bgpconfiguration", "-o", "json"))
    items = config.get("items", [config]) if isinstance(config, dict) else []
    cluster_as = next((str(c["spec"]["asNumber"]) for c in items
                       if c["metadata"]["name"] == "default" and c["spec"].get("asNumber")),
                      "64512")
    tor = f"{lab.prefix}tor"
    assert tor not in list_netns()
    underlay = f"{lab.prefix}lab-ul-a"
    conf = tmp_path / "gobgpd.toml"
    conf.write_text(
        f'[global.config]\n  as = {TOR_AS}\n  router-id = "{TOR_ADDRESS}"\n' + "".join(
            f'\n[[neighbors]]\n  [neighbors.config]\n    neighbor-address = "{addr}"\n'
            f"    peer-as = {cluster_as}\n" for addr in NODES.values()))
    peer = tmp_path / "bgppeer-tor.yaml"
    peer.write_text("apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: tor\n"
                    f"spec:\n  peerIP: {TOR_ADDRESS}\n  asNumber: {TOR_AS}\n")
    gobgpd: subprocess.Popen[bytes] | None = None
    run(["ip", "netns", "add", tor])
    try:
        run(["ip", "-n", underlay, "link", "add", "t-tor", "type", "veth", "peer", "name",
             "eth0", "netns", tor])
        run(["ip", "-n", underlay, "link", "set", "t-tor", "master", "br0", "up"])
        run(["ip", "-n", tor, "addr", "add", f"{TOR_ADDRESS}/24", "dev", "eth0"])
        run(["ip", "-n", tor, "link", "set", "eth0", "up"])
        run(["ip", "-n", tor, "link", "set", "lo", "up"])
        gobgpd = subprocess.Popen(
            ["ip", "netns", "exec", tor, "gobgpd", "-f", str(conf), "-p", "--api-hosts",
             "127.0.0.1:50051"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert "Successfully applied 1 'BGPPeer'" in lab.calicoctl("apply", "-f", str(peer))

        want = {block: NODES[node] for node, block in blocks(lab).items()}

        def learned() -> bool:
            rib = _gobgp_rib(tor)
            return all(_best_next_hop(rib.get(b, [])) == hop for b, hop in want.items())

        wait_for(learned, "the top-of-rack router to learn every node's block", 45)

        def established() -> bool:
            # Polled too: the router's table and a node's own view of its session are read at
            # different moments. One suite run saw a node report the session "Active" right
            # after the router had every block with the right next hop.
            return all(
                (TOR_ADDRESS, "global", "up", "Established") in status_rows(lab.node_status(n))
                for n in NODES
            )

        wait_for(established, "every node's session with the top-of-rack router", 45)
        # The global peer came on top of the node's other sessions, which stay up.
        assert len(status_rows(lab.node_status("node-1"))) == 3
        assert routes_to_remote_blocks(lab)
    finally:
        if gobgpd is not None:
            gobgpd.terminate()
            try:
                gobgpd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                gobgpd.kill()
                gobgpd.wait()
        run(["ip", "netns", "delete", tor], check=False)
        subprocess.run([str(BIN / "calicoctl"), "delete", "bgppeer", "tor"], env=lab.env(),
                       capture_output=True, check=False, timeout=60)
