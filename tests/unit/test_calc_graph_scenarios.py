"""State-sequence tests: streams applied by a strict fake dataplane end in the same state however
the input is ordered or flushed, and that state is the one a fresh graph computes from the final
datastore contents.

Each scenario is a list of steps; a step is a list of updates to distinct keys (so reversing it
leaves the datastore the same). Variants: forward or reversed within each step; flush after
every update, after every step, or once at the end; nodes subscribed from the start or only at
the end. ``FakeDataplane`` fails the test on any protocol violation along the way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from libcalico.client.syncer import SyncStatus, Update
from libcalico.selector import make_unique_id, parse
from services.calc_graph.fanout import Subscriber
from services.calc_graph.graph import CalcGraph, build_graph
from services.calc_graph.vxlan_resolver import vtep_mac
from tests.unit import fake_dataplane as f

NODES = ("node1", "node2", "node3")
Steps = list[list[Update]]


# -- scenarios ------------------------------------------------------------------------------


def policy_world() -> Steps:
    """Policies, endpoints, namespaces, service accounts, network sets, tiers and Pass."""
    base = [
        f.namespace("ns1", {"env": "prod"}),
        f.namespace("ns2", {"env": "dev"}),
        f.service_account("ns1", "sa1", {"role": "frontend"}),
        f.tier("security", 100, "Pass"),
        f.tier("platform", 200),
        f.wep("ns1", "web-1", "node1", "10.65.0.1", {"app": "web"}, sa="sa1"),
        f.wep("ns1", "db-1", "node1", "10.65.0.2", {"app": "db"}),
        f.wep("ns2", "web-2", "node2", "10.65.1.1", {"app": "web"}),
        f.wep("ns1", "db-2", "node2", "10.65.1.2", {"app": "db"}),
        f.wep(
            "ns2",
            "cache",
            "node3",
            "10.65.2.1",
            {"app": "cache"},
            ports=[{"name": "redis", "protocol": "TCP", "port": 6379}],
        ),
        f.network_set("ns1", "partners", ["203.0.113.0/24"], {"role": "partner"}),
        f.global_network_set("feeds", ["198.51.100.0/24", "192.0.2.7"], {"feed": "bad"}),
        f.global_policy(
            "security.block-feeds",
            {
                "tier": "security",
                "order": 10,
                "selector": "all()",
                "types": ["Ingress", "Egress"],
                "ingress": [{"action": "Deny", "source": {"selector": "feed == 'bad'"}}],
                "egress": [{"action": "Pass"}],
            },
        ),
        f.network_policy(
            "ns1",
            "allow-web-to-db",
            {
                "order": 100,
                "selector": "app == 'db'",
                "types": ["Ingress"],
                "ingress": [
                    {
                        "action": "Allow",
                        "protocol": "TCP",
                        "source": {"selector": "app == 'web'"},
                        "destination": {"ports": [5432]},
                    }
                ],
            },
        ),
        f.network_policy(
            "ns1",
            "allow-prod-and-partners",
            {
                "order": 50,
                "selector": "app == 'db'",
                "types": ["Ingress"],
                "ingress": [
                    {
                        "action": "Allow",
                        "source": {
                            "namespaceSelector": "env == 'prod'",
                            "selector": "app == 'web'",
                        },
                    },
                    {"action": "Allow", "source": {"selector": "role == 'partner'"}},
                ],
            },
        ),
        f.global_policy(
            "platform.allow-frontend-to-cache",
            {
                "tier": "platform",
                "order": 1,
                "selector": "app == 'cache'",
                "types": ["Ingress"],
                "ingress": [
                    {
                        "action": "Allow",
                        "protocol": "TCP",
                        "source": {"serviceAccounts": {"names": ["sa1"]}},
                        "destination": {"ports": ["redis"]},
                    }
                ],
            },
        ),
        f.global_policy(
            "egress-dns",
            {
                "selector": "has(app)",
                "types": ["Egress"],
                "egress": [
                    {"action": "Allow", "protocol": "UDP", "destination": {"ports": [53]}},
                    {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8, "code": 0}},
                ],
            },
        ),
    ]
    return [base]


def label_changes() -> Steps:
    steps = policy_world()
    steps.append(
        [
            f.wep("ns1", "web-1", "node1", "10.65.0.1", {"app": "db"}, sa="sa1"),  # web -> db
            f.namespace("ns2", {"env": "prod"}),  # ns2 joins prod
            f.global_network_set("feeds", ["198.51.100.0/24"], {"feed": "bad"}),
        ]
    )
    steps.append(
        [
            f.wep("ns2", "web-2", "node2", "10.65.1.1", {"app": "other"}),
            f.service_account("ns1", "sa1", {"role": "backend"}),
        ]
    )
    return steps


def selector_changes() -> Steps:
    steps = policy_world()
    steps.append(
        [
            f.network_policy(
                "ns1",
                "allow-web-to-db",
                {
                    "order": 100,
                    "selector": "app == 'web'",
                    "types": ["Ingress", "Egress"],
                    "ingress": [{"action": "Allow", "source": {"selector": "app == 'db'"}}],
                    "egress": [{"action": "Deny", "destination": {"notNets": ["10.0.0.0/8"]}}],
                },
            ),
            f.delete(f.global_policy("egress-dns", {})),
            f.global_policy(
                "new-in-platform",
                {
                    "tier": "platform",
                    "selector": "app in {'web', 'db'}",
                    "ingress": [
                        {
                            "action": "Allow",
                            "source": {"selector": "app == 'cache'", "notSelector": "app == 'x'"},
                        }
                    ],
                },
            ),
            f.tier("security", 300, "Pass"),
        ]
    )
    steps.append(
        [
            f.delete(f.tier("platform", None)),
            f.global_policy(
                "security.block-feeds",
                {
                    "tier": "security",
                    "order": 10,
                    "selector": "app == 'web'",
                    "ingress": [{"action": "Deny", "source": {"selector": "feed == 'bad'"}}],
                },
            ),
        ]
    )
    return steps


def endpoint_moves() -> Steps:
    steps = policy_world()
    steps.append(
        [
            f.wep_delete("ns1", "web-1", "node1"),
            f.wep("ns1", "web-1", "node2", "10.65.1.9", {"app": "web"}, sa="sa1"),
            f.update(
                "HostEndpoint",
                "node3-eth0",
                f.resource(
                    "HostEndpoint",
                    "node3-eth0",
                    {
                        "node": "node3",
                        "interfaceName": "eth0",
                        "expectedIPs": ["192.168.0.3"],
                        "profiles": ["kns.ns1"],
                    },
                    labels={"host": "true", "app": "db"},
                ),
            ),
            f.global_policy(
                "host-untracked",
                {
                    "selector": "host == 'true'",
                    "doNotTrack": True,
                    "applyOnForward": True,
                    "ingress": [{"action": "Allow"}],
                },
            ),
        ]
    )
    steps.append(
        [
            f.wep_delete("ns1", "db-2", "node2"),
            f.wep(
                "ns1", "db-3", "node3", "10.65.2.3", {"app": "db"}, profiles=["kns.ns1", "missing"]
            ),
        ]
    )
    return steps


def network_world() -> Steps:
    base = [
        f.node("node1", "192.168.1.1/24", "10.65.0.254"),
        f.node("node2", "192.168.1.2/24", "10.65.1.254", asn=65001, labels={"rack": "a"}),
        f.node("node3", "192.168.2.3/24", "10.65.2.254", mac="aa:bb:cc:dd:ee:ff"),
        f.ip_pool("pool-v4", "10.65.0.0/16", vxlan="CrossSubnet", nat=True),
        f.ip_pool("external", "172.20.0.0/16", ipip="Always"),
        f.block("10.65.0.0/26", "node1", {1: "node1", 5: "node2"}),
        f.block("10.65.1.0/26", "node2", {1: "node2"}),
        f.block("10.65.2.0/26", "node3"),
        f.affinity("node1", "10.65.0.0/26"),
        f.affinity("node2", "10.65.1.0/26"),
        f.affinity("node3", "10.65.2.0/26", "pending"),
        f.wep("ns1", "a", "node1", "10.65.0.1"),
        f.wep("ns1", "b", "node2", "10.65.0.5"),
        f.wep("ns1", "c", "node2", "10.65.1.1"),
        f.namespace("ns1"),
        f.felix_config(
            "default",
            {"logSeverityScreen": "Info", "iptablesRefreshInterval": "90s", "ipipEnabled": False},
        ),
        f.felix_config("node.node1", {"logSeverityScreen": "Debug"}),
    ]
    changes = [
        f.node("node2", "192.168.2.2/24", "10.65.1.254"),  # node2 moves to node3's subnet
        f.block("10.65.0.0/26", "node1", {1: "node1"}),  # the borrowed address is released
        f.block("10.65.2.0/26", "node1", {3: "node3"}),  # re-affined, with a borrowed address
        f.wep_delete("ns1", "b", "node2"),
        f.ip_pool("external", "172.20.0.0/16", vxlan="Always"),
    ]
    more = [
        f.delete(f.node("node3", "", "")),
        f.block_delete("10.65.1.0/26"),
        f.delete(f.ip_pool("external", "172.20.0.0/16")),
        f.felix_config("node.node1", {"logSeverityScreen": "Warning"}),
    ]
    return [base, changes, more]


SCENARIOS: dict[str, Callable[[], Steps]] = {
    "policy_world": policy_world,
    "label_changes": label_changes,
    "selector_changes": selector_changes,
    "endpoint_moves": endpoint_moves,
    "network_world": network_world,
}


# -- runner ---------------------------------------------------------------------------------


class Harness:
    """A graph with subscribed fake dataplanes, pumping batches after each flush."""

    def __init__(self, nodes: tuple[str, ...] = NODES) -> None:
        self.graph: CalcGraph = build_graph()
        self.subs: dict[str, Subscriber] = {}
        self.dps: dict[str, f.FakeDataplane] = {}
        self.nodes = nodes

    def subscribe(self, node: str) -> None:
        self.subs[node] = Subscriber(node)
        self.dps[node] = f.FakeDataplane(node)
        self.graph.subscribe(self.subs[node])

    def subscribe_all(self) -> None:
        for n in self.nodes:
            self.subscribe(n)

    def pump(self) -> None:
        self.graph.flush()
        for n, sub in self.subs.items():
            self.dps[n].apply_batches(sub.drain())

    def feed(self, updates: list[Update]) -> None:
        self.graph.on_updates(updates)

    def in_sync(self) -> None:
        self.graph.on_status(SyncStatus.IN_SYNC)

    def states(self) -> dict[str, dict[str, Any]]:
        out = {}
        for n, dp in self.dps.items():
            dp.assert_in_sync()
            out[n] = dp.state()
        return out


def run(steps: Steps, reverse: bool, flush: str, join: str) -> dict[str, dict[str, Any]]:
    h = Harness()
    if join == "start":
        h.subscribe_all()
    for i, step in enumerate(steps):
        for u in reversed(step) if reverse else step:
            h.feed([u])
            if flush == "each":
                h.pump()
        if i == 0:
            h.in_sync()
        if flush in ("each", "step"):
            h.pump()
    if join == "end":
        h.subscribe_all()
    h.pump()
    return h.states()


def from_scratch(steps: Steps) -> dict[str, dict[str, Any]]:
    final: dict[str, Update] = {}
    for step in steps:
        for u in step:
            final[u.key] = u
    h = Harness()
    h.subscribe_all()
    h.feed([u for _, u in sorted(final.items()) if u.value is not None])
    h.in_sync()
    h.pump()
    return h.states()


VARIANTS = [
    (reverse, flush, join)
    for reverse in (False, True)
    for flush in ("each", "step", "end")
    for join in ("start", "end")
]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_variant_ends_in_the_from_scratch_state(scenario: str) -> None:
    steps = SCENARIOS[scenario]()
    expected = from_scratch(steps)
    for reverse, flush, join in VARIANTS:
        got = run(steps, reverse, flush, join)
        for n in NODES:
            assert got[n] == expected[n], (
                f"{scenario} reverse={reverse} flush={flush} join={join} {n}"
            )


def test_reconnect_mid_stream_converges() -> None:
    steps = label_changes()
    h = Harness()
    h.subscribe_all()
    h.feed(steps[0])
    h.in_sync()
    h.pump()
    h.feed(steps[1])
    # node2's driver restarts mid-stream: drop it, resubscribe with a fresh fake dataplane.
    h.graph.unsubscribe(h.subs["node2"])
    del h.subs["node2"]
    h.pump()
    h.subscribe("node2")
    h.feed(steps[2])
    h.pump()
    assert h.states() == from_scratch(steps)


def test_second_subscriber_for_a_node_gets_a_snapshot() -> None:
    steps = policy_world()
    h = Harness()
    h.subscribe_all()
    h.feed(steps[0])
    h.in_sync()
    h.pump()
    extra = Subscriber("node1")
    h.graph.subscribe(extra)
    h.pump()
    dp = f.FakeDataplane("node1-second")
    dp.apply_batches(extra.drain())
    dp.assert_in_sync()
    assert dp.state() == h.dps["node1"].state()


# -- hand-written expectations --------------------------------------------------------------


def sel_id(text: str) -> str:
    return parse(text).unique_id


NS1 = "projectcalico.org/namespace == 'ns1'"


def test_policy_world_expected_state() -> None:
    states = from_scratch(policy_world())
    n1, n2, n3 = (states[n] for n in NODES)

    # node1: web-1 and db-1; tiers in order security (Pass), platform, default.
    web1 = n1["weps"][("k8s", "ns1/web-1", "eth0")]
    db1 = n1["weps"][("k8s", "ns1/db-1", "eth0")]
    assert [t["name"] for t in db1["tiers"]] == ["security", "default"]
    assert db1["tiers"][0]["default_action"] == "Pass"
    assert [p["name"] for p in db1["tiers"][1]["ingress_policies"]] == [
        "allow-prod-and-partners",  # order 50
        "allow-web-to-db",  # order 100 (egress-dns, no order, is egress-only)
    ]
    assert [p["name"] for p in db1["tiers"][1]["egress_policies"]] == ["egress-dns"]
    assert [t["name"] for t in web1["tiers"]] == ["security", "default"]
    assert web1["profile_ids"] == ["kns.ns1", "ksa.ns1.sa1"]
    assert set(n1["profiles"]) == {"kns.ns1", "ksa.ns1.sa1"}
    assert set(n1["policies"]) == {
        ("GlobalNetworkPolicy", "", "security.block-feeds"),
        ("NetworkPolicy", "ns1", "allow-web-to-db"),
        ("NetworkPolicy", "ns1", "allow-prod-and-partners"),
        ("GlobalNetworkPolicy", "", "egress-dns"),
    }

    # IP sets: namespaced rule selectors are limited to the namespace; namespaceSelector via pcns.
    web_in_ns1 = sel_id(f"({NS1}) && (app == 'web')")
    prod_web = sel_id("(pcns.env == 'prod') && (app == 'web')")
    partners = sel_id(f"({NS1}) && (role == 'partner')")
    feeds = sel_id("feed == 'bad'")
    assert n1["ipsets"][web_in_ns1] == (2, ["10.65.0.1/32"])
    assert n1["ipsets"][prod_web] == (2, ["10.65.0.1/32"])  # web-2 is in ns2 (dev)
    assert n1["ipsets"][partners] == (2, ["203.0.113.0/24"])
    assert n1["ipsets"][feeds] == (2, ["192.0.2.7/32", "198.51.100.0/24"])
    assert set(n1["ipsets"]) == {web_in_ns1, prod_web, partners, feeds}

    # node3: the cache policy's named port set: service account sa1's endpoints... on port redis.
    sa_sel = sel_id("projectcalico.org/serviceaccount in {'sa1'}")
    assert sa_sel in n3["ipsets"]
    assert n3["ipsets"][sa_sel] == (2, ["10.65.0.1/32"])
    cache = n3["weps"][("k8s", "ns2/cache", "eth0")]
    assert [t["name"] for t in cache["tiers"]] == ["security", "platform", "default"]
    rule = n3["policies"][("GlobalNetworkPolicy", "", "platform.allow-frontend-to-cache")][
        "inbound_rules"
    ][0]
    named = make_unique_id("n", f"{parse('all()').unique_id},tcp,redis")
    assert rule["dst_named_port_ip_set_ids"] == [named]
    assert n3["ipsets"][named] == (1, ["10.65.2.1,tcp:6379"])
    assert rule["src_ip_set_ids"] == [sa_sel]
    assert rule["action"] == "allow"
    assert rule["protocol"] == {"name": "tcp"}

    # node2 has no cache and no named-port set; everyone gets the namespaces.
    assert named not in n2["ipsets"]
    for st in (n1, n2, n3):
        assert st["namespaces"]["ns1"] == {"env": "prod", "projectcalico.org/name": "ns1"}
        assert st["service_accounts"][("ns1", "sa1")] == {
            "role": "frontend",
            "projectcalico.org/name": "sa1",
        }

    # The Pass action and ICMP rule render as Felix expects.
    sec = n1["policies"][("GlobalNetworkPolicy", "", "security.block-feeds")]
    assert sec["outbound_rules"][0]["action"] == "pass"
    dns = n1["policies"][("GlobalNetworkPolicy", "", "egress-dns")]["outbound_rules"]
    assert dns[0]["dst_ports"] == [{"first": 53, "last": 53}]
    assert dns[1]["icmp_type_code"] == {"type": 8}  # code 0 is the proto default
    assert dns[1]["ip_version"] == "IPV4"


def test_network_world_expected_state() -> None:
    states = from_scratch(network_world()[:1])
    n1, n2, n3 = (states[n] for n in NODES)
    assert n1["encap"] == {"ipip_enabled": True, "vxlan_enabled": True}
    assert n1["config"]["LogSeverityScreen"] == "Debug"
    assert n2["config"]["LogSeverityScreen"] == "Info"
    assert n1["config"]["IptablesRefreshInterval"] == "90"
    assert n1["config"]["IpInIpEnabled"] == "false"

    assert n1["vteps"]["node1"] == {
        "node": "node1",
        "mac": vtep_mac("node1"),
        "ipv4_addr": "10.65.0.254",
        "parent_device_ip": "192.168.1.1",
    }
    assert n1["vteps"]["node3"]["mac"] == "aa:bb:cc:dd:ee:ff"

    r = n1["routes"]
    assert r["10.65.0.0/16"] == {
        "dst": "10.65.0.0/16",
        "ip_pool_type": "VXLAN",
        "nat_outgoing": True,
    }
    assert r["10.65.1.0/26"]["types"] == "REMOTE_WORKLOAD"
    assert r["10.65.1.0/26"]["dst_node_name"] == "node2"
    assert r["10.65.1.0/26"]["dst_node_ip"] == "192.168.1.2"
    assert r["10.65.1.0/26"]["same_subnet"] is True  # CrossSubnet pool, node2 in 192.168.1.0/24
    assert "same_subnet" not in r["10.65.2.0/26"]  # node3 is in another subnet
    assert r["10.65.0.0/26"]["types"] == "LOCAL_WORKLOAD"
    assert r["10.65.0.5/32"]["borrowed"] is True and r["10.65.0.5/32"]["dst_node_name"] == "node2"
    assert r["10.65.0.1/32"]["local_workload"] is True  # node1's own workload
    assert "10.65.1.1/32" not in r  # node2's workloads are covered by its block on node1
    assert r["192.168.1.2/32"]["types"] == "REMOTE_HOST"
    assert r["192.168.1.1/32"]["types"] == "LOCAL_HOST"
    assert r["10.65.2.254/32"]["tunnel_type"] == {"vxlan": True}
    assert r["172.20.0.0/16"]["ip_pool_type"] == "IPIP"
    assert n2["routes"]["10.65.1.1/32"]["local_workload"] is True
    assert n2["routes"]["10.65.0.5/32"]["types"] == "LOCAL_WORKLOAD"
    assert n1["hosts"]["node2"] == {
        "hostname": "node2",
        "ipv4_addr": "192.168.1.2",
        "asnumber": "65001",
        "labels": {"rack": "a"},
    }
    assert n3["pools"]["10.65.0.0-16"]["vxlan_mode"] == "CrossSubnet"
