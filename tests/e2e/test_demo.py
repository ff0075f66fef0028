"""README's demo command (``scripts/demo.sh``) end to end: the three matrices, cell by cell.

The demo runs on a private state dir under /tmp (its namespaces carry a prefix of their own)
and the lab is always taken down with ``--purge``. The cells are spelled out here rather than
taken from ``libcalico.lab.demo.expected`` so the test checks the policies, not the demo's
own idea of them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from libcalico.lab.demo import parse_matrices
from libcalico.netns import have_root

BIN = Path(sys.executable).parent
DEMO = Path(__file__).resolve().parents[2] / "scripts" / "demo.sh"
pytestmark = pytest.mark.slow

PODS = ("shop/web", "shop/api", "shop/db", "ops/admin")
# Rows: from; columns: to, in PODS order; "-" is the pod itself.
OPEN = """
- ok ok ok
ok - ok ok
ok ok - ok
ok ok ok -
"""
DENY = """
- x x ok
x - x ok
x x - ok
x x x -
"""
ALLOW = """
- ok x ok
x - x ok
x x - ok
x x x -
"""


def cells(text: str) -> dict[tuple[str, str], bool]:
    rows = [line.split() for line in text.strip().splitlines()]
    return {(src, dst): cell == "ok"
            for src, row in zip(PODS, rows, strict=True)
            for dst, cell in zip(PODS, row, strict=True) if cell != "-"}


def test_demo_prints_the_three_matrices() -> None:
    if not have_root():
        pytest.skip("the lab's nodes need root to create network namespaces")
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed; run scripts/setup.sh")
    root = Path(tempfile.mkdtemp(prefix="lab-demo-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALICO_")}

    def lab(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "calico-lab"), *args, "--state-dir", str(root)],
                              capture_output=True, text=True, timeout=240, env=env,
                              stdin=subprocess.DEVNULL, check=False)

    try:
        # Exactly what a newcomer runs: set-up (idempotent, quick once installed), then the demo.
        proc = subprocess.run(["bash", str(DEMO), "--state-dir", str(root)],
                              capture_output=True, text=True, timeout=600, env=env,
                              stdin=subprocess.DEVNULL, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out = proc.stdout
        assert parse_matrices(out) == [cells(OPEN), cells(DENY), cells(ALLOW)], out
        assert f"calicoctl apply -f {root}/default-deny.yaml" in out
        assert "selector: all()" in out  # the YAML is printed
        assert (root / "allow-web-to-api.yaml").exists()
        assert "calico-lab trace --last" in out and "calico-lab down" in out
        # The lab keeps running, with the demo's pods.
        listing = lab("pod", "list").stdout
        assert all(p.split("/")[1] in listing for p in PODS)
        # A second run reuses the lab (same mode) and prints the same matrices.
        again = lab("demo")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "reusing the lab" in again.stdout
        assert parse_matrices(again.stdout) == [cells(OPEN), cells(DENY), cells(ALLOW)]
    finally:
        lab("down", "--purge")
        shutil.rmtree(root, ignore_errors=True)
