"""The driver's Prometheus metrics (fixed label sets; labels are stage and tool names only).

| metric | type | labels |
|---|---|---|
| ``calico_dataplane_apply_seconds`` | histogram | |
| ``calico_dataplane_apply_failures_total`` | counter | ``stage`` |
| ``calico_dataplane_programmed_seconds`` | histogram: batch received → kernel programmed | |
| ``calico_dataplane_in_sync`` | gauge: 1 once the first apply after InSync succeeded | |
| ``calico_dataplane_local_endpoints`` | gauge | |
| ``calico_dataplane_exec_total`` / ``_exec_seconds_total`` | counters per batch tool | ``tool`` |
| ``calico_dataplane_exec_input_lines_total`` | counter: lines fed to batch tools | ``tool`` |
| ``calico_dataplane_policy_programming_seconds`` | histogram: change → kernel write done (1) | |
| ``calico_dataplane_pod_network_ready_seconds`` | histogram: new endpoint → first "up" (1) | |
| ``calico_dataplane_resyncs_total`` | counter: stream restarts, owner read-backs (2) | ``kind`` |

(1) from ``SyncBatch.datastore_commit_unix_ns``. (2) ``kind``: stream, iptables, ipsets, routes.

Felix's nearest equivalents: ``felix_int_dataplane_apply_time_seconds``,
``felix_iptables_restore_calls``, ``felix_iptables_lines_executed``, ``felix_ipset_calls``,
``felix_resyncs_started``, ``felix_exec_time_micros``. The policy-programming clock starts when
calc_graph received the datastore's watch event (the event carries no commit time), a watch
hop after the etcd commit.
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
EXEC_LINES = counter("calico_dataplane_exec_input_lines_total", "Lines fed to batch tools.",
                     ("tool",))
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
POLICY_LATENCY = histogram(
    "calico_dataplane_policy_programming_seconds",
    "Time from calc_graph receiving a datastore change to this node's kernel write.",
    buckets=LATENCY_BUCKETS)
READY = histogram("calico_dataplane_pod_network_ready_seconds",
                  "Time from a new local endpoint's datastore change to its first up status.",
                  buckets=LATENCY_BUCKETS)
RESYNCS = counter("calico_dataplane_resyncs_total",
                  "Stream restarts (kind=stream) and owner read-backs (iptables, ipsets, routes).",
                  ("kind",))


def observe_driver(driver: Driver, runner: ExecRunner) -> None:
    seen: dict[str, tuple[int, float]] = {}
    seen_lines: dict[str, int] = {}
    seen_resyncs: dict[str, int] = {}

    def observe(report: ApplyReport) -> None:
        APPLY.observe(report.seconds)
        for stage in report.failed_stages:
            FAILURES.labels(stage=stage).inc()
        for latency in report.batch_latencies:
            PROGRAMMED.observe(latency)
        for latency in report.policy_latencies:
            POLICY_LATENCY.observe(latency)
        for latency in report.ready_latencies:
            READY.observe(latency)
        for kind, n in driver.stats.resyncs.items():
            if n > seen_resyncs.get(kind, 0):
                RESYNCS.labels(kind=kind).inc(n - seen_resyncs.get(kind, 0))
                seen_resyncs[kind] = n
        if not report.failed_stages:
            IN_SYNC.set(1)
        ENDPOINTS.set(len(driver.endpoints.endpoints))
        for tool, st in runner.stats.items():
            calls, secs = seen.get(tool, (0, 0.0))
            if st.calls > calls:
                EXECS.labels(tool=tool).inc(st.calls - calls)
                EXEC_SECONDS.labels(tool=tool).inc(max(0.0, st.seconds - secs))
                seen[tool] = (st.calls, st.seconds)
            if st.input_lines > seen_lines.get(tool, 0):
                EXEC_LINES.labels(tool=tool).inc(st.input_lines - seen_lines.get(tool, 0))
                seen_lines[tool] = st.input_lines

    driver.observers.append(observe)
