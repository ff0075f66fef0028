"""Lab pods: a network namespace each, networked by the node's CNI chain like a runtime does.

``add`` (``calico-lab pod add <node> <ns>/<name>``):

1. the namespace's ``kns.<ns>`` profile is created if the namespace is new;
2. the pod's record ``<state>/pods/<ns>/<name>.json`` is written (created exclusively, so two
   adds of one pod cannot both proceed) with its labels and the named ports every lab pod
   serves (``serve-80-tcp``, ``serve-81-tcp``, ``serve-80-udp``, ``serve-81-udp``) -- the
   ``calico`` plugin reads labels and ports from it (``pod_metadata_dir``);
3. the pod's network namespace ``<prefix>pod-<ns>.<name>`` is made, loopback up;
4. the node's config list runs with ``CNI_COMMAND=ADD``, ``CNI_CONTAINERID`` (64 hex, as
   containerd's), ``CNI_NETNS=/var/run/netns/<pod-netns>``, ``CNI_IFNAME=eth0``,
   ``CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;K8S_POD_INFRA_CONTAINER_ID=..``,
   ``CNI_PATH`` = this venv's bin, /usr/lib/cni, /opt/cni/bin, each plugin exec'd inside the
   node's namespace (``ip netns exec``); ``--publish`` becomes portmap's ``portMappings``;
5. the result is cached in the record (DEL and CHECK get it as ``prevResult``), and the node's
   pod server starts serving the pod.

A failed ADD is followed by DEL (as kubelet does) and the namespace and record are removed.
``delete`` runs DEL through the chain with the cached result, then removes the namespace (and
any process left in it) and the record; if DEL fails the pod stays (``--force`` removes it
anyway, DEL having been attempted).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from libcalico.cli.lab.control_plane import LabError
from libcalico.lab import namespaces, podserver
from libcalico.lab.cni_runtime import CniExecError, CniRuntime, RuntimeConf, k8s_args
from libcalico.lab.nodes import LabNodes, start_podserver
from libcalico.model.names import is_dns1123_label
from libcalico.netns import delete_netns, list_netns, run

POD_PORTS = tuple(
    {"name": f"serve-{port}-{proto}", "protocol": proto.upper(), "port": port}
    for proto in ("tcp", "udp") for port in podserver.PORTS
)
NETNS_DIR = "/var/run/netns"


def parse_ref(ref: str) -> tuple[str, str]:
    """``<ns>/<name>`` or ``<name>`` (namespace ``default``)."""
    ns, sep, name = ref.partition("/")
    if not sep:
        ns, name = "default", ref
    for what, value in (("namespace", ns), ("pod name", name)):
        if not is_dns1123_label(value):
            raise LabError(f"{what} {value!r} is not a DNS-1123 label (lowercase letters, digits "
                           "and '-', starting and ending alphanumeric, at most 63 characters)")
    return ns, name


def parse_publish(specs: list[str]) -> list[dict[str, Any]]:
    """``HOST:CONTAINER[/tcp|udp]`` -> portmap's ``portMappings`` entries."""
    out = []
    for text in specs:
        ports, _, proto = text.partition("/")
        host, sep, container = ports.partition(":")
        try:
            if not sep:
                raise ValueError
            mapping = {"hostPort": int(host), "containerPort": int(container),
                       "protocol": (proto or "tcp").lower()}
        except ValueError:
            raise LabError(f"--publish {text!r} is not HOST:CONTAINER[/tcp|udp]") from None
        if mapping["protocol"] not in ("tcp", "udp"):
            raise LabError(f"--publish {text!r}: protocol must be tcp or udp")
        out.append(mapping)
    return out


def record_path(lab: LabNodes, ns: str, name: str) -> str:
    return str(lab.pods_dir / ns / f"{name}.json")


def load(lab: LabNodes, ns: str, name: str) -> dict[str, Any]:
    try:
        with open(record_path(lab, ns, name)) as f:
            rec: dict[str, Any] = json.load(f)
    except FileNotFoundError:
        raise LabError(f"no lab pod {ns}/{name} (calico-lab pod list)") from None
    return rec


