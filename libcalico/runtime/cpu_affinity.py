"""Which CPUs a service's threads may run on: all, a fixed set, or one while its load fits there.

Why this exists: a ``grpc.aio`` service runs on two threads that pass every RPC completion to
each other. gRPC's poller thread reads and writes the sockets; the event loop thread runs the
handlers. An AutoAssign crosses between them about ten times. When the two threads sit on
different CPUs, each crossing wakes an idle CPU, and on a VM that costs tens of microseconds.
On the 2-vCPU machine ``bench/ipam.py`` runs on, an AutoAssign took 1.32 ms spread and 1.16 ms
on one CPU; 1.16 ms is what an RPC doing one etcd CAS and nothing else costs. Under concurrent
load the trade reverses: the two threads then want a CPU each (32 requests in flight: ~1,800
allocations/s spread, ~1,350/s on one CPU).

The ``cpu_affinity`` setting of the control-plane services chooses:

- ``adaptive`` (their default): every ``PERIOD`` seconds, read how long the process's threads
  ran and how long they sat runnable in a run queue (``/proc/self/task/*/schedstat``); their
  sum is the CPU the process wanted. While it wants less than ``GATHER_BELOW`` of one CPU and
  queues for less than ``QUEUED_BELOW`` of the time it runs, for ``SETTLE`` samples in a row,
  all threads are gathered on the CPU the event loop last ran on. They are spread back over
  every CPU the process started with as soon as it wants more than ``SPREAD_ABOVE``, or
  queues for longer than it runs ``QUEUED_SAMPLES`` samples in a row: a neighbour is then
  hogging the chosen CPU, and spreading lets the scheduler move the threads off it (the next
  gather picks the CPU they moved to).
  A sequential client needs ~0.6 CPU of the IPAM service, queued for ~0.2 of its run time;
  two requests in flight already need ~1.0. A process running less than ``BUSY_ABOVE`` of a
  CPU counts as idle whatever its wake-ups waited.
- ``all``: the scheduler decides, as for any process.
- a CPU list, ``1`` or ``0-3,6``: pinned for good. This is the shape a guaranteed pod gets from
  Kubernetes' static CPU manager.

Only a process's own server applies the setting (``Server.run(handle_signals=True)``, which
``serve`` calls). Servers started in-process share a test's process and leave it alone. The
node agents have no such setting: they fork iptables-restore and BIRD, which would inherit a
one-CPU mask, and they run beside the pods.

Metrics: ``calico_cpu_affinity_cpus`` (CPUs the threads may use now) and
``calico_cpu_affinity_changes_total{to="gathered"|"spread"}``. ``bench/ipam_affinity.py``
measures each shape; ``bench/ipam.py`` runs its etcd-direct service both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from libcalico.errors import ValidationError
from libcalico.runtime.log import get_logger

if TYPE_CHECKING:
    from prometheus_client import Gauge

__all__ = [
    "AdaptiveAffinity",
    "AffinityPolicy",
    "apply_cpu_affinity",
    "format_cpu_list",
    "parse_cpu_affinity",
    "parse_cpu_list",
]

PERIOD = 0.1
GATHER_BELOW = 0.8
SPREAD_ABOVE = 1.0
QUEUED_BELOW = 0.5
QUEUED_ABOVE = 1.0
BUSY_ABOVE = 0.05
"""Below this much CPU run, a process is idle: spreading it gains nothing, and its wake-ups
queueing behind a busy machine say nothing about where it should run."""
SETTLE = 3
QUEUED_SAMPLES = 2

_log = get_logger(__name__)


@dataclass(frozen=True)
class AffinityPolicy:
    mode: Literal["all", "adaptive", "fixed"]
    cpus: frozenset[int] = frozenset()
    """The CPUs of a ``fixed`` policy."""


def parse_cpu_list(text: str) -> frozenset[int]:
    """``"0-3,6"`` -> {0, 1, 2, 3, 6}, the kernel's cpulist format (``taskset -c``)."""
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        low, sep, high = part.partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            raise ValueError(f"{part!r} is not a CPU number or range")
        first, last = int(low), int(high) if sep else int(low)
        if last < first:
            raise ValueError(f"{part!r} is a range that runs backwards")
        cpus.update(range(first, last + 1))
    return frozenset(cpus)


def format_cpu_list(cpus: frozenset[int] | set[int]) -> str:
    """The inverse of ``parse_cpu_list``, ranges folded: {0, 1, 2, 6} -> ``"0-2,6"``."""
    runs: list[list[int]] = []
    for cpu in sorted(cpus):
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(str(first) if first == last else f"{first}-{last}" for first, last in runs)


def parse_cpu_affinity(text: str) -> AffinityPolicy:
    """The ``cpu_affinity`` setting; ``ValueError`` names it and the accepted forms."""
    value = text.strip().lower()
    if value == "all":
        return AffinityPolicy("all")
    if value == "adaptive":
        return AffinityPolicy("adaptive")
    try:
        return AffinityPolicy("fixed", parse_cpu_list(value))
    except ValueError as exc:
        raise ValueError(
            f"cpu_affinity must be 'adaptive', 'all' or a CPU list such as '1' or '0-3,6', "
            f"not {text!r} ({exc})"
        ) from None


