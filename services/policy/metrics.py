"""The policy service's Prometheus metrics (fixed label sets)."""

from __future__ import annotations

from libcalico.runtime import counter, histogram

COMPILE_SECONDS = histogram(
    "calico_policy_compile_seconds",
    "Time to compile one Compile request, by kind (incremental or full).",
    ["kind"],
)
CHAINS_RENDERED = counter(
    "calico_policy_chains_rendered_total",
    "iptables chains handed out (changed or full), summed over IP versions and tables.",
)
STREAMS = counter("calico_policy_streams_total", "Compile streams opened.")
