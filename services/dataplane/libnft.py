"""libnftables in process: the same ``nft`` scripts through one context held for the driver's life.

Why not an ``nft -f`` exec per write: each exec opens an nfnetlink socket and closes it on exit,
and since Linux 6.x closing one while an earlier commit's rules still await destruction waits
for an RCU grace period (10-30 ms measured here, on top of the process start). With thousands
of policy rules loaded that wait, not the commit, dominated a one-policy change. A context that
lives as long as the driver keeps its socket, so a small change costs its commit alone.

Nothing else changes: ``run`` takes exactly the text ``nft -f`` would, and one buffer is one
transaction, all or nothing, as with ``nft -f``. ``NftSessionRunner`` puts this behind the
driver's ``Runner`` interface, so the nftables owner does not know which it talks to, and falls
back to exec when the library cannot be loaded.

The library call blocks, so it runs on one worker thread (a context is not thread-safe, so one
thread, in order). That thread enters the network namespace of the thread that created the
session: a socket belongs to the namespace it was opened in, and the driver's loop may itself be
on a thread inside a node's namespace (tests, the lab).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from libcalico.cni.plumbing import setns

from .commands import Result, Runner, ToolStats, record_write

_LIB_NAMES = ("libnftables.so.1", "libnftables.so")
_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


def load_library() -> ctypes.CDLL | None:
    """libnftables with its prototypes declared, or None when it is not installed."""
    global _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        names = [n for n in (ctypes.util.find_library("nftables"), *_LIB_NAMES) if n]
        for name in names:
            try:
                lib = ctypes.CDLL(name)
            except OSError:
                continue
            vp, cp, ci = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
            lib.nft_ctx_new.argtypes, lib.nft_ctx_new.restype = [ctypes.c_uint32], vp
            lib.nft_ctx_free.argtypes, lib.nft_ctx_free.restype = [vp], None
            lib.nft_ctx_buffer_output.argtypes, lib.nft_ctx_buffer_output.restype = [vp], ci
            lib.nft_ctx_buffer_error.argtypes, lib.nft_ctx_buffer_error.restype = [vp], ci
            lib.nft_run_cmd_from_buffer.argtypes = [vp, cp]
            lib.nft_run_cmd_from_buffer.restype = ci
            lib.nft_ctx_get_output_buffer.argtypes = [vp]
            lib.nft_ctx_get_output_buffer.restype = cp
            lib.nft_ctx_get_error_buffer.argtypes = [vp]
            lib.nft_ctx_get_error_buffer.restype = cp
            _lib = lib
            return lib
        return None


class NftSession:
    """One libnftables context on its own thread, in the creating thread's network namespace."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        self._ns = f"/proc/{os.getpid()}/task/{threading.get_native_id()}/ns/net"
        self._ns_fd = os.open(self._ns, os.O_RDONLY)  # pins the namespace for the worker
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="libnft",
                                        initializer=self._enter_netns)
        self._ctx: int | None = None

    def _enter_netns(self) -> None:
        setns(self._ns_fd, self._ns)  # for the worker's whole life

    def _run_sync(self, script: str) -> Result:
        lib = self._lib
        if self._ctx is None:
            ctx = lib.nft_ctx_new(0)
            if not ctx:
                return Result(1, "", "libnftables: nft_ctx_new failed")
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
            self._ctx = ctx
        rc = lib.nft_run_cmd_from_buffer(self._ctx, script.encode())
        out = lib.nft_ctx_get_output_buffer(self._ctx) or b""
        err = lib.nft_ctx_get_error_buffer(self._ctx) or b""
        return Result(0 if rc == 0 else 1, out.decode(errors="replace"),
                      err.decode(errors="replace"))

    async def run(self, script: str) -> Result:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._run_sync, script)

    def _free(self) -> None:
        if self._ctx is not None:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None

    def close(self) -> None:
        try:
            self._pool.submit(self._free).result(timeout=10)
        finally:
            self._pool.shutdown(wait=True)
            os.close(self._ns_fd)


@dataclass
class NftSessionRunner:
    """A ``Runner`` that sends ``nft`` commands to an ``NftSession`` and execs everything else.

    ``nft -f -`` with a script and ``nft <command words>`` are what the nftables owner runs;
    both map onto one buffer. Calls, time and lines are counted under the ``nft`` tool like an
    exec, and traced as ``write libnftables`` spans with the same attributes.
    """

    inner: Runner
    session: NftSession | None = None
    stats: dict[str, ToolStats] = field(init=False)
    node: str = field(init=False)

    def __post_init__(self) -> None:
        self.stats = getattr(self.inner, "stats", {})
        self.node = getattr(self.inner, "node", "")

    @classmethod
    def create(cls, inner: Runner) -> NftSessionRunner:
        """With a session when libnftables loads; otherwise every call goes to ``inner``."""
        lib = load_library()
        return cls(inner, NftSession(lib) if lib is not None else None)

    async def run(self, argv: Sequence[str], input: str | None = None,
                  timeout: float = 60.0) -> Result:
        if self.session is None or os.path.basename(argv[0]) != "nft":
            return await self.inner.run(argv, input, timeout)
        args = list(argv[1:])
        if args == ["-f", "-"]:
            script = input or ""
        elif args and not any(a.startswith("-") for a in args):
            script = " ".join(args)
        else:  # flags the library has no buffer form for
            return await self.inner.run(argv, input, timeout)
        session = self.session
        return await record_write(self.stats, self.node, "nft", script,
                                  lambda: session.run(script), span_name="write libnftables",
                                  label="libnftables")

    async def close(self) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            await asyncio.to_thread(session.close)
