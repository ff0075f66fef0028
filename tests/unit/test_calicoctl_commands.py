"""calicoctl's verbs against a hand-written fake datastore: Calico's messages, the tables and
YAML they print, and the rule that bad input writes nothing."""

from __future__ import annotations

import copy
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from libcalico.cli.calicoctl.commands.common import Resource
from libcalico.cli.calicoctl.config import DatastoreTarget
from libcalico.cli.calicoctl.main import run
from libcalico.errors import (
    AlreadyExistsError,
    ConflictError,
    NotFoundError,
    UnavailableError,
)
from tests.paths import SEED_MANIFESTS

SEED = SEED_MANIFESTS
NAMESPACED = {"NetworkPolicy", "NetworkSet", "WorkloadEndpoint"}


class FakeDatastore:
    """In-memory datastore with the service's semantics: CAS on resourceVersion, errors from
    ``libcalico.errors``; ``writes`` counts every successful non-dry-run write."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str, str], Resource] = {}
        self.revision = 1
        self.writes = 0
        self.unavailable = False

    def _key(self, kind: str, name: str, namespace: str | None) -> tuple[str, str, str]:
        return (kind, (namespace or "") if kind in NAMESPACED else "", name)

    def _res_key(self, r: Resource) -> tuple[str, str, str]:
        m = r.get("metadata", {})
        return self._key(r["kind"], m.get("name", ""), m.get("namespace", ""))

    def _check(self) -> None:
        if self.unavailable:
            raise UnavailableError("cannot reach the datastore at unix:///x.sock: refused")

    def _store(self, r: Resource, dry_run: bool) -> Resource:
        r = copy.deepcopy(r)
        if dry_run:
            return r
        self.revision += 1
        r["metadata"]["resourceVersion"] = str(self.revision)
        self.items[self._res_key(r)] = r
        self.writes += 1
        return copy.deepcopy(r)

    def _cas(self, r: Resource) -> None:
        rv = r.get("metadata", {}).get("resourceVersion")
        cur = self.items.get(self._res_key(r))
        if rv and cur is not None and cur["metadata"]["resourceVersion"] != rv:
            raise ConflictError(f"{r['kind']}({r['metadata']['name']}) update conflict")

    async def create(self, resource: Resource, *, dry_run: bool = False) -> Resource:
        self._check()
        if self._res_key(resource) in self.items:
            raise AlreadyExistsError(f"resource already exists: {resource['kind']}")
        return self._store(resource, dry_run)

    async def update(self, resource: Resource, *, dry_run: bool = False) -> Resource:
        self._check()
        if self._res_key(resource) not in self.items:
            raise NotFoundError(f"resource does not exist: {resource['kind']}")
        self._cas(resource)
        return self._store(resource, dry_run)

    async def apply(self, resource: Resource, *, dry_run: bool = False) -> Resource:
        self._check()
        self._cas(resource)
        return self._store(resource, dry_run)

    async def delete(
        self, kind: str, name: str, namespace: str | None = None,
        resource_version: str | None = None,
    ) -> Resource:
        self._check()
        key = self._key(kind, name, namespace)
        if key not in self.items:
            raise NotFoundError(f"resource does not exist: {kind}({name})")
        self.writes += 1
        return self.items.pop(key)

    async def get(self, kind: str, name: str, namespace: str | None = None) -> Resource:
        self._check()
        key = self._key(kind, name, namespace)
        if key not in self.items:
            raise NotFoundError(f"resource does not exist: {kind}({name}) with error: not found")
        return copy.deepcopy(self.items[key])

    async def list(
        self, kind: str, namespace: str | None = None, all_namespaces: bool = False
    ) -> tuple[list[Resource], int]:
        self._check()
        out = [
            copy.deepcopy(r) for (k, ns, _), r in sorted(self.items.items())
            if k == kind and (all_namespaces or not namespace or ns == namespace)
        ]
        return out, self.revision


class Harness:
    def __init__(self) -> None:
        self.ds = FakeDatastore()

    def connector(self, target: DatastoreTarget) -> Any:
        @asynccontextmanager
        async def _cm() -> AsyncIterator[FakeDatastore]:
            yield self.ds

        return _cm()

    def __call__(self, *argv: str, stdin: str | None = None,
                 monkeypatch: pytest.MonkeyPatch | None = None) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        if stdin is not None:
            assert monkeypatch is not None
            monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        code = run(list(argv), out, err, connector=self.connector)
        return code, out.getvalue(), err.getvalue()


@pytest.fixture
def ctl() -> Harness:
    return Harness()


POOL = """\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: default-ipv4-ippool
spec:
  blockSize: 24
  cidr: 10.244.0.0/16
  ipipMode: CrossSubnet
  natOutgoing: true
  nodeSelector: all()
  vxlanMode: Never
