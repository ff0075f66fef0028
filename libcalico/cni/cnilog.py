"""The CNI plugin's log and its tracing seam, both costing nothing unless asked for.

``PluginLog``: one line per event, appended to ``log_file_path`` (Calico's default
``/var/log/calico/cni/cni.log``) in Calico's CNI format::

    2024-05-01 10:00:00.123 [INFO][4242] calico: DEL done ContainerID="ab.." Workload="ns.pod"

``logging`` is not imported (its import and handler set-up cost a per-pod process several
milliseconds). ``warning()`` also goes to stderr, which runtimes keep, so notes about fields
that cannot be honoured reach whoever reads either. A log file that cannot be opened is
reported once on stderr and logging goes on to stderr only.

``Spans``: the seam for CNI tracing. ``span(name)`` is a context manager around each phase
(``ipam``, ``datastore``, ``network``...). By default it only records wall times, and only
when ``CALICO_CNI_TIMINGS=<file>`` is set (one JSON line per call: command, phases in ms,
``main_at`` -- the wall-clock time ``main`` began, so a caller that noted when it exec'd the
plugin knows the interpreter's start-up and imports exactly -- and ``startup_ms`` from /proc
in clock ticks) -- the bench reads those. A later tracing implementation replaces
``make_spans`` with one that starts OpenTelemetry spans when ``TRACEPARENT`` (or a tracing
setting) is present; nothing else in the plugin needs to change.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Protocol

LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40, "none": 100,
          "panic": 50, "fatal": 50}
TIMINGS_ENV = "CALICO_CNI_TIMINGS"


class PluginLog:
    def __init__(self, path: str, level: str, plugin: str = "calico") -> None:
        self.path = path
        self.level = LEVELS.get(level.lower(), 20)
        self.plugin = plugin
        self.context = ""
        self._fh: object | None = None
        self._failed = False

    def set_context(self, **fields: str) -> None:
        self.context = " ".join(f'{k}="{v}"' for k, v in fields.items() if v)

    def _write(self, level: str, msg: str) -> None:
        now = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        line = (f"{stamp}.{int(now % 1 * 1000):03d} [{level}][{os.getpid()}] {self.plugin}: "
                f"{msg}{' ' + self.context if self.context else ''}\n")
        if self._failed:
            return
        try:
            if self._fh is None:
                os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
                self._fh = open(self.path, "a")  # held for the process's life
            self._fh.write(line)  # type: ignore[attr-defined]
            self._fh.flush()  # type: ignore[attr-defined]
        except OSError as exc:
            self._failed = True
            sys.stderr.write(f"calico: cannot write the log file {self.path}: {exc.strerror}\n")

    def debug(self, msg: str) -> None:
        if self.level <= 10:
            self._write("DEBUG", msg)

    def info(self, msg: str) -> None:
        if self.level <= 20:
            self._write("INFO", msg)

    def warning(self, msg: str) -> None:
        sys.stderr.write(f"calico: warning: {msg}\n")
        if self.level <= 30:
            self._write("WARNING", msg)

    def error(self, msg: str) -> None:
        if self.level <= 40:
            self._write("ERROR", msg)


class Spans(Protocol):
    def span(self, name: str) -> contextlib.AbstractContextManager[None]: ...

    def finish(self, command: str, ok: bool) -> None: ...


class NoSpans:
    """What the plugin uses when neither timings nor tracing are asked for."""

    @contextlib.contextmanager
    def span(self, name: str) -> Iterator[None]:
        yield

    def finish(self, command: str, ok: bool) -> None:
        pass


def process_uptime_ms() -> float:
    """Milliseconds since this process started (exec), from /proc: the interpreter's start-up
    plus imports, when asked at the top of ``main``."""
    try:
        with open("/proc/self/stat") as f:
            stat = f.read()
        start_ticks = int(stat[stat.rindex(")") + 2:].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    hz = os.sysconf("SC_CLK_TCK")
    return max(0.0, (uptime - start_ticks / hz) * 1000.0)


class TimingSpans:
    """Phase wall times, appended as one JSON line per call to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.main_at = time.time()  # wall clock, comparable with the caller's exec time
        self.started = time.perf_counter()
        self.startup_ms = process_uptime_ms()
        self.phases: dict[str, float] = {}

    @contextlib.contextmanager
    def span(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + (time.perf_counter() - t0) * 1000

    def finish(self, command: str, ok: bool) -> None:
        record = {
            "pid": os.getpid(), "command": command, "ok": ok, "main_at": self.main_at,
            "startup_ms": round(self.startup_ms, 2),
            "run_ms": round((time.perf_counter() - self.started) * 1000, 2),
            "phases_ms": {k: round(v, 2) for k, v in self.phases.items()},
        }
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError:
            pass


def make_spans(env: Mapping[str, str]) -> Spans:
    """The seam: timings when ``CALICO_CNI_TIMINGS`` is set, otherwise nothing at all.
    (CNI tracing -- ``TRACEPARENT`` -> OpenTelemetry spans -- plugs in here.)"""
    path = env.get(TIMINGS_ENV)
    if path:
        return TimingSpans(path)
    return NoSpans()
