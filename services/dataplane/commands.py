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
from collections.abc import Sequence
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
        if not trace.get_current_span().is_recording():
            return await self._run(argv, input, timeout)
        tool = os.path.basename(argv[0])
        attrs: dict[str, str | int] = {"calico.tool": tool, "calico.node": self.node,
                                       "calico.lines": input.count("\n") if input else 0,
                                       "calico.bytes": len(input.encode()) if input else 0}
        if input and tool.startswith(("iptables", "ip6tables")):
            attrs["calico.chains"] = sum(1 for line in input.splitlines()
                                         if line.startswith(":"))
        with get_tracer().start_as_current_span(f"exec {tool}", attributes=attrs) as span:
            res = await self._run(argv, input, timeout)
            if res.returncode != 0:
                span.set_status(trace.StatusCode.ERROR, res.stderr.strip()[:200])
            return res

    async def _run(self, argv: Sequence[str], input: str | None, timeout: float) -> Result:
        start = time.perf_counter()
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
        finally:
            st = self.stats.setdefault(os.path.basename(argv[0]), ToolStats())
            st.calls += 1
            st.seconds += time.perf_counter() - start
            if input:
                st.input_lines += input.count("\n")
        return Result(proc.returncode or 0, out.decode(errors="replace"),
                      err.decode(errors="replace"))


# Tools parse numbers and messages; a stable locale keeps their output parseable.
TOOL_ENV = {**os.environ, "LC_ALL": "C"}


async def check(runner: Runner, argv: Sequence[str], input: str | None = None,
                timeout: float = 60.0) -> str:
    """Run and return stdout; raise ``KernelError`` with stderr on a non-zero exit."""
    res = await runner.run(argv, input=input, timeout=timeout)
    if res.returncode != 0:
        raise KernelError(f"{' '.join(argv)}: exit {res.returncode}: {res.stderr.strip()[:2000]}")
    return res.stdout
