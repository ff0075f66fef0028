"""load_documents(): YAML and JSON manifests, Lists, empty documents and the errors users see."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from libcalico.errors import ValidationError
from libcalico.model import load_documents, validate
from tests.paths import SEED_MANIFESTS

SEED = SEED_MANIFESTS


def seed_files() -> list[Path]:
    return sorted(SEED.glob("*.yaml"))


@pytest.mark.skipif(not SEED.exists(), reason="the user's seed manifests are not mounted")
@pytest.mark.parametrize("path", seed_files(), ids=lambda p: p.name)
def test_seed_manifests_load_and_validate_unchanged(path: Path) -> None:
    docs = load_documents(path.read_text(), str(path))
    assert len(docs) == 1
    out = validate(docs[0])
    # Nothing the user wrote is changed or dropped; validation only adds defaults.
    for key, value in docs[0]["spec"].items():  # type: ignore[typeddict-item]
        assert out["spec"][key] == value
    assert out["metadata"] == docs[0]["metadata"]


def test_seed_manifest_values() -> None:
    text = (SEED / "01-ippool-crosssubnet.yaml").read_text()
    (pool,) = load_documents(text, "01.yaml")
    out = validate(pool)
    assert out["spec"]["blockSize"] == 24
    assert out["spec"]["ipipMode"] == "CrossSubnet"
    (peer,) = load_documents((SEED / "03-bgppeer-to-reflectors.yaml").read_text(), "03.yaml")
    assert validate(peer)["spec"]["peerSelector"] == 'route-reflector == "true"'


MULTI = """
# comment before the first document
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: a
spec:
  cidr: 10.0.0.0/16
---
---
apiVersion: projectcalico.org/v3
kind: Profile
metadata:
  name: b
  creationTimestamp: 2024-01-02T03:04:05Z
...
"""


def test_multiple_documents_skip_empty_ones_and_keep_timestamps_as_text() -> None:
    docs = load_documents(MULTI, "multi.yaml")
    assert [d["kind"] for d in docs] == ["IPPool", "Profile"]
    assert docs[1]["metadata"]["creationTimestamp"] == "2024-01-02T03:04:05Z"
    assert load_documents("", "empty.yaml") == []
    assert load_documents("---\n# nothing\n---\n", "empty.yaml") == []


def test_list_kinds_expand() -> None:
    text = """
apiVersion: v1
kind: List
items:
- apiVersion: projectcalico.org/v3
  kind: Tier
  metadata: {name: t1}
- apiVersion: projectcalico.org/v3
  kind: Tier
  metadata: {name: t2}
"""
    assert [d["metadata"]["name"] for d in load_documents(text, "l.yaml")] == ["t1", "t2"]
    typed = """
apiVersion: projectcalico.org/v3
kind: IPPoolList
items:
- metadata: {name: p}
  spec: {cidr: 10.0.0.0/16}
"""
    (p,) = load_documents(typed, "t.yaml")
    assert (p["kind"], p["apiVersion"]) == ("IPPool", "projectcalico.org/v3")
    assert load_documents("kind: List\napiVersion: v1\nitems: []\n", "e.yaml") == []


def test_json_object_and_array() -> None:
    one = {"apiVersion": "projectcalico.org/v3", "kind": "Tier", "metadata": {"name": "t"}}
    assert load_documents(json.dumps(one), "t.json") == [one]
    assert load_documents(json.dumps([one, one]), "t.json") == [one, one]
    listed = {"apiVersion": "v1", "kind": "List", "items": [one]}
    assert load_documents("\n\t" + json.dumps(listed), "t.json") == [one]


def test_kubernetes_network_policy_is_converted() -> None:
    text = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: dev}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"""
    (policy,) = load_documents(text, "np.yaml")
    assert policy["kind"] == "NetworkPolicy"
    assert policy["metadata"] == {"name": "knp.default.deny-all", "namespace": "dev"}
    validate(policy)


@pytest.mark.parametrize(
    ("text", "fragments", "field"),
    [
        ("kind: IPPool\nmetadata:\n  name: a\n spec: {}\n", ["bad.yaml", "line 4"], ""),
        ("a: [1, 2\n", ["bad.yaml", "invalid YAML", "line 2"], ""),
        ("apiVersion: projectcalico.org/v3\nkind: Tier\nkind: Tier\n",
         ["bad.yaml", "duplicate key 'kind'", "line 3"], ""),
        ("apiVersion: projectcalico.org/v3\nkind: IPPol\nmetadata: {name: a}\n",
         ["bad.yaml: document 1 (line 1)", "unknown kind 'IPPol'"], "kind"),
        ("apiVersion: projectcalico.org/v3\nkind: ippool\nmetadata: {name: a}\n",
         ["did you mean IPPool?"], "kind"),
        ("apiVersion: projectcalico.org/v2\nkind: IPPool\nmetadata: {name: a}\n",
         ["apiVersion 'projectcalico.org/v2'", "projectcalico.org/v3"], "apiVersion"),
        ("apiVersion: v1\nkind: NetworkPolicy\nmetadata: {name: a}\n",
         ["networking.k8s.io/v1"], "apiVersion"),
        ("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: a}\n",
         ["unknown kind 'Ingress'"], "kind"),
        ("---\nmetadata: {}\n---\n- 1\n", ["document 1 (line 2)", "has no kind"], "kind"),
        ("---\nkind: Tier\n", ["apiVersion null is not supported for kind Tier"], "apiVersion"),
        ("- 1\n", ["document 1 (line 1) item 0", "got an integer 1"], ""),
        ("just a string\n", ["expected a resource mapping", "'just a string'"], ""),
        ("apiVersion: v1\nkind: List\nitems: 5\n", ["items must be a list"], "items"),
    ],
)  # fmt: skip
def test_errors_name_the_source_and_line(text: str, fragments: list[str], field: str) -> None:
    with pytest.raises(ValidationError) as e:
        load_documents(text, "bad.yaml")
    message = str(e.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "\n" not in message
    assert e.value.field == field


def test_second_document_error_names_its_line() -> None:
    text = "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: a}\n---\nkind: Nope\n"
    with pytest.raises(ValidationError) as e:
        load_documents(text, "two.yaml")
    assert "two.yaml: document 2 (line 5)" in str(e.value)
