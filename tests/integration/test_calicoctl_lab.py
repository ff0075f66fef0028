"""``calicoctl`` end to end: a real lab (etcd + the datastore service, as ``calico-lab up
--nodes 0`` starts them), calicoctl run as a separate process, etcd read directly.

- the user's seed manifests apply unchanged, one by one;
- ``get ippools -o wide`` prints Calico's columns with the pool's values, spaced as Calico's
  tabwriter spaces them;
- etcd holds each resource under Calico's key, as Calico's JSON;
- every kind of bad input gives one line naming the resource, field and reason, exit 1, and
  leaves etcd exactly as it was.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.test_lab import (
    BIN,
    RESOURCE_PREFIX,
    SEED,
    Lab,
    calicoctl,
    datastore_built,
    etcd_resources,
    running_lab,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not datastore_built(), reason="the datastore service has not landed"),
]

SEED_KINDS = {
    "01-ippool-crosssubnet.yaml": ("IPPool", "ippools/default-ipv4-ippool"),
    "02-node-route-reflector.yaml": ("Node", "nodes/master01"),
    "03-bgppeer-to-reflectors.yaml": ("BGPPeer", "bgppeers/bgppeer-demo"),
    "04-bgpconfiguration-no-mesh.yaml": ("BGPConfiguration", "bgpconfigurations/default"),
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(tmp_path_factory.mktemp("calicoctl") / "lab") as lab:
        for name in sorted(SEED_KINDS):
            result = calicoctl(lab, "apply", "-f", str(SEED / name))
            kind = SEED_KINDS[name][0]
            assert (result.returncode, result.stdout, result.stderr) == (
                0, f"Successfully applied 1 '{kind}' resource(s)\n", ""
            ), name
        yield lab


def test_seed_manifests_reapply_unchanged(lab: Lab) -> None:
    # Applying again replaces each in place (still one resource, Calico's message).
    for name, (kind, _) in sorted(SEED_KINDS.items()):
        result = calicoctl(lab, "apply", "-f", str(SEED / name))
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"Successfully applied 1 '{kind}' resource(s)\n"


def test_get_ippools_wide_prints_calicos_columns(lab: Lab) -> None:
    result = calicoctl(lab, "get", "ippools", "-o", "wide")
    assert result.returncode == 0, result.stderr
    # Go's tabwriter (minwidth 5, padding 3) with calicoctl's tab-terminated last cell: every
    # column, SELECTOR included, is padded; a blank line ends the table.
    assert result.stdout == (
        "NAME                  CIDR            NAT    IPIPMODE      VXLANMODE   DISABLED   "
        "DISABLEBGPEXPORT   SELECTOR   \n"
        "default-ipv4-ippool   10.244.0.0/16   true   CrossSubnet   Never       false      "
        "false              all()      \n"
        "\n"
    )
    ps = calicoctl(lab, "get", "ippool")
    assert ps.stdout == (
        "NAME                  CIDR            SELECTOR   \n"
        "default-ipv4-ippool   10.244.0.0/16   all()      \n"
        "\n"
    )


def test_get_yaml_round_trips_through_apply(lab: Lab) -> None:
    got = calicoctl(lab, "get", "bgppeer", "bgppeer-demo", "-o", "yaml")
    assert got.returncode == 0, got.stderr
    doc = yaml.safe_load(got.stdout)
    assert doc["kind"] == "BGPPeer"
    assert doc["spec"]["peerSelector"] == 'route-reflector == "true"'
    listing = yaml.safe_load(calicoctl(lab, "get", "nodes", "-o", "yaml").stdout)
    assert listing["kind"] == "NodeList"
    assert "master01" in [i["metadata"]["name"] for i in listing["items"]]
    # What get prints is valid input (the resourceVersion in it is current).
    again = calicoctl(lab, "apply", "-f", "-", stdin=got.stdout)
    assert again.returncode == 0, again.stderr


def test_etcd_holds_resources_under_calicos_keys(lab: Lab) -> None:
    stored = etcd_resources(lab.etcd_endpoint)
    for name, (kind, path) in SEED_KINDS.items():
        key = RESOURCE_PREFIX + path
        assert key in stored, f"{key} missing; have {sorted(stored)}"
        _, value = stored[key]
        assert value["kind"] == kind
        assert value["apiVersion"] == "projectcalico.org/v3"
        manifest = yaml.safe_load((SEED / name).read_text())
        # Every field the user wrote is stored as written (defaults may add more).
        spec = value["spec"]
        assert isinstance(spec, dict)
        for field, want in manifest["spec"].items():
            assert spec[field] == want, (key, field)
    pool = stored[RESOURCE_PREFIX + "ippools/default-ipv4-ippool"][1]
    assert pool["spec"]["cidr"] == "10.244.0.0/16"
    assert pool["spec"]["blockSize"] == 24


POOL = """\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: {name}
spec:
  cidr: {cidr}
  blockSize: {block}
  ipipMode: {ipip}
  vxlanMode: {vxlan}
  nodeSelector: {selector}
