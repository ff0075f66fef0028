"""A calico-py service's console entry point as a child process on a unix socket.

Used by tests, benches and the lab wherever a service must run in its own process (so its CPU
and its event loop are its own): spawned with its settings in the environment and its output
in a log file, ready once its gRPC health check answers SERVING, always stopped (SIGTERM, then
SIGKILL after a bound).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Self


def entry_point_command(entry_point: str, module: str) -> list[str]:
    """The entry point next to this interpreter, else on PATH, else ``python -m module``."""
    candidate = Path(sys.executable).with_name(entry_point)
    if candidate.exists():
        return [str(candidate)]
    found = shutil.which(entry_point)
    return [found] if found else [sys.executable, "-m", module]


class ServiceProcess:
    """One service process serving on ``unix://<socket_path>``; ``env`` holds its settings."""

    def __init__(
        self,
        entry_point: str,
        module: str,
        socket_path: str | os.PathLike[str],
        env: Mapping[str, str],
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.entry_point = entry_point
        self.command = entry_point_command(entry_point, module)
        self.socket_path = Path(socket_path)
        self.target = f"unix://{self.socket_path}"
        self.log_path = Path(log_path) if log_path else self.socket_path.with_suffix(".log")
        self.env = {**os.environ, "CALICO_TRACE_FILE": "off", **env}
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    async def start(self, timeout: float = 20.0) -> None:
        """Start the process and wait until its health check says SERVING."""
        self._spawn()
        try:
            await self._wait_serving(timeout)
        except BaseException:
            self.stop()
            raise

    async def _wait_serving(self, timeout: float) -> None:
        import grpc.aio
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.entry_point} exited with {self.proc.returncode}: {self.log_tail()}"
                )
            if self.socket_path.exists():
                async with grpc.aio.insecure_channel(self.target) as channel:
                    stub = health_pb2_grpc.HealthStub(channel)
                    try:
                        resp = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                        if resp.status == health_pb2.HealthCheckResponse.SERVING:
                            return
                    except grpc.aio.AioRpcError:
                        pass
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.entry_point} not serving after {timeout}s: {self.log_tail()}")

    def stop(self, timeout: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop()
