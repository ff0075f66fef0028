"""``calico-ipam`` and ``calicoctl ipam`` against a real lab (``calico-lab up --nodes 0``:
etcd, the datastore service and the IPAM service on the lab's sockets), each run as a
separate process the way a container runtime or a user runs it.

The plugin gets the user's example config (``shared/examples/cni/calico-ipam-pools.conf``)
unchanged on stdin and ``CNI_*`` in its environment; the only lab-specific setting is
``CALICO_IPAM_ENDPOINT`` naming the lab's IPAM socket (the lab under test lives in a
temporary state dir, not at the default ``/run/calico-lab``).
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.test_lab import BIN, Lab, calicoctl, datastore_built, running_lab
from tests.paths import CNI_EXAMPLES

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not datastore_built(), reason="the datastore service has not landed"),
]

EXAMPLE = CNI_EXAMPLES / "calico-ipam-pools.conf"
POOLS = """\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool-10}
spec: {cidr: 10.0.0.0/24}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool-20}
spec: {cidr: 20.0.0.0/16}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool-v6}
spec: {cidr: 2001:db8::/120}
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(tmp_path_factory.mktemp("ipam") / "lab") as lab:
        lab.env["CALICO_IPAM"] = f"unix://{lab.state_dir}/sock/ipam.sock"
        yield lab


def plugin(
    lab: Lab, command: str, stdin: bytes, container: str = "ctr-1"
) -> tuple[int, Any, str]:
    """``calico-ipam`` as a runtime runs it: CNI_* environment, the network config on stdin."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CALICO_")},
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container,
        "CNI_NETNS": f"/var/run/netns/{container}",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(BIN),
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
        "CALICO_IPAM_ENDPOINT": lab.env["CALICO_IPAM"],
    }
    proc = subprocess.run([str(BIN / "calico-ipam")], input=stdin, env=env,
                          capture_output=True, timeout=60, check=False)
    out = proc.stdout.decode()
    return proc.returncode, json.loads(out) if out.strip() else None, proc.stderr.decode()


def test_the_users_pools_file_add_check_del_version(lab: Lab) -> None:
    conf = EXAMPLE.read_bytes()
    # Before the pools exist: CNI error JSON naming the pool, nothing allocated.
    rc, out, _ = plugin(lab, "ADD", conf)
    assert rc == 1 and out["code"] == 7 and out["cniVersion"] == "0.1.0"
    assert "10.0.0.0/24" in out["msg"] and "does not exist" in out["msg"]

    r = calicoctl(lab, "apply", "-f", "-", stdin=POOLS)
    assert (r.returncode, r.stderr) == (0, ""), r.stdout

    rc, out, err = plugin(lab, "ADD", conf)
    assert rc == 0, (out, err)
    v4 = ipaddress.ip_interface(out["ip4"]["ip"])  # cniVersion 0.1.0: ip4 / ip6 objects
    v6 = ipaddress.ip_interface(out["ip6"]["ip"])
    assert v4.ip in ipaddress.ip_network("10.0.0.0/24") or v4.ip in ipaddress.ip_network(
        "20.0.0.0/16")
    assert v4.network.prefixlen == 26 and v6.ip in ipaddress.ip_network("2001:db8::/120")

    r = calicoctl(lab, "ipam", "show", "--ip", str(v4.ip))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:2] == [f"IP {v4.ip} is in use", "Handle ID: any_name.ctr-1"]
    assert "  pod: web-0" in r.stdout.splitlines()

    # CHECK needs cniVersion 0.4.0+; a runtime sends the same config with prevResult.
    rc, out, _ = plugin(lab, "CHECK", conf)
    assert rc == 1 and out["code"] == 1
    check_conf = json.loads(conf)
    check_conf["cniVersion"] = "1.0.0"
    check_conf["prevResult"] = {"cniVersion": "1.0.0",
                                "ips": [{"address": str(v4)}, {"address": str(v6)}]}
    rc, out, _ = plugin(lab, "CHECK", json.dumps(check_conf).encode())
    assert (rc, out) == (0, None)

    for _ in range(2):  # DEL is idempotent
        rc, out, _ = plugin(lab, "DEL", conf)
        assert (rc, out) == (0, None)
    r = calicoctl(lab, "ipam", "show", "--ip", str(v4.ip))
    assert r.stdout == f"{v4.ip} is not assigned\n"
    rc, out, _ = plugin(lab, "CHECK", json.dumps(check_conf).encode())
    assert rc == 1 and "not allocated" in out["msg"]

    rc, out, _ = plugin(lab, "VERSION", b"")
    assert rc == 0 and "0.1.0" in out["supportedVersions"] and "1.0.0" in out["supportedVersions"]

    r = calicoctl(lab, "ipam", "check")
    assert r.returncode == 0 and r.stdout.endswith("Check complete; found 0 problems.\n")


def test_calicoctl_ipam_show_against_the_lab(lab: Lab) -> None:
    assert calicoctl(lab, "apply", "-f", "-", stdin=POOLS).returncode == 0
    r = calicoctl(lab, "ipam", "show")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[1] == (
        "| GROUPING |      CIDR      | IPS TOTAL | IPS IN USE | IPS RESERVED |   IPS FREE   |"
    )
    row = "| IP Pool  | 20.0.0.0/16    |     65536 |     0 (0%) |       0 (0%) | 65536 (100%) |"
    assert row in lines
    r = calicoctl(lab, "ipam", "show", "--show-configuration")
    assert "| MaxBlocksPerHost   | 0     |" in r.stdout.splitlines()