"""


def _write(tmp_path: Path, text: str, name: str = "r.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_apply_each_seed_manifest(ctl: Harness) -> None:
    expected = {
        "01-ippool-crosssubnet.yaml": "Successfully applied 1 'IPPool' resource(s)\n",
        "02-node-route-reflector.yaml": "Successfully applied 1 'Node' resource(s)\n",
        "03-bgppeer-to-reflectors.yaml": "Successfully applied 1 'BGPPeer' resource(s)\n",
        "04-bgpconfiguration-no-mesh.yaml":
            "Successfully applied 1 'BGPConfiguration' resource(s)\n",
    }
    for name, message in expected.items():
        code, out, err = ctl("apply", "-f", str(SEED / name))
        assert (code, out, err) == (0, message, "")
    assert ctl.ds.writes == 4


def test_get_ippools_wide_exact_layout(ctl: Harness) -> None:
    ctl("apply", "-f", str(SEED / "01-ippool-crosssubnet.yaml"))
    code, out, _ = ctl("get", "ippools", "-o", "wide")
    assert code == 0
    assert out == (
        "NAME                  CIDR            NAT    IPIPMODE      VXLANMODE   DISABLED   "
        "DISABLEBGPEXPORT   SELECTOR   \n"
        "default-ipv4-ippool   10.244.0.0/16   true   CrossSubnet   Never       false      "
        "false              all()      \n"
        "\n"
    )
    code, out, _ = ctl("get", "pool")
    assert out == (
        "NAME                  CIDR            SELECTOR   \n"
        "default-ipv4-ippool   10.244.0.0/16   all()      \n\n"
    )


def test_get_yaml_single_list_and_several(ctl: Harness, tmp_path: Path) -> None:
    ctl("apply", "-f", str(SEED / "01-ippool-crosssubnet.yaml"))
    _, out, _ = ctl("get", "ippool", "default-ipv4-ippool", "-o", "yaml")
    doc = yaml.safe_load(out)
    assert doc["kind"] == "IPPool" and doc["spec"]["cidr"] == "10.244.0.0/16"
    _, out, _ = ctl("get", "ippools", "-o", "yaml")
    doc = yaml.safe_load(out)
    assert doc["kind"] == "IPPoolList" and doc["apiVersion"] == "projectcalico.org/v3"
    assert doc["metadata"]["resourceVersion"] == str(ctl.ds.revision)
    assert [i["metadata"]["name"] for i in doc["items"]] == ["default-ipv4-ippool"]
    _, out, _ = ctl("get", "ippools", "-o", "json")
    assert json.loads(out)["kind"] == "IPPoolList"
    other = POOL.replace("default-ipv4-ippool", "second").replace("10.244.0.0/16", "10.9.0.0/16")
    ctl("create", "-f", _write(tmp_path, other))
    _, out, _ = ctl("get", "ippool", "default-ipv4-ippool", "second", "-o", "yaml")
    assert [d["metadata"]["name"] for d in yaml.safe_load(out)] == ["default-ipv4-ippool",
                                                                      "second"]


def test_get_missing_name_is_one_line_exit_1(ctl: Harness) -> None:
    code, out, err = ctl("get", "ippool", "nope")
    assert code == 1 and out == ""
    assert len(err.splitlines()) == 1 and "nope" in err


def test_create_existing_and_replace_missing(ctl: Harness, tmp_path: Path) -> None:
    f = _write(tmp_path, POOL)
    assert ctl("create", "-f", f)[:2] == (0, "Successfully created 1 'IPPool' resource(s)\n")
    code, _, err = ctl("create", "-f", f)
    assert code == 1
    assert err == ("Failed to create 'IPPool' resource: resource already exists: "
                   "IPPool(default-ipv4-ippool)\n")
    assert ctl("create", "-f", f, "--skip-exists")[0] == 0
    assert ctl("replace", "-f", f)[1] == "Successfully replaced 1 'IPPool' resource(s)\n"
    ctl("delete", "ippool", "default-ipv4-ippool")
    code, _, err = ctl("replace", "-f", f)
    assert code == 1 and "resource does not exist: IPPool(default-ipv4-ippool)" in err


def test_multi_document_and_list_mixed_kinds(ctl: Harness, tmp_path: Path) -> None:
    text = "\n---\n".join((SEED / n).read_text() for n in sorted(p.name for p in SEED.iterdir()))
    code, out, _ = ctl("apply", "-f", _write(tmp_path, text))
    assert (code, out) == (0, "Successfully applied 4 resource(s)\n")
    listing = {"apiVersion": "projectcalico.org/v3", "kind": "List",
               "items": [yaml.safe_load(POOL)]}
    code, out, _ = ctl("apply", "-f", _write(tmp_path, yaml.safe_dump(listing), "l.yaml"))
    assert (code, out) == (0, "Successfully applied 1 'IPPool' resource(s)\n")


def test_stdin(ctl: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = ctl("apply", "-f", "-", stdin=POOL, monkeypatch=monkeypatch)
    assert (code, out) == (0, "Successfully applied 1 'IPPool' resource(s)\n")


BAD = {
    "malformed yaml": "kind: IPPool\nmetadata: {name: x\n",
    "unknown kind": "apiVersion: projectcalico.org/v3\nkind: IPPoolz\nmetadata: {name: x}\n",
    "bad cidr": POOL.replace("10.244.0.0/16", "10.244.0.0/33"),
    "block size 19": POOL.replace("blockSize: 24", "blockSize: 19"),
    "bad selector": POOL.replace("nodeSelector: all()", "nodeSelector: has(x"),
    "both encapsulations": POOL.replace("ipipMode: CrossSubnet", "ipipMode: Always")
    .replace("vxlanMode: Never", "vxlanMode: Always"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_one_line_exit_1_nothing_written(
    ctl: Harness, tmp_path: Path, case: str
) -> None:
    # A good resource first in the same file: it must not be written either.
    good = (SEED / "03-bgppeer-to-reflectors.yaml").read_text()
    code, out, err = ctl("apply", "-f", _write(tmp_path, good + "\n---\n" + BAD[case]))
    assert code == 1
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert ctl.ds.writes == 0


def test_stale_resource_version_writes_nothing(ctl: Harness, tmp_path: Path) -> None:
    ctl("apply", "-f", _write(tmp_path, POOL))
    writes = ctl.ds.writes
    stale = POOL.replace("  name: default-ipv4-ippool\n",
                         "  name: default-ipv4-ippool\n  resourceVersion: \"1\"\n")
    code, out, err = ctl("apply", "-f", _write(tmp_path, stale, "stale.yaml"))
    assert code == 1 and out == ""
    assert err == (
        "Failed to apply 'IPPool' resource: IPPool(default-ipv4-ippool) "
        "metadata.resourceVersion: resource version '1' is out of date (latest: 2); update "
        "the resource YAML/JSON in order to make changes\n"
    )
    assert ctl.ds.writes == writes


def test_delete_by_name_and_skip_not_exists(ctl: Harness, tmp_path: Path) -> None:
    ctl("apply", "-f", _write(tmp_path, POOL))
    code, out, _ = ctl("delete", "ippools", "default-ipv4-ippool")
    assert (code, out) == (0, "Successfully deleted 1 'IPPool' resource(s)\n")
    code, _, err = ctl("delete", "ippools", "default-ipv4-ippool")
    assert code == 1 and err.startswith("Failed to delete 'IPPool' resource: ")
    code, out, _ = ctl("delete", "ippools", "default-ipv4-ippool", "-s")
    assert (code, out) == (0, "Successfully deleted 1 'IPPool' resource(s)\n")


def test_patch_merges_and_validates(ctl: Harness, tmp_path: Path) -> None:
    ctl("apply", "-f", _write(tmp_path, POOL))
    code, out, _ = ctl("patch", "ippool", "default-ipv4-ippool", "-p",
                       '{"spec":{"natOutgoing":false}}')
    assert (code, out) == (0, "Successfully patched 1 'IPPool' resource\n")
    assert ctl.ds.items[("IPPool", "", "default-ipv4-ippool")]["spec"]["natOutgoing"] is False
    writes = ctl.ds.writes
    code, _, err = ctl("patch", "ippool", "default-ipv4-ippool", "-p", "spec: {blockSize: 19}")
    assert code == 1 and "blockSize" in err and len(err.splitlines()) == 1
    assert ctl.ds.writes == writes


def test_label_set_overwrite_remove(ctl: Harness) -> None:
    ctl("apply", "-f", str(SEED / "02-node-route-reflector.yaml"))
    code, out, _ = ctl("label", "nodes", "master01", "zone=a")
    assert (code, out) == (0, "Successfully set label zone on nodes master01\n")
    code, _, err = ctl("label", "nodes", "master01", "zone=b")
    assert code == 1 and "--overwrite" in err
    code, out, _ = ctl("label", "nodes", "master01", "zone=b", "--overwrite")
    assert out == "Successfully updated label zone on nodes master01\n"
    code, out, _ = ctl("label", "nodes", "master01", "zone", "--remove")
    assert out == "Successfully removed label zone from nodes master01\n"
    labels = ctl.ds.items[("Node", "", "master01")]["metadata"]["labels"]
    assert labels == {"route-reflector": "true"}


def test_validate_offline(ctl: Harness, tmp_path: Path) -> None:
    ctl.ds.unavailable = True  # never consulted
    code, out, _ = ctl("validate", "-f", str(SEED / "01-ippool-crosssubnet.yaml"))
    assert (code, out) == (0, "Successfully validated 1 'IPPool' resource(s)\n")
    code, _, err = ctl("validate", "-f", _write(tmp_path, BAD["block size 19"]))
    assert code == 1 and err.startswith("failed to validate 'IPPool' resource: ")


def test_unreachable_datastore_one_line_with_hint(ctl: Harness, tmp_path: Path) -> None:
    ctl.ds.unavailable = True
    code, out, err = ctl("get", "ippools")
    assert code == 1 and out == ""
    assert len(err.splitlines()) == 1
    assert "unix:///run/calico-lab/sock/datastore.sock" in err or "CALICO_DATASTORE" in err
    assert "calico-lab up" in err


def test_unreachable_real_connector_names_socket(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    sock = tmp_path / "absent.sock"
    code = run(["--datastore", f"unix://{sock}", "get", "ippools"], out, err)
    assert code == 1
    assert err.getvalue().count("\n") == 1
    assert f"unix://{sock}" in err.getvalue() and "calico-lab up" in err.getvalue()


def test_namespaced_kinds_default_namespace_and_all_namespaces(
    ctl: Harness, tmp_path: Path
) -> None:
    netset = """\
