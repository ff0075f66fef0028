"""Peer selection and BIRD config rendering for the BGP driver."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from services.bgp.bird_config import render
from services.bgp.peers import GLOBAL, MESH, NODE, compute_peers, split_peer_ip
from services.bgp.view import BGPNodeInfo, BGPView, PoolInfo


def node(name: str, ip: str, rr: str = "", asn: str = "", **labels: str) -> BGPNodeInfo:
    return BGPNodeInfo(name, ip, f"{ip}/24", asn, rr, dict(labels))


NODES = {
    "node-1": node("node-1", "10.0.0.1"),
    "node-2": node("node-2", "10.0.0.2"),
    "node-3": node("node-3", "10.0.0.3"),
}
POOL = PoolInfo("10.244.0.0/16", "Never", "Never")


def view(me: str, nodes: dict[str, BGPNodeInfo] = NODES, **kw: Any) -> BGPView:
    defaults: dict[str, Any] = dict(
        configurations={}, peers=[], pools=[POOL], local_blocks=[], borrowed_ips=[]
    )
    defaults.update(kw)
    return BGPView(node=me, nodes=nodes, **defaults)


def test_full_mesh_by_default_and_only_the_higher_address_dials() -> None:
    peers = {p.ip: p for p in compute_peers(view("node-2"))}
    assert set(peers) == {"10.0.0.1", "10.0.0.3"}
    assert all(p.kind == MESH for p in peers.values())
    assert peers["10.0.0.3"].passive and not peers["10.0.0.1"].passive
    assert peers["10.0.0.1"].name == "Mesh_10_0_0_1"


def test_mesh_off_and_route_reflectors_from_the_walkthrough() -> None:
    nodes = dict(NODES)
    nodes["node-1"] = node("node-1", "10.0.0.1", rr="1.1.1.1", **{"route-reflector": "true"})
    peer = {"metadata": {"name": "bgppeer-demo"},
            "spec": {"nodeSelector": "all()", "peerSelector": 'route-reflector == "true"'}}
    config = {"default": {"metadata": {"name": "default"},
                          "spec": {"nodeToNodeMeshEnabled": False, "asNumber": 63400}}}
    client = compute_peers(view("node-2", nodes, peers=[peer], configurations=config))
    assert [(p.ip, p.kind, p.asn) for p in client] == [("10.0.0.1", NODE, "63400")]
    # The reflector peers back with every node the BGPPeer applies to (Calico's automatic
    # reverse peering), and makes them its clients: the one BGPPeer is enough.
    reflector = {p.ip: p for p in compute_peers(view("node-1", nodes, peers=[peer],
                                                     configurations=config))}
    assert set(reflector) == {"10.0.0.2", "10.0.0.3"}
    assert all(p.rr_cluster_id == "1.1.1.1" and p.kind == NODE and p.asn == "63400"
               for p in reflector.values())
    assert reflector["10.0.0.2"].name == "Node_10_0_0_2"
    # A second BGPPeer naming the same sessions adds nothing.
    everyone = {"metadata": {"name": "rr-to-all"},
                "spec": {"nodeSelector": 'route-reflector == "true"', "peerSelector": "all()"}}
    again = {p.ip: p for p in compute_peers(view("node-1", nodes, peers=[peer, everyone],
                                                 configurations=config))}
    assert again == reflector


def test_reverse_peering_manual_leaves_the_selected_side_alone() -> None:
    nodes = dict(NODES)
    nodes["node-1"] = node("node-1", "10.0.0.1", rr="1.1.1.1", **{"route-reflector": "true"})
    manual = {"metadata": {"name": "to-rr"},
              "spec": {"nodeSelector": "!has(route-reflector)",
                       "peerSelector": 'route-reflector == "true"', "reversePeering": "Manual"}}
    config = {"default": {"metadata": {"name": "default"},
                          "spec": {"nodeToNodeMeshEnabled": False}}}
    assert compute_peers(view("node-1", nodes, peers=[manual], configurations=config)) == []
    client = compute_peers(view("node-3", nodes, peers=[manual], configurations=config))
    assert [(p.ip, p.kind) for p in client] == [("10.0.0.1", NODE)]
    # Auto (the default): node-1 peers back only with the nodes the nodeSelector picks.
    auto = {**manual, "spec": {k: v for k, v in manual["spec"].items() if k != "reversePeering"}}
    two = {**nodes, "node-4": node("node-4", "10.0.0.4", rr="1.1.1.1",
                                   **{"route-reflector": "true"})}
    back = compute_peers(view("node-1", two, peers=[auto], configurations=config))
    assert sorted((p.ip, p.kind, p.rr_cluster_id) for p in back) == [
        ("10.0.0.2", NODE, "1.1.1.1"), ("10.0.0.3", NODE, "1.1.1.1")]


def test_global_selector_peering_is_global_both_ways_first() -> None:
    nodes = dict(NODES)
    nodes["node-1"] = node("node-1", "10.0.0.1", **{"edge": "true"})
    nodes["node-2"] = node("node-2", "10.0.0.2", **{"edge": "true"})
    edges = {"metadata": {"name": "edges"}, "spec": {"peerSelector": "has(edge)"}}
    peers = {p.ip: p for p in compute_peers(view("node-1", nodes, peers=[edges]))}
    # node-2 is selected forward (global, first); node-3 only peers back to us: node specific.
    assert (peers["10.0.0.2"].kind, peers["10.0.0.3"].kind) == (GLOBAL, NODE)


def test_reflectors_are_left_out_of_the_mesh() -> None:
    nodes = dict(NODES)
    nodes["node-1"] = node("node-1", "10.0.0.1", rr="1.1.1.1")
    assert {p.ip for p in compute_peers(view("node-2", nodes))} == {"10.0.0.3"}
    assert compute_peers(view("node-1", nodes)) == []


def test_global_peer_comes_first_and_duplicates_are_skipped() -> None:
    tor = {"metadata": {"name": "tor"}, "spec": {"peerIP": "10.0.0.254", "asNumber": 65000}}
    dup = {"metadata": {"name": "dup"}, "spec": {"node": "node-2", "peerIP": "10.0.0.254",
                                                 "asNumber": 65001}}
    peers = {p.ip: p for p in compute_peers(view("node-2", peers=[dup, tor]))}
    assert peers["10.0.0.254"].kind == GLOBAL and peers["10.0.0.254"].asn == "65000"
    assert peers["10.0.0.254"].name == "Global_10_0_0_254"


def test_per_node_as_number_and_peer_port() -> None:
    nodes = dict(NODES)
    nodes["node-3"] = node("node-3", "10.0.0.3", asn="65003")
    peers = {p.ip: p for p in compute_peers(view("node-2", nodes))}
    assert peers["10.0.0.3"].asn == "65003" and peers["10.0.0.1"].asn == "64512"
    assert split_peer_ip("10.0.0.9:1790") == ("10.0.0.9", 1790)
    assert split_peer_ip("[fd00::1]:1790") == ("fd00::1", 1790)
    assert split_peer_ip("fd00::1") == ("fd00::1", None)
    peer = {"metadata": {"name": "p"}, "spec": {"peerIP": "10.0.0.9:1790", "asNumber": 65009}}
    (p9,) = [p for p in compute_peers(view("node-2", peers=[peer])) if p.ip == "10.0.0.9"]
    assert p9.name == "Global_10_0_0_9_port_1790"


def test_render_exports_own_blocks_and_borrowed_ips_and_programs_only_no_encap_pools() -> None:
    vx = PoolInfo("10.96.0.0/16", "Never", "Always")
    text = render(view("node-1", local_blocks=["10.244.1.0/26"], borrowed_ips=["10.244.9.7/32"],
                       pools=[POOL, vx]))
    assert "router id 10.0.0.1;" in text
    assert "route 10.244.1.0/26 blackhole;" in text
    assert "if ( net = 10.244.9.7/32 ) then { accept; }" in text
    kernel = text.split("filter calico_kernel_programming {")[1].split("}")[0]
    assert "10.244.0.0/16+" in kernel and "10.96.0.0/16" not in kernel
    assert "protocol bgp Mesh_10_0_0_2 from bgp_template {" in text
    assert text == render(view("node-1", local_blocks=["10.244.1.0/26"],
                               borrowed_ips=["10.244.9.7/32"], pools=[POOL, vx]))


@pytest.mark.skipif(shutil.which("bird") is None, reason="bird2 is not installed; scripts/setup.sh")
@pytest.mark.parametrize("scenario", ["mesh", "reflector", "tor"])
def test_bird_accepts_the_rendered_config(tmp_path: Path, scenario: str) -> None:
    nodes = dict(NODES)
    peers: list[dict[str, Any]] = []
    if scenario == "reflector":
        nodes["node-1"] = node("node-1", "10.0.0.1", rr="1.1.1.1", **{"route-reflector": "true"})
        peers = [{"metadata": {"name": "all"}, "spec": {"peerSelector": "all()"}}]
    if scenario == "tor":
        peers = [{"metadata": {"name": "tor"}, "spec": {"peerIP": "10.0.0.254:1790",
                                                        "asNumber": 65000}}]
    text = render(view("node-1", nodes, peers=peers, local_blocks=["10.244.1.0/26"]))
    cfg = tmp_path / "bird.cfg"
    cfg.write_text(text)
    result = subprocess.run(["bird", "-p", "-c", str(cfg)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr + result.stdout + "\n" + text


def test_parse_bird2_show_protocols_and_calico_table() -> None:
    from libcalico.bird_socket import format_node_status, parse_protocols

    lines = [
        "2002-Name       Proto      Table      State  Since         Info",
        "1002-device1    Device     ---        up     05:06:00.231  ",
        "1002-Mesh_10_0_0_2 BGP        ---        up     05:06:01.231  Established   ",
        "1002-Node_172_17_8_103_port_1790 BGP  ---  start  05:06:02.231  Active  Socket: x",
        "1002-kernel1    Kernel     master4    up     05:06:00.231  ",
    ]
    peers = parse_protocols(lines)
    assert [(p.address, p.peer_type, p.state, p.since, p.info) for p in peers] == [
        ("10.0.0.2", "node-to-node mesh", "up", "05:06:01", "Established"),
        ("172.17.8.103", "node specific", "start", "05:06:02", "Active  Socket: x"),
    ]
    assert format_node_status(peers[:1]) == (
        "Calico process is running.\n\nIPv4 BGP status\n"
        "+--------------+-------------------+-------+----------+-------------+\n"
        "| PEER ADDRESS |     PEER TYPE     | STATE |  SINCE   |    INFO     |\n"
        "+--------------+-------------------+-------+----------+-------------+\n"
        "| 10.0.0.2     | node-to-node mesh | up    | 05:06:01 | Established |\n"
        "+--------------+-------------------+-------+----------+-------------+\n"
        "\nIPv6 BGP status\nNo IPv6 peers found.\n\n"
    )


def test_calicoctl_node_status_finds_the_socket(tmp_path: Path) -> None:
    import argparse

    from libcalico.cli.calicoctl.commands.node import socket_path

    ns = argparse.Namespace
    assert str(socket_path(ns(node=None, state_dir=None, bird_socket=None))) == (
        "/var/run/calico/bird.ctl")
    assert socket_path(ns(node="node-2", state_dir=str(tmp_path), bird_socket=None)) == (
        tmp_path / "nodes" / "node-2" / "bird" / "bird.ctl")
    assert str(socket_path(ns(node="x", state_dir=None, bird_socket="/s.ctl"))) == "/s.ctl"
