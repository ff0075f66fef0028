"""The iptables owner against real iptables-legacy and iptables-nft, inside a namespace."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from libcalico.netns import run
from services.dataplane.commands import ExecRunner, Runner
from services.dataplane.netns_loop import NetnsLoop
from services.dataplane.owners.iptables import IptablesTable, detect_backend, parse_save

pytestmark = pytest.mark.kernel

BACKENDS = ["legacy", "nft"]


@pytest.fixture
def loop(netns: str) -> Iterator[NetnsLoop]:
    with NetnsLoop(netns) as nl:
        yield nl



def _save(netns: str, backend: str, table: str = "filter") -> str:
    return run([f"iptables-{backend}-save", "-t", table], netns=netns).stdout


def _ipt(netns: str, backend: str, args: str) -> None:
    run([f"iptables-{backend}", "-w", *args.split()], netns=netns)


def _chains(netns: str, backend: str) -> dict[str, list[str | None]]:
    return {n: c.hashes for n, c in parse_save(_save(netns, backend)).items()}


def _program(owner: IptablesTable) -> None:
    owner.set_chain("cali-a", ["-j ACCEPT", "-p tcp --dport 80 -j DROP", "-j RETURN"])
    owner.set_chain("cali-b", ["-s 10.0.0.1/32 -j cali-a", "-j RETURN", "-j DROP"])
    owner.set_chain("cali-c", ["-j RETURN"])
    owner.set_hooks("FORWARD", insert=["-j cali-b"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_writes_only_changed_chains_and_hooks_once(
    netns: str, loop: NetnsLoop, backend: str, runner: Runner
) -> None:
    # Someone else's rules, which must survive everything below.
    _ipt(netns, backend, "-N other-chain")
    _ipt(netns, backend, "-A FORWARD -s 192.0.2.1/32 -j ACCEPT")
    owner = IptablesTable("filter", runner, backend=backend)
    _program(owner)
    assert loop.run(owner.apply())
    first = owner.stats.last_restore
    assert first.count("-A cali-") == 7 and first.count("-I FORWARD") == 1

    # Nothing changed: no restore at all, even after a read-back.
    restores = owner.stats.restores
    assert not loop.run(owner.apply())
    owner.mark_resync()
    assert not loop.run(owner.apply())
    assert owner.stats.restores == restores

    # One chain changed: only its declaration and its rules are written.
    owner.set_chain("cali-b", ["-s 10.0.0.2/32 -j cali-a", "-j RETURN", "-j DROP"])
    assert loop.run(owner.apply())
    lines = owner.stats.last_restore.splitlines()
    assert lines == ["*filter", ":cali-b - -", *[x for x in lines if x.startswith("-A cali-b")],
                     "COMMIT"]
    assert len(lines) == 6

    chains = _chains(netns, backend)
    fwd = chains["FORWARD"]
    assert fwd[0] is not None and fwd[1:] == [None]  # our hook on top, theirs below
    assert "other-chain" in chains
    assert "192.0.2.1" in _save(netns, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_refresh_repairs_deleted_chain_and_hook(
    netns: str, loop: NetnsLoop, backend: str, runner: Runner
) -> None:
    owner = IptablesTable("filter", runner, backend=backend)
    _program(owner)
    loop.run(owner.apply())
    before = _chains(netns, backend)

    _ipt(netns, backend, "-F cali-c")
    _ipt(netns, backend, "-X cali-c")
    _ipt(netns, backend, "-D FORWARD 1")
    _ipt(netns, backend, "-D cali-a 2")
    assert "cali-c" not in _chains(netns, backend)

    owner.mark_resync()
    loop.run(owner.apply())
    after = _chains(netns, backend)
    assert after == before
    assert owner.stats.chains_repaired == 2 and owner.stats.hooks_repaired == 1
    # Only the broken chains were rewritten.
    text = owner.stats.last_restore
    assert ":cali-a - -" in text and ":cali-c - -" in text and ":cali-b" not in text


@pytest.mark.parametrize("backend", BACKENDS)
def test_nothing_deleted_before_in_sync_then_swept(
    netns: str, loop: NetnsLoop, backend: str, runner: Runner
) -> None:
    # Left over from a previous run: a chain, and a hook in INPUT pointing at it.
    _ipt(netns, backend, "-N cali-stale")
    _ipt(netns, backend, "-A cali-stale -j RETURN")
    _ipt(netns, backend, "-I INPUT -m comment --comment cali:AAAAAAAAAAAAAAAA -j cali-stale")
    _ipt(netns, backend, "-A INPUT -s 192.0.2.9/32 -j ACCEPT")
    _ipt(netns, backend, "-N mine-not-calico")
    owner = IptablesTable("filter", runner, backend=backend)
    _program(owner)
    loop.run(owner.apply(allow_deletes=False))
    chains = _chains(netns, backend)
    assert "cali-stale" in chains and chains["INPUT"][0] == "AAAAAAAAAAAAAAAA"
    assert not owner.in_sync

    owner.mark_resync()
    loop.run(owner.apply(allow_deletes=True))
    chains = _chains(netns, backend)
    assert "cali-stale" not in chains
    assert chains["INPUT"] == [None]  # the foreign rule stays
    assert "mine-not-calico" in chains
    assert {"cali-a", "cali-b", "cali-c"} <= set(chains)
    assert owner.in_sync


@pytest.mark.parametrize("backend", BACKENDS)
def test_removed_chain_is_deleted_and_restore_text_is_understood(
    netns: str, loop: NetnsLoop, backend: str, runner: Runner
) -> None:
    owner = IptablesTable("filter", runner, backend=backend)
    owner.load_restore_text(
        "*filter\n:cali-x - -\n:cali-y - -\n"
        '-A cali-x -m comment --comment "cali:xxxxxxxxxxxxxxx1" -j cali-y\n'
        '-A cali-y -m comment --comment "cali:yyyyyyyyyyyyyyy1" -j ACCEPT\n'
        '-I FORWARD 1 -m comment --comment "cali:fffffffffffffff1" -j cali-x\n'
        "COMMIT\n"
    )
    loop.run(owner.apply())
    assert _chains(netns, backend)["FORWARD"] == ["fffffffffffffff1"]
    # The compiler drops cali-y and rewrites cali-x without the jump.
    owner.load_restore_text(
        "*filter\n:cali-x - -\n"
        '-A cali-x -m comment --comment "cali:xxxxxxxxxxxxxxx2" -j ACCEPT\n'
        "-X cali-y\nCOMMIT\n"
    )
    loop.run(owner.apply())
    chains = _chains(netns, backend)
    assert "cali-y" not in chains and chains["cali-x"] == ["xxxxxxxxxxxxxxx2"]


def test_backend_detection_counts_rules(netns: str, loop: NetnsLoop) -> None:
    runner = ExecRunner()
    assert loop.run(detect_backend(runner, "auto")) == "legacy"  # a tie goes to legacy
    for i in range(3):
        _ipt(netns, "nft", f"-A INPUT -s 192.0.2.{i}/32 -j ACCEPT")
    assert loop.run(detect_backend(runner, "auto")) == "nft"
    for i in range(10):
        _ipt(netns, "legacy", f"-A INPUT -s 198.51.100.{i}/32 -j ACCEPT")
    assert loop.run(detect_backend(runner, "auto")) == "legacy"
    assert loop.run(detect_backend(runner, "nft")) == "nft"  # configuration wins
