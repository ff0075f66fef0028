"""``calicoctl ipam`` end to end in one process: ``main.run`` with the IPAM connector pointed
at the real ``IPAMServicer`` and allocator over the in-memory KV fake (no gRPC). Tables are
compared character for character with Calico's layout (shared/reference/calico.md §9)."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from libcalico.api.ipam.v1 import ipam_pb2 as pb
from libcalico.cli.boxtable import box_table
from libcalico.cli.calicoctl.commands import ipam as ipam_cmd
from libcalico.cli.calicoctl.main import parse_args, run
from services.ipam.kvstore import ResourceStore
from services.ipam.servicer import IPAMServicer
from services.ipam.tunnels import TunnelAddresses
from tests.unit.test_ipam_allocator import Env, a4, allocated, make_env


class ServicerStub:
    """The servicer's methods as a stub's: ``await stub.Method(request)``."""

    def __init__(self, servicer: IPAMServicer) -> None:
        self._servicer = servicer
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Callable[[Any], Any]:
        method = getattr(self._servicer, name)

        async def call(request: Any) -> Any:
            self.calls.append(name)
            return await method(request, None)

        return call


class Ctl:
    def __init__(self, env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
        self.env = env
        rs: ResourceStore = env.rs
        self.stub = ServicerStub(IPAMServicer(env.alloc, TunnelAddresses(env.alloc, rs), rs))
        self.targets: list[ipam_cmd.IPAMTarget] = []

        def connect(target: ipam_cmd.IPAMTarget) -> Any:
            self.targets.append(target)

            @asynccontextmanager
            async def cm() -> AsyncIterator[ServicerStub]:
                yield self.stub

            return cm()

        monkeypatch.setattr(ipam_cmd, "connect_ipam", connect)

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = run(list(argv), out, err)
        return code, out.getvalue(), err.getvalue()


@pytest.fixture
def ctl(monkeypatch: pytest.MonkeyPatch) -> Ctl:
    monkeypatch.delenv("CALICO_IPAM", raising=False)
    return Ctl(make_env(), monkeypatch)


# -- the table ----------------------------------------------------------------------------------


def test_the_reference_table_character_for_character() -> None:
    pools = [
        SimpleNamespace(
            cidr="192.168.0.0/16", capacity=65536, in_use=5, reserved=0, free=65531,
            blocks=[SimpleNamespace(cidr="192.168.45.0/26", capacity=64, in_use=5, reserved=0,
                                    free=59)],
        )
    ]
    assert ipam_cmd.utilization_table(pools, show_blocks=True) == """\
+----------+-----------------+-----------+------------+--------------+--------------+
| GROUPING |      CIDR       | IPS TOTAL | IPS IN USE | IPS RESERVED |   IPS FREE   |
+----------+-----------------+-----------+------------+--------------+--------------+
| IP Pool  | 192.168.0.0/16  |     65536 |     5 (0%) |       0 (0%) | 65531 (100%) |
| Block    | 192.168.45.0/26 |        64 |     5 (8%) |       0 (0%) |     59 (92%) |
+----------+-----------------+-----------+------------+--------------+--------------+"""
    assert "Block" not in ipam_cmd.utilization_table(pools, show_blocks=False)


def test_box_table_empty_and_alignment() -> None:
    assert box_table(["ip", "node"], []) == (
        "+----+------+\n| IP | NODE |\n+----+------+\n+----+------+"
    )
    assert box_table(["n"], [["1"], ["100"]], right=(0,)).splitlines()[3:5] == [
        "|   1 |", "| 100 |"]


@pytest.mark.parametrize(("n", "want"), [(65536, "65536"), (1048576, "1.0486e+06"),
                                         (100000, "1e+05"), (0, "0")])
def test_numbers_are_gos_percent_5g(n: int, want: str) -> None:
    assert ipam_cmd.go_g5(n) == want


# -- show ---------------------------------------------------------------------------------------


async def seed(env: Env) -> None:
    env.pool("p", "10.0.0.0/24")
    env.pool("big", "10.128.0.0/12")
    env.rs.put_resource({"kind": "IPReservation", "metadata": {"name": "r"},
                         "spec": {"reservedCIDRs": ["10.0.0.250/31"]}})
    await env.alloc.assign_ip("10.0.0.1", "net.first", {"node": "n1"}, "n1")
    await env.alloc.auto_assign(a4("n1", "net.more", n=4))  # into n1's 10.0.0.0/26


async def test_show_pools_and_blocks(ctl: Ctl) -> None:
    await seed(ctl.env)
    code, out, err = await _in_thread(ctl, "ipam", "show", "--show-blocks")
    assert (code, err) == (0, "")
    assert out == """\
