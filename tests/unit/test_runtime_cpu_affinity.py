"""The ``cpu_affinity`` setting: its forms, the adaptive policy's decisions, the configs' checks."""

from __future__ import annotations

import os
from typing import Any

import pytest
from prometheus_client import REGISTRY

from libcalico.errors import ValidationError
from libcalico.runtime import load_config
from libcalico.runtime.cpu_affinity import (
    GATHER_BELOW,
    QUEUED_SAMPLES,
    SETTLE,
    SPREAD_ABOVE,
    AdaptiveAffinity,
    AffinityPolicy,
    apply_cpu_affinity,
    format_cpu_list,
    parse_cpu_affinity,
    parse_cpu_list,
)
from services.calc_graph.config import CalcGraphConfig
from services.datastore.config import DatastoreConfig
from services.ipam.config import IPAMServiceConfig
from services.policy.main import PolicyServiceConfig


@pytest.mark.parametrize(("text", "cpus"), [
    ("1", {1}),
    ("0-3,6", {0, 1, 2, 3, 6}),
    (" 2 , 4-5 ", {2, 4, 5}),
    ("7-7", {7}),
])
def test_cpu_lists_read_like_taskset(text: str, cpus: set[int]) -> None:
    assert parse_cpu_list(text) == cpus


@pytest.mark.parametrize(("cpus", "text"), [
    ({0}, "0"), ({0, 1, 2, 6}, "0-2,6"), ({3, 5, 6, 7, 9}, "3,5-7,9"), (set(), ""),
])
def test_cpu_lists_print_folded(cpus: set[int], text: str) -> None:
    assert format_cpu_list(cpus) == text
    if cpus:
        assert parse_cpu_list(text) == cpus


@pytest.mark.parametrize("text", ["", "a", "1-", "-2", "3-1", "1,,2", "1.5"])
def test_malformed_cpu_lists_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_cpu_list(text)


def test_the_setting_has_three_forms() -> None:
    assert parse_cpu_affinity("adaptive") == AffinityPolicy("adaptive")
    assert parse_cpu_affinity(" ALL ") == AffinityPolicy("all")
    assert parse_cpu_affinity("0,2") == AffinityPolicy("fixed", frozenset({0, 2}))


def test_a_bad_setting_names_itself_and_the_forms() -> None:
    with pytest.raises(ValueError, match=r"cpu_affinity must be 'adaptive', 'all' or a CPU list"):
        parse_cpu_affinity("fast")


def test_adaptive_gathers_only_after_settled_calm() -> None:
    policy = AdaptiveAffinity()
    for _ in range(SETTLE - 1):
        assert policy.observe(0.5, 0.1) is None
    assert policy.observe(1.5, 0.2) is None  # a busy sample starts the count again
    for _ in range(SETTLE - 1):
        assert policy.observe(0.5, 0.1) is None
    assert policy.observe(0.5, 0.1) == "gather"
    assert policy.gathered
    assert policy.observe(0.5, 0.1) is None  # already gathered


def test_an_idle_process_gathers_and_stays_gathered() -> None:
    # An idle service's few wake-ups can queue long behind a busy machine (measured: 1.2 CPU-s
    # of wait per second against no run at all); spreading it would gain nothing.
    policy = AdaptiveAffinity(settle=1)
    assert policy.observe(0.001, 0.3) == "gather"
    assert [policy.observe(0.0, wait) for wait in (0.2, 1.2, 0.04, 0.5)] == [None] * 4
    assert policy.gathered


def test_adaptive_spreads_at_the_first_busy_sample() -> None:
    policy = AdaptiveAffinity(settle=1)
    assert policy.observe(0.1, 0.0) == "gather"
    assert policy.observe(SPREAD_ABOVE * 0.8, SPREAD_ABOVE * 0.2) is None  # at, not over
    assert policy.observe(0.8, 0.3) == "spread"
    assert not policy.gathered


def test_queueing_longer_than_running_spreads_a_light_process() -> None:
    # A neighbour hogs the CPU the threads were gathered on: they wait more than they run.
    policy = AdaptiveAffinity(settle=1)
    assert policy.observe(0.3, 0.05) == "gather"
    assert policy.observe(0.2, 0.1) is None
    assert policy.observe(0.2, 0.25) is None  # one sample: a burst starting, not a hog
    assert policy.observe(0.2, 0.1) is None
    assert [policy.observe(0.2, 0.25) for _ in range(QUEUED_SAMPLES)][-1] == "spread"
    # And it does not gather again while it still queues for over half its run time.
    assert [policy.observe(0.3, 0.2) for _ in range(10)] == [None] * 10
    assert policy.observe(0.3, 0.1) == "gather"


def test_between_the_thresholds_nothing_changes() -> None:
    # The gap between them is the hysteresis: a load near one CPU does not flip back and forth.
    middle = (GATHER_BELOW + SPREAD_ABOVE) / 2
    spread = AdaptiveAffinity(settle=1)
    assert [spread.observe(middle * 0.8, middle * 0.2) for _ in range(10)] == [None] * 10
    gathered = AdaptiveAffinity(settle=1)
    assert gathered.observe(0.0, 0.0) == "gather"
    assert [gathered.observe(middle * 0.8, middle * 0.2) for _ in range(10)] == [None] * 10
    assert gathered.gathered


@pytest.mark.parametrize(("cls", "prefix"), [
    (DatastoreConfig, "CALICO_DATASTORE_"),
    (IPAMServiceConfig, "CALICO_IPAM_"),
    (CalcGraphConfig, "CALICO_CALC_GRAPH_"),
    (PolicyServiceConfig, "CALICO_POLICY_"),
])
def test_control_plane_services_default_to_adaptive_and_check_the_value(
    cls: type[Any], prefix: str
) -> None:
    assert load_config(cls, env_prefix=prefix, argv=[], environ={}).cpu_affinity == "adaptive"
    pinned = load_config(cls, env_prefix=prefix, argv=[], environ={f"{prefix}CPU_AFFINITY": "1"})
    assert pinned.cpu_affinity == "1"
    with pytest.raises(ValidationError, match="cpu_affinity must be"):
        load_config(cls, env_prefix=prefix, argv=[], environ={f"{prefix}CPU_AFFINITY": "x"})


def test_all_leaves_the_process_alone_and_reports_its_cpus() -> None:
    before = os.sched_getaffinity(0)
    assert apply_cpu_affinity("all") is None
    assert os.sched_getaffinity(0) == before
    assert REGISTRY.get_sample_value("calico_cpu_affinity_cpus") == len(before)


def test_a_cpu_the_process_may_not_use_is_a_start_up_error() -> None:
    before = os.sched_getaffinity(0)
    with pytest.raises(ValidationError, match=r"cpu_affinity 4095: .*may use CPUs"):
        apply_cpu_affinity("4095")
    assert os.sched_getaffinity(0) == before
