"""The runtime every calico-py service shares.

- ``config``: ``load_config(Cls, env_prefix=...)``: env > file > defaults, logged with sources.
- ``log``: ``setup_logging(service, level)``, ``get_logger(name).info(event, **fields)``.
- ``telemetry``: ``setup_tracing(service, ...)``, traceparent helpers, ``shutdown_tracing()``.
- ``metrics``: Prometheus collectors with fixed labels, ``start_metrics_server(port)``.
- ``interceptors``: ``InstrumentedServer`` wraps every handler (spans, domain errors → status
  codes, RPC metrics).
- ``channel``: ``make_channel(target, service=...)`` — trace context out, domain errors back.
- ``server``: ``ServerSpec``, ``serve``, ``start_in_process``, ``run_main``.

Import names from here; the submodules hold the design notes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Exports resolve on first use: short-lived clients (calicoctl, the CNI plugins) that need one
# helper should not pay for importing the gRPC server, Prometheus and the OpenTelemetry SDK.
_EXPORTS = {
    "make_channel": "channel", "to_domain_error": "channel",
    "ConfigValue": "config", "load_config": "config", "load_config_with_sources": "config",
    "StructLogger": "log", "get_logger": "log", "setup_logging": "log",
    "counter": "metrics", "gauge": "metrics", "histogram": "metrics",
    "start_metrics_server": "metrics",
    "Server": "server", "ServerSpec": "server", "run_main": "server", "serve": "server",
    "start_in_process": "server",
    "context_from_traceparent": "telemetry", "force_flush_tracing": "telemetry",
    "get_tracer": "telemetry", "inject_traceparent": "telemetry", "setup_tracing": "telemetry",
    "shutdown_tracing": "telemetry", "start_batch_span": "telemetry",
    "start_span_from_traceparent": "telemetry",
}

if TYPE_CHECKING:
    from libcalico.runtime.channel import make_channel, to_domain_error
    from libcalico.runtime.config import ConfigValue, load_config, load_config_with_sources
    from libcalico.runtime.log import StructLogger, get_logger, setup_logging
    from libcalico.runtime.metrics import counter, gauge, histogram, start_metrics_server
    from libcalico.runtime.server import Server, ServerSpec, run_main, serve, start_in_process
    from libcalico.runtime.telemetry import (
        context_from_traceparent,
        force_flush_tracing,
        get_tracer,
        inject_traceparent,
        setup_tracing,
        shutdown_tracing,
        start_batch_span,
        start_span_from_traceparent,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'libcalico.runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"libcalico.runtime.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "ConfigValue",
    "Server",
    "ServerSpec",
    "StructLogger",
    "context_from_traceparent",
    "counter",
    "force_flush_tracing",
    "gauge",
    "get_logger",
    "get_tracer",
    "histogram",
    "inject_traceparent",
    "load_config",
    "load_config_with_sources",
    "make_channel",
    "run_main",
    "serve",
    "setup_logging",
    "setup_tracing",
    "shutdown_tracing",
    "start_batch_span",
    "start_in_process",
    "start_metrics_server",
    "start_span_from_traceparent",
    "to_domain_error",
]
