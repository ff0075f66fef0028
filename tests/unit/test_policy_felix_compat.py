"""Our rendering against rules captured from real Felix nodes (``iptables-save`` / ``-S``).

Every ``cali:`` ID below was read off a running Calico node; matching them proves the hash
(running SHA-224 over chain name and rules), the fragment order (comments, matches, action),
the spelling of each match and action, and the static chain layout are Felix's. The captures
predate the drop mark (their mark bits are accept 0x10000, pass 0x20000, scratch0 0x40000,
scratch1 0x80000), so the static-layout test builds its context with those bits.
"""

from __future__ import annotations

import re

from services.policy.config import CompilerConfig
from services.policy.generic import ACCEPT, DROP, RETURN, Chain, Rule, clear_mark, jump, set_mark
from services.policy.iptables.hash import rule_hashes
from services.policy.iptables.render import render_chain, render_hooks
from services.policy.marks import Marks
from services.policy.rules import static
from services.policy.rules.context import Context

ID = re.compile(r'"cali:([A-Za-z0-9_-]{16})"')


def ids(lines: tuple[str, ...] | list[str]) -> list[str]:
    return [m.group(1) for line in lines if (m := ID.search(line))]


def test_hook_ids_match_felix() -> None:
    rules = [Rule((), jump("cali-FORWARD"))]
    assert ids(render_hooks("FORWARD", rules, insert=True)) == ["wUHhoiAYhphO9Mso"]
    assert ids(render_hooks("INPUT", [Rule((), jump("cali-INPUT"))], insert=True)) == [
        "Cz_u1IQiXIMmKD4c"]
    assert ids(render_hooks("OUTPUT", [Rule((), jump("cali-OUTPUT"))], insert=True)) == [
        "tVnHkvAo15HuiPy0"]
    assert ids(render_hooks("PREROUTING", [Rule((), jump("cali-PREROUTING"))],
                            insert=True)) == ["6gwbT8clXdHdC1b1"]
    assert ids(render_hooks("POSTROUTING", [Rule((), jump("cali-POSTROUTING"))],
                            insert=True)) == ["O3lYWMrLQYEMJtB5"]


def test_forward_append_ids_match_felix() -> None:
    appended = [
        Rule((("mark", 0x10000, 0x10000),), ACCEPT, ("Policy explicitly accepted packet.",)),
        Rule((), set_mark(0x10000)),
    ]
    lines = render_hooks("FORWARD", appended, insert=False)
    assert ids(lines) == ["S93hcgKJrXEqnTfs", "mp77cMpurHhyjLrM"]
    assert lines[1] == ('-A FORWARD -m comment --comment "cali:mp77cMpurHhyjLrM" '
                        "--jump MARK --set-mark 0x10000/0x10000")


def test_workload_chain_ids_match_felix() -> None:
    """cali-tw- and cali-fw- chains of a pod, from a Felix that said "Start of policies"."""
    tw = Chain("cali-tw-cali95aa86cbb2a", (
        Rule((("ct", "RELATED,ESTABLISHED"),), ACCEPT),
        Rule((("ct", "INVALID"),), DROP),
        Rule((), clear_mark(0x10000)),
        Rule((), clear_mark(0x20000), ("Start of policies",)),
        Rule((("mark_clear", 0x20000),), jump("cali-pi-_tTE-E7yY40ogArNVgKt")),
        Rule((("mark", 0x10000, 0x10000),), RETURN, ("Return if policy accepted",)),
        Rule((("mark_clear", 0x20000),), DROP, ("Drop if no policies passed packet",)),
        Rule((), jump("cali-pri-kns.default")),
        Rule((("mark", 0x10000, 0x10000),), RETURN, ("Return if profile accepted",)),
        Rule((), jump("cali-pri-ksa.default.default")),
        Rule((("mark", 0x10000, 0x10000),), RETURN, ("Return if profile accepted",)),
        Rule((), DROP, ("Drop if no profiles matched",)),
    ))
    assert ids(render_chain(tw)) == [
        "eCrqwxNk3cKw9Eq6", "_krp5nzavhAu5avJ", "Cu-tVtfKKu413YTT", "leBL64hpAXM9y4nk",
        "pm-LK-c1ra31tRwz", "q_zG8dAujKUIBe0Q", "FUDVBYh1Yr6tVRgq", "X19Z-Pa0qidaNsMH",
        "Ljj0xNidsduxDGUb", "0z9RRvvZI9Gud0Wv", "pNCpK-SOYelSULC1", "sMkvrxvxj13WlTMK",
    ]
    fw = Chain("cali-fw-cali95aa86cbb2a", (
        Rule((("ct", "RELATED,ESTABLISHED"),), ACCEPT),
        Rule((("ct", "INVALID"),), DROP),
        Rule((), clear_mark(0x10000)),
        Rule((("proto", 17), ("dports", ((4789, 4789),))), DROP,
             ("Drop VXLAN encapped packets originating in pods",)),
        Rule((("proto", 4),), DROP, ("Drop IPinIP encapped packets originating in pods",)),
        Rule((), jump("cali-pro-kns.default")),
        Rule((("mark", 0x10000, 0x10000),), RETURN, ("Return if profile accepted",)),
        Rule((), jump("cali-pro-ksa.default.default")),
        Rule((("mark", 0x10000, 0x10000),), RETURN, ("Return if profile accepted",)),
        Rule((), DROP, ("Drop if no profiles matched",)),
    ))
    assert ids(render_chain(fw)) == [
        "3XN24uu3MS3PMvfM", "xyfc0rlfldUi6JAS", "wG4_76ot8e_QgXek", "Ze6pH1ZM5N1pe76G",
        "3bjax7tRUEJ2Uzew", "0pCFB_VsKq1qUOGl", "mbgUOxlInVlwb2Ie", "I7GVOQegh6Wd9EMv",
        "g5ViWVLiyVrKX91C", "RBmQDo38EoPmxJ0I",
    ]


