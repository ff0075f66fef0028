"""Rule and chain semantics, one behaviour per test (the golden files show whole layouts)."""

from __future__ import annotations

import pytest

from libcalico.errors import ValidationError
from services.policy import examples as ex
from services.policy.compiler import PolicyCompiler
from services.policy.config import CompilerConfig, ProtoPort, parse_proto_ports
from services.policy.generic import Chain
from services.policy.ipsets import maximal_nets, nft_element
from services.policy.rules.context import Context
from services.policy.rules.policy import rule_to_rules, split_ports


def ctx(v: int = 4, **cfg: object) -> Context:
    return Context.make(CompilerConfig(**cfg), v)  # type: ignore[arg-type]


def test_split_ports_counts_ranges_as_two_slots() -> None:
    assert split_ports([(p, p) for p in range(15)]) == [tuple((p, p) for p in range(15))]
    assert len(split_ports([(p, p) for p in range(16)])) == 2
    seven_ranges = [(i, i + 1) for i in range(0, 14, 2)]  # 14 slots
    assert len(split_ports([*seven_ranges, (100, 100)])) == 1  # 15 slots
    assert len(split_ports([*seven_ranges, (100, 101)])) == 2  # 16 slots


def test_allow_sets_accept_and_returns() -> None:
    rules = rule_to_rules(ex.rule("allow", protocol="tcp"), ctx(), "p")
    assert [r.action for r in rules] == [("set_mark", 0x10000), ("return",)]
    assert rules[1].match == (("mark", 0x10000, 0x10000),)


def test_deny_sets_the_drop_mark_then_drops() -> None:
    rules = rule_to_rules(ex.rule("deny"), ctx(), "p")
    assert [r.action for r in rules] == [("set_mark", 0x40000), ("drop",)]
    rejecting = rule_to_rules(ex.rule("deny"), ctx(filter_deny_action="REJECT"), "p")
    assert rejecting[-1].action == ("reject",)


def test_pass_and_next_tier_set_the_pass_mark() -> None:
    for action in ("pass", "next-tier"):
        rules = rule_to_rules(ex.rule(action), ctx(), "p")
        assert rules[0].action == ("set_mark", 0x20000)


def test_log_continues() -> None:
    rules = rule_to_rules(ex.rule("log", protocol="udp"), ctx(), "calico-packet")
    assert rules == [rules[0]]
    assert rules[0].action == ("log", "calico-packet")


def test_ip_version_filtering() -> None:
    v6_only = ex.rule("allow", ip_version=6)
    assert rule_to_rules(v6_only, ctx(4), "p") == []
    assert rule_to_rules(v6_only, ctx(6), "p")
    mixed = ex.rule("allow", src_net=["10.0.0.0/8", "fd00::/8"])
    assert rule_to_rules(mixed, ctx(4), "p")[0].match == (("src_net", "10.0.0.0/8"),)
    assert rule_to_rules(mixed, ctx(6), "p")[0].match == (("src_net", "fd00::/8"),)
    only_v4 = ex.rule("allow", dst_net=["10.0.0.0/8"])
    assert rule_to_rules(only_v4, ctx(6), "p") == []


def test_negated_catch_all_drops_the_rule() -> None:
    assert rule_to_rules(ex.rule("deny", not_src_net=["0.0.0.0/0"]), ctx(4), "p") == []
    assert rule_to_rules(ex.rule("deny", not_dst_net=["::/0"]), ctx(6), "p") == []


def test_icmp_matches_stay_in_their_family() -> None:
    v4 = ex.rule("allow", protocol="icmp", icmp=(8, None))
    assert rule_to_rules(v4, ctx(6), "p") == []
    assert rule_to_rules(v4, ctx(4), "p")[0].match == (("proto", "icmp"), ("icmp", 8, None))
    v6 = ex.rule("allow", protocol="icmpv6", icmp=(128, 0))
    assert rule_to_rules(v6, ctx(6), "p")[0].match == (("proto", "icmpv6"), ("icmp6", 128, 0))
    assert rule_to_rules(v6, ctx(4), "p") == []


def test_several_cidrs_become_a_match_block() -> None:
    rules = rule_to_rules(ex.rule("allow", src_net=["10.1.0.0/16", "10.2.0.0/16"]), ctx(), "p")
    assert rules[0].action == ("set_masked_mark", 0, 0x180000)
    assert [r.match for r in rules[1:3]] == [(("src_net", "10.1.0.0/16"),),
                                             (("src_net", "10.2.0.0/16"),)]
    assert rules[3].match == (("mark", 0x80000, 0x80000),)


def test_named_and_numeric_ports_are_ored() -> None:
    rules = rule_to_rules(ex.rule("allow", protocol="tcp", dst_ports=[80],
                                  dst_named_port_ip_set_ids=["n:x"]), ctx(), "p")
    assert rules[1].match == (("proto", "tcp"), ("dports", ((80, 80),)))
    assert rules[2].match == (("dst_ipport_set", "cali40n:x"),)


