"""The policy compiler's text loads into the real tools, in a private network namespace.

For every example scenario: ``ipset restore``, ``iptables-nft-restore --noflush`` (IPv4 and
IPv6, applied), ``iptables-legacy-restore --noflush --test``, the kernel hooks, ``nft -c -f``
then ``nft -f``. Then a sequence of incremental results is applied in order, as a driver
would, and the kernel is read back: every chain we own carries exactly the ``cali:`` IDs that
``full()`` promises, in both iptables and nftables. Skips without root (see conftest).
"""

from __future__ import annotations

import re
import shutil

import pytest

from libcalico.netns import run
from services.policy import examples as ex
from services.policy.compiler import TABLES, CompileResult, PolicyCompiler
from services.policy.examples import SCENARIOS

pytestmark = pytest.mark.kernel

TOOLS = ("ipset", "iptables-nft-restore", "ip6tables-nft-restore", "iptables-legacy-restore",
         "ip6tables-legacy-restore", "iptables-nft-save", "nft")
ID = re.compile(r'"cali:([A-Za-z0-9_-]{16})')


@pytest.fixture(autouse=True)
def _need_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing tools {missing}; run scripts/setup.sh")


def load(ns: str, r: CompileResult) -> None:
    """Apply one result the way a driver does: sets, rules per family, set deletes; nft."""
    if r.ipset_restore:
        run(["ipset", "restore"], netns=ns, input=r.ipset_restore)
    for v, tool in ((4, "iptables-nft-restore"), (6, "ip6tables-nft-restore")):
        text = r.restore_input(v)
        if text:
            run([tool, "--noflush"], netns=ns, input=text)
    if r.ipset_destroy:
        run(["ipset", "restore"], netns=ns, input=r.ipset_destroy)
    if r.nft_script:
        run(["nft", "-f", "-"], netns=ns, input=r.nft_script)


def hooks_input(c: PolicyCompiler, v: int) -> str:
    out = []
    for table in TABLES:
        lines = [h.rule for h in c.hooks() if h.ip_version == v and h.table == table]
        if lines:
            out += [f"*{table}", *lines, "COMMIT"]
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_loads_into_real_tools(netns: str, name: str) -> None:
    c = PolicyCompiler()
    r = c.apply(SCENARIOS[name]())
    run(["ipset", "restore"], netns=netns, input=r.ipset_restore)
    for v, prefix in ((4, "iptables"), (6, "ip6tables")):
        text = r.restore_input(v)
        run([f"{prefix}-nft-restore", "--noflush", "--test"], netns=netns, input=text)
        run([f"{prefix}-legacy-restore", "--noflush", "--test"], netns=netns, input=text)
        run([f"{prefix}-nft-restore", "--noflush"], netns=netns, input=text)
        run([f"{prefix}-nft-restore", "--noflush"], netns=netns, input=hooks_input(c, v))
    run(["nft", "-c", "-f", "-"], netns=netns, input=r.nft_script)
    run(["nft", "-f", "-"], netns=netns, input=r.nft_script)
    # The full() form must load on top of what is there (cold start over a stale table).
    full = c.full()
    run(["nft", "-f", "-"], netns=netns, input=full.nft_script)
    run(["ipset", "restore"], netns=netns, input=full.ipset_restore)
    run(["iptables-nft-restore", "--noflush"], netns=netns, input=full.restore_input(4))


def iptables_ids(ns: str, v: int) -> dict[tuple[str, str], list[str]]:
    """(table, chain) → cali: IDs in order, for our chains, read back with iptables-save."""
    save = "iptables-nft-save" if v == 4 else "ip6tables-nft-save"
    out: dict[tuple[str, str], list[str]] = {}
    for table in TABLES:
        text = run([save, "-t", table], netns=ns).stdout
        for line in text.splitlines():
            if line.startswith(":cali-"):
                out.setdefault((table, line[1:].split()[0]), [])
            elif line.startswith("-A cali-"):
                m = ID.search(line)
                out.setdefault((table, line.split()[1]), []).append(m.group(1) if m else "")
    return out


def expected_iptables_ids(c: PolicyCompiler, v: int) -> dict[tuple[str, str], list[str]]:
    return {
        (table, name): [m.group(1) for line in lines if (m := ID.search(line))]
        for table in TABLES for name, lines in c.rendered(v, table).items()
    }


def nft_ids(ns: str, v: int) -> dict[str, list[str]]:
    fam = "ip" if v == 4 else "ip6"
    text = run(["nft", "list", "table", fam, "calico"], netns=ns).stdout
    out: dict[str, list[str]] = {}
    chain = ""
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("chain "):
            chain = s.split()[1]
            out[chain] = []
        elif chain and (m := ID.search(s)):
            out[chain].append(m.group(1))
    return out


def expected_nft_ids(c: PolicyCompiler, v: int) -> dict[str, list[str]]:
    out = {}
    for table in TABLES:
        for name, lines in c.rendered(v, table, "nft").items():
            full = name if name.startswith(table + "-") else f"{table}-{name}"
            out[full] = [m.group(1) for line in lines if (m := ID.search(line))]
    return out


def test_incremental_results_applied_in_order_match_full(netns: str) -> None:
    c = PolicyCompiler()
    steps = [
        ex.workload() + ex.rules() + ex.host_endpoints(),
        [ex.policy(ex.ALLOW_WEB, inbound=[ex.rule("deny", protocol="udp")])],
        [ex.wep("cali00000000new", profiles=[ex.KNS]),
         ex.ipset_delta("s:frontend", added=["10.65.0.77/32"], removed=["10.65.0.10/32"])],
        [ex.wep_remove("cali12345678901", "default/web-0")],
        [ex.wep("cali0000rules01", "prod/rules", profiles=[ex.KNS]),
         ex.policy_remove(ex.RULES), ex.ipset_remove("s:web"), ex.ipset_remove("n:http")],
        [ex.pool("p", "10.65.0.0/16", masquerade=True), ex.host("n2", "192.0.2.2")],
        [ex.ipset("s:db", ["10.0.9.0/24", "10.0.9.9/32"])],
    ]
    for batch in steps:
        load(netns, c.apply(batch))
    for v in (4, 6):
        expected = expected_iptables_ids(c, v)
        assert len(expected) > 40 and sum(map(len, expected.values())) > 200
        assert iptables_ids(netns, v) == expected
        assert nft_ids(netns, v) == expected_nft_ids(c, v)
    members = run(["ipset", "list", "cali40s:frontend"], netns=netns).stdout
    assert "10.65.0.77" in members and "10.65.0.10\n" not in members
    sets = run(["ipset", "list", "-n"], netns=netns).stdout.split()
    assert "cali40s:web" not in sets and "cali40n:http" not in sets
    assert not [s for s in sets if s.startswith(("cali4t", "cali6t"))]
