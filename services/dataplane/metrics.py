"""The driver's Prometheus metrics (fixed label sets; labels are stage and tool names only).

| metric | type | labels |
|---|---|---|
| ``calico_dataplane_apply_seconds`` | histogram | |
| ``calico_dataplane_apply_failures_total`` | counter | ``stage`` |
| ``calico_dataplane_programmed_seconds`` | histogram: batch received → kernel programmed | |
| ``calico_dataplane_in_sync`` | gauge: 1 once the first apply after InSync succeeded | |
| ``calico_dataplane_local_endpoints`` | gauge | |
| ``calico_dataplane_exec_total`` / ``_exec_seconds_total`` | counters per batch tool | ``tool`` |

Felix's nearest equivalents: ``felix_int_dataplane_apply_time_seconds``,
``felix_iptables_restore_calls``, ``felix_exec_time_micros``.
"""

from __future__ import annotations

from libcalico.runtime.metrics import counter, gauge, histogram

from .commands import ExecRunner
from .driver import ApplyReport, Driver

APPLY = histogram("calico_dataplane_apply_seconds", "Time of one dataplane apply pass.")
FAILURES = counter("calico_dataplane_apply_failures_total",
                   "Dataplane apply stages that failed and were retried.", ("stage",))
PROGRAMMED = histogram("calico_dataplane_programmed_seconds",
                       "Time from a Sync batch's arrival to its kernel programming.")
IN_SYNC = gauge("calico_dataplane_in_sync", "1 once the dataplane is in sync.")
ENDPOINTS = gauge("calico_dataplane_local_endpoints", "Local workload endpoints known.")
EXECS = counter("calico_dataplane_exec_total", "Batch tool runs.", ("tool",))
EXEC_SECONDS = counter("calico_dataplane_exec_seconds_total", "Time in batch tools.", ("tool",))


def observe_driver(driver: Driver, runner: ExecRunner) -> None:
    seen: dict[str, tuple[int, float]] = {}

    def observe(report: ApplyReport) -> None:
        APPLY.observe(report.seconds)
        for stage in report.failed_stages:
            FAILURES.labels(stage=stage).inc()
        for latency in report.batch_latencies:
            PROGRAMMED.observe(latency)
        if not report.failed_stages:
            IN_SYNC.set(1)
        ENDPOINTS.set(len(driver.endpoints.endpoints))
        for tool, st in runner.stats.items():
            calls, secs = seen.get(tool, (0, 0.0))
            if st.calls > calls:
                EXECS.labels(tool=tool).inc(st.calls - calls)
                EXEC_SECONDS.labels(tool=tool).inc(max(0.0, st.seconds - secs))
                seen[tool] = (st.calls, st.seconds)

    driver.observers.append(observe)
