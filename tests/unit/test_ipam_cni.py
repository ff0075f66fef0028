"""CNI spec helpers (env, results per cniVersion, errors, dispatch) and calico-ipam's config."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from libcalico.cni import ipam_plugin, spec
from libcalico.cni.spec import CmdArgs, CniError, IPConfig, Result, Route

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "cid", "CNI_NETNS": "/run/netns/x",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}
RESULT = Result(ips=[IPConfig("10.65.79.5/26"), IPConfig("2001:db8::5/122")],
                routes=[Route("0.0.0.0/0", "169.254.1.1")])


def run(env: dict[str, str], conf: dict[str, Any] | bytes, **handlers: Any) -> tuple[int, Any]:
    out = io.StringIO()
    stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    handlers.setdefault("add", lambda a: RESULT)
    handlers.setdefault("delete", lambda a: None)
    rc = spec.run(env=env, stdin=stdin, out=out, **handlers)
    text = out.getvalue()
    return rc, json.loads(text) if text.strip() else None


def test_cni_args_parse() -> None:
    assert spec.parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=web-0;;IP=10.0.0.9") == {
        "IgnoreUnknown": "1", "K8S_POD_NAME": "web-0", "IP": "10.0.0.9"}
    with pytest.raises(CniError) as err:
        spec.parse_cni_args("novalue")
    assert err.value.code == spec.ERR_INVALID_ENV


@pytest.mark.parametrize(
    ("version", "want"),
    [
        ("1.0.0", {"cniVersion": "1.0.0",
                   "ips": [{"address": "10.65.79.5/26"}, {"address": "2001:db8::5/122"}],
                   "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}], "dns": {}}),
        ("0.4.0", {"cniVersion": "0.4.0",
                   "ips": [{"version": "4", "address": "10.65.79.5/26"},
                           {"version": "6", "address": "2001:db8::5/122"}],
                   "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}], "dns": {}}),
        ("0.2.0", {"cniVersion": "0.2.0",
                   "ip4": {"ip": "10.65.79.5/26",
                           "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]},
                   "ip6": {"ip": "2001:db8::5/122"}, "dns": {}}),
    ],
)
def test_result_per_version_and_back(version: str, want: dict[str, Any]) -> None:
    rendered = spec.result_to_json(RESULT, version)
    assert rendered == want
    back = spec.result_from_json(rendered)
    assert [i.address for i in back.ips] == [i.address for i in RESULT.ips]
    assert back.routes == RESULT.routes


def test_result_with_interfaces_and_gateway() -> None:
    r = Result(interfaces=[spec.Interface("cali123", "ee:ee:ee:ee:ee:ee")],
               ips=[IPConfig("10.0.0.1/32", "169.254.1.1", 0)])
    out = spec.result_to_json(r, "0.3.1")
    assert out["interfaces"] == [{"name": "cali123", "mac": "ee:ee:ee:ee:ee:ee"}]
    assert out["ips"] == [{"version": "4", "address": "10.0.0.1/32", "gateway": "169.254.1.1",
                           "interface": 0}]
    assert spec.result_from_json(out).ips[0].interface == 0


def test_dispatch_add_del_version() -> None:
    rc, out = run(ENV, {"cniVersion": "0.3.1", "name": "n"})
    assert rc == 0 and out["ips"][0]["version"] == "4"
    rc, out = run(dict(ENV, CNI_COMMAND="DEL"), {"cniVersion": "1.0.0"})
    assert rc == 0 and out is None
    rc, out = run({"CNI_COMMAND": "VERSION"}, b"")
    assert rc == 0 and out["supportedVersions"] == list(spec.SUPPORTED_VERSIONS)


def test_dispatch_errors_are_cni_json() -> None:
    rc, out = run(ENV, {"cniVersion": "9.9.9"})
    assert rc == 1 and out["code"] == spec.ERR_INCOMPATIBLE_VERSION and "9.9.9" in out["msg"]
    rc, out = run(ENV, b"{not json")
    assert rc == 1 and out["code"] == spec.ERR_DECODE
    rc, out = run({k: v for k, v in ENV.items() if k != "CNI_NETNS"}, {"cniVersion": "1.0.0"})
    assert rc == 1 and out["code"] == spec.ERR_INVALID_ENV and "CNI_NETNS" in out["msg"]
    rc, out = run(dict(ENV, CNI_COMMAND="CHECK"), {"cniVersion": "0.3.1"}, check=lambda a: None)
    assert rc == 1 and out["code"] == spec.ERR_INCOMPATIBLE_VERSION

    def boom(args: CmdArgs) -> Result:
        raise CniError(100, "no free addresses", "add a pool")

    rc, out = run(ENV, {"cniVersion": "0.4.0"}, add=boom)
    assert out == {"cniVersion": "0.4.0", "code": 100, "msg": "no free addresses",
                   "details": "add a pool"}

    def bug(args: CmdArgs) -> Result:
        raise KeyError("x")

    rc, out = run(ENV, {"cniVersion": "1.0.0"}, add=bug)
    assert rc == 1 and out["code"] == spec.ERR_INTERNAL and out["details"] == "KeyError"


def test_nodename_endpoint_handle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "nodename"
    f.write_text("node-from-file\n")
    assert ipam_plugin.determine_nodename({"nodename": "n1", "nodename_file": str(f)}) == "n1"
    assert ipam_plugin.determine_nodename({"nodename_file": str(f)}) == "node-from-file"
    assert ipam_plugin.determine_nodename({"nodename_file": str(tmp_path / "missing")})
    conf = {"name": "net", "ipam": {"ipam_endpoint": "unix:///a.sock"}}
    assert ipam_plugin.ipam_endpoint(conf, {}) == "unix:///a.sock"
    assert ipam_plugin.ipam_endpoint({}, {"CALICO_IPAM_ENDPOINT": "x:1"}) == "x:1"
    assert ipam_plugin.ipam_endpoint({}, {}) == ipam_plugin.DEFAULT_ENDPOINT
    assert ipam_plugin.handle_id(conf, "abc") == "net.abc"
    assert ipam_plugin.handle_id({}, "abc") == "k8s-pod-network.abc"
    args = CmdArgs("DEL", container_id="abc", args={"K8S_POD_NAME": "p", "K8S_POD_NAMESPACE": "ns"})
    assert ipam_plugin.workload_id(args) == "ns.p"
    assert ipam_plugin.workload_id(CmdArgs("DEL", container_id="abc")) == "abc"


def test_go_time_string() -> None:
    assert ipam_plugin.go_time_string(1_700_000_000_123_450_000) == (
        "2023-11-14 22:13:20.12345 +0000 UTC")
    assert ipam_plugin.go_time_string(1_700_000_000_000_000_000) == "2023-11-14 22:13:20 +0000 UTC"


def test_error_metadata_reader_matches_the_runtime() -> None:
    from urllib.parse import quote

    from libcalico.errors import ResourceExhaustedError
    from libcalico.runtime.interceptors import ERROR_METADATA_PREFIX, error_details_from_metadata

    assert ipam_plugin.ERROR_METADATA_PREFIX == ERROR_METADATA_PREFIX
    err = ResourceExhaustedError("no free addresses in pools p (10.0.0.0/24): full; über")
    md = [(ERROR_METADATA_PREFIX + k, quote(v)) for k, v in err.details().items()]
    md.append(("other", "x"))
    assert ipam_plugin.error_details(md) == error_details_from_metadata(md)
    assert ipam_plugin.error_details([("other", "x")]) is None


def test_bad_ipam_config_is_code_7_before_any_rpc() -> None:
    with pytest.raises(CniError) as err:
        ipam_plugin._pools({"ipv4_pools": "10.0.0.0/24"}, "ipv4_pools")
    assert err.value.code == spec.ERR_INVALID_CONFIG
    with pytest.raises(CniError):
        ipam_plugin.ipam_section({"ipam": ["calico-ipam"]})


def test_plugin_start_up_imports_stay_lean() -> None:
    """VERSION (and the code path before the first RPC) loads no grpc, yaml or OpenTelemetry."""
    code = (
        "import sys, libcalico.cni.ipam_plugin as p;"
        "bad=[m for m in ('grpc','yaml','opentelemetry','libcalico.runtime') if m in sys.modules];"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
