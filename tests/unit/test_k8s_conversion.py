"""Kubernetes NetworkPolicy -> Calico NetworkPolicy, and namespace profiles, as Calico converts."""

from __future__ import annotations

from typing import Any

import pytest

from libcalico.errors import ValidationError
from libcalico.model import k8s_network_policy_to_calico, namespace_profile, simplify_ports
from libcalico.model import validate as validate_resource

K8S = "projectcalico.org/orchestrator == 'k8s'"


def knp(spec: dict[str, Any], name: str = "p", namespace: str | None = "dev") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta,
            "spec": spec}  # fmt: skip


def convert(spec: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = dict(k8s_network_policy_to_calico(knp(spec)))
    validate_resource(out)  # every conversion is a valid Calico policy
    return out


def allow(**kw: Any) -> dict[str, Any]:
    return {"action": "Allow", "source": {}, "destination": {}, **kw}


def test_envelope_name_tier_order_and_selector() -> None:
    src = knp({"podSelector": {"matchLabels": {"role": "db", "app": "x"}}})
    src["metadata"].update(uid="u-1", resourceVersion="42", labels={"ignored": "yes"})
    out = k8s_network_policy_to_calico(src)
    assert out["apiVersion"] == "projectcalico.org/v3"
    assert out["kind"] == "NetworkPolicy"
    assert out["metadata"] == {
        "name": "knp.default.p", "namespace": "dev", "uid": "u-1", "resourceVersion": "42"
    }
    assert out["spec"] == {
        "tier": "default",
        "order": 1000,
        "selector": f"{K8S} && app == 'x' && role == 'db'",  # matchLabels sorted by key
        "types": ["Ingress"],
    }
    assert k8s_network_policy_to_calico(knp({}, namespace=None))["metadata"]["namespace"] == (
        "default"
    )


def test_pod_selector_peer_with_port() -> None:
    out = convert({
        "podSelector": {"matchLabels": {"role": "db"}},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "frontend"}}}],
                     "ports": [{"protocol": "TCP", "port": 6379}]}],
    })  # fmt: skip
    assert out["spec"]["ingress"] == [
        allow(protocol="TCP",
              source={"selector": f"{K8S} && role == 'frontend'"},
              destination={"ports": [6379]})
    ]  # fmt: skip


