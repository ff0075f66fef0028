"""Long-lived ``iptables-nft-restore --noflush`` processes, one per tool, fed batch after batch.

Why not one exec per batch: on the nft backend each exec opens an nfnetlink socket and closes
it on exit, and since Linux 6.x that close waits for an RCU grace period whenever an earlier
commit's rules still await destruction (10-30 ms measured here, for any batch that flushed a
chain). A new pod's dispatch-chain rewrite always flushes one, so that wait, not the commit,
dominated pod start-up. A restore process that stays up keeps its socket open.

``iptables-restore`` commits at each ``COMMIT`` line as it reads, whether or not more input
follows, but says nothing on success. So each batch is followed by a marker block whose only
effect is output, ``*security`` / ``-S OUTPUT`` / ``COMMIT``: listing a built-in chain of a table
we never write prints ``-P OUTPUT <policy>``, costs ~0.1 ms and creates nothing. The process
handles input in order, so that line on stdout means every line before it was committed.
``stdbuf -oL`` makes the tool flush stdout per line (it block-buffers into a pipe). A failed
line makes the tool print its line number and exit, exactly as an exec would: the session
reports that as the batch's result, with N counted from the batch's own first line, and the
next batch starts a new process.

``RestoreSessionRunner`` puts this behind the driver's ``Runner`` interface: the iptables owner
runs ``<tool> --noflush ...`` with the batch on stdin as before. Only the nft backend's restore
tools go to sessions; legacy restores (no nfnetlink socket, and the ``security`` table may be
absent) and every other tool still exec.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field

from libcalico.runtime.log import get_logger

from .commands import TOOL_ENV, Result, Runner, ToolStats, record_write

log = get_logger(__name__)

SESSION_TOOLS = ("iptables-nft-restore", "ip6tables-nft-restore")
MARKER = "*security\n-S OUTPUT\nCOMMIT\n"
_MARKER_REPLY = re.compile(r"^-P OUTPUT \S+$")
# "line N failed" (a parse error) or "Error occurred at line: N" (the commit refused)
_FAILED_LINE = re.compile(r"(line:? )(\d+)")


class RestoreSession:
    """One ``<tool> --noflush`` process; ``run`` writes a batch and waits for its commit."""

    def __init__(self, tool: str) -> None:
        self.tool = tool
        self._proc: asyncio.subprocess.Process | None = None
        self._lines = 0  # input lines the current process has been given
        self._lock = asyncio.Lock()
        self.starts = 0

    async def _start(self) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            "stdbuf", "-oL", self.tool, "--noflush",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=TOOL_ENV,
        )
        self._lines = 0
        self.starts += 1
        return proc

    async def run(self, text: str, timeout: float) -> Result:
        async with self._lock:
            if self._proc is None or self._proc.returncode is not None:
                self._proc = await self._start()
            proc = self._proc
            assert proc.stdin is not None and proc.stdout is not None
            offset = self._lines
            body = text if text.endswith("\n") else text + "\n"
            self._lines += body.count("\n") + MARKER.count("\n")
            try:
                proc.stdin.write((body + MARKER).encode())
                await proc.stdin.drain()
                return await asyncio.wait_for(self._reply(proc, offset), timeout)
            except TimeoutError:
                await self._stop(proc)
                return Result(-9, "", f"{self.tool}: no commit after {timeout}s")
            except (BrokenPipeError, ConnectionResetError):
                return await self._failed(proc, offset)

    async def _reply(self, proc: asyncio.subprocess.Process, offset: int) -> Result:
        assert proc.stdout is not None
        out: list[str] = []
        while True:
            raw = await proc.stdout.readline()
            if not raw:  # exited: a line failed (or the process died)
                return await self._failed(proc, offset, "".join(out))
            line = raw.decode(errors="replace").rstrip("\n")
            if _MARKER_REPLY.match(line):
                return Result(0, "".join(out), "")
            out.append(line + "\n")

    async def _failed(self, proc: asyncio.subprocess.Process, offset: int,
                      out: str = "") -> Result:
        assert proc.stderr is not None
        err = (await proc.stderr.read()).decode(errors="replace")
        rc = await proc.wait()
        self._proc = None
        # The tool counts lines over its whole life; the caller knows only its own batch.
        err = _FAILED_LINE.sub(lambda m: f"{m.group(1)}{int(m.group(2)) - offset}", err)
        return Result(rc or 1, out, err)

    async def _stop(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = None
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    async def close(self) -> None:
        async with self._lock:
            proc, self._proc = self._proc, None
            if proc is None or proc.returncode is not None:
                return
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                await self._stop(proc)


@dataclass
class RestoreSessionRunner:
    """A ``Runner`` sending nft-backend ``iptables-restore --noflush`` batches to sessions.

    Calls, time and lines count under the tool's name as an exec's would; a traced call is a
    ``write <tool>`` span with the exec span's attributes.
    """

    inner: Runner
    sessions: dict[str, RestoreSession] = field(default_factory=dict)
    enabled: bool = field(default_factory=lambda: shutil.which("stdbuf") is not None)
    stats: dict[str, ToolStats] = field(init=False)
    node: str = field(init=False)

    def __post_init__(self) -> None:
        # Counted with the inner runner's figures, so metrics see one set per tool.
        self.stats = getattr(self.inner, "stats", {})
        self.node = getattr(self.inner, "node", "")

    async def run(self, argv: Sequence[str], input: str | None = None,
                  timeout: float = 60.0) -> Result:
        tool = os.path.basename(argv[0])
        if (not self.enabled or tool not in SESSION_TOOLS or "--noflush" not in argv
                or input is None):
            return await self.inner.run(argv, input, timeout)
        session = self.sessions.get(tool)
        if session is None:
            session = self.sessions[tool] = RestoreSession(tool)
        return await record_write(self.stats, self.node, tool, input,
                                  lambda: session.run(input, timeout), span_name=f"write {tool}")

    async def close(self) -> None:
        for session in self.sessions.values():
            await session.close()
        self.sessions.clear()
