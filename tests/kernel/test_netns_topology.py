"""The namespace toolkit itself: hosts reach each other, routers join subnets, cleanup is total."""

from __future__ import annotations

from libcalico.netns import Topology, list_netns, run


def test_hosts_on_one_segment_ping(topology: Topology) -> None:
    topology.add_segment("a", "10.99.0.0/24")
    h1 = topology.add_host("h1")
    h2 = topology.add_host("h2")
    assert str(h1.address.ip) == "10.99.0.1"
    topology.exec("h1", ["ping", "-c1", "-W2", str(h2.address.ip)])


def test_router_joins_two_segments(topology: Topology) -> None:
    topology.add_segment("a", "10.98.1.0/24")
    topology.add_segment("b", "10.98.2.0/24")
    topology.add_host("h1", "a", "10.98.1.10/24")
    topology.add_host("h2", "b", "10.98.2.10/24")
    topology.add_router("r", {"a": "10.98.1.1/24", "b": "10.98.2.1/24"})
    topology.add_route("h1", "10.98.2.0/24", "10.98.1.1")
    topology.add_route("h2", "10.98.1.0/24", "10.98.2.1")
    topology.exec("h1", ["ping", "-c1", "-W2", "10.98.2.10"])


def test_destroy_removes_every_namespace_and_process(topology: Topology) -> None:
    topology.add_segment("a", "10.97.0.0/24")
    topology.add_host("h1")
    proc = topology.popen("h1", ["sleep", "60"])
    topology.destroy()
    assert proc.wait(timeout=5) != 0
    assert not [n for n in list_netns() if n.startswith(topology.prefix)]


def test_machine_namespace_is_untouched(topology: Topology) -> None:
    before = run(["ip", "-o", "link"]).stdout
    topology.add_segment("a", "10.96.0.0/24")
    topology.add_host("h1")
    topology.add_host("h2")
    assert run(["ip", "-o", "link"]).stdout == before
