"""Datastore discovery (``libcalico.cli.calicoctl.config``): --datastore, then
CALICO_DATASTORE, then the CalicoAPIConfig file, then the lab's socket."""

from __future__ import annotations

from pathlib import Path

import pytest

from libcalico.cli.calicoctl.config import (
    LAB_DEFAULT_TARGET,
    normalise_target,
    resolve_target,
    unix_socket_path,
)
from libcalico.errors import ValidationError


def _cfg(tmp_path: Path, text: str) -> str:
    path = tmp_path / "calicoctl.cfg"
    path.write_text(text)
    return str(path)


CFG = """\
apiVersion: projectcalico.org/v3
kind: CalicoAPIConfig
metadata: {}
spec:
  datastoreEndpoint: unix:///srv/ds.sock
"""


def test_order_flag_env_file_default(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, CFG)
    env = {"CALICO_DATASTORE": "127.0.0.1:5000"}
    assert resolve_target("unix:///flag.sock", cfg, env).target == "unix:///flag.sock"
    got = resolve_target(None, cfg, env)
    assert (got.target, got.source) == ("127.0.0.1:5000", "CALICO_DATASTORE")
    got = resolve_target(None, cfg, {})
    assert got.target == "unix:///srv/ds.sock"
    assert "spec.datastoreEndpoint" in got.source
    # A config file named explicitly must exist.
    with pytest.raises(ValidationError, match="does not exist"):
        resolve_target(None, str(tmp_path / "absent.cfg"), {})


def test_file_without_endpoint_falls_through_to_lab_default(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "apiVersion: projectcalico.org/v3\nkind: CalicoAPIConfig\nspec: {}\n")
    got = resolve_target(None, cfg, {})
    assert (got.target, got.source) == (LAB_DEFAULT_TARGET, "lab default")


def test_etcd_endpoints_alone_is_reported(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "kind: CalicoAPIConfig\nspec:\n  etcdEndpoints: http://127.0.0.1:2379\n")
    with pytest.raises(ValidationError, match=r"spec\.etcdEndpoints"):
        resolve_target(None, cfg, {})


def test_wrong_kind_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="kind"):
        resolve_target(None, _cfg(tmp_path, "kind: IPPool\nspec: {}\n"), {})
    with pytest.raises(ValidationError, match="cannot read"):
        resolve_target(None, _cfg(tmp_path, "spec: [unclosed\n"), {})


@pytest.mark.parametrize(
    ("given", "want"),
    [
        ("/run/x.sock", "unix:///run/x.sock"),
        ("unix:/run/x.sock", "unix:///run/x.sock"),
        ("unix:///run/x.sock", "unix:///run/x.sock"),
        ("127.0.0.1:5000", "127.0.0.1:5000"),
        (" host:1 ", "host:1"),
    ],
)
def test_normalise_target(given: str, want: str) -> None:
    assert normalise_target(given) == want


def test_unix_socket_path() -> None:
    assert unix_socket_path("unix:///run/x.sock") == "/run/x.sock"
    assert unix_socket_path("host:1") is None
