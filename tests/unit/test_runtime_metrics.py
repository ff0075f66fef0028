"""Metric helpers: one collector per name, fixed label sets, the optional HTTP endpoint."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client import REGISTRY

from libcalico.runtime import counter, gauge, histogram, start_metrics_server
from libcalico.testing import free_port


def test_same_name_returns_the_same_collector() -> None:
    a = counter("calico_test_things_total", "Things.", ("kind",))
    b = counter("calico_test_things_total", "Things.", ("kind",))
    assert a is b
    a.labels("x").inc()
    assert REGISTRY.get_sample_value("calico_test_things_total", {"kind": "x"}) == 1.0


def test_other_labels_or_type_for_a_name_is_a_bug() -> None:
    gauge("calico_test_depth", "Depth.", ("queue",))
    with pytest.raises(ValueError, match="already registered"):
        gauge("calico_test_depth", "Depth.", ("queue", "node"))
    with pytest.raises(ValueError, match="already registered"):
        counter("calico_test_depth", "Depth.", ("queue",))


def test_histogram_default_buckets_cover_sub_millisecond() -> None:
    h = histogram("calico_test_apply_seconds", "Apply time.")
    h.observe(0.0002)
    assert REGISTRY.get_sample_value("calico_test_apply_seconds_bucket", {"le": "0.00025"}) == 1.0


def test_metrics_server_off_for_none_and_zero() -> None:
    assert start_metrics_server(None) is None
    assert start_metrics_server(0) is None


def test_metrics_server_serves_the_registry() -> None:
    counter("calico_test_served_total", "Served.").inc()
    server = start_metrics_server(free_port())
    assert server is not None
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = resp.read().decode()
    finally:
        server.close()
    assert "calico_test_served_total 1.0" in body
    assert "calico_grpc_server_handled_total" in body  # declared by the runtime at import


def test_rpc_metrics_are_prometheus_counters_and_histograms() -> None:
    from libcalico.runtime.rpc_metrics import RPC_METRICS

    stats = RPC_METRICS.method("calico.test.v1.Probe", "Get")
    assert RPC_METRICS.method("calico.test.v1.Probe", "Get") is stats
    for seconds, code in ((0.00025, "OK"), (0.0003, "OK"), (20.0, "INTERNAL")):
        stats.observe(seconds, code)
    labels = {"service": "calico.test.v1.Probe", "method": "Get"}

    def sample(name: str, **extra: str) -> float | None:
        return REGISTRY.get_sample_value(name, {**labels, **extra})

    assert sample("calico_grpc_server_handled_total", code="OK") == 2.0
    assert sample("calico_grpc_server_handled_total", code="INTERNAL") == 1.0
    # Buckets are cumulative and a value on a bound falls in it ("le").
    assert sample("calico_grpc_server_handling_seconds_bucket", le="0.0001") == 0.0
    assert sample("calico_grpc_server_handling_seconds_bucket", le="0.00025") == 1.0
    assert sample("calico_grpc_server_handling_seconds_bucket", le="0.0005") == 2.0
    assert sample("calico_grpc_server_handling_seconds_bucket", le="10.0") == 2.0
    assert sample("calico_grpc_server_handling_seconds_bucket", le="+Inf") == 3.0
    assert sample("calico_grpc_server_handling_seconds_count") == 3.0
    assert sample("calico_grpc_server_handling_seconds_sum") == pytest.approx(20.00055)