+----------+---------------+------------+------------+--------------+-------------------+
| GROUPING |     CIDR      | IPS TOTAL  | IPS IN USE | IPS RESERVED |     IPS FREE      |
+----------+---------------+------------+------------+--------------+-------------------+
| IP Pool  | 10.0.0.0/24   |        256 |     5 (2%) |       2 (1%) |         249 (97%) |
| Block    | 10.0.0.0/26   |         64 |     5 (8%) |       0 (0%) |          59 (92%) |
| IP Pool  | 10.128.0.0/12 | 1.0486e+06 |     0 (0%) |       0 (0%) | 1.0486e+06 (100%) |
+----------+---------------+------------+------------+--------------+-------------------+
"""
    code, out, _ = await _in_thread(ctl, "ipam", "show")
    assert code == 0 and "Block" not in out and out.count("IP Pool") == 2
    assert ctl.targets[-1] == ipam_cmd.IPAMTarget(ipam_cmd.LAB_IPAM_TARGET, "lab default")


async def test_blocks_of_a_deleted_pool_show_only_as_block_rows(ctl: Ctl) -> None:
    ctl.env.pool("p", "10.0.0.0/24")
    await ctl.env.alloc.auto_assign(a4("n1", "h"))
    ctl.env.kv.data.pop("/calico/resources/v3/projectcalico.org/ippools/p")
    resp = await ctl.stub.GetUtilization(pb.GetUtilizationRequest())
    assert [(p.name, p.cidr, len(p.blocks)) for p in resp.pools] == [("", "", 1)]
    table = ipam_cmd.utilization_table(resp.pools, show_blocks=True)
    assert "IP Pool" not in table and "| Block    |" in table
    assert "Block" not in ipam_cmd.utilization_table(resp.pools, show_blocks=False)


async def test_show_ip(ctl: Ctl) -> None:
    ctl.env.pool("p", "10.0.0.0/24")
    await ctl.env.alloc.assign_ip("10.0.0.7", "k8s-pod-network.abc",
                                  {"node": "n1", "pod": "web", "namespace": "prod"}, "n1")
    code, out, _ = await _in_thread(ctl, "ipam", "show", "--ip", "10.0.0.7")
    assert (code, out) == (0, """\
IP 10.0.0.7 is in use
Handle ID: k8s-pod-network.abc
Active Owner Attributes:
  namespace: prod
  node: n1
  pod: web
""")
    code, out, _ = await _in_thread(ctl, "ipam", "show", "--ip=10.0.0.8")
    assert (code, out) == (0, "10.0.0.8 is not assigned\n")
    code, out, err = await _in_thread(ctl, "ipam", "show", "--ip", "10.0.0")
    assert code == 1 and out == "" and err == "Invalid IP address specified: 10.0.0\n"


async def test_show_borrowed(ctl: Ctl) -> None:
    env = ctl.env
    env.pool("p", "10.0.0.0/24")
    await env.alloc.assign_ip("10.0.0.1", "own", {"node": "n1"}, "n1")
    await env.alloc.assign_ip("10.0.0.9", "k8s-pod-network.x",
                              {"node": "n2", "pod": "web", "namespace": "default"}, "n2")
    await env.alloc.assign_ip("10.0.0.10", "ipip-tunnel-addr-n3",
                              {"node": "n3", "type": "ipipTunnelAddress"}, "n3")
    await env.alloc.assign_ip("10.0.0.11", "old", {}, "n1")  # no node attribute
    code, out, _ = await _in_thread(ctl, "ipam", "show", "--show-borrowed")
    assert code == 0
    assert out == """\
+-----------+----------------+-------------+-------------+-------------------+--------------+
|    IP     | BORROWING-NODE |    BLOCK    | BLOCK OWNER |       TYPE        | ALLOCATED-TO |
+-----------+----------------+-------------+-------------+-------------------+--------------+
| 10.0.0.9  | n2             | 10.0.0.0/26 | n1          | pod               | default/web  |
| 10.0.0.10 | n3             | 10.0.0.0/26 | n1          | ipipTunnelAddress |              |
+-----------+----------------+-------------+-------------+-------------------+--------------+

Note: found 1 IP allocations without an explicit node association. Unable to determine if they are borrowed.
"""  # noqa: E501


async def test_show_configuration_and_configure(ctl: Ctl) -> None:
    code, out, _ = await _in_thread(ctl, "ipam", "show", "--show-configuration")
    assert (code, out) == (0, """\
