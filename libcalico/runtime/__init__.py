"""The runtime every calico-py service shares.

- ``config``: ``load_config(Cls, env_prefix=...)``: env > file > defaults, logged with sources.
- ``log``: ``setup_logging(service, level)``, ``get_logger(name).info(event, **fields)``.
- ``telemetry``: ``setup_tracing(service, ...)``, traceparent helpers, ``shutdown_tracing()``.
- ``metrics``: Prometheus collectors with fixed labels, ``start_metrics_server(port)``.
- ``interceptors``: the server interceptor (spans, domain errors → status codes, RPC metrics).
- ``channel``: ``make_channel(target, service=...)`` — trace context out, domain errors back.
- ``server``: ``ServerSpec``, ``serve``, ``start_in_process``, ``run_main``.

Import names from here; the submodules hold the design notes.
"""

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