def test_annotations_become_comments_on_every_rule() -> None:
    rules = rule_to_rules(ex.rule("allow", annotations={"b": "2", "a": "1"}), ctx(), "p")
    assert all(r.comment == ("a=1", "b=2") for r in rules)


def _tw(c: PolicyCompiler, iface: str) -> Chain:
    return c.chains(4, "filter")[f"cali-tw-{iface}"]


def test_tier_default_pass_has_no_end_of_tier_drop() -> None:
    p = ex.pid("p", "ns")
    c = PolicyCompiler()
    c.apply([ex.policy(p), ex.wep("cali0000000tier", tiers=[
        ex.tier("t1", ingress=[p], default_action="Pass")])])
    comments = [x for r in _tw(c, "cali0000000tier").rules for x in r.comment]
    assert "Start of tier t1" in comments
    assert not any(x.startswith("End of tier") for x in comments)


def test_staged_policies_are_not_jumped_to() -> None:
    staged = ex.pid("s", "ns", "StagedNetworkPolicy")
    c = PolicyCompiler()
    c.apply([ex.policy(staged, inbound=[ex.rule("deny")]),
             ex.wep("cali00000staged", tiers=[ex.tier("default", ingress=[staged])])])
    assert "cali-pi-snp/ns/s" not in c.chains(4)
    jumps = [r.action for r in _tw(c, "cali00000staged").rules
             if r.action and r.action[0] == "jump"]
    assert jumps == []


def test_admin_down_endpoint_drops_everything() -> None:
    c = PolicyCompiler()
    c.apply([ex.wep("cali0000000down", state="inactive", profiles=["x"])])
    rules = _tw(c, "cali0000000down").rules
    assert len(rules) == 1
    assert rules[0].action == ("drop",) and rules[0].comment == ("Endpoint admin disabled",)


def test_reject_only_in_filter() -> None:
    c = PolicyCompiler(CompilerConfig(filter_deny_action="REJECT"))
    c.apply([ex.hep("h", "eth0", profiles=["p"]), ex.profile("p", [ex.rule("deny")])])
    assert "--jump REJECT" in "\n".join(c.rendered(4, "filter")["cali-pri-p"])
    mangle_text = "\n".join(line for lines in c.rendered(4, "mangle").values() for line in lines)
    assert "REJECT" not in mangle_text
    assert "--jump DROP" in "\n".join(c.rendered(4, "mangle")["cali-pri-p"])


def test_unknown_interface_drop_ends_workload_dispatch() -> None:
    c = PolicyCompiler()
    c.apply([])
    assert c.rendered(4)["cali-from-wl-dispatch"][-1].endswith(
        '-m comment --comment "Unknown interface" --jump DROP')


def test_felix_config_parsing() -> None:
    cfg = CompilerConfig().with_felix({
        "IptablesMarkMask": "0xff000000", "DefaultEndpointToHostAction": "accept",
        "FailsafeInboundHostPorts": "tcp:22,udp:10.0.0.0/8:53,tcp:[fd00::/8]:179",
        "Ipv6Support": "false", "InterfacePrefix": "cali,tap", "NATPortRange": "100:200",
    })
    assert cfg.mark_mask == 0xFF000000
    assert cfg.endpoint_to_host_action == "ACCEPT"
    assert cfg.failsafe_inbound == (ProtoPort("tcp", 22), ProtoPort("udp", 53, "10.0.0.0/8"),
                                    ProtoPort("tcp", 179, "fd00::/8"))
    assert not cfg.ipv6_support
    assert cfg.interface_prefixes == ("cali", "tap")
    assert cfg.nat_port_range == (100, 200)
    assert parse_proto_ports("none") == ()
    with pytest.raises(ValidationError):
        CompilerConfig().with_felix({"IptablesFilterDenyAction": "LOG"})


def test_ipv6_support_off_renders_only_ipv4() -> None:
    c = PolicyCompiler()
    r = c.apply([ex.config(Ipv6Support="false"), *ex.workload()])
    assert {v for v, _ in r.iptables} == {4}
    assert "ip6" not in r.nft_script.split()


def test_nft_set_elements() -> None:
    assert nft_element(ex.IP_AND_PORT, "10.0.0.5,tcp:8080") == "10.0.0.5 . tcp . 8080"
    assert nft_element(ex.IP, "10.0.0.5/32") == "10.0.0.5"
    assert maximal_nets(["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3/32", "11.0.0.0/8"]) == {
        "10.0.0.0/8", "11.0.0.0/8"}


def test_nft_net_set_overlap_deltas_stay_consistent() -> None:
    c = PolicyCompiler()
    c.apply([ex.ipset("s:n", ["10.0.0.0/8"])])
    r = c.apply([ex.ipset_delta("s:n", added=["10.1.0.0/16"])])
    assert "ip calico" not in r.nft_script  # implied by 10.0.0.0/8: nothing to add in nft
    r = c.apply([ex.ipset_delta("s:n", removed=["10.0.0.0/8"])])
    assert r.nft_script.splitlines() == [
        "delete element ip calico cali40s-n { 10.0.0.0/8 }",
        "add element ip calico cali40s-n { 10.1.0.0/16 }",
    ]