apiVersion: projectcalico.org/v3
kind: NetworkSet
metadata: {name: ns1-set, namespace: ns1}
spec: {nets: [10.1.0.0/16]}
---
apiVersion: projectcalico.org/v3
kind: NetworkSet
metadata: {name: default-set}
spec: {nets: [10.2.0.0/16]}
"""
    assert ctl("apply", "-f", _write(tmp_path, netset))[0] == 0
    assert ("NetworkSet", "default", "default-set") in ctl.ds.items
    _, out, _ = ctl("get", "networksets")
    assert "default-set" in out and "ns1-set" not in out and "NAMESPACE" not in out
    _, out, _ = ctl("get", "networksets", "-A")
    assert out.startswith("NAMESPACE") and "ns1-set" in out and "default-set" in out
    code, _, err = ctl("get", "ippools", "-n", "ns1")
    assert code == 1 and "IPPool is not namespaced" in err


def test_cluster_information_is_read_only_for_apply(ctl: Harness, tmp_path: Path) -> None:
    ci = ("apiVersion: projectcalico.org/v3\nkind: ClusterInformation\n"
          "metadata: {name: default}\nspec: {calicoVersion: v9}\n")
    code, out, err = ctl("apply", "-f", _write(tmp_path, ci))
    assert (code, out) == (1, "")
    assert err == ("Failed to apply 'ClusterInformation' resource: operation apply is not "
                   "supported on ClusterInformation: resource is readonly\n")
    assert ctl.ds.writes == 0


def test_directory_of_manifests_and_duplicate_create(ctl: Harness, tmp_path: Path) -> None:
    code, out, _ = ctl("apply", "-f", str(SEED))
    assert (code, out) == (0, "Successfully applied 4 resource(s)\n")
    twice = tmp_path / "twice.yaml"
    other = POOL.replace("default-ipv4-ippool", "dup")
    twice.write_text(other + "---\n" + other)
    writes = ctl.ds.writes
    code, out, err = ctl("create", "-f", str(twice))
    assert (code, out) == (1, "")
    assert err == "Failed to create any 'IPPool' resources: IPPool(dup) is given more than once\n"
    assert ctl.ds.writes == writes
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    code, _, err = ctl("apply", "-f", str(empty))
    assert code == 1 and err == f"No resources specified in file {empty}\n"


def test_custom_columns_export_and_node_asn_from_bgp_configuration(ctl: Harness) -> None:
    ctl("apply", "-f", str(SEED / "01-ippool-crosssubnet.yaml"))
    code, out, _ = ctl("get", "ippools", "-o", "custom-columns=NAME,NAT")
    assert (code, out) == (0, "NAME                  NAT    \ndefault-ipv4-ippool   true   \n\n")
    code, _, err = ctl("get", "ippools", "-o", "custom-columns=NAME,BOGUS")
    assert code == 1 and "BOGUS" in err and len(err.splitlines()) == 1
    _, out, _ = ctl("get", "ippool", "default-ipv4-ippool", "-o", "yaml", "--export")
    assert "resourceVersion" not in yaml.safe_load(out)["metadata"]
    # A node without its own AS number shows the global one in brackets (64512 by default).
    ctl("apply", "-f", str(SEED / "02-node-route-reflector.yaml"))
    _, out, _ = ctl("get", "nodes", "-o", "wide")
    assert out.splitlines()[1].split()[:2] == ["master01", "(64512)"]
    ctl("apply", "-f", str(SEED / "04-bgpconfiguration-no-mesh.yaml"))
    _, out, _ = ctl("get", "nodes", "-o", "wide")
    assert out.splitlines()[1].split()[:2] == ["master01", "(63400)"]
