"""The driver's long-lived writers (restore processes, libnftables) in a namespace."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from libcalico.netns import run
from services.dataplane.libnft import load_library
from services.dataplane.netns_loop import NetnsLoop
from services.dataplane.sessions import SessionRunner

pytestmark = pytest.mark.kernel


@pytest.fixture
def loop(netns: str) -> Iterator[NetnsLoop]:
    with NetnsLoop(netns) as nl:
        yield nl


@pytest.fixture
def sessions(session_runner: SessionRunner) -> SessionRunner:
    return session_runner


def _batch(chain: str, rule: str = "-j ACCEPT") -> str:
    return f"*filter\n:{chain} - -\n-A {chain} {rule}\nCOMMIT\n"


def test_restore_session_commits_each_batch_in_one_process(
    netns: str, loop: NetnsLoop, sessions: SessionRunner
) -> None:
    argv = ["iptables-nft-restore", "--noflush", "--wait", "10"]
    for i in range(3):
        res = loop.run(sessions.run(argv, input=_batch(f"cali-s{i}")))
        assert res.returncode == 0, res.stderr
        # Committed by the time run() returns: visible to another process at once.
        assert f"-A cali-s{i} -j ACCEPT" in run(["iptables-nft-save"], netns=netns).stdout
    session = sessions._restore.sessions["iptables-nft-restore"]
    assert session.starts == 1
    assert sessions.stats["iptables-nft-restore"].calls == 3
    # Nothing of the marker is left behind.
    assert "security" not in run(["nft", "list", "tables"], netns=netns).stdout


def test_restore_session_failure_names_the_batch_line_and_restarts(
    netns: str, loop: NetnsLoop, sessions: SessionRunner
) -> None:
    argv = ["iptables-nft-restore", "--noflush"]
    assert loop.run(sessions.run(argv, input=_batch("cali-ok"))).returncode == 0
    bad = "*filter\n:cali-bad - -\n-A cali-bad -j NO-SUCH-CHAIN\nCOMMIT\n"
    res = loop.run(sessions.run(argv, input=bad))
    assert res.returncode != 0
    # Line 3 of this batch, not of everything the process was ever given.
    assert "line: 4" in res.stderr, res.stderr  # the COMMIT, where the kernel refused it
    assert "cali-bad" not in run(["iptables-nft-save"], netns=netns).stdout  # all or nothing
    res = loop.run(sessions.run(argv, input=_batch("cali-after")))
    assert res.returncode == 0, res.stderr
    assert sessions._restore.sessions["iptables-nft-restore"].starts == 2
    assert "-A cali-after -j ACCEPT" in run(["iptables-nft-save"], netns=netns).stdout


def test_other_tools_and_legacy_restores_still_exec(
    netns: str, loop: NetnsLoop, sessions: SessionRunner
) -> None:
    res = loop.run(sessions.run(["iptables-legacy-restore", "--noflush"],
                                input=_batch("cali-legacy")))
    assert res.returncode == 0, res.stderr
    assert "cali-legacy" in run(["iptables-legacy-save"], netns=netns).stdout
    assert not sessions._restore.sessions
    res = loop.run(sessions.run(["ipset", "list", "-n"]))
    assert res.returncode == 0


@pytest.mark.skipif(load_library() is None, reason="libnftables.so.1 is not installed")
def test_libnftables_session_writes_in_the_drivers_namespace(
    netns: str, loop: NetnsLoop, sessions: SessionRunner
) -> None:
    script = "add table ip cali-t\nadd chain ip cali-t c\nadd rule ip cali-t c accept\n"
    res = loop.run(sessions.run(["nft", "-f", "-"], input=script))
    assert res.returncode == 0, res.stderr
    assert "cali-t" in run(["nft", "list", "tables"], netns=netns).stdout
    # The library's worker thread entered the node's namespace, not the test process's.
    assert "cali-t" not in run(["nft", "list", "tables"]).stdout
    listed = loop.run(sessions.run(["nft", "list", "table", "ip", "cali-t"]))
    assert listed.returncode == 0 and "accept" in listed.stdout
    # One buffer is one transaction: a bad line leaves nothing of the script.
    res = loop.run(sessions.run(["nft", "-f", "-"],
                                input="add chain ip cali-t d\nadd rule ip cali-t d jump nowhere\n"))
    assert res.returncode != 0 and "Could not process rule" in res.stderr, res.stderr
    assert " d {" not in run(["nft", "list", "table", "ip", "cali-t"], netns=netns).stdout
    missing = loop.run(sessions.run(["nft", "list", "table", "ip", "absent"]))
    assert missing.returncode != 0 and "No such file" in missing.stderr