+--------------------+-------+
|      PROPERTY      | VALUE |
+--------------------+-------+
| StrictAffinity     | false |
| AutoAllocateBlocks | true  |
| MaxBlocksPerHost   | 0     |
+--------------------+-------+
""")
    code, out, err = await _in_thread(ctl, "ipam", "configure", "--max-blocks-per-host=4")
    assert code == 1 and out == "" and len(err.splitlines()) == 1
    assert "MaxBlocksPerHost (4) requires StrictAffinity to be enabled" in err
    code, out, _ = await _in_thread(ctl, "ipam", "configure", "--strictaffinity=true",
                                    "--max-blocks-per-host", "4")
    assert (code, out) == (0, "Successfully set StrictAffinity to: true\n"
                              "Successfully set MaxBlocksPerHost to: 4\n")
    code, out, _ = await _in_thread(ctl, "ipam", "configure", "--max-blocks-per-host=6")
    assert (code, out) == (0, "Successfully set MaxBlocksPerHost to: 6\n")
    cfg, _ = await ctl.env.alloc.get_config()
    assert (cfg.strict_affinity, cfg.auto_allocate_blocks, cfg.max_blocks_per_host) == (
        True, True, 6)  # one flag changes one field


@pytest.mark.parametrize(("argv", "msg"), [
    (["--strictaffinity=yes"], "invalid value. Use true or false to set strictaffinity"),
    (["--max-blocks-per-host=lots"], "invalid value for maxblockhost. Use a valid number"),
    (["--max-blocks-per-host=1_0"], "invalid value for maxblockhost. Use a valid number"),
    ([], "at least one configuration option must be specified"),
])
def test_configure_bad_values_fail_before_connecting(
    ctl: Ctl, argv: list[str], msg: str
) -> None:
    code, out, err = ctl("ipam", "configure", *argv)
    assert (code, out, err) == (1, "", msg + "\n")
    assert ctl.targets == []


# -- check and release ------------------------------------------------------------------------


def wep(name: str, node: str, ip: str) -> dict[str, Any]:
    return {"apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"node": node, "ipNetworks": [f"{ip}/32"]}}


def cluster_info(env: Env, *, locked: bool) -> None:
    env.rs.put_resource({"kind": "ClusterInformation", "metadata": {"name": "default"},
                         "spec": {"clusterGUID": "g", "datastoreReady": not locked}})


async def test_check_report_and_release_from_it(ctl: Ctl, tmp_path: Path) -> None:
    env = ctl.env
    env.pool("p", "10.0.0.0/24")
    cluster_info(env, locked=False)
    used = (await env.alloc.auto_assign(a4("n1", "net.used"))).ipv4[0].split("/")[0]
    got = await env.alloc.auto_assign(a4("n1", "net.leak", n=2))
    leaks = [ip.split("/")[0] for ip in got.ipv4]
    env.rs.put_resource(wep("w1", "n1", used))
    env.rs.put_resource(wep("w2", "n1", "10.0.0.200"))  # in use, never allocated
    env.kv.put_json("/calico/ipam/v2/handle/orphan", {"block": {}, "deleted": False})
    report_path = tmp_path / "report.json"

    code, out, err = await _in_thread(ctl, "ipam", "check", "-o", str(report_path),
                                      "--show-problem-ips")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[:4] == ["Checking IPAM for inconsistencies...", "", "Loading all IPAM blocks...",
                         "Found 1 IPAM blocks."]
    assert lines[4].startswith(" IPAM block 10.0.0.") and lines[4].endswith("affinity=host:n1:")
    for want in [
        "IPAM blocks record 3 allocations.",
        "  10.0.0.0/24",
        "Found 1 active IP pools.",
        "Found 0 node tunnel IPs.",
        "Found 2 workload IPs.",
        "Workloads and nodes are using 2 IPs.",
        "  n1 has 3 allocations",
        "Node with most allocations has 3; median is 3",
        f"  {leaks[0]} leaked; attrs Main:net.leak Extra:node=n1",
        "Found 2 IPs that are allocated in IPAM but not actually in use.",
        "  10.0.0.200 in use and in active IPAM pool but has no IPAM allocation.",
        "Found 0 in-use IPs that are not in active IP pools.",
        "Found 1 in-use IPs that are in active IP pools but have no corresponding IPAM "
        "allocation.",
        "Found 1 handles with no matching IPs (and 2 handles with matches).",
        "Found 0 handles mentioned in blocks with no matching handle resource.",
    ]:
        assert want in lines, want
    assert lines[-1] == "Check complete; found 4 problems."
    report = json.loads(report_path.read_text())
    assert sorted(ip for ip, a in report["allocations"].items() if not a[0]["inUse"]) == sorted(
        leaks)

    code, out, err = await _in_thread(ctl, "ipam", "release", "--from-report", str(report_path))
    assert code == 1 and out == "" and len(err.splitlines()) == 1 and "--force" in err
    code, out, err = await _in_thread(ctl, "ipam", "release", "--from-report",
                                      str(report_path), "--force")
    assert (code, err) == (0, "")
    assert out == """\
