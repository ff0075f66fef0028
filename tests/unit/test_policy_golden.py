"""Golden files for the policy compiler's rendered text, both flavours, IPv4 and IPv6.

Each scenario in ``services.policy.examples.SCENARIOS`` is compiled from an empty compiler and
the chains that differ from an empty node's are written, per IP version and table, as
iptables lines and as nftables lines, followed by the IP-set text and the nft set/map lines.
``static.golden`` holds the empty node itself: static chains, kernel hooks, nft base chains.

Regenerate after an intended change with ``CALICO_UPDATE_GOLDEN=1 pytest
tests/unit/test_policy_golden.py`` and review the diff against Calico's layout before
committing it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.policy.compiler import IPTABLES, NFT, TABLES, PolicyCompiler
from services.policy.examples import SCENARIOS

GOLDEN = Path(__file__).parent / "golden" / "policy"
UPDATE = os.environ.get("CALICO_UPDATE_GOLDEN") == "1"
NFT_SET_LINES = ("add set ", "add element ", "add map ")


def _chain_sections(c: PolicyCompiler, baseline: PolicyCompiler | None) -> list[str]:
    out = []
    for flavor in (IPTABLES, NFT):
        for v in (4, 6):
            for table in TABLES:
                base = baseline.rendered(v, table, flavor) if baseline else {}
                cur = c.rendered(v, table, flavor)
                names = sorted(n for n in cur if base.get(n) != cur[n])
                if not names:
                    continue
                out.append(f"### {flavor} IPv{v} {table}")
                for n in names:
                    out.append(f"# chain {n}")
                    out.extend(cur[n])
    return out


def render_scenario(name: str) -> str:
    baseline = PolicyCompiler()
    baseline.apply([])
    c = PolicyCompiler()
    result = c.apply(SCENARIOS[name]())
    lines = [f"# scenario {name}: {SCENARIOS[name].__doc__}"]
    lines += _chain_sections(c, baseline)
    lines.append("### ipset restore")
    lines.extend(result.ipset_restore.splitlines())
    lines.append("### nft sets and maps")
    lines.extend(x for x in result.nft_script.splitlines() if x.startswith(NFT_SET_LINES))
    if result.warnings:
        lines.append("### warnings")
        lines.extend(result.warnings)
    return "\n".join(lines) + "\n"


def render_static() -> str:
    c = PolicyCompiler()
    result = c.apply([])
    lines = ["# An empty node: the static chains, the kernel hooks and nft's base chains."]
    lines += _chain_sections(c, None)
    lines.append("### kernel hooks (iptables)")
    lines += [f"IPv{h.ip_version} {h.table} {h.position}: {h.rule}" for h in c.hooks()]
    lines.append("### nft declarations")
    lines += [x for x in result.nft_script.splitlines()
              if (x.startswith(("add table", "add map", "add chain")) and "{" in x)
              or x.startswith("add table")]
    return "\n".join(lines) + "\n"


def _check(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.golden"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    assert path.exists(), f"{path} missing: run with CALICO_UPDATE_GOLDEN=1"
    expected = path.read_text()
    if text != expected:
        import difflib

        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True),
                                            str(path), "rendered", n=2))
        pytest.fail(f"{name} differs from its golden file:\n{diff[:8000]}")


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_matches_golden(name: str) -> None:
    _check(name, render_scenario(name))


def test_static_chains_match_golden() -> None:
    _check("static", render_static())


def test_rendering_is_deterministic() -> None:
    assert render_scenario("rules") == render_scenario("rules")
