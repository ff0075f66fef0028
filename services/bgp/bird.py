"""Owns one BIRD process: write its config, check it, reload only on change, restart if it died.

As Calico's confd does: the candidate text is checked with ``bird -p`` before it replaces the
running file, so a bad render never takes down working sessions; an unchanged text causes no
reconfigure (and so no session flap); a dead BIRD is started again with the last good config.
BIRD runs as a child of the driver, in the driver's network namespace (the node's).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

from libcalico.bird_socket import BirdSocketError, bird_command


class BirdConfigError(RuntimeError):
    pass


class BirdProcess:
    def __init__(self, workdir: Path, bird: str = "bird", wrapper: Sequence[str] = ()) -> None:
        """``wrapper`` prefixes the BIRD command, e.g. ``ip netns exec <node>`` in tests."""
        self.workdir = workdir
        self.bird = bird
        self.wrapper = list(wrapper)
        self.config_path = workdir / "bird.cfg"
        self.socket_path = workdir / "bird.ctl"
        self.log_path = workdir / "bird.log"
        self._proc: asyncio.subprocess.Process | None = None
        self._applied: str | None = None
        self.reloads = 0
        self.restarts = 0

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def apply(self, text: str) -> bool:
        """Make BIRD run ``text``; returns whether anything had to change."""
        if text == self._applied and self.running:
            return False
        self.workdir.mkdir(parents=True, exist_ok=True)
        candidate = self.config_path.with_suffix(".cfg.new")
        candidate.write_text(text)
        check = await asyncio.create_subprocess_exec(
            self.bird, "-p", "-c", str(candidate),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await check.communicate()
        if check.returncode != 0:
            raise BirdConfigError(f"BIRD rejected the rendered config: {out.decode().strip()}")
        os.replace(candidate, self.config_path)
        if self.running:
            try:
                reply = await bird_command(str(self.socket_path), "configure")
            except BirdSocketError:
                await self.stop()
                await self._start()
            else:
                if any(line.startswith("8") or "error" in line.lower() for line in reply):
                    raise BirdConfigError(f"birdc configure failed: {reply}")
                self.reloads += 1
        else:
            await self._start()
        self._applied = text
        return True

    async def ensure_running(self) -> bool:
        """Restart a BIRD that died; True when it had to."""
        if self._applied is None or self.running:
            return False
        self.restarts += 1
        await self._start()
        return True

    async def _start(self) -> None:
        self.socket_path.unlink(missing_ok=True)
        argv = [*self.wrapper, self.bird, "-f", "-c", str(self.config_path),
                "-s", str(self.socket_path)]
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *argv, stdout=fd, stderr=fd, start_new_session=True
            )
        finally:
            os.close(fd)
        for _ in range(100):
            if self.socket_path.exists() or not self.running:
                break
            await asyncio.sleep(0.02)
        if not self.running:
            raise BirdConfigError(f"BIRD exited at start; see {self.log_path}")

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()
