"""WorkloadEndpoint names: Calico's dash escaping, its parser, and name-prefix lookups."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libcalico.errors import ValidationError
from libcalico.model import parse_wep_name, wep_name, wep_name_prefix
from libcalico.model.names import qualified_name_problem, wep_name_for_spec

# Identifiers as Calico allows them in a WorkloadEndpoint name: no leading or trailing dash.
ident = st.from_regex(r"\A[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?\Z")


@pytest.mark.parametrize(
    ("parts", "name"),
    [
        (("node1", "k8s", "frontend-5f9c", "eth0"), "node1-k8s-frontend--5f9c-eth0"),
        (("ip-10-0-0-1", "k8s", "web", "eth0"), "ip--10--0--0--1-k8s-web-eth0"),
        (("node1", "cni", "0123abc", "eth0"), "node1-cni-0123abc-eth0"),
        (("node1", "openstack", "vm-1", "tap-1"), "node1-openstack-vm--1-tap--1"),
    ],
)
def test_names_double_each_dash(parts: tuple[str, str, str, str], name: str) -> None:
    assert wep_name(*parts) == name
    assert parse_wep_name(name) == parts


def test_libnetwork_uses_its_own_name_as_the_workload() -> None:
    assert wep_name("node1", "libnetwork", "ignored", "ep1") == "node1-libnetwork-libnetwork-ep1"


@given(ident, ident, ident, ident)
def test_round_trip(node: str, orch: str, workload: str, endpoint: str) -> None:
    if orch == "libnetwork":
        workload = "libnetwork"
    name = wep_name(node, orch, workload, endpoint)
    assert parse_wep_name(name) == (node, orch, workload, endpoint)
    assert name.startswith(wep_name_prefix(node, orch, workload))
    assert name.startswith(wep_name_prefix(node))


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("-node", "k8s", "p", "eth0"), "node"),
        (("node", "k8s", "p-", "eth0"), "workload"),
        (("node", "", "p", "eth0"), "orchestrator"),
        (("node", "k8s", "p", ""), "endpoint"),
    ],
)
def test_identifiers_cannot_begin_or_end_with_a_dash(
    args: tuple[str, str, str, str], field: str
) -> None:
    with pytest.raises(ValidationError) as e:
        wep_name(*args)
    assert e.value.field == field


@pytest.mark.parametrize("name", ["", "a-b-c", "a-b-c-d-e", "a-b--c", "-a-b-c"])
def test_names_that_are_not_four_parts_do_not_parse(name: str) -> None:
    with pytest.raises(ValidationError):
        parse_wep_name(name)


def test_prefix_match_needs_confirming() -> None:
    # "pod" is a prefix of the escaped "pod--1", so a prefix list must be checked by parsing.
    other = wep_name("n", "k8s", "pod-1", "eth0")
    assert other.startswith(wep_name_prefix("n", "k8s", "pod"))
    assert parse_wep_name(other).workload == "pod-1"
    with pytest.raises(ValueError):
        wep_name_prefix("n", workload="x")


def test_name_from_spec_picks_the_orchestrators_workload_field() -> None:
    base = {"node": "n", "endpoint": "eth0"}
    assert wep_name_for_spec({**base, "orchestrator": "k8s", "pod": "p"}) == "n-k8s-p-eth0"
    assert wep_name_for_spec({**base, "orchestrator": "cni", "containerID": "c"}) == "n-cni-c-eth0"
    assert wep_name_for_spec({**base, "orchestrator": "x", "workload": "w"}) == "n-x-w-eth0"
    with pytest.raises(ValidationError) as e:
        wep_name_for_spec({**base, "orchestrator": "k8s", "workload": "w"})
    assert e.value.field == "spec.pod"


@pytest.mark.parametrize(
    ("key", "ok"),
    [("app", True), ("projectcalico.org/name", True), ("a.b/c_d-e", True), ("-a", False),
     ("a/", False), ("/a", False), ("Upper.Case/x", False), ("a" * 64, False),
     ("a" * 63, True)],
)  # fmt: skip
def test_label_keys(key: str, ok: bool) -> None:
    assert (qualified_name_problem(key) is None) == ok
