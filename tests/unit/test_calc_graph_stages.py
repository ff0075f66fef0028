"""Unit tests of the calc graph's stages, each on its own or through a small graph."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from libcalico.api.felix import felixbackend_pb2 as fb
from libcalico.client.syncer import SyncStatus, Update
from libcalico.selector import make_unique_id, parse
from services.calc_graph import event_sequencer
from services.calc_graph.config_batcher import ConfigBatcher, felix_params
from services.calc_graph.encap_resolver import EncapsulationResolver
from services.calc_graph.fanout import Subscriber, SubscriberCutOff
from services.calc_graph.graph import build_graph, updates_of
from services.calc_graph.ipsets import IPSetRegistry, IPSetSpec
from services.calc_graph.label_index import LabelSet, LabelSetTable, SelectorIndex
from services.calc_graph.policy_resolver import PolicyMeta, PolicySorter
from services.calc_graph.profile_decoder import ProfileDecoder
from services.calc_graph.records import Item, workload_endpoint
from services.calc_graph.route_resolver import RouteResolver, block_routes
from services.calc_graph.rule_scanner import RuleScanner, policy_selector
from services.calc_graph.status import StatusStore
from services.calc_graph.vxlan_resolver import VXLANResolver, vtep_mac
from tests.unit import fake_dataplane as f

NS = "projectcalico.org/namespace"


# -- label index ----------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_label_set_added(self, ls: LabelSet) -> None:
        self.events.append(("added", dict(ls.labels)))

    def on_label_set_changed(self, ls: LabelSet, old: Any) -> None:
        self.events.append(("changed", dict(ls.labels)))

    def on_label_set_removed(self, ls: LabelSet) -> None:
        self.events.append(("removed", dict(ls.labels)))


def test_label_sets_are_shared_and_inherit_profile_labels_in_order() -> None:
    t = LabelSetTable()
    rec = Recorder()
    t.listeners.append(rec)
    t.set_profile_labels("kns.a", {"pcns.env": "prod", "x": "from-ns"})
    t.set_profile_labels("ksa.a.sa", {"pcsa.role": "fe", "x": "from-sa"})
    one = t.acquire({"app": "web"}, ("kns.a", "ksa.a.sa"))
    two = t.acquire({"app": "web"}, ("kns.a", "ksa.a.sa"))
    own_wins = t.acquire({"app": "web", "x": "own"}, ("kns.a",))
    assert one is two and len(t) == 2
    assert one.labels == {"app": "web", "pcns.env": "prod", "x": "from-ns", "pcsa.role": "fe"}
    assert own_wins.labels["x"] == "own"
    rec.events.clear()
    t.set_profile_labels("ksa.a.sa", {"pcsa.role": "be"})
    assert rec.events == [
        ("changed", {"app": "web", "pcns.env": "prod", "x": "from-ns", "pcsa.role": "be"})
    ]
    t.release(one)
    assert len(t) == 2  # still referenced once
    t.release(two)
    assert len(t) == 1 and rec.events[-1][0] == "removed"


def test_hint_prefers_the_label_with_most_values() -> None:
    t = LabelSetTable()
    for ns in range(50):
        for app in ("web", "db"):
            t.acquire({"app": app, NS: f"ns{ns}"}, ())
    sel = parse(f"app == 'web' && {NS} == 'ns3'")
    assert sel.index_hint() == ("app", frozenset({"web"}))  # the library's static choice
    assert t.hint_for(sel) == (NS, frozenset({"ns3"}))
    assert t.hint_for(parse("all()")) is None
    assert t.hint_for(parse("has(app)")) == ("app", None)


def test_selector_index_evaluates_only_candidates() -> None:
    started: list[tuple[str, dict[str, str]]] = []
    stopped: list[tuple[str, dict[str, str]]] = []
    idx: SelectorIndex[str] = SelectorIndex(
        lambda s, ls: started.append((s, ls.labels)), lambda s, ls: stopped.append((s, ls.labels))
    )
    sets = [LabelSet({"app": f"a{i}", "tier": "web" if i % 2 else "db"}, ()) for i in range(1000)]
    for ls in sets:
        idx.add_item(ls)
    idx.update_selector("p", parse("app == 'a7' && tier == 'web'"))
    assert idx.evaluations <= 2  # one app bucket (or one tier bucket for a worse hint)
    assert started == [("p", {"app": "a7", "tier": "web"})]
    before = idx.evaluations
    idx.add_item(LabelSet({"app": "a7", "tier": "web", "v": "2"}, ()))
    assert idx.evaluations - before == 1 and len(started) == 2
    idx.update_selector("p", parse("app == 'a8'"))
    assert len(stopped) == 2 and started[-1] == ("p", {"app": "a8", "tier": "db"})
    idx.update_selector("all", parse("all()"))
    assert len(idx.sel_items["all"]) == 1001
    idx.remove_item(sets[8])
    assert ("p", {"app": "a8", "tier": "db"}) in stopped
    assert idx.rehint() == 0


# -- IP sets --------------------------------------------------------------------------------


def _item(key: str, nets: tuple[str, ...], ls: LabelSet, ports: Any = ()) -> Item:
    it = Item(("wep", "ns", key), nets, ports)
    it.label_set = ls
    ls.items.add(it)
    return it


def test_ipset_members_are_refcounted_and_deltas_cancel() -> None:
    reg = IPSetRegistry()
    ls = LabelSet({"app": "web"}, ())
    reg.on_label_set_added(ls)
    spec = IPSetSpec(parse("app == 'web'").unique_id, parse("app == 'web'"))
    a = _item("a", ("10.0.0.1/32",), ls)
    reg.item_added(a)
    reg.acquire(spec)
    assert reg.members(spec.id) == ["10.0.0.1/32"]
    assert reg.delta_message(spec.id) is None  # a fresh set is sent whole, never as a delta
    reg.end_flush()

    b = _item("b", ("10.0.0.1/32", "10.0.0.2/32"), ls)  # shares an address with a
    reg.item_added(b)
    reg.item_removed(a)
    ls.items.discard(a)
    c = _item("c", ("10.0.0.3/32",), ls)
    reg.item_added(c)
    reg.item_removed(c)
    ls.items.discard(c)
    msg = reg.delta_message(spec.id)
    assert msg is not None
    assert list(msg.ipset_delta_update.added_members) == ["10.0.0.2/32"]
    assert list(msg.ipset_delta_update.removed_members) == []  # 10.0.0.1 still held by b
    assert reg.delta_message(spec.id) is msg  # one shared message per flush
    reg.end_flush()

    # Released and re-acquired within one cycle: tracking continues, deltas are kept.
    reg.release(spec.id)
    reg.item_removed(b)
    ls.items.discard(b)
    reg.acquire(spec)
    msg = reg.delta_message(spec.id)
    assert msg is not None and sorted(msg.ipset_delta_update.removed_members) == [
        "10.0.0.1/32",
        "10.0.0.2/32",
    ]
    reg.end_flush()
    reg.release(spec.id)
    reg.end_flush()
    assert spec.id not in reg.sets and reg.index.selectors == {}


def test_named_port_sets_hold_ip_proto_port() -> None:
    reg = IPSetRegistry()
    ls = LabelSet({"app": "db"}, ())
    reg.on_label_set_added(ls)
    sel = parse("app == 'db'")
    reg.item_added(_item("a", ("10.0.0.1/32",), ls, (("sql", "tcp", 5432), ("m", "udp", 9))))
    reg.item_added(_item("b", ("10.0.0.2/32",), ls))
    spec = IPSetSpec("n:x", sel, ("tcp", "sql"), "", fb.IPSetUpdate.IP_AND_PORT)
    reg.acquire(spec)
    assert reg.members("n:x") == ["10.0.0.1,tcp:5432"]


# -- rule scanner ---------------------------------------------------------------------------


def rule(spec: dict[str, Any], ns: str = "ns1") -> tuple[fb.Rule, dict[str, IPSetSpec]]:
    scanner = RuleScanner()
    parsed = scanner.scan_policy(
        "NetworkPolicy" if ns else "GlobalNetworkPolicy", ns, "p", {"ingress": [spec]}, "all()"
    )
    return parsed.message.active_policy_update.policy.inbound_rules[0], parsed.ipsets


def test_namespaced_rule_selectors_are_limited_to_the_namespace() -> None:
    r, sets = rule({"action": "Allow", "source": {"selector": "app == 'web'"}})
    expected = parse(f"({NS} == 'ns1') && (app == 'web')")
    assert list(r.src_ip_set_ids) == [expected.unique_id]
    assert set(sets) == {expected.unique_id}
    # A global policy's rule is not limited.
    r, _ = rule({"action": "Allow", "source": {"selector": "app == 'web'"}}, ns="")
    assert list(r.src_ip_set_ids) == [parse("app == 'web'").unique_id]
    # notSelector alone still limits to the namespace, and folds into the positive selector.
    r, _ = rule({"action": "Allow", "source": {"notSelector": "app == 'x'"}})
    assert list(r.src_ip_set_ids) == [parse(f"({NS} == 'ns1') && (!(app == 'x'))").unique_id]
    assert list(r.not_src_ip_set_ids) == []
    assert r.original_not_src_selector == "app == 'x'"


def test_namespace_and_service_account_selectors() -> None:
    r, _ = rule(
        {
            "action": "Allow",
            "source": {"namespaceSelector": "env == 'prod'", "selector": "app == 'web'"},
        }
    )
    assert list(r.src_ip_set_ids) == [parse("(pcns.env == 'prod') && (app == 'web')").unique_id]
    r, _ = rule({"action": "Allow", "source": {"namespaceSelector": "all()"}})
    assert list(r.src_ip_set_ids) == [parse(f"has({NS})").unique_id]
    r, _ = rule({"action": "Allow", "source": {"namespaceSelector": "global()"}}, ns="")
    assert list(r.src_ip_set_ids) == [parse(f"!has({NS})").unique_id]
    r, _ = rule(
        {
            "action": "Allow",
            "source": {"serviceAccounts": {"names": ["b", "a"], "selector": "role == 'x'"}},
        },
        ns="",
    )
    sa = parse("(pcsa.role == 'x') && (projectcalico.org/serviceaccount in {'a', 'b'})")
    assert list(r.src_ip_set_ids) == [sa.unique_id]
    assert list(r.src_service_account_match.names) == ["b", "a"]


def test_ports_protocols_icmp_nets_and_actions() -> None:
    r, sets = rule(
        {
            "action": "Pass",
            "protocol": "UDP",
            "source": {"nets": ["10.1.2.3/16", "192.168.0.1"], "notPorts": ["1:1023"]},
            "destination": {"selector": "app == 'dns'", "ports": [53, "dns", "5000:5010"]},
        }
    )
    assert r.action == "pass"
    assert r.protocol.name == "udp"
    assert list(r.src_net) == ["10.1.0.0/16", "192.168.0.1/32"]
    assert [(p.first, p.last) for p in r.not_src_ports] == [(1, 1023)]
    assert [(p.first, p.last) for p in r.dst_ports] == [(53, 53), (5000, 5010)]
    dst = parse(f"({NS} == 'ns1') && (app == 'dns')")
    named = make_unique_id("n", f"{dst.unique_id},udp,dns")
    assert list(r.dst_named_port_ip_set_ids) == [named]
    assert sets[named].type == fb.IPSetUpdate.IP_AND_PORT and sets[named].named_port == (
        "udp",
        "dns",
    )
    assert list(r.dst_ip_set_ids) == [dst.unique_id]  # numeric ports keep the plain set too
    r, sets = rule(
        {
            "action": "Allow",
            "protocol": "TCP",
            "destination": {"selector": "app == 'db'", "ports": ["sql"]},
        }
    )
    assert list(r.dst_ip_set_ids) == [] and len(sets) == 1  # named ports only: no plain set
    r, _ = rule(
        {
            "action": "Deny",
            "protocol": "ICMPv6",
            "icmp": {"type": 128},
            "notICMP": {"type": 1, "code": 3},
        }
    )
    assert r.ip_version == fb.IPV6 and r.icmp_type == 128
    assert (r.not_icmp_type_code.type, r.not_icmp_type_code.code) == (1, 3)
    r, _ = rule({"action": "Allow", "protocol": 132, "ipVersion": 4})
    assert r.protocol.number == 132 and r.ip_version == fb.IPV4


def test_rule_ids_are_deterministic_and_chained() -> None:
    spec = {"ingress": [{"action": "Allow"}, {"action": "Deny"}]}
    a = RuleScanner().scan_policy("GlobalNetworkPolicy", "", "p", spec, "all()")
    b = RuleScanner().scan_policy("GlobalNetworkPolicy", "", "p", spec, "all()")
    ids = [r.rule_id for r in a.message.active_policy_update.policy.inbound_rules]
    assert ids == [r.rule_id for r in b.message.active_policy_update.policy.inbound_rules]
    assert len(set(ids)) == 2 and all(len(i) == 16 for i in ids)
    seed = hashlib.sha224(b"pol-in-default/p").digest()
    first = fb.Rule(action="allow")
    h = hashlib.sha224(seed)
    h.update(first.SerializeToString(deterministic=True))
    import base64

    assert ids[0] == base64.urlsafe_b64encode(h.digest()).decode()[:16]
    c = RuleScanner().scan_policy("GlobalNetworkPolicy", "", "other", spec, "all()")
    assert ids[0] != c.message.active_policy_update.policy.inbound_rules[0].rule_id


def test_policy_selector_matches_text_conversion() -> None:
    for kind, ns, spec, text in [
        (
            "NetworkPolicy",
            "ns1",
            {"selector": "a == 'x' || b == 'y'"},
            f"(a == 'x' || b == 'y') && {NS} == 'ns1'",
        ),
        ("NetworkPolicy", "ns1", {}, f"{NS} == 'ns1'"),
        (
            "GlobalNetworkPolicy",
            "",
            {"selector": "a == 'x'", "namespaceSelector": "env == 'p'"},
            "(a == 'x') && pcns.env == 'p'",
        ),
        (
            "GlobalNetworkPolicy",
            "",
            {"serviceAccountSelector": "all()"},
            "has(projectcalico.org/serviceaccount)",
        ),
        ("GlobalNetworkPolicy", "", {}, "all()"),
    ]:
        assert policy_selector(kind, ns, spec) == parse(text), text


# -- policy sorter --------------------------------------------------------------------------


def meta(name: str, spec: dict[str, Any], kind: str = "GlobalNetworkPolicy") -> PolicyMeta:
    order = spec.get("order")
    return PolicyMeta((kind, "", name), spec, float("inf") if order is None else order)


def test_tier_and_policy_ordering() -> None:
    s = PolicySorter()
    s.on_tier("b", f.resource("Tier", "b", {"order": 10, "defaultAction": "Pass"}))
    s.on_tier("a", f.resource("Tier", "a", {"order": 10}))
    s.on_tier("no-order", f.resource("Tier", "no-order", {}))
    pols = [
        meta("d1", {"tier": "default", "order": 5}),
        meta("d2", {"tier": "default"}),
        meta("d0", {"tier": "default", "order": 5}),
        meta("m", {"tier": "missing"}),
        meta("b", {"tier": "b", "order": 1, "types": ["Egress"]}),
        meta("a", {"tier": "a"}),
        meta("n", {"tier": "no-order"}),
        meta("adm", {"tier": "kube-admin"}),
    ]
    out = s.resolve(pols)
    assert [t.name for t in out.normal] == [
        "a",
        "b",
        "kube-admin",
        "default",
        "no-order",
        "missing",
    ]
    assert [t.default_action for t in out.normal][:2] == ["Deny", "Pass"]
    default = out.normal[3]
    assert [p.name for p in default.ingress_policies] == ["d0", "d1", "d2"]
    b = out.normal[1]
    assert list(b.ingress_policies) == [] and [p.name for p in b.egress_policies] == ["b"]


def test_host_endpoint_tier_lists() -> None:
    s = PolicySorter()
    out = s.resolve(
        [
            meta("untracked", {"doNotTrack": True, "applyOnForward": True}),
            meta("prednat", {"preDNAT": True, "applyOnForward": True}),
            meta("fwd", {"applyOnForward": True}),
            meta("plain", {}),
        ]
    )
    names = [[p.name for p in t.ingress_policies] for t in out.normal]
    assert names == [["fwd", "plain"]]
    assert [p.name for p in out.untracked[0].ingress_policies] == ["untracked"]
    assert out.untracked[0].default_action == "Pass"
    assert [p.name for p in out.pre_dnat[0].ingress_policies] == ["prednat"]
    assert list(out.pre_dnat[0].egress_policies) == []  # pre-DNAT is ingress only
    assert [p.name for p in out.forward[0].ingress_policies] == ["fwd"]


# -- global stages --------------------------------------------------------------------------


def test_config_batcher() -> None:
    assert felix_params(
        f.resource(
            "FelixConfiguration",
            "default",
            {
                "ipipEnabled": True,
                "routeRefreshInterval": "1m30s",
                "failsafeInboundHostPorts": [{"protocol": "tcp", "port": 22}],
                "interfaceExclude": ["a", "b"],
                "vxlanVNI": 4096,
            },
            annotations={"config.projectcalico.org/Extra": "1"},
        )
    ) == {
        "IpInIpEnabled": "true",
        "RouteRefreshInterval": "90",
        "FailsafeInboundHostPorts": '[{"port":22,"protocol":"tcp"}]',
        "InterfaceExclude": "a,b",
        "VxlanVNI": "4096",
        "Extra": "1",
    }
    c = ConfigBatcher()
    c.on_felix_configuration(
        "default", f.resource("FelixConfiguration", "default", {"logSeverityScreen": "Info"})
    )
    c.on_felix_configuration(
        "node.n1", f.resource("FelixConfiguration", "node.n1", {"logSeverityScreen": "Debug"})
    )
    c.on_cluster_information(
        "default",
        f.resource("ClusterInformation", "default", {"clusterGUID": "abc", "datastoreReady": True}),
    )
    m = c.message("n1").config_update
    assert dict(m.config) == {
        "LogSeverityScreen": "Debug",
        "ClusterGUID": "abc",
        "DatastoreReady": "true",
    }
    assert m.source_to_raw_config[1].source == "DatastoreGlobal"
    assert dict(c.message("n2").config_update.config)["LogSeverityScreen"] == "Info"
    c.end_flush()
    c.on_felix_configuration("node.n1", None)
    assert c.is_dirty("n1") and not c.is_dirty("n2")


def test_vtep_macs_and_requirements() -> None:
    digest = hashlib.sha1(b"node1").digest()
    assert vtep_mac("node1") == "66:" + ":".join(f"{b:02x}" for b in digest[:5])
    assert vtep_mac("node1", 6) == vtep_mac("node1-v6")
    v = VXLANResolver()
    v.on_node("n1", f.node("n1", "10.0.0.1/24").value)  # no tunnel address: no VTEP
    assert len(v.vteps) == 0
    v.on_node("n1", f.node("n1", "10.0.0.1/24", "10.65.0.1", mac="aa:aa:aa:aa:aa:aa").value)
    assert v.vteps.values["n1"].vtep_update == fb.VXLANTunnelEndpointUpdate(
        node="n1", mac="aa:aa:aa:aa:aa:aa", ipv4_addr="10.65.0.1", parent_device_ip="10.0.0.1"
    )


def test_encapsulation_resolver() -> None:
    e = EncapsulationResolver()
    assert e.message.encapsulation == fb.Encapsulation()
    e.on_pool("a", f.ip_pool("a", "10.0.0.0/16", vxlan="CrossSubnet").value)
    e.on_pool("b", f.ip_pool("b", "fd00::/64", vxlan="Always").value)
    e.on_pool("c", f.ip_pool("c", "10.1.0.0/16").value)
    assert e.dirty and e.message.encapsulation == fb.Encapsulation(
        vxlan_enabled=True, vxlan_enabled_v6=True, no_encap_enabled=True
    )
    e.end_flush()
    e.on_pool("c", f.ip_pool("c", "10.1.0.0/16").value)
    assert not e.dirty


def test_profile_decoder() -> None:
    d = ProfileDecoder()
    d.on_profile("kns.a", f.namespace("a", {"env": "p"}).value)
    d.on_profile("ksa.a.my.sa", f.service_account("a", "my.sa", {"k": "v"}).value)
    d.on_profile("plain-profile", f.resource("Profile", "plain-profile", {}))
    assert d.namespaces.values["a"].namespace_update.labels == {
        "env": "p",
        "projectcalico.org/name": "a",
    }
    assert d.service_accounts.values[("a", "my.sa")].service_account_update.labels["k"] == "v"
    d.end_flush()
    d.on_profile("kns.a", None)
    rm, up = d.namespaces.changes()
    assert updates_of(rm) == ["namespace_remove"] and up == []


def test_block_routes_and_route_resolver() -> None:
    owner, borrowed = block_routes(f.block("10.0.0.0/30", "n1", {1: "n1", 2: "n2"}).value)
    assert owner == "n1" and borrowed == {"10.0.0.2/32": "n2"}
    r = RouteResolver()
    r.on_pool("big", f.ip_pool("big", "10.0.0.0/8", ipip="Always").value)
    r.on_pool("small", f.ip_pool("small", "10.1.0.0/16", vxlan="CrossSubnet", nat=True).value)
    r.on_node("n1", f.node("n1", "192.168.0.1/24").value)
    r.on_node("n2", f.node("n2", "192.168.0.2/24").value)
    r.on_block("10.1.0.0/26", f.block("10.1.0.0/26", "n2").value)
    msg = r.route_for("n1", "10.1.0.0/26", False)
    assert msg is not None
    rt = msg.route_update
    assert (rt.ip_pool_type, rt.nat_outgoing, rt.same_subnet) == (fb.VXLAN, True, True)
    assert rt.types == fb.REMOTE_WORKLOAD and rt.dst_node_ip == "192.168.0.2"
    big = r.route_for("n1", "10.0.0.0/8", False)
    assert big is not None and big.route_update.ip_pool_type == fb.IPIP
    local = r.route_for("n2", "10.1.0.5/32", True)
    assert local is not None and local.route_update.local_workload
    assert r.route_for("n1", "10.1.0.5/32", False) is None
    r.end_flush()
    r.on_node("n2", f.node("n2", "192.168.9.2/24").value)  # n2 moves subnet
    assert "10.1.0.0/26" in r.dirty and r.nodes_changed == {"n2"}
    msg = r.route_for("n1", "10.1.0.0/26", False)
    assert msg is not None and not msg.route_update.same_subnet


# -- graph-level behaviour ------------------------------------------------------------------


def graph_with(*updates: Update) -> Any:
    g = build_graph()
    g.on_updates(updates)
    g.on_status(SyncStatus.IN_SYNC)
    return g


def test_missing_profile_is_a_deny_all_stand_in_until_it_appears() -> None:
    g = graph_with(f.wep("ns1", "a", "n1", "10.0.0.1", profiles=["kns.ns1"]))
    sub = Subscriber("n1")
    g.subscribe(sub)
    g.flush()
    dp = f.FakeDataplane("n1")
    dp.apply_batches(sub.drain())
    prof = dp.profiles["kns.ns1"]
    assert [r.action for r in prof.inbound_rules] == ["deny"]
    g.on_updates([f.namespace("ns1")])
    g.flush()
    dp.apply_batches(sub.drain())
    assert [r.action for r in dp.profiles["kns.ns1"].inbound_rules] == ["allow"]


def test_only_subscribed_nodes_get_views_and_policy_matching() -> None:
    updates = [f.wep("ns1", f"p{i}", f"n{i % 10}", f"10.0.0.{i}", {"app": "a"}) for i in range(100)]
    g = graph_with(*updates, f.network_policy("ns1", "p", {"selector": "app == 'a'"}))
    assert g.stats()["node_views"] == 0 and g.stats()["policy_evaluations"] == 0
    sub = Subscriber("n3")
    g.subscribe(sub)
    g.flush()
    assert g.stats()["node_views"] == 1
    assert g.stats()["policy_evaluations"] == 1  # one label set, one candidate
    dp = f.FakeDataplane("n3")
    dp.apply_batches(sub.drain())
    assert len(dp.weps) == 10
    g.unsubscribe(sub)
    g.flush()
    assert g.stats()["node_views"] == 0 and g.stats()["active_ipsets"] == 0


def test_add_then_remove_within_a_flush_sends_nothing() -> None:
    g = graph_with(f.namespace("ns1"))
    sub = Subscriber("n1")
    g.subscribe(sub)
    g.flush()
    sub.drain()
    a = f.wep("ns1", "a", "n1", "10.0.0.1")
    g.on_updates([a, f.delete(a)])
    g.flush()
    assert sub.drain() == []


def test_large_ip_sets_are_split_into_update_and_deltas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(event_sequencer, "MAX_MEMBERS_PER_MESSAGE", 3)
    weps = [f.wep("ns1", f"p{i}", "n2", f"10.0.0.{i}", {"app": "web"}) for i in range(8)]
    g = graph_with(
        *weps,
        f.wep("ns1", "db", "n1", "10.0.1.1", {"app": "db"}),
        f.network_policy(
            "ns1",
            "p",
            {
                "selector": "app == 'db'",
                "ingress": [{"action": "Allow", "source": {"selector": "app == 'web'"}}],
            },
        ),
    )
    sub = Subscriber("n1")
    g.subscribe(sub)
    g.flush()
    batches = sub.drain()
    kinds = updates_of(batches[0].messages)
    assert kinds.count("ipset_update") == 1 and kinds.count("ipset_delta_update") == 2
    dp = f.FakeDataplane("n1")
    dp.apply_batches(batches)
    assert len(next(iter(dp.ipsets.values()))[1]) == 8


def test_slow_subscriber_is_cut_off_without_stalling_others() -> None:
    g = graph_with(f.namespace("ns1"))
    slow = Subscriber("n1", max_batches=2)
    fast = Subscriber("n1")
    g.subscribe(slow)
    g.subscribe(fast)
    g.flush()
    dp = f.FakeDataplane("fast")
    for i in range(5):
        g.on_updates([f.wep("ns1", f"p{i}", "n1", f"10.0.0.{i}")])
        g.flush()
        dp.apply_batches(fast.drain())
    with pytest.raises(SubscriberCutOff, match=r"fell behind.*reconnect to resync"):
        slow.drain()
    assert slow not in g.views["n1"].subscribers
    assert len(dp.weps) == 5
    again = Subscriber("n1")
    g.subscribe(again)
    g.flush()
    fresh = f.FakeDataplane("again")
    fresh.apply_batches(again.drain())
    assert fresh.state() == dp.state()


def test_invalid_values_are_treated_as_deleted() -> None:
    good = f.wep("ns1", "a", "n1", "10.0.0.1")
    g = graph_with(good)
    assert len(g.endpoints.items) == 1
    bad = Update(good.key, {"metadata": {}, "spec": {"ipNetworks": 5}}, 99, "")
    g.on_updates([bad])  # not iterable: logged, and the endpoint is gone as if deleted
    assert len(g.endpoints.items) == 0
    g.on_updates(
        [
            Update(
                "/calico/resources/v3/projectcalico.org/kubecontrollersconfigurations/d",
                {},
                100,
                "",
            )
        ]
    )
    assert g.dispatcher.ignored == 1


def test_batches_carry_the_revision_and_traceparent() -> None:
    g = graph_with(f.namespace("ns1"))
    sub = Subscriber("n1")
    g.subscribe(sub)
    g.flush()
    sub.drain()
    tp = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    u = f.wep("ns1", "a", "n1", "10.0.0.1")
    g.on_updates([Update(u.key, u.value, 4242, tp)])
    g.flush()
    (batch,) = sub.drain()
    assert batch.revision == 4242
    assert batch.traceparent.split("-")[1] == "ab" * 16  # same trace (our span, or the writer's)


def test_bgp_view() -> None:
    g = graph_with(
        f.node("n1", "10.0.0.1/24", asn=65001),
        f.node("n2", "10.0.0.2/24"),
        f.ip_pool("p", "10.65.0.0/16"),
        f.update(
            "IPPool", "off", f.resource("IPPool", "off", {"cidr": "10.66.0.0/16", "disabled": True})
        ),
        f.affinity("n1", "10.65.0.0/26"),
        f.affinity("n1", "10.65.0.64/26", "pending"),
        f.block("10.65.1.0/26", "n2", {3: "n1"}),
    )
    upd = g.bgp.update_for("n1", True)
    assert [n.name for n in upd.nodes] == ["n1", "n2"] and upd.nodes[0].as_number == "65001"
    assert list(upd.local_blocks) == ["10.65.0.0/26"]
    assert list(upd.borrowed_ips) == ["10.65.1.3/32"]
    assert [p.cidr for p in upd.pools] == ["10.65.0.0/16"]
    g.bgp.end_flush()
    assert not g.bgp.is_dirty("n1")
    g.on_updates([f.block("10.65.1.0/26", "n2")])
    assert g.bgp.is_dirty("n1") and not g.bgp.is_dirty("n2")


def test_status_store() -> None:
    s = StatusStore()
    wid = fb.WorkloadEndpointID(orchestrator_id="k8s", workload_id="ns/a", endpoint_id="eth0")
    s.record(
        "n1",
        fb.FromDataplane(
            workload_endpoint_status_update=fb.WorkloadEndpointStatusUpdate(
                id=wid, status=fb.EndpointStatus(status="up")
            )
        ),
    )
    s.record("n1", fb.FromDataplane(dataplane_in_sync=fb.DataplaneInSync()))
    assert s.endpoint_statuses("n1") == {"wep:k8s/ns/a/eth0": "up"}
    assert s.nodes["n1"].dataplane_in_sync
    s.record(
        "n1",
        fb.FromDataplane(workload_endpoint_status_remove=fb.WorkloadEndpointStatusRemove(id=wid)),
    )
    assert s.endpoint_statuses("n1") == {}


def test_workload_endpoint_record() -> None:
    value = f.wep(
        "ns1",
        "a",
        "n1",
        "10.0.0.1",
        {"app": "x", "pcns.evil": "1"},
        sa="sa1",
        ports=[{"name": "http", "protocol": "TCP", "port": 80}],
    ).value
    value["spec"]["ipNetworks"].append("fd00::1")
    rec = workload_endpoint("ns1", "n1-k8s-a-eth0", value)
    assert rec is not None
    assert rec.own_labels == {
        "app": "x",
        NS: "ns1",
        "projectcalico.org/orchestrator": "k8s",
        "projectcalico.org/serviceaccount": "sa1",
    }
    assert rec.nets == ("10.0.0.1/32", "fd00::1/128")
    assert rec.named_port_members("http", "tcp") == ["10.0.0.1,tcp:80", "fd00::1,tcp:80"]
    assert rec.wep_id == ("k8s", "ns1/a", "eth0")
    value["spec"]["ipNetworks"] = []
    assert workload_endpoint("ns1", "x", value) is None


def test_unconvertible_rules_fail_closed() -> None:
    g = graph_with(
        f.namespace("ns1"),
        f.wep("ns1", "a", "n1", "10.0.0.1", {"app": "a"}),
        f.global_policy(
            "broken",
            {
                "selector": "app == 'a'",
                "ingress": [{"action": "Allow", "source": {"selector": "app == "}}],
            },
        ),  # not a selector
    )
    sub = Subscriber("n1")
    g.subscribe(sub)
    g.flush()
    dp = f.FakeDataplane("n1")
    dp.apply_batches(sub.drain())
    assert list(dp.policies[("GlobalNetworkPolicy", "", "broken")].inbound_rules) == []
    assert dp.policy_names(dp.weps[("k8s", "ns1/a", "eth0")].tiers) == ["default/broken"]


def test_closed_views_are_freed() -> None:
    import gc
    import weakref

    g = graph_with(f.wep("ns1", "a", "n1", "10.0.0.1"))
    sub = Subscriber("n1")
    g.subscribe(sub)
    g.flush()
    view = weakref.ref(g.views["n1"])
    g.unsubscribe(sub)
    g.flush()
    gc.disable()
    try:
        assert view() is None  # freed by reference counting alone: no cycle
    finally:
        gc.enable()


def test_flush_span_continues_the_latest_change_and_links_the_others() -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from libcalico.runtime.telemetry import setup_tracing

    spans = InMemorySpanExporter()
    setup_tracing("calc-graph-unit", jsonl=False, extra_processors=[SimpleSpanProcessor(spans)])
    try:
        g = graph_with(f.namespace("ns1"))
        sub = Subscriber("n1")
        g.subscribe(sub)
        g.flush()
        sub.drain()
        first = "00-" + "11" * 16 + "-" + "22" * 8 + "-01"
        second = "00-" + "33" * 16 + "-" + "44" * 8 + "-01"
        a, b = f.wep("ns1", "a", "n1", "10.0.0.1"), f.wep("ns1", "b", "n1", "10.0.0.2")
        g.on_updates(
            [Update(a.key, a.value, 10**6, first), Update(b.key, b.value, 10**6 + 1, second)]
        )
        g.flush()
        (batch,) = sub.drain()
        flush = [s for s in spans.get_finished_spans() if s.name == "calc_graph.flush"][-1]
        assert f"{flush.context.trace_id:032x}" == "33" * 16
        assert flush.parent is not None and f"{flush.parent.span_id:016x}" == "44" * 8
        assert [f"{link.context.trace_id:032x}" for link in flush.links] == ["11" * 16]
        assert batch.traceparent == f"00-{'33' * 16}-{flush.context.span_id:016x}-01"
        assert batch.revision == 10**6 + 1
    finally:
        setup_tracing("calc-graph-unit", jsonl=False)


def test_a_relabel_that_changes_nothing_for_the_node_sends_nothing() -> None:
    g = graph_with(
        f.namespace("ns1"),
        f.wep("ns1", "a", "n1", "10.0.0.1", {"app": "a"}),
        f.global_policy("p", {"selector": "has(app)", "ingress": [{"action": "Allow"}]}),
    )
    sub = Subscriber("n1")
    g.subscribe(sub)
    g.flush()
    sub.drain()
    g.on_updates([f.wep("ns1", "a", "n1", "10.0.0.1", {"app": "a", "extra": "label"})])
    g.flush()
    assert sub.drain() == []  # same policies, same address: no endpoint or route message
    g.on_updates([f.wep("ns1", "a", "n1", "10.0.0.1", {"other": "x"})])
    g.flush()
    (batch,) = sub.drain()
    assert updates_of(batch.messages) == ["workload_endpoint_update", "active_policy_remove"]


def test_handover_between_subscribers_of_a_node_between_flushes() -> None:
    """The established subscriber leaves and a new one arrives before the next flush: the
    newcomer's snapshot must include the changes made in between."""
    g = graph_with(f.namespace("ns1"), f.wep("ns1", "a", "n1", "10.0.0.1"))
    old = Subscriber("n1")
    g.subscribe(old)
    g.flush()
    old.drain()
    g.on_updates([f.wep("ns1", "b", "n1", "10.0.0.2")])
    new = Subscriber("n1")
    g.subscribe(new)
    g.unsubscribe(old)
    g.flush()
    dp = f.FakeDataplane("n1")
    dp.apply_batches(new.drain())
    assert set(dp.weps) == {("k8s", "ns1/a", "eth0"), ("k8s", "ns1/b", "eth0")}
    assert "10.0.0.2/32" in dp.routes


