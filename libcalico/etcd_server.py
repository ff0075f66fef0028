"""A real etcd process on loopback, for tests, benches and the lab.

``EtcdServer`` owns one ``etcd`` child process: it picks free client and peer ports (unless
given), keeps its data in ``data_dir``, waits until ``/health`` answers, and always kills the
process it started (``stop()``, the context manager, or ``kill()`` to simulate a crash). The
same object can be started again on the same ports and data dir, which is how tests make etcd
"restart" underneath a running datastore service.

Only the process this object started is ever signalled, by its pid.

Example::

    with EtcdServer(tmp_path / "etcd") as etcd:
        client = aetcd.Client(etcd.host, etcd.port)
        ...
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

from libcalico.testing.ports import free_port

DEFAULT_BINARY = "/usr/bin/etcd"


class EtcdStartError(RuntimeError):
    """etcd exited or did not become healthy in time; the message carries its log tail."""


class EtcdServer:
    """One etcd member on 127.0.0.1 with its data in ``data_dir``.

    ``client_port``/``peer_port`` of 0 pick free ports on the first start and keep them for
    restarts. Extra command-line flags go in ``extra_args``.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        client_port: int = 0,
        peer_port: int = 0,
        binary: str | None = None,
        name: str = "calico-py",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = Path(data_dir)
        self._fixed_ports = bool(client_port)
        self.client_port = client_port
        self.peer_port = peer_port
        self.binary = binary or shutil.which("etcd") or DEFAULT_BINARY
        self.name = name
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.with_name(self.data_dir.name + ".log")

    # -- addresses -----------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return self.client_port

    @property
    def endpoint(self) -> str:
        """The client URL, e.g. ``http://127.0.0.1:40123``."""
        return f"http://{self.host}:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- lifecycle -----------------------------------------------------------------------------

    def _command(self) -> list[str]:
        client = f"http://{self.host}:{self.client_port}"
        peer = f"http://{self.host}:{self.peer_port}"
        return [
            self.binary,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}",
            "--initial-cluster-state", "new",
            "--logger", "zap",
            "--log-outputs", str(self.log_path),
            "--log-level", "warn",
            *self.extra_args,
        ]  # fmt: skip

    def _spawn(self) -> None:
        if self.running:
            raise RuntimeError(f"etcd already running (pid {self.proc.pid if self.proc else 0})")
        if not self.client_port:
            self.client_port = free_port()
        if not self.peer_port:
            self.peer_port = free_port(exclude={self.client_port})
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C to the test run does not reach etcd first
        )

    def _healthy(self) -> bool:
        conn = http.client.HTTPConnection(self.host, self.client_port, timeout=1.0)
        try:
            conn.request("GET", "/health")
            body = conn.getresponse().read()
            return bool(json.loads(body).get("health") == "true")
        except (OSError, ValueError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            code = self.proc.returncode
            self.proc = None
            raise EtcdStartError(f"etcd exited with {code} on start-up: {self.log_tail()}")

    def start(self, timeout: float = 20.0) -> None:
        """Start etcd and block until it reports healthy.

        With picked ports, a port lost to another process between picking and binding makes etcd
        exit; that is retried with new ports a few times.
        """
        for attempt in range(3):
            self._spawn()
            try:
                self._wait_healthy(timeout)
                return
            except EtcdStartError:
                if self._fixed_ports or attempt == 2:
                    raise
                self.client_port = self.peer_port = 0

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if self._healthy():
                return
            time.sleep(0.02)
        self.kill()
        raise EtcdStartError(f"etcd not healthy after {timeout}s: {self.log_tail()}")

    async def start_async(self, timeout: float = 20.0) -> None:
        """``start()`` without blocking the event loop (for restarts under a running service)."""
        self._spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if await asyncio.to_thread(self._healthy):
                return
            await asyncio.sleep(0.02)
        self.kill()
        raise EtcdStartError(f"etcd not healthy after {timeout}s: {self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL, as a crash would; the data dir is kept so ``start()`` resumes from it."""
        self._signal_and_reap(signal.SIGKILL, 5.0)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if etcd has not exited within ``timeout``."""
        self._signal_and_reap(signal.SIGTERM, timeout)

    def _signal_and_reap(self, sig: signal.Signals, timeout: float) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def cleanup(self) -> None:
        """Stop and remove the data dir and log."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.log_path.unlink(missing_ok=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> EtcdServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.proc.pid}" if self.running and self.proc else "stopped"
        return f"EtcdServer({self.endpoint}, {self.data_dir}, {state})"