def test_policy_chain_ids_match_felix() -> None:
    pi = Chain("cali-pi-_tTE-E7yY40ogArNVgKt", (
        Rule((("src_set", "cali40s:LrVD8vMIGQDyv8Y7sPFB1Ge"),), set_mark(0x10000)),
        Rule((("mark", 0x10000, 0x10000),), RETURN),
    ))
    assert ids(render_chain(pi)) == ["M4Und37HGrw6jUk8", "sEnlfZagUFRSPRoe"]


def test_static_filter_chains_match_felix() -> None:
    """cali-FORWARD/INPUT/OUTPUT/wl-to-host of an IPIP node with endpoint-to-host ACCEPT."""
    cfg = CompilerConfig(ipip_enabled=True, endpoint_to_host_action="ACCEPT")
    legacy_marks = Marks(accept=0x10000, pass_=0x20000, drop=0, scratch0=0x40000,
                         scratch1=0x80000, endpoint=0xFFF00000)
    ctx = Context(cfg, legacy_marks, 4)
    chains = {c.name: c for c in static.filter_chains(ctx)}
    assert ids(render_chain(chains["cali-FORWARD"])) == [
        "vjrMJCRpqwy5oRoX", "A_sPAO0mcxbT9mOV", "8ZoYfO5HKXWbB3pk", "jdEuaPBe14V2hutn",
        "12bc6HljsMKsmfr-", "NOSxoaGx8OIstr1z",
    ]
    assert ids(render_chain(chains["cali-INPUT"])) == [
        "PajejrV4aFdkZojI", "_wjq-Yrma8Ly1Svo", "8TZGxLWh_Eiz66wc", "6McIeIDvPdL6PE1T",
        "YGPbrUms7NId8xVa", "2gmY7Bg2i0i84Wk_", "q-Vz2ZT9iGE331LL",
    ]
    assert ids(render_chain(chains["cali-OUTPUT"])) == [
        "Mq1_rAdXXH3YkrzW", "69FkRTJDvD5Vu6Vl", "AnEsmO6bDZbQntWW", "9e9Uf3GU5tX--Lxy",
        "0f3LDz_VKuHFaA2K", "OgU2f8BVEAZ_fwkq",
    ]
    assert ids(render_chain(chains["cali-wl-to-host"])) == [
        "Ee9Sbo10IpVujdIY", "nSZbcOoG1xPONxb8"]


def test_hash_is_running_sha224_over_chain_and_rules() -> None:
    first = rule_hashes("c", ["-A c HASH --jump ACCEPT"])
    both = rule_hashes("c", ["-A c HASH --jump ACCEPT", "-A c HASH --jump DROP"])
    assert both[0] == first[0]
    assert rule_hashes("d", ["-A c HASH --jump ACCEPT"]) != first
    assert all(len(h) == 16 for h in both)