def test_namespace_selector_peer_selects_pods_in_matching_namespaces() -> None:
    out = convert({"podSelector": {},
                   "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "a"}}}]}]})
    assert out["spec"]["ingress"] == [
        allow(source={"selector": K8S, "namespaceSelector": "team == 'a'"})
    ]
    everywhere = convert({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]})
    assert everywhere["spec"]["ingress"][0]["source"]["namespaceSelector"] == "all()"


def test_pod_and_namespace_selector_together_are_an_and() -> None:
    out = convert({"podSelector": {}, "ingress": [{"from": [{
        "namespaceSelector": {"matchLabels": {"team": "a"}},
        "podSelector": {"matchExpressions": [
            {"key": "role", "operator": "In", "values": ["x", "y"]},
            {"key": "env", "operator": "NotIn", "values": ["prod"]},
            {"key": "tier", "operator": "Exists"},
            {"key": "debug", "operator": "DoesNotExist"},
        ]},
    }]}]})  # fmt: skip
    assert out["spec"]["ingress"][0]["source"] == {
        "selector": f"{K8S} && role in {{ 'x', 'y' }} && env not in {{ 'prod' }}"
        " && has(tier) && ! has(debug)",
        "namespaceSelector": "team == 'a'",
    }


def test_ip_block_with_except_becomes_nets_and_not_nets() -> None:
    out = convert({
        "podSelector": {},
        "policyTypes": ["Egress"],
        "egress": [{"to": [{"ipBlock": {"cidr": "172.17.0.1/16",
                                        "except": ["172.17.1.0/24", "172.17.2.9/24"]}}],
                    "ports": [{"protocol": "TCP", "port": 5978}]}],
    })  # fmt: skip
    assert out["spec"]["types"] == ["Egress"]
    assert out["spec"]["egress"] == [
        allow(protocol="TCP", destination={
            "ports": [5978], "nets": ["172.17.0.0/16"], "notNets": ["172.17.1.0/24",
                                                                   "172.17.2.0/24"]})
    ]  # fmt: skip


def test_ports_group_by_protocol_merge_ranges_and_keep_named_ports() -> None:
    out = convert({"podSelector": {}, "ingress": [{"ports": [
        {"port": 81}, {"protocol": "TCP", "port": 80}, {"port": "http"},
        {"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 32000, "endPort": 32768},
        {"protocol": "SCTP"},
    ]}]})  # fmt: skip
    assert out["spec"]["ingress"] == [
        allow(protocol="SCTP"),  # protocol without a port: every port
        allow(protocol="TCP", destination={"ports": ["http", "80:81", "32000:32768"]}),
        allow(protocol="UDP", destination={"ports": [53]}),
    ]


def test_all_ports_of_a_protocol_absorbs_later_ports() -> None:
    out = convert({"podSelector": {}, "ingress": [{"ports": [
        {"protocol": "UDP"}, {"protocol": "UDP", "port": 53}]}]})  # fmt: skip
    assert out["spec"]["ingress"] == [allow(protocol="UDP")]


def test_one_rule_per_protocol_and_peer() -> None:
    peers = [{"podSelector": {"matchLabels": {"a": "1"}}}, {"ipBlock": {"cidr": "10.0.0.0/8"}}]
    out = convert({"podSelector": {}, "ingress": [{"from": peers, "ports": [
        {"protocol": "UDP", "port": 53}, {"port": 80}]}]})  # fmt: skip
    rules = out["spec"]["ingress"]
    assert [(r["protocol"], sorted(r["source"])) for r in rules] == [
        ("TCP", ["selector"]), ("TCP", ["nets"]), ("UDP", ["selector"]), ("UDP", ["nets"])
    ]


def test_default_deny_and_allow_all() -> None:
    deny = convert({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})
    assert deny["spec"] == {
        "tier": "default", "order": 1000, "selector": K8S, "types": ["Ingress", "Egress"]
    }
    allow_all = convert({"podSelector": {}, "ingress": [{}], "egress": [{}],
                         "policyTypes": ["Egress", "Ingress"]})  # fmt: skip
    assert allow_all["spec"]["ingress"] == [allow()]
    assert allow_all["spec"]["egress"] == [allow()]
    assert allow_all["spec"]["types"] == ["Ingress", "Egress"]


def test_missing_policy_types_default_as_the_api_server_does() -> None:
    # Kubernetes defaults policyTypes before Calico sees a policy: Ingress always, Egress too
    # when there are egress rules. We take the user's YAML directly, so we default it here.
    out = convert({"podSelector": {}, "egress": [{}]})
    assert out["spec"]["types"] == ["Ingress", "Egress"]
    assert out["spec"]["egress"] == [allow()]
    assert convert({"podSelector": {}, "ingress": [{}]})["spec"]["types"] == ["Ingress"]
    assert convert({"podSelector": {}, "egress": []})["spec"]["types"] == ["Ingress"]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"ingress": [{"ports": [{"port": "http", "endPort": 90}]}]},
         "spec.ingress[0].ports[0].endPort"),
        ({"ingress": [{"ports": [{"endPort": 90}]}]}, "spec.ingress[0].ports[0].endPort"),
        ({"ingress": [{"ports": [{"protocol": "ICMP", "port": 1}]}]},
         "spec.ingress[0].ports[0].protocol"),
        ({"ingress": [{"ports": [{"port": 70000}]}]}, "spec.ingress[0].ports[0].port"),
        ({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]},
         "spec.egress[0].to[0]"),
        ({"egress": [{"to": [{"ipBlock": {"cidr": "nope"}}]}]},
         "spec.egress[0].to[0].ipBlock.cidr"),
        ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Like"}]}},
         "spec.podSelector.matchExpressions[0].operator"),
        ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
         "spec.podSelector.matchExpressions[0].values"),
        ({"policyTypes": ["ingress"]}, "spec.policyTypes[0]"),
        ({"ingress": [{"form": []}]}, "spec.ingress[0].form"),
    ],
)  # fmt: skip
def test_bad_kubernetes_policies_name_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as e:
        k8s_network_policy_to_calico(knp({"podSelector": {}, **spec}))
    assert e.value.field == field
    assert e.value.resource == "NetworkPolicy(dev/knp.default.p)"


def test_simplify_ports() -> None:
    assert simplify_ports([80]) == [80]
    assert simplify_ports([80, "http"]) == [80, "http"]  # fewer than two numbers: unchanged
    assert simplify_ports([82, 80, 81, 81, 9090, "http"]) == ["http", "80:82", 9090]
    assert simplify_ports(["10:12", 13, 20]) == ["10:13", 20]


def test_namespace_profile() -> None:
    profile = namespace_profile("dev", {"team": "a"}, uid="u", creation_timestamp="2024-01-01")
    assert profile == {
        "apiVersion": "projectcalico.org/v3",
        "kind": "Profile",
        "metadata": {"name": "kns.dev", "uid": "u", "creationTimestamp": "2024-01-01"},
        "spec": {
            "ingress": [allow()],
            "egress": [allow()],
            "labelsToApply": {"pcns.team": "a", "pcns.projectcalico.org/name": "dev"},
        },
    }
    assert validate_resource(profile) == profile
    assert namespace_profile("x")["spec"]["labelsToApply"] == {"pcns.projectcalico.org/name": "x"}