def test_sync_batches_are_framed_once_and_numbered_per_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from libcalico.api.calcgraph.v1 import calcgraph_pb2 as cg
    from services.calc_graph import servicer
    from services.calc_graph.fanout import Batch

    shared = fb.ToDataplane(ipset_delta_update=fb.IPSetDeltaUpdate(id="s:x", added_members=["a"]))
    own = fb.ToDataplane(route_remove=fb.RouteRemove(dst="10.0.0.0/26"))
    tp = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    batch = Batch([shared, own, shared], tp, 300)
    cache = servicer.WireCache()
    first = [cg.SyncBatch.FromString(data) for data, _ in servicer.encode(batch, 0, cache)]
    second = [cg.SyncBatch.FromString(data) for data, _ in servicer.encode(batch, 7, cache)]
    assert cache.misses == 2 and cache.hits == 4  # each message serialised once
    for out, start in ((first, 0), (second, 7)):
        (sb,) = out
        assert sb.traceparent == tp and sb.datastore_revision == 300
        assert [m.sequence_number for m in sb.messages] == [start, start + 1, start + 2]
        assert sb.messages[1].route_remove.dst == "10.0.0.0/26"
        assert list(sb.messages[2].ipset_delta_update.added_members) == ["a"]
    monkeypatch.setattr(servicer, "MAX_BATCH_MESSAGES", 2)
    chunks = [cg.SyncBatch.FromString(d) for d, _ in servicer.encode(batch, 0, cache)]
    assert [len(c.messages) for c in chunks] == [2, 1]
    assert chunks[1].messages[0].sequence_number == 2 and chunks[1].traceparent == tp
