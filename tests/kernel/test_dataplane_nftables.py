"""The nftables owner with the policy compiler's scripts, against real nft in a namespace."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from libcalico.netns import run
from services.dataplane.commands import Runner
from services.dataplane.netns_loop import NetnsLoop
from services.dataplane.owners.nftables import NftablesOwner, parse_list
from services.policy import examples as ex
from services.policy.compiler import PolicyCompiler

pytestmark = pytest.mark.kernel


@pytest.fixture
def loop(netns: str) -> Iterator[NetnsLoop]:
    with NetnsLoop(netns) as nl:
        yield nl



def _list(netns: str, fam: str = "ip") -> str:
    return run(["nft", "list", "table", fam, "calico"], netns=netns).stdout


def _handle(netns: str, chain: str, index: int) -> int:
    out = json.loads(run(["nft", "-j", "-a", "list", "chain", "ip", "calico", chain],
                         netns=netns).stdout)
    rules = [x["rule"] for x in out["nftables"] if "rule" in x]
    return int(rules[index]["handle"])


def test_compiler_scripts_applied_and_drift_repaired(
    netns: str, loop: NetnsLoop, runner: Runner
) -> None:
    compiler = PolicyCompiler()
    owner = NftablesOwner(runner)
    owner.load_script(compiler.apply(ex.workload()).nft_script)
    owner.mark_resync()  # cold start: read back first (nothing there yet) then write the model
    assert loop.run(owner.apply())
    before = parse_list(_list(netns))
    assert before.chains["filter-cali-tw-cali12345678901"]
    assert before.sets["cali40s-frontend"] == 2

    # Incremental: a second endpoint is a handful of lines, not the table.
    owner.load_script(compiler.apply([ex.wep("cali22222222222", ipv4=["10.65.0.3/32"],
                                             profiles=[ex.KNS])]).nft_script)
    loop.run(owner.apply())
    assert owner.stats.last_script.count("\n") < 80
    assert "cali22222222222" in _list(netns)

    # Hand edits: a rule removed from a chain, a set member removed, an unknown chain added.
    run(["nft", "delete", "rule", "ip", "calico", "filter-cali-FORWARD", "handle",
         str(_handle(netns, "filter-cali-FORWARD", 1))], netns=netns)
    run(["nft", "delete", "element", "ip", "calico", "cali40s-frontend", "{ 10.65.0.10 }"],
        netns=netns)
    run(["nft", "add", "chain", "ip", "calico", "filter-cali-stale"], netns=netns)
    owner.mark_resync()
    loop.run(owner.apply(allow_deletes=False))
    after = parse_list(_list(netns))
    assert after.chains["filter-cali-FORWARD"] == before.chains["filter-cali-FORWARD"]
    assert after.sets["cali40s-frontend"] == 2
    assert "filter-cali-stale" in after.chains  # not before in-sync
    assert owner.stats.chains_repaired == 1 and owner.stats.sets_repaired == 1

    owner.mark_resync()
    loop.run(owner.apply(allow_deletes=True))
    assert "filter-cali-stale" not in parse_list(_list(netns)).chains

    # A table deleted by hand comes back whole on the next refresh.
    run(["nft", "delete", "table", "ip", "calico"], netns=netns)
    owner.mark_resync()
    loop.run(owner.apply())
    restored = parse_list(_list(netns))
    assert restored.chains["filter-cali-FORWARD"] == before.chains["filter-cali-FORWARD"]
    assert "filter-cali-tw-cali22222222222" in restored.chains


def test_failed_incremental_script_is_repaired_from_the_model(
    netns: str, loop: NetnsLoop, runner: Runner
) -> None:
    compiler = PolicyCompiler()
    owner = NftablesOwner(runner)
    owner.load_script(compiler.apply(ex.workload()).nft_script)
    loop.run(owner.apply())
    # Someone deletes the verdict map the next script adds to: the whole script is rejected
    # (nft -f is atomic) and the owner writes its model instead.
    run(["nft", "flush", "chain", "ip", "calico", "filter-cali-to-wl-dispatch"], netns=netns)
    run(["nft", "delete", "map", "ip", "calico", "filter-cali-tw-dispatch"], netns=netns)
    owner.load_script(compiler.apply([ex.wep("cali33333333333", ipv4=["10.65.0.4/32"],
                                             profiles=[ex.KNS])]).nft_script)
    loop.run(owner.apply())
    listing = parse_list(_list(netns))
    assert listing.sets["filter-cali-tw-dispatch"] == 2
    assert listing.chains["filter-cali-to-wl-dispatch"] == _hashes(
        owner, "filter-cali-to-wl-dispatch")
    assert "filter-cali-tw-cali33333333333" in listing.chains


def _hashes(owner: NftablesOwner, chain: str) -> list[str | None]:
    from services.dataplane.owners.nftables import _hash

    return [_hash(r) for r in owner.chain_rules("ip", chain) or []]
