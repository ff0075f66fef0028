"""``cpu_affinity`` on a real service process: pinned, gathered while idle, spread under load.

The policy compiler serves here because it needs no backend; every control-plane service runs
the same ``serve``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from libcalico.etcd_server import EtcdServer
from libcalico.runtime.cpu_affinity import format_cpu_list, parse_cpu_list
from libcalico.testing.datastore import DatastoreProcess
from libcalico.testing.service_process import ServiceProcess
from services.ipam.testing import IPAMProcess

ALLOWED = frozenset(os.sched_getaffinity(0))
needs_two_cpus = pytest.mark.skipif(
    len(ALLOWED) < 2, reason="gathering and spreading need at least two CPUs to choose from"
)


def policy_service(tmp_path: Path, affinity: str) -> ServiceProcess:
    sock = tmp_path / "policy.sock"
    return ServiceProcess("calico-policy", "services.policy.main", sock, {
        "CALICO_POLICY_LISTEN": f"unix://{sock}",
        "CALICO_POLICY_CPU_AFFINITY": affinity,
        "CALICO_POLICY_LOG_LEVEL": "INFO",
    })


def thread_cpus(pid: int) -> set[frozenset[int]]:
    """The distinct CPU sets the process's threads may run on."""
    found: set[frozenset[int]] = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        for line in status.splitlines():
            if line.startswith("Cpus_allowed_list:"):
                found.add(parse_cpu_list(line.split(":", 1)[1]))
    return found


async def wait_for_cpus(
    pid: int, want: frozenset[int] | None, timeout: float
) -> set[frozenset[int]]:
    """Poll until every thread has ``want`` (``None``: any one CPU); the last sets seen."""
    deadline = time.monotonic() + timeout
    while True:
        seen = thread_cpus(pid)
        if len(seen) == 1:
            (only,) = seen
            if (want is None and len(only) == 1) or only == want:
                return seen
        if time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.05)


async def test_a_fixed_list_pins_every_thread(tmp_path: Path) -> None:
    cpu = max(ALLOWED)
    async with policy_service(tmp_path, str(cpu)) as svc:
        assert svc.proc is not None
        assert await wait_for_cpus(svc.proc.pid, frozenset({cpu}), 5) == {frozenset({cpu})}
    events = [json.loads(line) for line in svc.log_path.read_text().splitlines()]
    assert {"event": "cpu affinity", "mode": "fixed", "cpus": str(cpu)}.items() <= next(
        e for e in events if e["event"] == "cpu affinity"
    ).items()


async def test_the_datastore_and_ipam_services_apply_it_too(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    # The datastore builds its own Server (extra tasks) instead of calling serve().
    cpu = max(ALLOWED)
    datastore = DatastoreProcess([etcd.endpoint], tmp_path / "ds.sock",
                                 env={"CALICO_DATASTORE_CPU_AFFINITY": str(cpu)})
    ipam = IPAMProcess(tmp_path / "ipam.sock", etcd_endpoints=etcd.endpoint,
                       env={"CALICO_IPAM_CPU_AFFINITY": str(cpu)})
    async with datastore, ipam:
        for svc in (datastore, ipam):
            assert svc.proc is not None
            assert await wait_for_cpus(svc.proc.pid, frozenset({cpu}), 5) == {frozenset({cpu})}


@needs_two_cpus
async def test_adaptive_gathers_an_idle_service_and_spreads_a_busy_one(tmp_path: Path) -> None:
    async with policy_service(tmp_path, "adaptive") as svc:
        assert svc.proc is not None
        pid = svc.proc.pid
        seen = await wait_for_cpus(pid, None, 10)
        assert len(seen) == 1 and len(next(iter(seen))) == 1, f"idle, not gathered: {seen}"

        # 32 health checks in flight keep the service's two threads busy: over one CPU's worth.
        async with grpc.aio.insecure_channel(svc.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            spread = asyncio.Event()

            async def load() -> None:
                while not spread.is_set():
                    await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)

            workers = [asyncio.create_task(load()) for _ in range(32)]
            try:
                seen = await wait_for_cpus(pid, ALLOWED, 30)
            finally:
                spread.set()
                await asyncio.gather(*workers, return_exceptions=True)
        assert seen == {ALLOWED}, f"busy, not spread over {format_cpu_list(ALLOWED)}: {seen}"

        seen = await wait_for_cpus(pid, None, 10)
        assert len(seen) == 1 and len(next(iter(seen))) == 1, f"idle again, not gathered: {seen}"


@pytest.mark.parametrize(("value", "message"), [
    ("fastest", "cpu_affinity must be 'adaptive', 'all' or a CPU list"),
    ("4095", "cpu_affinity 4095: Invalid argument; this process may use CPUs"),
])
def test_a_bad_value_stops_the_service_at_start_up(
    tmp_path: Path, value: str, message: str
) -> None:
    env = {**os.environ, "CALICO_TRACE_FILE": "off", "CALICO_POLICY_CPU_AFFINITY": value,
           "CALICO_POLICY_LISTEN": f"unix://{tmp_path / 'policy.sock'}"}
    done = subprocess.run([sys.executable, "-m", "services.policy.main"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert message in done.stdout + done.stderr
