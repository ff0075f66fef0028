"""Truth-table conformance: every scenario's probe matrix against the oracle, per flavor.

For each scenario step the harness programs the world through the calc graph and the real
driver, probes every ordered pair of the nine pods on TCP 80, TCP 81, UDP 80 and ICMP echo, and
compares with ``Oracle(world)``. A mismatch prints both matrices as grids (rows: from, columns:
to; ``.`` allowed, ``X`` denied, ``-`` the pod itself, not probed, ``[ ]`` around a cell that
differs). Between scenarios the world goes back to the base (no policy), so scenarios are
independent whatever ran before.

Bugs these tables found have minimal regression tests in
``test_regressions.py``.
"""

from __future__ import annotations

import time

import pytest

from libcalico.netns import run

from .conftest import IPTABLES_BACKEND, PAIRS, Cluster, Matrix
from .oracle import PROBES, Oracle, World
from .scenarios import NODES, POD_KEYS, SCENARIOS, Scenario, apply_op, base_world

pytestmark = pytest.mark.kernel

_PARAMS = [
    pytest.param(s, id=s.name,
                 marks=[pytest.mark.xfail(strict=True, reason=s.xfail)] if s.xfail else [])
    for s in SCENARIOS
]


def _short(pod: str) -> str:
    return pod.replace("/", "")


def format_grid(title: str, m: Matrix, probe: str, other: Matrix | None = None) -> list[str]:
    lines = [title, "      " + "".join(f"{_short(d):^5}" for d in POD_KEYS)]
    for s in POD_KEYS:
        cells = []
        for d in POD_KEYS:
            if s == d:
                cells.append("  -  ")
                continue
            v = "." if m[(s, d, probe)] else "X"
            differs = other is not None and other[(s, d, probe)] != m[(s, d, probe)]
            cells.append(f" [{v}] " if differs else f"  {v}  ")
        lines.append(f"{_short(s):>5} " + "".join(cells))
    return lines


def format_mismatch(expected: Matrix, actual: Matrix) -> str:
    out = []
    for probe in PROBES:
        if all(expected[(s, d, probe)] == actual[(s, d, probe)] for s, d in PAIRS):
            continue
        left = format_grid(f"{probe}: expected (oracle)", expected, probe)
        right = format_grid(f"{probe}: actual (probed)", actual, probe, expected)
        width = max(len(x) for x in left) + 4
        out += [f"{a:<{width}}{b}" for a, b in zip(left, right, strict=True)] + [""]
    wrong = sorted(k for k in expected if expected[k] != actual[k])
    out.append(f"{len(wrong)} mismatching probes: " + ", ".join(
        f"{s}->{d} {p} expected {'allow' if expected[(s, d, p)] else 'deny'}"
        for s, d, p in wrong[:20]) + (" ..." if len(wrong) > 20 else ""))
    return "\n".join(out)


def run_scenario(cluster: Cluster, scenario: Scenario) -> list[str]:
    """Run every step; returns one report per step whose matrix differs from the oracle."""
    failures: list[str] = []
    world: World = base_world()
    cluster.converge(world)  # whatever a previous scenario left is removed first
    try:
        for i, step in enumerate(scenario.steps, 1):
            for op in step.ops:
                apply_op(world, op)
            cluster.converge(world)
            expected = Oracle(world).matrix(PAIRS)
            t0 = time.perf_counter()
            actual = cluster.probe(expected)
            probe_s = time.perf_counter() - t0
            allowed = sum(expected.values())
            print(f"[{cluster.flavor}] {scenario.name} step {i}/{len(scenario.steps)}"
                  f"{' (' + step.note + ')' if step.note else ''}: {allowed}/{len(expected)} "
                  f"allowed, probed in {probe_s:.2f}s")
            if actual != expected:
                failures.append(
                    f"{scenario.name} step {i} ({step.note or scenario.doc}), "
                    f"flavor {cluster.flavor}:\n{format_mismatch(expected, actual)}")
    finally:
        cluster.converge(base_world())
    return failures


@pytest.mark.parametrize("scenario", _PARAMS)
def test_truth_table(truth_cluster: Cluster, scenario: Scenario) -> None:
    failures = run_scenario(truth_cluster, scenario)
    assert not failures, "\n\n".join(failures)


def _node_state(cluster: Cluster, node: str) -> tuple[str, str, list[str]]:
    netns = cluster.farm.topology.hosts[node].netns
    tables = run(["nft", "list", "tables"], netns=netns).stdout
    saved = run([f"iptables-{IPTABLES_BACKEND}-save", "-t", "filter"], netns=netns).stdout
    sets = run(["ipset", "list", "-n"], netns=netns).stdout.split()
    return tables, saved, sets


def test_other_flavor_swept(truth_cluster: Cluster) -> None:
    """The nftables drivers start where the iptables ones stopped: after their InSync no
    ``cali-`` chain is left; the iptables flavor has no ``calico`` nft table."""
    for node in NODES:
        tables, saved, _ = _node_state(truth_cluster, node)
        if truth_cluster.flavor == "nftables":
            assert "table ip calico" in tables
            assert "cali-" not in saved, saved
        else:
            assert "table ip calico" not in tables, tables
            assert ":cali-FORWARD" in saved


def test_other_flavor_ip_sets_swept(truth_cluster: Cluster) -> None:
    """After the switch to nftables, the iptables flavor's ``cali4*`` IP sets are gone too."""
    if truth_cluster.flavor != "nftables":
        pytest.skip("only meaningful once the nftables drivers took over")
    for node in NODES:
        _, _, sets = _node_state(truth_cluster, node)
        assert not [s for s in sets if s.startswith("cali")], sets


def test_oracle_is_not_trivial() -> None:
    """Every step allows something, and every scenario but the baseline denies something."""
    for s in SCENARIOS:
        world = base_world()
        denied = False
        for step in s.steps:
            for op in step.ops:
                apply_op(world, op)
            verdicts = Oracle(world).matrix(PAIRS).values()
            assert any(verdicts), s.name
            denied = denied or not all(verdicts)
        assert denied or s.name == "no-policy", s.name