def save(lab: LabNodes, rec: dict[str, Any]) -> None:
    path = record_path(lab, rec["namespace"], rec["name"])
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(rec, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def list_pods(lab: LabNodes) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if not lab.pods_dir.is_dir():
        return out
    for ns_dir in sorted(lab.pods_dir.iterdir()):
        for path in sorted(ns_dir.glob("*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
    return out


def _runtime(lab: LabNodes, node: str) -> CniRuntime:
    return CniRuntime(netns_exec=lab.node_netns(node))


def _rt(rec: dict[str, Any]) -> RuntimeConf:
    caps: dict[str, Any] = {}
    if rec.get("publish"):
        caps["portMappings"] = rec["publish"]
    return RuntimeConf(
        container_id=rec["container_id"], netns=rec["netns_path"], ifname="eth0",
        args=k8s_args(rec["namespace"], rec["name"], rec["container_id"]),
        capability_args=caps,
    )


async def _ensure_namespace(lab: LabNodes, ns: str) -> bool:
    from libcalico.client import DatastoreClient

    async with DatastoreClient(lab.layout.target("datastore"), timeout=20) as ds:
        _, created = await namespaces.ensure(ds, ns)
    return created


def add(
    lab: LabNodes, node: str, ns: str, name: str, labels: dict[str, str],
    publish: list[dict[str, Any]], report: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    node_netns = lab.node_netns(node)
    if asyncio.run(_ensure_namespace(lab, ns)):
        report(f"namespace {ns} created")
    os.makedirs(lab.pods_dir / ns, exist_ok=True)
    container_id = secrets.token_hex(32)
    netns = f"{lab.prefix}pod-{ns}.{name}"
    rec: dict[str, Any] = {
        "namespace": ns, "name": name, "node": node, "node_netns": node_netns,
        "netns": netns, "netns_path": f"{NETNS_DIR}/{netns}", "container_id": container_id,
        "labels": labels, "annotations": {}, "ports": list(POD_PORTS), "publish": publish,
        "state": "creating", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        with open(record_path(lab, ns, name), "x") as f:
            json.dump(rec, f, indent=2, sort_keys=True)
    except FileExistsError:
        other = load(lab, ns, name)
        raise LabError(f"pod {ns}/{name} exists (on {other.get('node')}, "
                       f"{other.get('state')})") from None
    try:
        if netns in list_netns():
            delete_netns(netns)  # left over by a crashed add of this very pod
        run(["ip", "netns", "add", netns])
        run(["ip", "-n", netns, "link", "set", "lo", "up"])
        runtime = _runtime(lab, node)
        rt = _rt(rec)
        conflist = lab.conflist(node)
        try:
            result = runtime.add(conflist, rt)
        except CniExecError as exc:
            try:
                runtime.delete(conflist, rt, None)
            except CniExecError as del_exc:
                report(f"DEL after the failed ADD also failed: {del_exc}")
            raise LabError(f"CNI ADD for {ns}/{name} on {node}: {exc}") from exc
    except BaseException:
        delete_netns(netns)
        os.unlink(record_path(lab, ns, name))
        raise
    rec["result"] = result
    rec["ips"] = [ip["address"].split("/")[0] for ip in result.get("ips", [])]
    rec["interface"] = next((i["name"] for i in result.get("interfaces", [])
                             if not i.get("sandbox")), "")
    rec["state"] = "running"
    rec["cni_seconds"] = round(sum(t.seconds for t in runtime.timings), 4)
    save(lab, rec)
    _serve(lab, node, rec)
    return rec


def _serve(lab: LabNodes, node: str, rec: dict[str, Any]) -> None:
    sock = str(lab.podserver_socket(node))
    req = {"op": "add", "pod": f"{rec['namespace']}/{rec['name']}", "netns": rec["netns_path"]}
    try:
        reply = podserver.request(sock, req)
    except OSError:
        start_podserver(lab, node)  # it serves every running pod of the node when it starts
        return
    if not reply.get("ok"):
        raise LabError(f"the pod server of {node} cannot serve {rec['namespace']}/"
                       f"{rec['name']}: {reply.get('error')}")


def check(lab: LabNodes, ns: str, name: str) -> None:
    rec = load(lab, ns, name)
    try:
        _runtime(lab, rec["node"]).check(lab.conflist(rec["node"]), _rt(rec),
                                         rec.get("result") or {})
    except CniExecError as exc:
        raise LabError(f"CNI CHECK for {ns}/{name}: {exc}") from exc


def delete(lab: LabNodes, ns: str, name: str, force: bool = False) -> dict[str, Any]:
    rec = load(lab, ns, name)
    node = rec["node"]
    try:
        podserver.request(str(lab.podserver_socket(node)),
                          {"op": "del", "pod": f"{ns}/{name}"})
    except OSError:
        pass
    error: CniExecError | None = None
    if node in lab.nodes and lab.node_netns(node) in list_netns():
        try:
            _runtime(lab, node).delete(lab.conflist(node), _rt(rec), rec.get("result"))
        except CniExecError as exc:
            error = exc
    if error is not None and not force:
        rec["state"] = "deleting"
        save(lab, rec)
        raise LabError(f"CNI DEL for {ns}/{name}: {error} (the pod is kept; retry, or "
                       "pod del --force)")
    if rec["netns"] in list_netns():
        delete_netns(rec["netns"])
    os.unlink(record_path(lab, ns, name))
    try:
        os.rmdir(lab.pods_dir / ns)
    except OSError:
        pass
    return rec


def delete_all(lab: LabNodes, report: Callable[[str], None]) -> bool:
    """Every pod, CNI DEL first when the node still has its namespace (``down``)."""
    pods = list_pods(lab)
    if not pods:
        return True
    failures: list[str] = []

    def one(rec: dict[str, Any]) -> None:
        try:
            delete(lab, rec["namespace"], rec["name"], force=True)
        except (LabError, OSError) as exc:
            failures.append(f"{rec['namespace']}/{rec['name']}: {exc}")

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(one, pods))
    report(f"pods         deleted {len(pods) - len(failures)} of {len(pods)}")
    for f in failures:
        report(f"pods         {f}")
    return not failures


def exec_argv(lab: LabNodes, ns: str, name: str, cmd: list[str]) -> list[str]:
    rec = load(lab, ns, name)
    if rec["netns"] not in list_netns():
        raise LabError(f"pod {ns}/{name} has no network namespace {rec['netns']}")
    return ["ip", "netns", "exec", rec["netns"], *cmd]
