"""Incremental output: each apply() yields only what changed, and replaying every result
reaches exactly the state a fresh compiler renders in one go."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from libcalico.api.felix import felixbackend_pb2 as fb
from services.policy import examples as ex
from services.policy.compiler import CompileResult, PolicyCompiler

WEB = "cali-pi-np/default/allow-web"


def compiled(msgs: list[fb.ToDataplane]) -> PolicyCompiler:
    c = PolicyCompiler()
    c.apply(msgs)
    return c


def nft_chains_touched(script: str) -> set[str]:
    out = set()
    for line in script.splitlines():
        words = line.split()
        if words[:2] in (["add", "rule"], ["flush", "chain"], ["add", "chain"],
                         ["delete", "chain"]):
            out.add(words[4])
    return out


def test_changing_one_policy_rewrites_only_its_chain() -> None:
    c = compiled(ex.workload())
    r = c.apply([ex.policy(ex.ALLOW_WEB, inbound=[
        ex.rule("allow", protocol="tcp", dst_ports=[8080], src_ip_set_ids=["s:frontend"])])])
    assert set(r.iptables) == {(4, "filter"), (6, "filter")}
    assert r.changed_chains(4) == {WEB}
    assert r.changed_chains(6) == {WEB}
    assert not r.deleted_chains(4)
    assert r.ipset_restore == r.ipset_destroy == ""
    assert nft_chains_touched(r.nft_script) == {"filter-" + WEB}
    assert "8080" in r.restore_input(4)


def test_reapplying_the_same_state_is_empty() -> None:
    msgs = ex.workload()
    c = compiled(msgs)
    assert c.apply(msgs[1:]).empty
    assert c.apply([]).empty


def test_new_endpoint_yields_its_chains_and_the_dispatch() -> None:
    c = compiled(ex.workload())
    r = c.apply([ex.wep("cali00000000new", profiles=[ex.KNS])])
    assert r.changed_chains(4) == {"cali-tw-cali00000000new", "cali-fw-cali00000000new",
                                   "cali-from-wl-dispatch", "cali-to-wl-dispatch"}
    assert set(r.iptables) == {(4, "filter"), (6, "filter")}
    # nftables: the dispatch chains are verdict-map lookups; only the maps change.
    assert nft_chains_touched(r.nft_script) == {"filter-cali-tw-cali00000000new",
                                                "filter-cali-fw-cali00000000new"}
    assert ('add element ip calico filter-cali-tw-dispatch { "cali00000000new" : '
            "goto filter-cali-tw-cali00000000new }") in r.nft_script
    lines = r.nft_script.splitlines()
    first_element = next(i for i, x in enumerate(lines) if x.startswith("add element"))
    last_rule = max(i for i, x in enumerate(lines) if x.startswith("add rule"))
    assert last_rule < first_element, "map elements must follow the chains they name"


def test_ipset_delta_yields_only_member_lines() -> None:
    c = compiled(ex.workload())
    r = c.apply([ex.ipset_delta("s:frontend", added=["10.65.0.12/32", "fd00:65::12/128"],
                                removed=["10.65.0.10/32"])])
    assert not r.iptables
    assert r.ipset_restore.splitlines() == [
        "del cali40s:frontend 10.65.0.10/32 -exist",
        "add cali40s:frontend 10.65.0.12/32 -exist",
        "add cali60s:frontend fd00:65::12/128 -exist",
    ]
    assert r.nft_script.splitlines() == [
        "delete element ip calico cali40s-frontend { 10.65.0.10/32 }",
        "add element ip calico cali40s-frontend { 10.65.0.12/32 }",
        "add element ip6 calico cali60s-frontend { fd00:65::12/128 }",
    ]


def test_delta_of_members_already_present_is_empty() -> None:
    c = compiled(ex.workload())
    assert c.apply([ex.ipset_delta("s:frontend", added=["10.65.0.10/32"])]).empty


def test_ipset_rewrite_swaps_a_temp_set() -> None:
    c = compiled(ex.workload())
    r = c.apply([ex.ipset("s:frontend", ["10.65.0.99/32"])])
    assert r.ipset_restore.splitlines()[:7] == [
        "create cali40s:frontend hash:net family inet maxelem 1048576 -exist",
        "create cali4t0 hash:net family inet maxelem 1048576 -exist",
        "flush cali4t0",
        "add cali4t0 10.65.0.99/32",
        "swap cali4t0 cali40s:frontend",
        "destroy cali4t0",
        "create cali60s:frontend hash:net family inet6 maxelem 1048576 -exist",
    ]
    assert "flush set ip calico cali40s-frontend" in r.nft_script


def test_removing_an_endpoint_deletes_its_chains_after_unhooking() -> None:
    c = compiled(ex.workload())
    r = c.apply([ex.wep_remove("cali12345678901", "default/web-0")])
    assert r.deleted_chains(4) == {"cali-tw-cali12345678901", "cali-fw-cali12345678901"}
    assert r.changed_chains(4) == {"cali-from-wl-dispatch", "cali-to-wl-dispatch"}
    text = r.restore_input(4)
    assert text.index("-A cali-to-wl-dispatch") < text.index("-X cali-tw-cali12345678901")
    lines = r.nft_script.splitlines()
    del_elem = lines.index('delete element ip calico filter-cali-tw-dispatch { "cali12345678901" }')
    del_chain = lines.index("delete chain ip calico filter-cali-tw-cali12345678901")
    assert del_elem < del_chain


def test_removed_sets_are_destroyed_separately_after_rules() -> None:
    c = compiled(ex.workload())
    r = c.apply([
        ex.wep("cali12345678901", "default/web-0", profiles=[ex.KNS, ex.KSA]),
        ex.policy_remove(ex.ALLOW_WEB),
        ex.ipset_remove("s:frontend"),
    ])
    assert {WEB, "cali-po-np/default/allow-web"} <= r.deleted_chains(4)
    assert "cali-tw-cali12345678901" in r.changed_chains(4)
    assert r.ipset_restore == ""
    assert r.ipset_destroy.splitlines() == ["destroy cali40s:frontend", "destroy cali60s:frontend"]
    lines = r.nft_script.splitlines()
    assert lines[-2:] == ["delete set ip calico cali40s-frontend",
                          "delete set ip6 calico cali60s-frontend"]


def test_pool_change_touches_nat_outgoing_and_pool_sets_only() -> None:
    c = compiled(ex.workload())
    r = c.apply([ex.pool("p1", "10.65.0.0/16", masquerade=True)])
    assert set(r.iptables) == {(4, "nat")}
    assert r.changed_chains(4, "nat") == {"cali-nat-outgoing"}
    assert r.ipset_restore.splitlines() == [
        "add cali40masq-ipam-pools 10.65.0.0/16 -exist",
        "add cali40all-ipam-pools 10.65.0.0/16 -exist",
    ]


def test_host_metadata_changes_only_the_hosts_sets() -> None:
    c = compiled(ex.workload())
    r = c.apply([ex.host("node9", "192.0.2.9")])
    assert not r.iptables
    assert "add cali40all-hosts-net 192.0.2.9/32 -exist" in r.ipset_restore


def test_policy_before_endpoint_missing_reference_is_reported() -> None:
    c = PolicyCompiler()
    r = c.apply([ex.wep("cali0000orphan1", tiers=[ex.tier("default", ingress=[ex.ALLOW_WEB])])])
    assert any("cali-pi-np/default/allow-web" in w for w in r.warnings)


def test_deleting_a_chain_still_jumped_to_is_reported() -> None:
    c = compiled(ex.workload())
    r = c.apply([ex.policy_remove(ex.ALLOW_WEB)])  # the endpoint still lists it
    assert any("allow-web is deleted but still referenced" in w for w in r.warnings)


def test_config_change_rerenders_what_depends_on_it() -> None:
    c = compiled(ex.workload())
    r = c.apply([ex.config(IptablesFilterDenyAction="REJECT")])
    assert "cali-tw-cali12345678901" in r.changed_chains(4)
    assert "cali-pi-np/default/allow-web" not in r.changed_chains(4)  # no deny rule in it
    assert "--jump REJECT" in r.restore_input(4)


# -- incremental replay == from scratch ------------------------------------------------------

KernelState = dict[tuple[int, str], dict[str, tuple[str, ...]]]


def replay(state: KernelState, r: CompileResult) -> None:
    for key, delta in r.iptables.items():
        table = state.setdefault(key, {})
        table.update(delta.chains)
        for name in delta.deleted:
            table.pop(name, None)


def full_state(c: PolicyCompiler) -> KernelState:
    return {k: dict(d.chains) for k, d in c.full().iptables.items()}


def _ops() -> st.SearchStrategy[fb.ToDataplane]:
    ifaces = [f"cali0000000000{i}" for i in range(4)]
    pols = [ex.pid(f"p{i}", "ns") for i in range(3)]
    sets = ["s:a", "s:b"]
    return st.one_of(
        st.builds(lambda i, p: ex.wep(ifaces[i], tiers=[ex.tier("default", ingress=[pols[p]])],
                                      profiles=[ex.KNS]),
                  st.integers(0, 3), st.integers(0, 2)),
        st.builds(lambda i: ex.wep_remove(ifaces[i]), st.integers(0, 3)),
        st.builds(lambda p, port, s: ex.policy(pols[p], inbound=[
            ex.rule("allow", protocol="tcp", dst_ports=[port], src_ip_set_ids=[sets[s]])]),
            st.integers(0, 2), st.integers(1, 3), st.integers(0, 1)),
        st.builds(lambda s, n: ex.ipset_delta(sets[s], added=[f"10.0.0.{n}/32"]),
                  st.integers(0, 1), st.integers(1, 9)),
        st.builds(lambda n: ex.pool(f"pool{n}", f"10.{n}.0.0/16", masquerade=n % 2 == 0),
                  st.integers(1, 3)),
        st.builds(lambda: ex.hep("h", "eth0", tiers=[ex.tier("default", ingress=[pols[0]])])),
    )


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(_ops(), min_size=1, max_size=4), min_size=1, max_size=6))
def test_replaying_increments_equals_a_fresh_compile(batches: list[list[fb.ToDataplane]]) -> None:
    base = [ex.ipset("s:a", []), ex.ipset("s:b", []), ex.profile(ex.KNS, [ex.rule()])]
    base += [ex.policy(ex.pid(f"p{i}", "ns")) for i in range(3)]
    incremental = PolicyCompiler()
    state: KernelState = {}
    replay(state, incremental.apply(base))
    for batch in batches:
        result = incremental.apply(batch)
        assert not result.warnings
        replay(state, result)
    fresh = PolicyCompiler()
    fresh.apply(base + [m for b in batches for m in b])
    assert state == full_state(fresh)
    assert full_state(incremental) == full_state(fresh)
    assert incremental.ipset_state() == fresh.ipset_state()


def test_single_flavor_compilers_render_only_their_flavor() -> None:
    nft_only = PolicyCompiler(flavors=["nft"])
    r = nft_only.apply(ex.workload())
    assert not r.iptables and not r.ipset_restore and not nft_only.hooks()
    assert "add rule ip calico filter-cali-tw-cali12345678901" in r.nft_script
    ipt_only = PolicyCompiler(flavors=["iptables"])
    r = ipt_only.apply(ex.workload())
    assert r.iptables and r.ipset_restore and not r.nft_script
    both = PolicyCompiler()
    rb = both.apply(ex.workload())
    assert rb.restore_input(4) == r.restore_input(4)
