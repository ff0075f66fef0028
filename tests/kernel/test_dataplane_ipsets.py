"""The IP-set owner against real ipset, inside a namespace."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from libcalico.netns import run
from services.dataplane.commands import ExecRunner, KernelError
from services.dataplane.netns_loop import NetnsLoop
from services.dataplane.owners.ipsets import IPSetOwner, parse_save

pytestmark = pytest.mark.kernel


@pytest.fixture
def loop(netns: str) -> Iterator[NetnsLoop]:
    with NetnsLoop(netns) as nl:
        yield nl


def _kernel(netns: str) -> dict[str, set[str]]:
    return {n: s.members for n, s in parse_save(run(["ipset", "save"], netns=netns).stdout).items()}


def test_create_swap_and_deltas(netns: str, loop: NetnsLoop) -> None:
    owner = IPSetOwner(ExecRunner())
    first = {f"10.1.0.{i}/32" for i in range(100)}
    owner.replace("cali40s:a", "hash:net", [*first, "10.2.0.0/16"])
    owner.replace("cali40n:p", "hash:ip,port", ["10.1.0.1,tcp:80", "10.1.0.2,UDP:53"])
    assert loop.run(owner.apply_updates())
    assert "swap" not in owner.stats.last_restore  # new sets are filled in place
    kernel = _kernel(netns)
    assert len(kernel["cali40s:a"]) == 101 and "10.2.0.0/16" in kernel["cali40s:a"]
    assert kernel["cali40n:p"] == {"10.1.0.1,tcp:80", "10.1.0.2,udp:53"}

    # A full rewrite with mostly new members goes through a temporary set and a swap.
    owner.replace("cali40s:a", "hash:net", {f"10.3.0.{i}" for i in range(50)})
    loop.run(owner.apply_updates())
    text = owner.stats.last_restore
    assert "swap cali4t0 cali40s:a" in text and "destroy cali4t0" in text
    assert _kernel(netns)["cali40s:a"] == {f"10.3.0.{i}" for i in range(50)}
    assert "cali4t0" not in run(["ipset", "list", "-n"], netns=netns).stdout

    # A small change is written as deltas only.
    owner.add_members("cali40s:a", ["10.9.9.9/32"])
    owner.remove_members("cali40s:a", ["10.3.0.7"])
    loop.run(owner.apply_updates())
    assert owner.stats.last_restore.splitlines() == [
        "del cali40s:a 10.3.0.7 -exist", "add cali40s:a 10.9.9.9 -exist"]
    assert "10.9.9.9" in _kernel(netns)["cali40s:a"]


def test_refresh_repairs_a_hand_deleted_member(netns: str, loop: NetnsLoop) -> None:
    owner = IPSetOwner(ExecRunner())
    owner.replace("cali40s:b", "hash:net", ["10.0.0.1", "10.0.0.2", "10.0.0.3"])
    loop.run(owner.apply_updates())
    run(["ipset", "del", "cali40s:b", "10.0.0.2"], netns=netns)
    run(["ipset", "add", "cali40s:b", "10.0.0.99"], netns=netns)
    owner.mark_resync()
    loop.run(owner.apply_updates())
    assert owner.stats.sets_repaired == 1
    assert owner.stats.last_restore.splitlines() == [
        "del cali40s:b 10.0.0.99 -exist", "add cali40s:b 10.0.0.2 -exist"]
    assert _kernel(netns)["cali40s:b"] == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}


def test_deletes_wait_for_in_sync_and_skip_referenced_sets(netns: str, loop: NetnsLoop) -> None:
    run(["ipset", "create", "cali40stale", "hash:ip"], netns=netns)
    run(["ipset", "create", "cali4t3", "hash:ip"], netns=netns)  # a temp left by a crash
    run(["ipset", "create", "kube-foreign", "hash:ip"], netns=netns)
    run(["ipset", "create", "cali40in-use", "hash:ip"], netns=netns)
    run(["iptables-nft", "-A", "INPUT", "-m", "set", "--match-set", "cali40in-use", "src",
         "-j", "ACCEPT"], netns=netns)
    owner = IPSetOwner(ExecRunner())
    owner.replace("cali40s:c", "hash:net", ["10.0.0.1"])
    loop.run(owner.apply_updates())
    assert not loop.run(owner.apply_deletes(allow_deletes=False))
    names = set(run(["ipset", "list", "-n"], netns=netns).stdout.split())
    assert {"cali40stale", "cali4t3", "cali40in-use", "kube-foreign", "cali40s:c"} <= names

    with pytest.raises(KernelError, match="cali40in-use"):
        loop.run(owner.apply_deletes(allow_deletes=True))
    names = set(run(["ipset", "list", "-n"], netns=netns).stdout.split())
    assert names == {"kube-foreign", "cali40s:c", "cali40in-use"}
    assert not owner.in_sync

    # Once the rule is gone, the next sweep finishes the job.
    run(["iptables-nft", "-F", "INPUT"], netns=netns)
    assert loop.run(owner.apply_deletes(allow_deletes=True))
    assert set(run(["ipset", "list", "-n"], netns=netns).stdout.split()) == {
        "kube-foreign", "cali40s:c"}
    assert owner.in_sync


def test_compiler_restore_text_is_understood(netns: str, loop: NetnsLoop) -> None:
    owner = IPSetOwner(ExecRunner())
    owner.load_restore_text(
        "create cali40s:d hash:net family inet maxelem 1048576 -exist\n"
        "create cali4t0 hash:net family inet maxelem 1048576 -exist\n"
        "flush cali4t0\nadd cali4t0 10.0.0.1/32\nadd cali4t0 10.1.0.0/24\n"
        "swap cali4t0 cali40s:d\ndestroy cali4t0\n"
    )
    loop.run(owner.apply_updates())
    assert _kernel(netns)["cali40s:d"] == {"10.0.0.1", "10.1.0.0/24"}
    owner.load_restore_text("del cali40s:d 10.0.0.1/32 -exist\nadd cali40s:d 10.0.0.2/32 -exist\n")
    loop.run(owner.apply_updates())
    assert _kernel(netns)["cali40s:d"] == {"10.0.0.2", "10.1.0.0/24"}
    owner.load_restore_text("destroy cali40s:d\n")
    loop.run(owner.apply_updates())
    loop.run(owner.apply_deletes())
    assert "cali40s:d" not in _kernel(netns)
