"""Chain and IP-set naming: Felix's 28-character limit with hashed suffixes, kinds, marks."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libcalico.errors import ValidationError
from services.policy import names
from services.policy.marks import allocate


def test_short_names_are_kept() -> None:
    assert names.endpoint_chain("cali-tw-", "cali12345678901") == "cali-tw-cali12345678901"
    assert names.profile_chain("cali-pri-", "kns.default") == "cali-pri-kns.default"
    assert names.policy_chain("cali-pi-", "NetworkPolicy", "default", "allow-web") == (
        "cali-pi-np/default/allow-web")  # exactly 28 characters: kept


def test_long_names_are_hashed_to_28_characters() -> None:
    suffix = "gnp/a-global-policy-with-a-long-name"
    name = names.length_limited("cali-pi-", suffix)
    digest = base64.urlsafe_b64encode(hashlib.sha256(suffix.encode()).digest()).decode()
    assert name == "cali-pi-_" + digest[:19]
    assert len(name) == 28


def test_exact_fit_starting_with_underscore_is_hashed() -> None:
    suffix = "_" + "x" * 19  # 8 + 20 = 28: would look like a hashed name
    assert len("cali-pi-" + suffix) == 28
    assert names.length_limited("cali-pi-", suffix) != "cali-pi-" + suffix
    assert names.length_limited("cali-pi-", "x" * 20) == "cali-pi-" + "x" * 20


def test_hashed_vectors() -> None:
    # Computed once and pinned: a change here renames every long chain on every node.
    assert names.policy_chain("cali-pi-", "NetworkPolicy", "a-namespace-that-is-long",
                              "a-policy-with-a-rather-long-name") == "cali-pi-_dTIt86fyh5WQSf-K6zU"
    assert names.endpoint_chain("cali-fhfw-", names.ALL_INTERFACES) == (
        "cali-fhfw-_Nqh4HyA73udmyanQI")


@given(st.sampled_from(["cali-pi-", "cali-po-", "cali-pri-", "cali-tw-", "cali-fhfw-"]),
       st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789./-_", min_size=1, max_size=80))
def test_length_limit_property(prefix: str, suffix: str) -> None:
    name = names.length_limited(prefix, suffix)
    assert len(name) <= 28
    assert name.startswith(prefix)
    assert name == names.length_limited(prefix, suffix)
    if len(prefix + suffix) < 28:
        assert name == prefix + suffix


@pytest.mark.parametrize(("kind", "ns", "expected"), [
    ("NetworkPolicy", "ns", "np/ns/p"),
    ("GlobalNetworkPolicy", "", "gnp/p"),
    ("KubernetesNetworkPolicy", "ns", "knp/ns/p"),
    ("StagedNetworkPolicy", "ns", "snp/ns/p"),
    ("StagedGlobalNetworkPolicy", "", "sgnp/p"),
    ("StagedKubernetesNetworkPolicy", "ns", "sknp/ns/p"),
    ("KubernetesClusterNetworkPolicy", "", "kcnp/p"),
    ("", "ns", "np/ns/p"),
    ("", "", "gnp/p"),
])
def test_policy_id_strings(kind: str, ns: str, expected: str) -> None:
    assert names.policy_id_string(kind, ns, "p") == expected


def test_ipset_names() -> None:
    sid = "s:qMt7iLlGDhvLnCjM0l9nzxbBy6DHsS8TVSWE3EQ"
    assert names.ipset_name(4, sid) == "cali40s:qMt7iLlGDhvLnCjM0l9nzxb"
    assert len(names.ipset_name(6, sid)) == 31
    assert names.ipset_name(6, "masq-ipam-pools") == "cali60masq-ipam-pools"
    assert names.nft_set_name("cali40s:abc") == "cali40s-abc"
    assert names.temp_ipset_name(4, 3) == "cali4t3"


def test_default_marks() -> None:
    m = allocate()
    assert (m.accept, m.pass_, m.drop, m.scratch0, m.scratch1) == (
        0x10000, 0x20000, 0x40000, 0x80000, 0x100000)
    assert m.endpoint == 0xFFE00000
    assert m.all_calico == 0x1F0000


def test_custom_mark_mask_allocates_lowest_bits_first() -> None:
    m = allocate(0x0F0F0000)
    assert (m.accept, m.pass_, m.drop, m.scratch0, m.scratch1) == (
        0x10000, 0x20000, 0x40000, 0x80000, 0x1000000)
    assert m.endpoint == 0x0E000000


def test_mark_mask_needs_five_bits() -> None:
    with pytest.raises(ValidationError):
        allocate(0xF0000)
