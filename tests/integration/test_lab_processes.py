"""The lab's process table (``libcalico.cli.lab.processes``): detached start, pid files that
survive only as long as the process they name, bounded SIGTERM-then-SIGKILL stops."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from libcalico.cli.lab import processes
from libcalico.cli.lab.processes import ProcessSpec, ProcessTable, proc_start_time

SLEEPER = [sys.executable, "-c", "import time; print('hello', flush=True); time.sleep(60)"]
# Ignores SIGTERM: only SIGKILL stops it.
STUBBORN = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(60)",
]


def _wait_log(table: ProcessTable, name: str, text: str) -> None:
    deadline = time.monotonic() + 10
    # Whole lines: the "starting: <argv>" header line contains the marker text too.
    while text not in table.log_tail(name).splitlines():
        assert time.monotonic() < deadline, table.log_tail(name)
        time.sleep(0.02)


def test_start_records_pid_and_logs_and_stop_removes_it(tmp_path: Path) -> None:
    table = ProcessTable(tmp_path)
    pid = table.start(ProcessSpec("sleeper", SLEEPER, dict(os.environ)))
    try:
        assert table.pid("sleeper") == pid
        assert table.names() == ["sleeper"]
        _wait_log(table, "sleeper", "hello")
        assert "starting:" in table.log_path("sleeper").read_text()
        # A new session: a Ctrl-C to whoever ran `up` does not reach it.
        assert os.getsid(pid) == pid
    finally:
        assert table.stop("sleeper") == "stopped"
    assert proc_start_time(pid) is None
    assert table.pid("sleeper") is None
    assert not table.pid_path("sleeper").exists()
    assert table.stop("sleeper") == "not running"


def test_sigkill_after_bounded_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = ProcessTable(tmp_path)
    monkeypatch.setattr(processes, "TERM_TIMEOUT_S", 0.5)
    pid = table.start(ProcessSpec("stubborn", STUBBORN, dict(os.environ)))
    try:
        _wait_log(table, "stubborn", "ready")
        assert table.stop("stubborn") == "killed"
        assert proc_start_time(pid) is None
    finally:
        table.stop("stubborn")


def test_pid_file_naming_another_process_is_not_ours(tmp_path: Path) -> None:
    table = ProcessTable(tmp_path)
    table.pid_dir.mkdir(parents=True)
    # Our own pid with a wrong start time: what a reused pid after a crash looks like.
    table.pid_path("ghost").write_text(f"{os.getpid()} 1\n")
    assert table.pid("ghost") is None
    assert table.recorded_pid("ghost") == os.getpid()
    assert table.stop("ghost") == "not running"  # never signalled
    assert not table.pid_path("ghost").exists()
    table.pid_path("junk").write_text("not a pid\n")
    assert table.pid("junk") is None
