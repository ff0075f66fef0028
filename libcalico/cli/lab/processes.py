"""Background processes the lab starts, tracked by pid files so a later command can find them.

A lab process outlives the ``calico-lab up`` that started it (its own session, stdin from
/dev/null, stdout and stderr appended to ``<state>/logs/<name>.log``). Its pid file,
``<state>/pids/<name>.pid``, holds ``"<pid> <start-time>"``, the start time being field 22 of
``/proc/<pid>/stat`` (clock ticks since boot). A process is "ours" only while both match, so a
pid reused by an unrelated program after a crash is never signalled; stale pid files are
removed when found.

Stopping is SIGTERM, a bounded wait, then SIGKILL and a second, longer bounded wait. A zombie
(exited, not yet reaped by its parent) counts as stopped. A process that survives both keeps
its pid file, so the next ``down`` tries again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

TERM_TIMEOUT_S = 10.0
# SIGKILL takes effect only when the process leaves uninterruptible sleep; etcd blocked in
# fdatasync on a busy disk has been seen to take tens of seconds.
KILL_TIMEOUT_S = 60.0

_CHILDREN: list[subprocess.Popen[bytes]] = []


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str]


def proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    rest = stat[stat.rindex(")") + 2:].split()
    state, start = rest[0], rest[19]
    if state in ("Z", "X"):
        return None
    return int(start)


class ProcessTable:
    """Pid files, logs and signals for the processes under one state dir."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.pid_dir = state_dir / "pids"
        self.log_dir = state_dir / "logs"

    def pid_path(self, name: str) -> Path:
        return self.pid_dir / f"{name}.pid"

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def start(self, spec: ProcessSpec) -> int:
        """Start ``spec`` detached, record its pid file, return its pid."""
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path(spec.name).open("ab") as log:
            log.write(f"==== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: "
                      f"{' '.join(spec.argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                list(spec.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(spec.env),
                start_new_session=True,  # survives `up` exiting; a Ctrl-C to `up` skips it
                close_fds=True,
            )
        self.record(spec.name, proc.pid)
        # Tracked by its pid file from now on; the Popen is kept only so that it is not
        # garbage-collected (with a warning) while this process still runs.
        _CHILDREN.append(proc)
        return proc.pid

    def record(self, name: str, pid: int) -> None:
        """Write the pid file of a process started elsewhere (etcd)."""
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        start = proc_start_time(pid)
        tmp = self.pid_path(name).with_suffix(".tmp")
        tmp.write_text(f"{pid} {start if start is not None else 0}\n")
        tmp.replace(self.pid_path(name))

    def pid(self, name: str) -> int | None:
        """The pid of ``name`` if the process recorded for it is still running."""
        path = self.pid_path(name)
        try:
            fields = path.read_text().split()
            pid, start = int(fields[0]), int(fields[1])
        except (OSError, ValueError, IndexError):
            return None
        if proc_start_time(pid) != start:
            return None
        return pid

    def recorded_pid(self, name: str) -> int | None:
        """The pid in the pid file, whether or not it still runs."""
        try:
            return int(self.pid_path(name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def names(self) -> list[str]:
        if not self.pid_dir.is_dir():
            return []
        return sorted(p.stem for p in self.pid_dir.glob("*.pid"))

    def stop(self, name: str) -> str:
        """Stop ``name`` if it runs and remove its pid file. Returns what happened."""
        pid = self.pid(name)
        result = "not running"
        if pid is not None:
            result = "stopped"
            if not self._signal_and_wait(pid, signal.SIGTERM, TERM_TIMEOUT_S):
                result = "killed"
                if not self._signal_and_wait(pid, signal.SIGKILL, KILL_TIMEOUT_S):
                    result = f"still running (pid {pid})"
                    return result
        self.pid_path(name).unlink(missing_ok=True)
        return result

    def _signal_and_wait(self, pid: int, sig: signal.Signals, timeout: float) -> bool:
        start = proc_start_time(pid)
        if start is None:
            return True
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # Reap it if it is our own child (a test running `up` in-process); harmless if not.
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if proc_start_time(pid) != start:
                return True
            time.sleep(0.05)
        return False

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