WARNING: Data store is not locked. Ignoring due to --force option
Releasing 2 old IPs...
Released 2 IPs successfully
Deleting 1 handles...
Released 1 handles; 0 skipped; 0 errors.
You may now unlock the data store.
"""
    assert set(allocated(env)) == {used}
    code, out, _ = await _in_thread(ctl, "ipam", "release", "--from-report",
                                    str(report_path), "--force")
    assert "2 addresses marked as leaked in the report had already been cleaned up." in out
    assert "Released 0 handles; 1 skipped; 0 errors." in out


async def test_release_one_ip(ctl: Ctl) -> None:
    ctl.env.pool("p", "10.0.0.0/24")
    (ip,) = (await ctl.env.alloc.auto_assign(a4("n1", "h"))).ipv4
    ip = ip.split("/")[0]
    code, out, _ = await _in_thread(ctl, "ipam", "release", "--ip", ip)
    assert (code, out) == (0, f"Successfully released IP address {ip}\n")
    code, out, err = await _in_thread(ctl, "ipam", "release", f"--ip={ip}")
    assert (code, out, err) == (1, "", f"IP address {ip} is not assigned\n")
    assert ctl.env.handle("h") is None
    code, _, err = await _in_thread(ctl, "ipam", "release")
    assert code == 1 and err == "one of --ip or --from-report is required\n"
    code, _, err = await _in_thread(ctl, "ipam", "release", "--ip", ip, "--from-report", "x")
    assert code == 1 and err == "give either --ip or --from-report, not both\n"
    code, _, err = await _in_thread(ctl, "ipam", "release", "--from-report", "/nonexistent.json")
    assert code == 1 and err.startswith("cannot read report /nonexistent.json")


# -- finding the service ------------------------------------------------------------------------


def test_target_from_flag_env_and_default(ctl: Ctl, monkeypatch: pytest.MonkeyPatch) -> None:
    ctl("ipam", "show", "--ipam", "/tmp/x.sock")
    monkeypatch.setenv("CALICO_IPAM", "127.0.0.1:5000")
    ctl("ipam", "show")
    ctl("ipam", "show", "--ipam=unix:///a.sock")
    assert ctl.targets == [
        ipam_cmd.IPAMTarget("unix:///tmp/x.sock", "--ipam"),
        ipam_cmd.IPAMTarget("127.0.0.1:5000", "CALICO_IPAM"),
        ipam_cmd.IPAMTarget("unix:///a.sock", "--ipam"),
    ]


def test_unreachable_service_is_one_line_with_the_way_out(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    sock = tmp_path / "ipam.sock"
    code = run(["ipam", "show", "--ipam", f"unix://{sock}"], out, err)
    assert code == 1 and out.getvalue() == ""
    assert err.getvalue() == (
        f"Failed to reach the IPAM service at unix://{sock} (from --ipam): socket {sock} does "
        f"not exist; {ipam_cmd.IPAM_HINT}\n"
    )


def test_ipam_argument_shapes() -> None:
    args = parse_args(["ipam", "check", "-o", "r.json", "--show-problem-ips"])
    assert (args.ipam_command, args.output, args.show_problem_ips) == ("check", "r.json", True)
    args = parse_args(["ipam", "release", "--from-report", "a", "--from-report=b", "--force"])
    assert (args.from_report, args.force, args.ip) == (["a", "b"], True, None)
    args = parse_args(["ipam", "configure", "--strictaffinity=false", "--ipam", "h:1"])
    assert (args.strictaffinity, args.max_blocks_per_host, args.ipam) == ("false", None, "h:1")
    args = parse_args(["--datastore", "unix:///d.sock", "ipam", "show", "--show-configuration"])
    assert args.show_configuration and args.datastore == "unix:///d.sock"


async def _in_thread(ctl: Ctl, *argv: str) -> tuple[int, str, str]:
    """``run`` owns its event loop (asyncio.run), so from an async test it runs in a thread;
    the test's loop waits meanwhile, so the allocator is never used from two loops at once."""
    return await asyncio.to_thread(ctl, *argv)
