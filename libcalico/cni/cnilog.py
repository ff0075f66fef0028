"""The CNI plugin's log and its tracing seam, both costing nothing unless asked for.

``PluginLog``: one line per event, appended to ``log_file_path`` (Calico's default
``/var/log/calico/cni/cni.log``) in Calico's CNI format::

    2024-05-01 10:00:00.123 [INFO][4242] calico: DEL done ContainerID="ab.." Workload="ns.pod"

``logging`` is not imported (its import and handler set-up cost a per-pod process several
milliseconds). ``warning()`` also goes to stderr, which runtimes keep, so notes about fields
that cannot be honoured reach whoever reads either. A log file that cannot be opened is
reported once on stderr and logging goes on to stderr only.

``Spans``: ``span(name)`` is a context manager around each phase (``ipam``, ``datastore``,
``network``...). With ``CALICO_CNI_TIMINGS=<file>`` it records wall times (one JSON line per
call: command, phases in ms, ``main_at`` -- the wall-clock time ``main`` began, so a caller that
noted when it exec'd the plugin knows the interpreter's start-up and imports exactly -- and
``startup_ms`` from /proc in clock ticks); the bench reads those. With ``TRACEPARENT`` in the
environment the call joins the caller's trace as OpenTelemetry spans (``TraceSpans``).
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


class TraceSpans:
    """OpenTelemetry spans for one CNI call, joined to the caller's trace (``TRACEPARENT``).

    ``cni <COMMAND>`` is a child of the caller's span and each phase (``ipam_wait``, ``network``
    for the interface set-up, ``datastore_write`` for the endpoint, ``policy_wait`` for the
    dataplane...) a child of that. Spans go where every lab process writes them
    (``CALICO_TRACE_FILE``, else the lab's ``traces.jsonl``) or to OTLP when configured. The
    SDK is imported only here, so a plugin run without ``TRACEPARENT`` never pays for it.
    """

    def __init__(self, env: Mapping[str, str], timings: TimingSpans | None) -> None:
        from pathlib import Path

        from opentelemetry import trace

        from libcalico.runtime import telemetry

        self._trace = trace
        self._telemetry = telemetry
        self._timings = timings
        trace_file = env.get("CALICO_TRACE_FILE", "").strip()
        telemetry.setup_tracing(
            "cni", jsonl_path=Path(trace_file) if trace_file else None,
            state_dir=Path(env["CALICO_STATE_DIR"]) if env.get("CALICO_STATE_DIR") else None,
        )
        self._tracer = telemetry.get_tracer()
        parent = telemetry.context_from_traceparent(env["TRACEPARENT"], env.get("TRACESTATE", ""))
        command = env.get("CNI_COMMAND", "")
        self._root = self._tracer.start_span(
            f"cni {command}", context=parent,
            attributes={"calico.service": "cni", "cni.command": command,
                        "cni.container_id": env.get("CNI_CONTAINERID", ""),
                        "cni.args": env.get("CNI_ARGS", "")},
        )
        self._root_ctx = trace.set_span_in_context(self._root)

    @contextlib.contextmanager
    def span(self, name: str) -> Iterator[None]:
        with self._tracer.start_as_current_span(
            f"cni.{name}", context=self._root_ctx, attributes={"calico.service": "cni"}
        ):
            if self._timings is None:
                yield
            else:
                with self._timings.span(name):
                    yield

    def finish(self, command: str, ok: bool) -> None:
        if not ok:
            self._root.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
        self._root.end()
        # The plugin leaves with os._exit: export now, not at interpreter teardown.
        self._telemetry.shutdown_tracing()
        if self._timings is not None:
            self._timings.finish(command, ok)


def make_spans(env: Mapping[str, str]) -> Spans:
    """Timings when ``CALICO_CNI_TIMINGS`` is set, trace spans when ``TRACEPARENT`` is,
    otherwise nothing at all."""
    path = env.get(TIMINGS_ENV)
    timings = TimingSpans(path) if path else None
    if env.get("TRACEPARENT"):
        return TraceSpans(env, timings)
    return timings if timings is not None else NoSpans()