"""


def _pool(name: str = "extra-pool", cidr: str = "10.77.0.0/16", block: int = 26,
          ipip: str = "Never", vxlan: str = "Never", selector: str = "all()",
          rv: str | None = None) -> str:
    text = POOL.format(name=name, cidr=cidr, block=block, ipip=ipip, vxlan=vxlan,
                       selector=json.dumps(selector))
    if rv is not None:
        text = text.replace(f"  name: {name}\n", f"  name: {name}\n  resourceVersion: \"{rv}\"\n")
    return text


# case -> (input, strings the one error line must contain)
BAD_INPUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "malformed-yaml": ("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: x\n",
                       ("line",)),
    "unknown-kind": (_pool().replace("kind: IPPool", "kind: IPPoolz"), ("IPPoolz",)),
    "bad-cidr": (_pool(name="bad-cidr", cidr="10.77.0.0/33"),
                 ("IPPool(bad-cidr)", "spec.cidr")),
    "block-size-19": (_pool(name="small-blocks", block=19),
                      ("IPPool(small-blocks)", "spec.blockSize", "19")),
    "bad-selector": (_pool(name="bad-selector", selector="has(foo"),
                     ("IPPool(bad-selector)", "spec.nodeSelector")),
    "both-encapsulations": (_pool(name="both-encap", ipip="Always", vxlan="Always"),
                            ("IPPool(both-encap)", "Mode")),
    "stale-resource-version": (
        _pool(name="default-ipv4-ippool", cidr="10.244.0.0/16", block=24, ipip="CrossSubnet",
              rv="1"),
        ("IPPool(default-ipv4-ippool)", "metadata.resourceVersion", "out of date"),
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_1_and_writes_nothing(
    lab: Lab, tmp_path: Path, case: str
) -> None:
    text, must_name = BAD_INPUTS[case]
    # A valid, new resource first in the same file: it must not be written either.
    good = _pool(name=f"innocent-{case}", cidr="10.78.0.0/16")
    path = tmp_path / f"{case}.yaml"
    path.write_text(good + "---\n" + text)
    before = etcd_resources(lab.etcd_endpoint)
    for verb in ("apply", "create"):
        if case == "stale-resource-version" and verb == "create":
            continue
        result = calicoctl(lab, verb, "-f", str(path))
        assert result.returncode == 1, (verb, result.stdout, result.stderr)
        assert result.stdout == "", (verb, result.stdout)
        lines = result.stderr.splitlines()
        assert len(lines) == 1, (verb, result.stderr)
        for needle in must_name:
            assert needle in lines[0], (verb, needle, lines[0])
    assert etcd_resources(lab.etcd_endpoint) == before


def test_unreachable_datastore_one_line_with_how_to_start(lab: Lab, tmp_path: Path) -> None:
    sock = tmp_path / "nothing.sock"
    result = calicoctl(lab, "--datastore", f"unix://{sock}", "get", "ippools")
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert f"unix://{sock}" in lines[0] and "calico-lab up" in lines[0]


def test_label_patch_and_delete_round_trip(lab: Lab, tmp_path: Path) -> None:
    path = tmp_path / "pool.yaml"
    path.write_text(_pool(name="scratch", cidr="10.79.0.0/16"))
    assert calicoctl(lab, "create", "-f", str(path)).stdout == (
        "Successfully created 1 'IPPool' resource(s)\n"
    )
    result = calicoctl(lab, "label", "ippool", "scratch", "team=net")
    assert result.stdout == "Successfully set label team on ippool scratch\n", result.stderr
    result = calicoctl(lab, "patch", "ippool", "scratch", "-p", '{"spec":{"disabled":true}}')
    assert result.stdout == "Successfully patched 1 'IPPool' resource\n", result.stderr
    stored = etcd_resources(lab.etcd_endpoint)[RESOURCE_PREFIX + "ippools/scratch"][1]
    assert stored["metadata"]["labels"] == {"team": "net"}
    assert stored["spec"]["disabled"] is True
    result = calicoctl(lab, "delete", "ippool", "scratch")
    assert result.stdout == "Successfully deleted 1 'IPPool' resource(s)\n", result.stderr
    assert RESOURCE_PREFIX + "ippools/scratch" not in etcd_resources(lab.etcd_endpoint)


def test_version_reports_cluster(lab: Lab) -> None:
    result = calicoctl(lab, "version")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Client Version:    v")
    assert lines[2].startswith("Cluster Version:   ")
    assert lines[3].startswith("Cluster Type:      ")


def test_opt_in_trace_joins_calicoctl_and_datastore_spans(lab: Lab, tmp_path: Path) -> None:
    trace_file = lab.state_dir / "traces.jsonl"
    env = {**lab.env, "CALICO_TRACE_FILE": str(trace_file)}
    result = subprocess.run(
        [str(BIN / "calicoctl"), "apply", "-f", str(SEED / "03-bgppeer-to-reflectors.yaml")],
        capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    # calicoctl flushed its own span on exit; the service's batch exporter flushes within ~5s.
    deadline = time.monotonic() + 15
    while True:
        spans = [json.loads(line) for line in trace_file.read_text().splitlines() if line]
        roots = [s for s in spans if s["name"] == "calicoctl apply"]
        assert len(roots) <= 1
        served = [s for s in spans if roots and s["trace_id"] == roots[0]["trace_id"]
                  and s["service"] == "datastore" and s["kind"] == "SERVER"]
        if roots and {"Get", "Apply"} <= {s["name"].rsplit("/", 1)[-1] for s in served}:
            break
        assert time.monotonic() < deadline, (roots, served)
        time.sleep(0.2)
    assert roots[0]["parent_span_id"] is None
