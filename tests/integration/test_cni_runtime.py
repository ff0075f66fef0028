"""The lab's CNI runtime (what libcni does) against recording fake plugins: config per plugin,
capabilities into runtimeConfig, prevResult chaining, order of ADD/CHECK/DEL, errors."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from libcalico.lab.cni_runtime import CniExecError, CniRuntime, RuntimeConf, load_conflist

FAKE = """#!/bin/sh
# Records what it was given, answers like a plugin.
in=$(cat)
printf '%s\\n' "{\\"plugin\\": \\"$(basename "$0")\\", \\"command\\": \\"$CNI_COMMAND\\", \
\\"containerid\\": \\"$CNI_CONTAINERID\\", \\"netns\\": \\"$CNI_NETNS\\", \
\\"ifname\\": \\"$CNI_IFNAME\\", \\"args\\": \\"$CNI_ARGS\\", \\"stdin\\": $in}" >> "$RECORD"
if [ "$(basename "$0")" = fail ] && [ "$CNI_COMMAND" != DEL ]; then
  echo '{"cniVersion": "1.0.0", "code": 7, "msg": "no", "details": "because"}'; exit 1
fi
if [ "$CNI_COMMAND" = ADD ]; then
  n=$(basename "$0" | wc -c)
  echo "{\\"cniVersion\\": \\"1.0.0\\", \\"ips\\": [{\\"address\\": \\"10.0.0.$n/32\\"}]}"
fi
"""


@pytest.fixture
def fakes(tmp_path: Path) -> tuple[Path, Path]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("first", "second", "fail"):
        p = bindir / name
        p.write_text(FAKE)
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return bindir, tmp_path / "record.jsonl"


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def conflist(version: str, *types: str) -> dict[str, Any]:
    plugins: list[dict[str, Any]] = [{"type": t} for t in types]
    plugins[-1]["capabilities"] = {"portMappings": True}
    return {"name": "net", "cniVersion": version, "plugins": plugins}


def test_add_chains_results_and_passes_only_declared_capabilities(
    fakes: tuple[Path, Path],
) -> None:
    bindir, rec = fakes
    rt_env = {"RECORD": str(rec), "PATH": "/usr/bin:/bin"}
    runtime = CniRuntime([str(bindir)], env=rt_env)
    rt = RuntimeConf("cid1", "/var/run/netns/x", "eth0", [("K8S_POD_NAME", "p")],
                     {"portMappings": [{"hostPort": 80}], "bandwidth": {"ingressRate": 1}})
    result = runtime.add(conflist("1.0.0", "first", "second"), rt)
    assert result["ips"] == [{"address": "10.0.0.7/32"}]  # from "second" (7 bytes with \n)
    first, second = records(rec)
    assert (first["command"], first["containerid"], first["ifname"], first["args"]) == (
        "ADD", "cid1", "eth0", "K8S_POD_NAME=p")
    assert first["stdin"] == {"type": "first", "name": "net", "cniVersion": "1.0.0"}
    assert second["stdin"]["prevResult"]["ips"] == [{"address": "10.0.0.6/32"}]
    assert second["stdin"]["runtimeConfig"] == {"portMappings": [{"hostPort": 80}]}


def test_del_runs_in_reverse_with_the_cached_result_from_040(fakes: tuple[Path, Path]) -> None:
    bindir, rec = fakes
    runtime = CniRuntime([str(bindir)], env={"RECORD": str(rec), "PATH": "/usr/bin:/bin"})
    rt = RuntimeConf("cid2", "/var/run/netns/x")
    cached = {"cniVersion": "1.0.0", "ips": []}
    runtime.delete(conflist("1.0.0", "first", "second"), rt, cached)
    runtime.delete(conflist("0.3.1", "first", "second"), rt, cached)
    got = records(rec)
    assert [g["plugin"] for g in got] == ["second", "first", "second", "first"]
    assert all(g["command"] == "DEL" for g in got)
    assert got[0]["stdin"]["prevResult"] == cached and "prevResult" not in got[2]["stdin"]


def test_check_needs_040_and_errors_carry_the_plugins_code(fakes: tuple[Path, Path]) -> None:
    bindir, rec = fakes
    runtime = CniRuntime([str(bindir)], env={"RECORD": str(rec), "PATH": "/usr/bin:/bin"})
    rt = RuntimeConf("cid3", "/var/run/netns/x")
    with pytest.raises(CniExecError) as err:
        runtime.check(conflist("0.3.1", "first"), rt, {})
    assert err.value.code == 1
    with pytest.raises(CniExecError) as err:
        runtime.add(conflist("1.0.0", "first", "fail", "second"), rt)
    assert (err.value.plugin, err.value.code, err.value.msg, err.value.details) == (
        "fail", 7, "no", "because")
    assert [g["plugin"] for g in records(rec)] == ["first", "fail"]  # ADD stops at the failure
    with pytest.raises(CniExecError) as err:
        CniRuntime([str(bindir)]).find("missing")
    assert "failed to find plugin 'missing'" in str(err.value)


def test_a_single_plugin_conf_is_a_list_of_one(tmp_path: Path) -> None:
    path = tmp_path / "10-x.conf"
    path.write_text(json.dumps({"name": "n", "cniVersion": "0.4.0", "type": "calico",
                                "ipam": {"type": "calico-ipam"}}))
    assert load_conflist(path) == {"name": "n", "cniVersion": "0.4.0", "plugins": [
        {"type": "calico", "ipam": {"type": "calico-ipam"}}]}
