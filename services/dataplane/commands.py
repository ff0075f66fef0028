"""Running the batch tools (iptables-restore, ipset, nft, conntrack) from asyncio.

Every kernel write that is not netlink goes through one ``Runner`` so that it is one exec per
*batch*, never per object (an exec costs ~0.6 ms; see ``shared/reference/performance.md``),
and so unit tests can substitute a recording fake. ``ExecRunner`` counts calls and time per
tool in fixed-label metrics.

The child inherits the calling thread's network namespace: the driver runs in the node's
namespace (kernel tests run it on a thread that entered one with ``setns``).

Within a traced apply (a recording current span: the driver's ``dataplane.apply``), each run
is a span ``exec <tool>`` with what it wrote: ``calico.tool``, ``calico.node``,
``calico.lines`` and ``calico.bytes`` of its input, ``calico.chains`` (chain headers of an
``iptables-restore`` input). Outside one (start-up probes) nothing is traced.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from opentelemetry import trace

from libcalico.errors import CalicoError
from libcalico.runtime.telemetry import get_tracer


class KernelError(CalicoError):
    """A tool or netlink request failed; the owner that raised it resyncs and retries."""

    grpc_code = "UNAVAILABLE"


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


class Runner(Protocol):
    async def run(self, argv: Sequence[str], input: str | None = None,
                  timeout: float = 60.0) -> Result: ...


@dataclass
class ToolStats:
    calls: int = 0
    seconds: float = 0.0
    input_lines: int = 0


@dataclass
class ExecRunner:
    """Runs commands with ``asyncio.create_subprocess_exec``; never raises on a non-zero exit."""

    stats: dict[str, ToolStats] = field(default_factory=dict)
    node: str = ""  # for the spans' calico.node

    async def run(self, argv: Sequence[str], input: str | None = None,
                  timeout: float = 60.0) -> Result:
        tool = os.path.basename(argv[0])
        return await record_write(self.stats, self.node, tool, input,
                                  lambda: self._run(argv, input, timeout),
                                  span_name=f"exec {tool}")

    async def _run(self, argv: Sequence[str], input: str | None, timeout: float) -> Result:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=TOOL_ENV,
            )
        except FileNotFoundError as exc:
            return Result(127, "", f"{argv[0]}: not found ({exc})")
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(input.encode() if input is not None else None), timeout
            )
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return Result(-9, "", f"{argv[0]}: timed out after {timeout}s")
        return Result(proc.returncode or 0, out.decode(errors="replace"),
                      err.decode(errors="replace"))


async def record_write(stats: dict[str, ToolStats], node: str, tool: str, text: str | None,
                       write: Callable[[], Awaitable[Result]], *, span_name: str,
                       label: str | None = None) -> Result:
    """What every writer does around one write, whatever carries it (an exec, a long-lived
    restore process, libnftables): count it under ``tool`` in ``stats`` and, inside a traced
    apply, make it a ``span_name`` span with what it wrote (``calico.tool`` is ``label`` or
    ``tool``; ``calico.chains`` counts chain headers of an ``iptables-restore`` input)."""
    start = time.perf_counter()
    try:
        if not trace.get_current_span().is_recording():
            return await write()
        attrs: dict[str, str | int] = {
            "calico.tool": label or tool, "calico.node": node,
            "calico.lines": text.count("\n") if text else 0,
            "calico.bytes": len(text.encode()) if text else 0,
        }
        if text and tool.startswith(("iptables", "ip6tables")):
            attrs["calico.chains"] = sum(1 for line in text.splitlines() if line.startswith(":"))
        with get_tracer().start_as_current_span(span_name, attributes=attrs) as span:
            res = await write()
            if res.returncode != 0:
                span.set_status(trace.StatusCode.ERROR, res.stderr.strip()[:200])
            return res
    finally:
        st = stats.setdefault(tool, ToolStats())
        st.calls += 1
        st.seconds += time.perf_counter() - start
        if text:
            st.input_lines += text.count("\n")


# Tools parse numbers and messages; a stable locale keeps their output parseable.
TOOL_ENV = {**os.environ, "LC_ALL": "C"}


async def check(runner: Runner, argv: Sequence[str], input: str | None = None,
                timeout: float = 60.0) -> str:
    """Run and return stdout; raise ``KernelError`` with stderr on a non-zero exit."""
    res = await runner.run(argv, input=input, timeout=timeout)
    if res.returncode != 0:
        raise KernelError(f"{' '.join(argv)}: exit {res.returncode}: {res.stderr.strip()[:2000]}")
    return res.stdout
