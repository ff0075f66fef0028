"""An asyncio loop on a thread that lives inside a network namespace (tests, bench, lab).

``setns(2)`` is per thread, and a child process inherits the namespace of the thread that
forks it, so a driver whose loop runs on such a thread programs that namespace with its
netlink sockets, its ``/proc/sys/net`` writes and its ``iptables-restore`` children alike,
exactly as it would as a process started with ``ip netns exec``. Production runs the driver
in the node's own namespace and never needs this.

Example::

    with NetnsLoop("node-1") as loop:
        loop.run(owner.apply())
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from libcalico.cni.plumbing import in_netns

T = TypeVar("T")


class NetnsLoop:
    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.path = netns if netns.startswith("/") else f"/var/run/netns/{netns}"
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=f"netns-{netns}", daemon=True)

    def _main(self) -> None:
        try:
            with in_netns(self.path):
                asyncio.set_event_loop(self.loop)
                self._ready.set()
                self.loop.run_forever()
                # Let cancelled tasks finish inside the namespace before leaving it.
                pending = asyncio.all_tasks(self.loop)
                for t in pending:
                    t.cancel()
                if pending:
                    self.loop.run_until_complete(
                        asyncio.gather(*pending, return_exceptions=True))
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()
        finally:
            self.loop.close()

    def start(self) -> NetnsLoop:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return self.submit(coro).result(timeout)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=30)

    def __enter__(self) -> NetnsLoop:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