class AdaptiveAffinity:
    """The ``adaptive`` policy's decisions, fed one sample at a time: CPU-seconds per second
    the process's threads ran and waited to run."""

    def __init__(self, *, settle: int = SETTLE) -> None:
        self.settle = settle
        self.gathered = False
        self._calm = 0
        self._queued = 0

    def observe(self, run: float, wait: float) -> Literal["gather", "spread"] | None:
        """What to do now: ``"gather"``, ``"spread"`` or nothing."""
        busy = run > BUSY_ABOVE
        if self.gathered:
            # One sample of queueing is often a burst's first 100 ms; two is a hogged CPU.
            self._queued = self._queued + 1 if busy and wait > QUEUED_ABOVE * run else 0
            if (busy and run + wait > SPREAD_ABOVE) or self._queued >= QUEUED_SAMPLES:
                self.gathered = False
                self._calm = self._queued = 0
                return "spread"
            return None
        calm = not busy or (run + wait < GATHER_BELOW and wait <= QUEUED_BELOW * run)
        self._calm = self._calm + 1 if calm else 0
        if self._calm >= self.settle:
            self.gathered = True
            return "gather"
        return None


def _thread_ids() -> list[int]:
    return [int(tid) for tid in os.listdir("/proc/self/task")]


def _set_threads(cpus: frozenset[int]) -> None:
    """Every thread of this process onto ``cpus``; threads started later inherit it."""
    for tid in _thread_ids():
        with contextlib.suppress(ProcessLookupError):  # the thread has just exited
            os.sched_setaffinity(tid, cpus)


def _run_and_wait() -> tuple[float, float]:
    """Seconds this process's live threads have run, and waited to run, in all."""
    run = wait = 0
    for tid in _thread_ids():
        try:
            with open(f"/proc/self/task/{tid}/schedstat", "rb") as f:
                ran, waited, _ = f.read().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        run += int(ran)
        wait += int(waited)
    return run / 1e9, wait / 1e9


def _current_cpu() -> int:
    """The CPU the calling thread last ran on (field 39 of its stat line)."""
    with open("/proc/thread-self/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[36])


def _cpus_gauge() -> Gauge:
    from libcalico.runtime.metrics import gauge  # config modules import this module

    return gauge("calico_cpu_affinity_cpus", "CPUs this process's threads may run on now")


async def _adapt(allowed: frozenset[int]) -> None:
    from libcalico.runtime.metrics import counter

    cpus_now = _cpus_gauge()
    changes = counter(
        "calico_cpu_affinity_changes_total",
        "Times the adaptive CPU affinity gathered or spread this process's threads",
        ["to"],
    )
    cpus_now.set(len(allowed))
    policy = AdaptiveAffinity()
    loop = asyncio.get_running_loop()
    (last_run, last_wait), last_time = _run_and_wait(), loop.time()
    try:
        while True:
            await asyncio.sleep(PERIOD)
            (ran, waited), now = _run_and_wait(), loop.time()
            elapsed = max(now - last_time, 1e-3)
            # A thread that exited takes its counts with it: never below zero.
            run = max(0.0, ran - last_run) / elapsed
            wait = max(0.0, waited - last_wait) / elapsed
            (last_run, last_wait), last_time = (ran, waited), now
            action = policy.observe(run, wait)
            if action is None:
                continue
            target = frozenset({_current_cpu()}) if action == "gather" else allowed
            try:
                _set_threads(target)
            except OSError as exc:  # the cgroup's cpuset changed under us: stop adapting
                _log.warning("cpu affinity: cannot move threads; leaving them where they are",
                             cpus=format_cpu_list(target), error=exc.strerror)
                with contextlib.suppress(OSError):
                    _set_threads(allowed)
                return
            cpus_now.set(len(target))
            changes.labels("gathered" if action == "gather" else "spread").inc()
            _log.debug("cpu affinity", action=action, cpus=format_cpu_list(target),
                       run=round(run, 2), wait=round(wait, 2))
    finally:
        with contextlib.suppress(OSError):
            _set_threads(allowed)


def apply_cpu_affinity(setting: str) -> Callable[[], Coroutine[Any, Any, None]] | None:
    """Apply ``setting`` to this process; for ``adaptive``, the sampling loop to run as a task.

    A fixed list outside the CPUs the process may use is a ``ValidationError``: the process
    exits at start-up naming the setting.
    """
    policy = parse_cpu_affinity(setting)
    allowed = frozenset(os.sched_getaffinity(0))
    if policy.mode == "fixed":
        try:
            _set_threads(policy.cpus)
        except OSError as exc:
            raise ValidationError(
                f"cpu_affinity {format_cpu_list(policy.cpus)}: {exc.strerror}; this process may "
                f"use CPUs {format_cpu_list(allowed)}",
                field="cpu_affinity",
            ) from None
        _log.info("cpu affinity", mode="fixed", cpus=format_cpu_list(policy.cpus))
        _cpus_gauge().set(len(policy.cpus))
        return None
    if policy.mode == "all" or len(allowed) < 2:
        _log.info("cpu affinity", mode=policy.mode, cpus=format_cpu_list(allowed))
        _cpus_gauge().set(len(allowed))
        return None
    if not os.path.exists("/proc/thread-self/schedstat"):
        _log.warning("cpu affinity: the kernel reports no schedstat; threads stay on every CPU",
                     cpus=format_cpu_list(allowed))
        _cpus_gauge().set(len(allowed))
        return None
    _log.info("cpu affinity", mode="adaptive", cpus=format_cpu_list(allowed),
              gather_below=GATHER_BELOW, spread_above=SPREAD_ABOVE)
    return lambda: _adapt(allowed)
