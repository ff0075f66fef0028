"""The driver's production ``Runner``: long-lived writers where a per-batch exec costs a wait.

``SessionRunner`` sends ``nft`` commands through one libnftables context (``libnft``) and
nft-backend ``iptables-restore --noflush`` batches through long-lived restore processes
(``restore_session``); everything else (``ipset``, ``conntrack``, ``*-save``, legacy restores)
execs as before. Why: see those modules. The text written and its one-transaction-per-batch
atomicity are unchanged; tests that need a recording fake still pass any ``Runner``.

Build it on the thread (and so in the network namespace) the driver runs in.
"""

from __future__ import annotations

from collections.abc import Sequence

from .commands import ExecRunner, Result, ToolStats
from .libnft import NftSessionRunner
from .restore_session import RestoreSessionRunner


class SessionRunner:
    def __init__(self, exec_runner: ExecRunner) -> None:
        self.exec_runner = exec_runner
        self._nft = NftSessionRunner.create(exec_runner)
        self._restore = RestoreSessionRunner(self._nft)

    @property
    def stats(self) -> dict[str, ToolStats]:
        return self.exec_runner.stats

    @property
    def node(self) -> str:
        return self.exec_runner.node

    async def run(self, argv: Sequence[str], input: str | None = None,
                  timeout: float = 60.0) -> Result:
        return await self._restore.run(argv, input, timeout)

    async def close(self) -> None:
        await self._restore.close()
        await self._nft.close()
