"""Regression tests for bugs the truth tables found, small enough to need no root.

- A Kubernetes policy with egress rules and no ``policyTypes`` lost its egress rules in
  conversion (the API server's defaulting was missing).
- After a node switched from the iptables to the nftables flavor, the iptables flavor's IP sets
  survived the sweep (the ipset owner's read-back only ran in the iptables flavor).
"""

from __future__ import annotations

from pathlib import Path

from libcalico.model import k8s_network_policy_to_calico
from services.dataplane import messages as m
from services.dataplane.driver import DriverSettings
from services.dataplane.flavors import build_driver
from services.dataplane.status import ListSink
from services.dataplane.testing import FakeNetlink, FakeRunner, FakeSysctls

from .scenarios import knp, labels


def test_k8s_egress_rules_without_policy_types_govern_egress() -> None:
    """Kubernetes defaults ``policyTypes`` to [Ingress, Egress] when egress rules are present
    (API server defaulting, before Calico sees the object); the converted policy must say so."""
    policy = knp("x", "egress-only", {"podSelector": {}, "egress": [
        {"to": [{"namespaceSelector": labels(ns="y")}]}]}).resource
    spec = k8s_network_policy_to_calico(policy)["spec"]
    assert spec.get("types") == ["Ingress", "Egress"]
    assert spec.get("egress"), "the egress rules must survive the conversion"


async def test_nftables_flavor_sweeps_iptables_ip_sets(tmp_path: Path) -> None:
    """A node that ran the iptables flavor keeps its ``cali40*`` sets; a driver restarted in
    the nftables flavor must destroy them after InSync (flavors.py/policy.py promise it)."""
    runner = FakeRunner(kernel_text={"ipset": (
        "create cali40masq-ipam-pools hash:net family inet hashsize 1024 maxelem 1048576\n"
        "add cali40masq-ipam-pools 10.244.0.0/16\n"
        "create kube-other hash:ip family inet\n")})
    nl = FakeNetlink()
    nl.add_link("eth0", addresses=["10.93.0.1/24"])
    driver = build_driver(DriverSettings(node="node-1", flavor="nftables"), sink=ListSink(),
                          runner=runner, nl=nl, sysctls=FakeSysctls(),
                          mtu_file=tmp_path / "mtu", ipv6=False)
    driver.on_batch([m.config(), m.in_sync()])
    assert await driver.apply_once()
    destroyed = "".join(runner.inputs("ipset")) + " ".join(
        " ".join(argv) for argv, _ in runner.calls if argv[0] == "ipset")
    assert "destroy cali40masq-ipam-pools" in destroyed
    assert "kube-other" not in destroyed
