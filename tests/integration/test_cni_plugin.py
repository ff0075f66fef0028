"""The ``calico`` CNI plugin as a process, against a real control plane (no kernel needed).

What needs no network namespace: VERSION, config handling (the user's conflist is accepted and
what cannot be honoured is named), MTU resolution, errors as CNI error JSON, STATUS, DEL's
idempotence and its containerID guard, IPAM exhaustion (ADD fails before any interface is
made). Interfaces, CHECK and chained plugins are in ``tests/kernel/test_cni_plugin.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from libcalico.cni import netconf, wep
from libcalico.lab.testing import (
    ControlPlane,
    calico_conf,
    ippool,
    plugin_env,
    run_plugin,
)
from libcalico.model import wep_name as model_wep_name
from tests.paths import CNI_EXAMPLES

EXAMPLE = CNI_EXAMPLES / "10-calico.conflist"
K8S_ARGS = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1"


@pytest.fixture(scope="module")
def cp() -> Iterator[ControlPlane]:
    import shutil

    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed; run scripts/setup.sh")
    plane = ControlPlane()
    try:
        yield plane
    finally:
        plane.close()


def _conf(cp: ControlPlane, version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    return {"name": "k8s-pod-network", "cniVersion": version, **calico_conf(cp, **extra)}


# -- pure ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("node", "orch", "workload", "endpoint"), [
    ("node-1", "k8s", "web-1", "eth0"),
    ("n", "cni", "0123abcd", "eth0"),
    ("a-b-c", "k8s", "x--y", "net-1"),
])
def test_wep_name_matches_the_model(node: str, orch: str, workload: str, endpoint: str) -> None:
    assert wep.wep_name(node, orch, workload, endpoint) == model_wep_name(
        node, orch, workload, endpoint)


def test_identifiers_follow_calico() -> None:
    ids = wep.identifiers({"K8S_POD_NAMESPACE": "prod", "K8S_POD_NAME": "db-0"}, "c0ffee",
                          "eth0", "node-2", "k8s-pod-network")
    assert ids.name == "node--2-k8s-db--0-eth0"
    assert ids.host_ifname == "cali" + __import__("hashlib").sha1(b"prod.db-0").hexdigest()[:11]
    assert ids.handle_id == "k8s-pod-network.c0ffee"
    plain = wep.identifiers({}, "0123456789abcdef", "eth0", "n1", "net")
    assert (plain.orchestrator, plain.namespace, plain.host_ifname) == (
        "cni", "default", "cali0123456789a")


def test_example_conflist_is_accepted_and_what_cannot_be_honoured_is_named() -> None:
    conf = json.loads(EXAMPLE.read_text())["plugins"][0]
    conf["cniVersion"] = "0.3.1"
    nc = netconf.load(conf, env={})
    assert nc.nodename == "master01" and nc.ipam_type == "host-local"
    notes = " | ".join(nc.notes)
    for phrase in ("datastore_type 'kubernetes'", "kubernetes.kubeconfig", "policy.type 'k8s'",
                   "usePodCidr"):
        assert phrase in notes, notes


def test_mtu_zero_reads_the_mtu_file(tmp_path: Path) -> None:
    mtu_file = tmp_path / "mtu"
    base = {"ipam": {"type": "calico-ipam"}, "mtu": 0, "mtu_file": str(mtu_file)}
    assert netconf.load(base, env={}).mtu == 1500  # no file: 1500
    mtu_file.write_text("1450\n")
    assert netconf.load(base, env={}).mtu == 1450
    assert netconf.load({**base, "mtu": 9000}, env={}).mtu == 9000
    mtu_file.unlink()
    with pytest.raises(netconf.ConfigError, match="require_mtu_file"):
        netconf.load({**base, "require_mtu_file": True}, env={})


def test_pod_cidr_substitution() -> None:
    ipam = {"type": "host-local", "ranges": [[{"subnet": "usePodCidr"}],
                                             [{"subnet": "usePodCidrIPv6"}]]}
    out = netconf.substitute_pod_cidr(ipam, ["10.245.1.0/24"], ["fd00:1::/64"])
    assert out["ranges"] == [[{"subnet": "10.245.1.0/24"}], [{"subnet": "fd00:1::/64"}]]
    with pytest.raises(netconf.ConfigError, match="no IPv6 pod CIDR"):
        netconf.substitute_pod_cidr(ipam, ["10.245.1.0/24"], [])
    assert netconf.dummy_pod_cidr({"type": "host-local", "subnet": "usePodCidr"})["subnet"] \
        == "0.0.0.0/0"


# -- the plugin process ------------------------------------------------------------------------


def test_version_lists_every_supported_version() -> None:
    run = run_plugin("calico", b"", plugin_env("VERSION", ifname=""))
    assert run.rc == 0
    assert run.out["supportedVersions"] == [
        "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def test_bad_config_is_cni_error_json(cp: ControlPlane) -> None:
    conf = _conf(cp)
    del conf["ipam"]
    run = run_plugin("calico", conf, plugin_env("ADD", container_id="c1", netns="/x",
                                                args=K8S_ARGS))
    assert run.rc == 1 and run.out["code"] == 7 and "ipam" in run.out["msg"]
    run = run_plugin("calico", {**_conf(cp), "cniVersion": "9.9.9"},
                     plugin_env("ADD", container_id="c1", netns="/x", args=K8S_ARGS))
    assert run.rc == 1 and run.out["code"] == 1


def test_check_needs_040(cp: ControlPlane) -> None:
    run = run_plugin("calico", _conf(cp, version="0.3.1"),
                     plugin_env("CHECK", container_id="c1", netns="/x", args=K8S_ARGS))
    assert run.rc == 1 and run.out["code"] == 1 and "CHECK" in run.out["msg"]


def test_unreachable_datastore_is_try_again(cp: ControlPlane, tmp_path: Path) -> None:
    conf = _conf(cp)
    conf["datastore_endpoint"] = f"unix://{tmp_path}/nothing.sock"
    run = run_plugin("calico", conf, plugin_env("ADD", container_id="c1", netns="/x",
                                                args=K8S_ARGS))
    assert run.rc == 1 and run.out["code"] == 11, run.out
    assert "nothing.sock" in run.out["msg"]
    # The IPAM plugin ran in parallel and allocated: the failed ADD released it again.
    handles = cp.ds(lambda c: c.kv_list("/calico/ipam/v2/handle/"))
    assert not [kv.key for kv in handles[0] if kv.key.endswith(".c1")]


def test_status_needs_110_and_reports_readiness(cp: ControlPlane, tmp_path: Path) -> None:
    ok = run_plugin("calico", _conf(cp, version="1.1.0"), plugin_env("STATUS", ifname=""))
    assert ok.rc == 0, ok.out
    old = run_plugin("calico", _conf(cp, version="1.0.0"), plugin_env("STATUS", ifname=""))
    assert old.rc == 1 and old.out["code"] == 1
    down = _conf(cp, version="1.1.0")
    down["datastore_endpoint"] = f"unix://{tmp_path}/nothing.sock"
    bad = run_plugin("calico", down, plugin_env("STATUS", ifname=""))
    assert bad.rc == 1 and bad.out["code"] == 50, bad.out


def test_del_is_idempotent_and_spares_another_containers_endpoint(cp: ControlPlane) -> None:
    node = "node-del"
    ids = wep.identifiers({"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "keep"}, "newer",
                          "eth0", node, "k8s-pod-network")
    endpoint = wep.build(ids, ip_networks=["10.66.0.9/32"], mac="02:00:00:00:00:01",
                         host_ifname=ids.host_ifname, metadata={})
    cp.ds(lambda c: c.create(endpoint))
    conf = _conf(cp, node=node)
    args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=keep"
    # An older sandbox's DEL (another container ID, namespace gone) leaves the endpoint alone.
    for _ in range(2):
        run = run_plugin("calico", conf, plugin_env("DEL", container_id="older",
                                                    netns="/var/run/netns/gone", args=args))
        assert run.rc == 0, run.out
    assert cp.ds(lambda c: c.get("WorkloadEndpoint", ids.name, "default"))
    # Its own DEL removes it; DEL again is still fine.
    for _ in range(2):
        run = run_plugin("calico", conf, plugin_env("DEL", container_id="newer", args=args))
        assert run.rc == 0, run.out
    items, _ = cp.ds(lambda c: c.list("WorkloadEndpoint", "default"))
    assert ids.name not in [i["metadata"]["name"] for i in items]


def test_exhausted_pool_fails_with_cni_error_and_writes_nothing(cp: ControlPlane) -> None:
    cp.ds(lambda c: c.apply(ippool("tiny", "10.99.7.0/30", block_size=30)))
    ipam = {"type": "calico-ipam", "ipam_endpoint": cp.ipam, "ipv4_pools": ["10.99.7.0/30"]}
    handles = []
    try:
        for i in range(4):  # fill the pool through IPAM directly: /30 holds 4
            run = run_plugin("calico-ipam", _conf(cp, node="node-x", ipam=ipam),
                             plugin_env("ADD", container_id=f"fill{i}", netns="/x",
                                        args=K8S_ARGS))
            assert run.rc == 0, run.out
            handles.append(f"fill{i}")
        run = run_plugin("calico", _conf(cp, node="node-x", ipam=ipam),
                         plugin_env("ADD", container_id="over", netns="/var/run/netns/none",
                                    args=K8S_ARGS))
        assert run.rc == 1
        assert run.out["code"] == 100 and run.out["cniVersion"] == "1.0.0", run.out
        assert "calico-ipam ADD" in run.out["msg"]
        items, _ = cp.ds(lambda c: c.list("WorkloadEndpoint", "default"))
        assert not [i for i in items if i["spec"].get("containerID") == "over"]
    finally:
        for h in handles:
            run_plugin("calico-ipam", _conf(cp, node="node-x", ipam=ipam),
                       plugin_env("DEL", container_id=h, args=K8S_ARGS))
        cp.ds(lambda c: c.delete("IPPool", "tiny"))
