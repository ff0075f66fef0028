"""``calico``: Calico's main CNI plugin -- the pod's veth, addresses, routes and endpoint.

A container runtime runs it once per pod and command, inside the node's network namespace,
with ``CNI_*`` in the environment and the network config on stdin (see ``netconf`` for the
fields). Versions: 0.1.0-0.4.0, 1.0.0 and 1.1.0 (results rendered for the config's version).

ADD::

    config ─> nodename, MTU ─┬─ exec IPAM plugin (CNI_PATH, same stdin) ─┐   (in parallel:
                             └─ datastore: ClusterInformation ready?,    │    the IPAM
                                existing endpoint, [Node podCIDRs]       │    plugin is a
                                                                         v    process too)
        veth cali<sha1(ns.pod)[:11]> <-> CNI_IFNAME (libcalico.cni.plumbing)
        WorkloadEndpoint <node>-k8s-<pod>-<ifname> (labels, kns.<ns>, mac, ipNetworks, ports)
        result on stdout (interfaces: host veth + pod interface, ips /32 /128, routes)

Anything failing after the IPAM plugin answered undoes what was done, in reverse: endpoint,
veth, then IPAM DEL (which releases by handle ``<network>.<containerID>``).

DEL is idempotent: IPAM DEL; the pod's interface is deleted *inside* the pod's namespace (a
newer sandbox of the same pod has a host veth of the same name, which must survive); the
endpoint is deleted only while its ``containerID`` is this container's (compare-and-swap on
its revision, retried). A missing namespace, interface, endpoint or allocation is no error.

CHECK (0.4.0+): the interface, its addresses and default route as ``prevResult`` has them,
the host veth, the endpoint (this container's, same addresses), and the IPAM plugin's CHECK.

STATUS (1.1.0): the datastore answers and says ``datastoreReady``, and the IPAM plugin is
ready (its own STATUS when it speaks 1.1.0; for calico-ipam, the IPAM service's health).
GC (1.1.0): endpoints of this node and network whose attachment is not in
``cni.dev/valid-attachments`` go, with their veth and addresses (see ``cmd_gc``).

Start-up: one process per pod and command, so this module and its helpers import only the
standard library at start; ``grpc`` and the datastore messages are imported (~90 ms) after the
IPAM plugin has been started, so the two overlap. Nothing of OpenTelemetry is imported:
``cnilog.make_spans`` times the phases and, with ``TRACEPARENT`` set, traces them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

from libcalico.cni import cnilog, netconf, spec, wep
from libcalico.cni.netconf import ConfigError, NetConf
from libcalico.cni.spec import CmdArgs, CniError, Interface, IPConfig, Result, Route

SUPPORTED_VERSIONS = (*spec.SUPPORTED_VERSIONS, "1.1.0")
GATEWAY_V4 = "169.254.1.1"
GATEWAY_V6 = "fe80::ecee:eeff:feee:eeee"
HOST_MAC = "ee:ee:ee:ee:ee:ee"

ERR_NOT_AVAILABLE = 50  # STATUS: the plugin cannot service ADD requests
ERR_DATASTORE = 102  # the datastore refused a write (validation, ...)
ERR_CHECK_FAILED = 103  # CHECK: the pod's network is not as ADD left it
ERR_NETWORK = 104  # creating the veth or addresses failed
DEL_RETRIES = 5


def _store_error(err: Exception, what: str) -> CniError:
    from libcalico.cni.store import StoreError

    if isinstance(err, StoreError):
        if err.kind in ("UnavailableError", "ConflictError", "RetriesExhaustedError"):
            return CniError(
                spec.ERR_TRY_AGAIN, f"{what}: {err.message}",
                "start the datastore (calico-lab up), or point datastore_endpoint in the CNI "
                f"config or {netconf.DATASTORE_ENV} at it"
                if err.kind == "UnavailableError" else "the request can be retried",
            )
        return CniError(ERR_DATASTORE, f"{what}: {err.message}", err.kind)
    return CniError(spec.ERR_INTERNAL, f"{what}: {err}", type(err).__name__)


# -- the IPAM plugin, exec'd as the spec says --------------------------------------------------


def find_plugin(plugin_type: str, path: list[str]) -> str:
    if "/" in plugin_type or not plugin_type:
        raise CniError(spec.ERR_INVALID_CONFIG, f"invalid plugin type {plugin_type!r}")
    for d in path:
        candidate = os.path.join(d, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(
        spec.ERR_INVALID_CONFIG,
        f"failed to find plugin {plugin_type!r} in path {path}",
        "install it, or add its directory to CNI_PATH",
    )


class Delegate:
    """One run of a delegated (IPAM) plugin: started now, waited for later.

    ``early()`` returns the plugin's JSON as soon as it is complete on stdout, before the
    process has exited (an interpreter's teardown takes ~20 ms): ADD starts the veth with it,
    then ``wait()`` -- which every caller still does before reporting success -- checks the
    exit status. A 1.1.0 config given to an IPAM plugin that only speaks up to 1.0.0
    (calico-ipam today) is retried once as 1.0.0: the result format is the same.
    """

    def __init__(
        self, plugin_type: str, command: str, args: CmdArgs, stdin: bytes,
        env: Mapping[str, str],
    ) -> None:
        self.plugin_type = plugin_type
        self.command = command
        self.args = args
        self.stdin = stdin
        self.env = env  # CNI_* are the caller's; CNI_COMMAND is set here
        self._outcome: dict[str, Any] | CniError | None = None
        self._start(stdin)

    def _reset_output(self) -> None:
        self._out = b""
        self._err = b""
        self._open: list[Any] = []

    def _start(self, stdin: bytes) -> None:
        binary = find_plugin(self.plugin_type, self.args.path)
        child_env = dict(self.env)
        child_env["CNI_COMMAND"] = self.command
        try:
            self.proc: subprocess.Popen[bytes] = subprocess.Popen(
                [binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=child_env, close_fds=True,
            )
        except OSError as exc:
            raise CniError(spec.ERR_IO, f"cannot run {binary}: {exc.strerror}") from exc
        assert self.proc.stdin is not None
        # Configs are a few hundred bytes: far below a pipe's buffer, so this cannot block.
        self.proc.stdin.write(stdin)
        self.proc.stdin.close()
        self._reset_output()
        self._open = [self.proc.stdout, self.proc.stderr]

    def _read(self, until_json: bool) -> dict[str, Any] | None:
        """Read stdout and stderr (both, so neither pipe can fill up) until stdout holds a
        complete JSON object (``until_json``) or both are closed."""
        import selectors

        with selectors.DefaultSelector() as sel:
            for f in self._open:
                sel.register(f, selectors.EVENT_READ)
            while self._open:
                if until_json and self._out.rstrip().endswith(b"}"):
                    try:
                        parsed = json.loads(self._out)
                    except ValueError:
                        parsed = None
                    if isinstance(parsed, dict):
                        return parsed
                for key, _ in sel.select():
                    f = key.fileobj
                    chunk = os.read(f.fileno(), 65536)  # type: ignore[union-attr]
                    if not chunk:
                        sel.unregister(f)
                        self._open.remove(f)
                        f.close()  # type: ignore[union-attr]
                    elif f is self.proc.stdout:
                        self._out += chunk
                    else:
                        self._err += chunk
        return None

    def early(self) -> dict[str, Any] | None:
        """The JSON the plugin printed, once complete, without waiting for it to exit;
        None when it printed none. Not a verdict: ``wait()`` still decides."""
        if self._outcome is not None:
            return self._outcome if isinstance(self._outcome, dict) else None
        out = self._read(until_json=True)
        if out is None and self._out.strip():
            try:
                parsed = json.loads(self._out)
            except ValueError:
                return None
            return parsed if isinstance(parsed, dict) else None
        return out

    def wait(self) -> dict[str, Any]:
        """The plugin's JSON output (``{}`` when it printed nothing); raises its error.
        Waiting again gives the same outcome."""
        if self._outcome is None:
            try:
                self._outcome = self._wait()
            except CniError as exc:
                self._outcome = exc
                older = self._as_100()
                if exc.code == spec.ERR_INCOMPATIBLE_VERSION and older is not None:
                    self._start(older)
                    try:
                        self._outcome = self._wait()
                    except CniError as again:
                        self._outcome = again
        if isinstance(self._outcome, CniError):
            raise self._outcome
        return self._outcome

    def _as_100(self) -> bytes | None:
        try:
            conf = json.loads(self.stdin)
        except ValueError:
            return None
        if not isinstance(conf, dict) or conf.get("cniVersion") != "1.1.0":
            return None
        conf["cniVersion"] = "1.0.0"
        return json.dumps(conf).encode()

    def _wait(self) -> dict[str, Any]:
        self._read(until_json=False)
        out, err = self._out, self._err
        rc = self.proc.wait()
        data: dict[str, Any] = {}
        if out.strip():
            try:
                parsed = json.loads(out)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                data = parsed
        if rc != 0:
            if "code" in data:
                raise CniError(
                    int(data.get("code") or spec.ERR_INTERNAL),
                    f"{self.plugin_type} {self.command}: {data.get('msg', '')}",
                    str(data.get("details") or ""),
                )
            raise CniError(
                spec.ERR_INTERNAL,
                f"{self.plugin_type} {self.command} failed with exit status {rc}",
                (err or out).decode(errors="replace").strip()[-500:],
            )
        return data


# -- the plugin --------------------------------------------------------------------------------


class CalicoPlugin:
    def __init__(self, env: Mapping[str, str], spans: cnilog.Spans) -> None:
        self.env = env
        self.spans = spans
        self.log = cnilog.PluginLog(netconf.DEFAULT_LOG_FILE, "info")
        self._store: Any = None

    # -- shared steps --------------------------------------------------------------------------

    def load(self, args: CmdArgs, *, need_mtu: bool = True) -> NetConf:
        conf = dict(args.config)
        if not need_mtu:
            conf["mtu"] = conf.get("mtu") or netconf.DEFAULT_MTU
            conf["require_mtu_file"] = False
        try:
            nc = netconf.load(conf, self.env)
        except ConfigError as exc:
            raise CniError(spec.ERR_INVALID_CONFIG, str(exc)) from exc
        self.log = cnilog.PluginLog(nc.log_file, nc.log_level)
        for note in nc.notes:
            self.log.warning(note)
        return nc

    def store(self, nc: NetConf) -> Any:
        if self._store is None:
            with self.spans.span("import_grpc"):
                from libcalico.cni.store import CniStore

                self._store = CniStore(nc.datastore)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    def check_ready(self, nc: NetConf) -> None:
        """Calico refuses to network pods while ClusterInformation says the datastore is not
        ready (an upgrade or restore in progress)."""
        from libcalico.cni.store import StoreError

        try:
            info = self.store(nc).get("ClusterInformation", "default")
        except StoreError as exc:
            raise _store_error(exc, "reading ClusterInformation") from exc
        if info is not None and info.get("spec", {}).get("datastoreReady") is False:
            raise CniError(
                spec.ERR_TRY_AGAIN,
                "the Calico datastore is not ready (ClusterInformation datastoreReady is false)",
                "wait for the upgrade or restore to finish, or set datastoreReady: true",
            )

    def ipam_stdin(self, args: CmdArgs, nc: NetConf, command: str) -> bytes:
        """The config the IPAM plugin gets: the same bytes, unless usePodCidr is substituted."""
        if not netconf.uses_pod_cidr(nc.ipam):
            return args.stdin
        conf = dict(args.config)
        if command == "ADD":
            v4, v6 = self.node_pod_cidrs(nc)
            try:
                conf["ipam"] = netconf.substitute_pod_cidr(nc.ipam, v4, v6)
            except ConfigError as exc:
                raise CniError(spec.ERR_INVALID_CONFIG, str(exc)) from exc
        else:
            conf["ipam"] = netconf.dummy_pod_cidr(nc.ipam)
        return json.dumps(conf).encode()

    def node_pod_cidrs(self, nc: NetConf) -> tuple[list[str], list[str]]:
        from libcalico.cni.store import StoreError

        try:
            node = self.store(nc).get("Node", nc.nodename)
        except StoreError as exc:
            raise _store_error(exc, f"reading Node {nc.nodename} for usePodCidr") from exc
        if node is None:
            raise CniError(
                spec.ERR_INVALID_CONFIG,
                f"ipam uses usePodCidr but there is no Node {nc.nodename!r} in the datastore to "
                "read its pod CIDR from",
                "register the node (calico-lab up --nodes N does), or set ipam.subnet/ranges",
            )
        cidrs = [str(c) for c in (node.get("status") or {}).get("podCIDRs") or []]
        return [c for c in cidrs if ":" not in c], [c for c in cidrs if ":" in c]

    def start_ipam(self, args: CmdArgs, nc: NetConf, command: str) -> Delegate:
        return Delegate(nc.ipam_type, command, args, self.ipam_stdin(args, nc, command), self.env)

    def release(self, args: CmdArgs, nc: NetConf) -> None:
        """IPAM DEL after a failed ADD; a failure here is logged, the ADD error wins."""
        try:
            with self.spans.span("ipam_release"):
                self.start_ipam(args, nc, "DEL").wait()
        except CniError as exc:
            self.log.error(f"releasing addresses after a failed ADD: {exc.msg} {exc.details}")

    # -- ADD -----------------------------------------------------------------------------------

    def cmd_add(self, args: CmdArgs) -> Result:
        nc = self.load(args)
        ids = self.identifiers(args, nc)
        self.log.info(f"ADD {ids.name} netns={args.netns} ipam={nc.ipam_type}")
        existing: dict[str, Any] | None = None
        ipam: Delegate | None = None
        allocated = False
        try:
            if ids.orchestrator == wep.K8S and not netconf.uses_pod_cidr(nc.ipam):
                # Start the IPAM plugin first: its start-up overlaps importing grpc here.
                with self.spans.span("ipam_start"):
                    ipam = self.start_ipam(args, nc, "ADD")
            store = self.store(nc)  # imports grpc while the IPAM plugin runs
            from libcalico.cni.store import StoreError

            with self.spans.span("datastore_read"):
                self.check_ready(nc)
                try:
                    existing = store.get("WorkloadEndpoint", ids.name, ids.namespace)
                except StoreError as exc:
                    raise _store_error(exc, f"reading WorkloadEndpoint {ids.name}") from exc
            if ids.orchestrator == wep.CNI and existing is not None and \
                    existing["spec"].get("containerID") == ids.container_id:
                # Calico returns an existing cni-orchestrator endpoint's addresses as they are.
                self.log.info(f"endpoint {ids.name} exists: returning its addresses")
                return self.result_from_endpoint(args, existing)
            if ipam is None:
                with self.spans.span("ipam_start"):
                    ipam = self.start_ipam(args, nc, "ADD")
            with self.spans.span("ipam_wait"):
                ipam_out = ipam.early()
                if ipam_out is None or "code" in ipam_out:
                    ipam_out = ipam.wait()  # the error, or a retry as 1.0.0
            allocated = True
            ipam_result = spec.result_from_json(ipam_out)
            if not ipam_result.ips:
                raise CniError(spec.ERR_INTERNAL, f"{nc.ipam_type} returned no addresses")
            try:
                metadata = wep.read_pod_metadata(nc.pod_metadata_dir, ids.namespace, ids.pod)
            except ValueError as exc:
                raise CniError(spec.ERR_INVALID_CONFIG, str(exc)) from exc
            addresses = [_host_prefix(ip.address) for ip in ipam_result.ips]
            with self.spans.span("network"):
                iface = self.setup_network(args, nc, ids, addresses, ipam_result.routes)
            try:
                with self.spans.span("ipam_exit"):
                    ipam.wait()  # its exit status, while the veth was being made
                with self.spans.span("datastore_write"):
                    self.write_endpoint(nc, ids, existing, addresses, iface.container_mac,
                                        metadata)
            except BaseException:
                from libcalico.cni import plumbing

                try:
                    plumbing.delete_host_veth(ids.host_ifname)
                except plumbing.PlumbingError as exc:
                    self.log.error(f"removing {ids.host_ifname} after a failed ADD: {exc}")
                raise
        except BaseException as exc:
            if ipam is not None and not allocated:
                # Something failed while the IPAM plugin ran: see whether it allocated.
                try:
                    ipam.wait()
                    allocated = True
                except CniError:
                    pass
            if allocated:
                self.release(args, nc)
            self.log.error(f"ADD {ids.name} failed: {getattr(exc, 'msg', exc)}")
            raise
        if nc.policy_setup_timeout > 0:
            with self.spans.span("policy_wait"):
                self.wait_for_dataplane(nc, ids)
        result = self.result(args, ids, addresses, iface.container_mac, ipam_result, nc)
        self.log.info(f"ADD {ids.name} done: {', '.join(addresses)} on {ids.host_ifname}")
        return result

    def wait_for_dataplane(self, nc: NetConf, ids: wep.Identifiers) -> bool:
        """Poll for the endpoint's status file (``libcalico.endpoint_status``) until it says
        ``up`` or ``policy_setup_timeout_seconds`` pass. As Calico, a timeout only warns: the
        pod starts, its policy follows when the dataplane gets to it."""
        from libcalico import endpoint_status

        workload = f"{ids.namespace}/{ids.pod}" if ids.orchestrator == wep.K8S else ids.workload
        name = endpoint_status.filename(ids.orchestrator, workload, ids.endpoint)
        t0 = time.monotonic()
        deadline = t0 + nc.policy_setup_timeout
        delay = 0.005
        while True:
            status = endpoint_status.read(nc.endpoint_status_dir, name)
            if status is not None and status.get("status") == "up":
                self.log.info(f"endpoint {ids.name} programmed by the dataplane after "
                              f"{(time.monotonic() - t0) * 1000:.0f} ms")
                return True
            if time.monotonic() >= deadline:
                self.log.warning(f"endpoint {ids.name} not programmed within "
                                 f"policy_setup_timeout_seconds={nc.policy_setup_timeout:g} "
                                 f"(no 'up' in {nc.endpoint_status_dir}/{name}); continuing")
                return False
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.05)

    def identifiers(self, args: CmdArgs, nc: NetConf) -> wep.Identifiers:
        if len(args.ifname) > 15:
            raise CniError(spec.ERR_INVALID_ENV, f"CNI_IFNAME {args.ifname!r} is longer than 15")
        ids = wep.identifiers(args.args, args.container_id, args.ifname, nc.nodename, nc.name)
        self.log.set_context(ContainerID=args.container_id, Workload=ids.workload_id)
        try:
            ids.name  # noqa: B018 - validates every part of the name
        except ValueError as exc:
            raise CniError(spec.ERR_INVALID_ENV, str(exc)) from exc
        return ids

    def setup_network(
        self, args: CmdArgs, nc: NetConf, ids: wep.Identifiers, addresses: list[str],
        routes: list[Route],
    ) -> Any:
        from libcalico.cni import plumbing

        if not os.path.exists(args.netns):
            raise CniError(spec.ERR_INVALID_ENV, f"CNI_NETNS {args.netns} does not exist")
        try:
            return plumbing.setup_pod_network(plumbing.PodNetworkSpec(
                netns_path=args.netns,
                host_ifname=ids.host_ifname,
                container_ifname=args.ifname,
                addresses=addresses,
                mtu=nc.mtu,
                routes=[r.dst for r in routes if r.dst not in ("0.0.0.0/0", "::/0")],
                include_default_routes=nc.include_default_routes or not routes or any(
                    r.dst in ("0.0.0.0/0", "::/0") for r in routes),
                allow_ip_forwarding=nc.allow_ip_forwarding,
            ))
        except plumbing.PlumbingError as exc:
            raise CniError(ERR_NETWORK, f"setting up the pod's network: {exc}") from exc

    def write_endpoint(
        self, nc: NetConf, ids: wep.Identifiers, existing: dict[str, Any] | None,
        addresses: list[str], mac: str, metadata: dict[str, Any],
    ) -> None:
        from libcalico.cni.store import StoreError

        store = self.store(nc)
        desired = wep.build(ids, ip_networks=addresses, mac=mac, host_ifname=ids.host_ifname,
                            metadata=metadata)
        if ids.orchestrator == wep.CNI:
            self.ensure_network_profile(nc)
        for attempt in range(DEL_RETRIES):
            try:
                if existing is None:
                    store.create(desired)
                else:
                    # k8s: the endpoint of an earlier sandbox of this pod is taken over (its
                    # addresses are freed by that sandbox's own DEL).
                    desired["metadata"]["resourceVersion"] = existing["metadata"].get(
                        "resourceVersion", "")
                    for key in ("uid", "creationTimestamp"):
                        if key in existing["metadata"]:
                            desired["metadata"][key] = existing["metadata"][key]
                    store.update(desired)
                return
            except StoreError as exc:
                retry = exc.kind in ("ConflictError", "AlreadyExistsError", "NotFoundError")
                if not retry or attempt == DEL_RETRIES - 1:
                    raise _store_error(exc, f"writing WorkloadEndpoint {ids.name}") from exc
                existing = store.get("WorkloadEndpoint", ids.name, ids.namespace)

    def ensure_network_profile(self, nc: NetConf) -> None:
        from libcalico.cni.store import StoreError

        store = self.store(nc)
        try:
            if store.get("Profile", nc.name) is None:
                store.create(wep.network_profile(nc.name))
        except StoreError as exc:
            if exc.kind != "AlreadyExistsError":
                self.log.warning(f"cannot create the network's profile {nc.name!r}: {exc}")

    def result(
        self, args: CmdArgs, ids: wep.Identifiers, addresses: list[str], mac: str,
        ipam_result: Result, nc: NetConf,
    ) -> Result:
        res = Result(
            interfaces=[
                Interface(ids.host_ifname, HOST_MAC),
                Interface(args.ifname, mac, args.netns),
            ],
            ips=[IPConfig(a, interface=1) for a in addresses],
            dns=ipam_result.dns,
        )
        extra = [r for r in ipam_result.routes if r.dst not in ("0.0.0.0/0", "::/0")]
        default = nc.include_default_routes or not ipam_result.routes or len(extra) < len(
            ipam_result.routes)
        if default and any(":" not in a for a in addresses):
            res.routes.append(Route("0.0.0.0/0", GATEWAY_V4))
        if default and any(":" in a for a in addresses):
            res.routes.append(Route("::/0", GATEWAY_V6))
        for r in extra:
            res.routes.append(Route(r.dst, GATEWAY_V6 if ":" in r.dst else GATEWAY_V4))
        return res

    def result_from_endpoint(self, args: CmdArgs, endpoint: dict[str, Any]) -> Result:
        s = endpoint["spec"]
        addrs = [str(a) for a in s.get("ipNetworks") or []]
        res = Result(
            interfaces=[Interface(str(s.get("interfaceName", "")), HOST_MAC),
                        Interface(args.ifname, str(s.get("mac", "")), args.netns)],
            ips=[IPConfig(a, interface=1) for a in addrs],
        )
        if any(":" not in a for a in addrs):
            res.routes.append(Route("0.0.0.0/0", GATEWAY_V4))
        if any(":" in a for a in addrs):
            res.routes.append(Route("::/0", GATEWAY_V6))
        return res

    # -- DEL -----------------------------------------------------------------------------------

    def cmd_del(self, args: CmdArgs) -> None:
        nc = self.load(args, need_mtu=False)
        ids = self.identifiers(args, nc)
        self.log.info(f"DEL {ids.name} netns={args.netns or '-'}")
        with self.spans.span("ipam_start"):
            ipam = self.start_ipam(args, nc, "DEL")
        errors: list[CniError] = []
        try:
            with self.spans.span("network"):
                self.delete_pod_interface(args)
        except CniError as exc:
            errors.append(exc)
        try:
            self.store(nc)
            with self.spans.span("datastore_write"):
                self.delete_endpoint(nc, ids)
        except CniError as exc:
            errors.append(exc)
        try:
            with self.spans.span("ipam_wait"):
                ipam.wait()
        except CniError as exc:
            errors.append(exc)
        if errors:
            self.log.error(f"DEL {ids.name} failed: {errors[0].msg}")
            raise errors[0]
        self.log.info(f"DEL {ids.name} done")

    def delete_pod_interface(self, args: CmdArgs) -> None:
        from libcalico.cni import plumbing

        if not args.netns or not os.path.exists(args.netns):
            return  # the namespace is gone, and the veth pair went with it
        try:
            with plumbing.in_netns(args.netns):
                if plumbing.link_exists(args.ifname):
                    proc = subprocess.run(["ip", "link", "del", args.ifname],
                                          capture_output=True, text=True, check=False)
                    if proc.returncode != 0 and plumbing.link_exists(args.ifname):
                        raise plumbing.PlumbingError(proc.stderr.strip())
        except plumbing.PlumbingError as exc:
            raise CniError(ERR_NETWORK, f"deleting {args.ifname} in {args.netns}: {exc}") \
                from exc

    def delete_endpoint(self, nc: NetConf, ids: wep.Identifiers) -> None:
        from libcalico.cni.store import StoreError

        store = self.store(nc)
        try:
            for _ in range(DEL_RETRIES):
                current = store.get("WorkloadEndpoint", ids.name, ids.namespace)
                if current is None:
                    return
                if current["spec"].get("containerID") != ids.container_id:
                    self.log.info(
                        f"endpoint {ids.name} belongs to container "
                        f"{current['spec'].get('containerID')}: left in place")
                    return
                try:
                    store.delete("WorkloadEndpoint", ids.name, ids.namespace,
                                 str(current["metadata"].get("resourceVersion") or ""))
                    return
                except StoreError as exc:
                    if exc.kind != "ConflictError":
                        raise
            raise CniError(spec.ERR_TRY_AGAIN,
                           f"WorkloadEndpoint {ids.name} kept changing while being deleted")
        except StoreError as exc:
            raise _store_error(exc, f"deleting WorkloadEndpoint {ids.name}") from exc

    # -- CHECK ---------------------------------------------------------------------------------

    def cmd_check(self, args: CmdArgs) -> None:
        nc = self.load(args)
        ids = self.identifiers(args, nc)
        prev_raw = args.config.get("prevResult")
        if not isinstance(prev_raw, dict):
            raise CniError(spec.ERR_INVALID_CONFIG, "CHECK needs prevResult in the network config")
        prev = spec.result_from_json(prev_raw)
        with self.spans.span("ipam_start"):
            ipam = self.start_ipam(args, nc, "CHECK")
        problems: list[str] = []
        addresses = self.prev_addresses(args, prev)
        host_ifname = next((i.name for i in prev.interfaces if not i.sandbox and
                            i.name.startswith("cali")), ids.host_ifname)
        from libcalico.cni import plumbing

        want_default = any(r.dst in ("0.0.0.0/0", "::/0") for r in prev.routes)
        try:
            with self.spans.span("network"):
                problems += [
                    p for p in plumbing.check_pod_network(
                        args.netns, args.ifname, addresses, host_ifname)
                    # With IPAM-supplied routes and no include_default_routes there is none.
                    if want_default or not p.startswith("default route via")
                ]
                problems += self.missing_routes(args, prev.routes)
        except plumbing.PlumbingError as exc:
            problems.append(str(exc))
        from libcalico.cni.store import StoreError

        with self.spans.span("datastore_read"):
            try:
                current = self.store(nc).get("WorkloadEndpoint", ids.name, ids.namespace)
            except StoreError as exc:
                raise _store_error(exc, f"reading WorkloadEndpoint {ids.name}") from exc
        if current is None:
            problems.append(f"WorkloadEndpoint {ids.namespace}/{ids.name} does not exist")
        else:
            cid = current["spec"].get("containerID")
            if cid != ids.container_id:
                problems.append(f"WorkloadEndpoint {ids.name} belongs to container {cid}")
            have = sorted(current["spec"].get("ipNetworks") or [])
            if have != sorted(_host_prefix(a) for a in addresses):
                problems.append(
                    f"WorkloadEndpoint {ids.name} has ipNetworks {have}, prevResult "
                    f"{sorted(addresses)}")
        with self.spans.span("ipam_wait"):
            ipam.wait()
        if problems:
            raise CniError(ERR_CHECK_FAILED, "; ".join(problems),
                           "delete and re-add the container's network (CNI DEL, then ADD)")
        self.log.info(f"CHECK {ids.name} ok")

    @staticmethod
    def missing_routes(args: CmdArgs, routes: list[Route]) -> list[str]:
        """The prevResult routes the pod's namespace does not have (dst and gateway)."""
        from libcalico.cni import plumbing

        if not routes or not os.path.exists(args.netns):
            return []
        have: set[tuple[str, str]] = set()
        with plumbing.in_netns(args.netns):
            for family in ("-4", "-6"):
                proc = subprocess.run(["ip", "-j", family, "route", "show"],
                                      capture_output=True, text=True, check=False)
                for r in json.loads(proc.stdout or "[]") if proc.returncode == 0 else []:
                    dst = str(r.get("dst", ""))
                    if dst == "default":
                        dst = "0.0.0.0/0" if family == "-4" else "::/0"
                    elif "/" not in dst:
                        dst += "/128" if ":" in dst else "/32"
                    have.add((dst, str(r.get("gateway", ""))))
        out = []
        for r in routes:
            if r.dst == "0.0.0.0/0":
                continue  # check_pod_network reports this one
            if (r.dst, r.gw) not in have and not (not r.gw and any(d == r.dst for d, _ in have)):
                out.append(f"route {r.dst}{' via ' + r.gw if r.gw else ''} is missing")
        return out

    @staticmethod
    def prev_addresses(args: CmdArgs, prev: Result) -> list[str]:
        pod_idx = {i for i, itf in enumerate(prev.interfaces)
                   if itf.name == args.ifname and itf.sandbox}
        return [ip.address for ip in prev.ips
                if ip.interface is None or ip.interface in pod_idx]

    # -- STATUS / GC (1.1.0) -------------------------------------------------------------------

    def cmd_status(self, args: CmdArgs) -> None:
        nc = self.load(args, need_mtu=False)
        try:
            self.check_ready(nc)
        except CniError as exc:
            raise CniError(ERR_NOT_AVAILABLE, exc.msg, exc.details) from exc
        if self.ipam_speaks_11(args, nc):
            try:
                self.start_ipam(args, nc, "STATUS").wait()
            except CniError as exc:
                raise CniError(ERR_NOT_AVAILABLE, exc.msg, exc.details) from exc
        elif nc.ipam_type == "calico-ipam":
            from libcalico.cni import ipam_plugin

            target = ipam_plugin.ipam_endpoint(args.config, self.env)
            state = _grpc_health(target)
            if state != "SERVING":
                raise CniError(ERR_NOT_AVAILABLE,
                               f"the Calico IPAM service at {target} is {state}",
                               "start calico-ipam-service (calico-lab up starts it)")

    def cmd_gc(self, args: CmdArgs) -> None:
        """Endpoints of this node and network whose attachment the runtime no longer lists
        (``cni.dev/valid-attachments``) are deleted with their veth and addresses.

        "Of this network" is known for calico-ipam from the IPAM handle
        ``<network>.<containerID>``; with another IPAM plugin only that plugin's own GC runs
        (when it speaks 1.1.0), since an endpoint does not record its network.
        """
        nc = self.load(args, need_mtu=False)
        if self.ipam_speaks_11(args, nc):
            self.start_ipam(args, nc, "GC").wait()
        if nc.ipam_type != "calico-ipam":
            self.log.info(f"GC: endpoints are collected with calico-ipam only ({nc.ipam_type})")
            return
        from libcalico import keys
        from libcalico.cni import plumbing
        from libcalico.cni.store import StoreError

        valid = {
            (str(a.get("containerID", "")), str(a.get("ifname", "")))
            for a in args.config.get("cni.dev/valid-attachments") or [] if isinstance(a, dict)
        }
        store = self.store(nc)
        prefix = nc.nodename.replace("-", "--") + "-"
        try:
            endpoints = store.list("WorkloadEndpoint", name_prefix=prefix)
        except StoreError as exc:
            raise _store_error(exc, "listing this node's WorkloadEndpoints") from exc
        collected = []
        for ep in endpoints:
            s = ep.get("spec") or {}
            cid, ifname = str(s.get("containerID", "")), str(s.get("endpoint", ""))
            if s.get("node") != nc.nodename or not cid or (cid, ifname) in valid:
                continue
            handle = f"{nc.name}.{cid}"
            if not store.kv_exists(keys.handle_key(handle)):
                continue  # not this network's (or its addresses are already gone)
            meta = ep["metadata"]
            cni_args = {"IgnoreUnknown": "1"}
            if s.get("orchestrator") == wep.K8S:
                cni_args |= {"K8S_POD_NAMESPACE": meta.get("namespace", ""),
                             "K8S_POD_NAME": str(s.get("pod", ""))}
            stale = CmdArgs(command="DEL", container_id=cid, ifname=ifname, args=cni_args,
                            path=args.path, stdin=args.stdin, config=args.config)
            env = {**self.env, "CNI_CONTAINERID": cid, "CNI_IFNAME": ifname,
                   "CNI_ARGS": ";".join(f"{k}={v}" for k, v in cni_args.items())}
            try:
                store.delete("WorkloadEndpoint", meta["name"], meta.get("namespace", ""),
                             str(meta.get("resourceVersion") or ""))
            except StoreError as exc:
                self.log.warning(f"GC: {meta['name']} not deleted: {exc.message}")
                continue
            Delegate(nc.ipam_type, "DEL", stale, self.ipam_stdin(stale, nc, "DEL"), env).wait()
            host_if = str(s.get("interfaceName") or "")
            if host_if.startswith("cali"):
                plumbing.delete_host_veth(host_if)
            collected.append(meta["name"])
        self.log.info(f"GC: collected {len(collected)} endpoint(s): {', '.join(collected)}")

    def ipam_speaks_11(self, args: CmdArgs, nc: NetConf) -> bool:
        try:
            out = Delegate(nc.ipam_type, "VERSION", args, b"{}", self.env).wait()
        except CniError:
            return False
        return "1.1.0" in (out.get("supportedVersions") or [])


def _grpc_health(target: str) -> str:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2.0)
        except grpc.RpcError:
            return "unreachable"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def _host_prefix(address: str) -> str:
    import ipaddress

    ip = ipaddress.ip_interface(address).ip
    return f"{ip}/{32 if ip.version == 4 else 128}"


# -- dispatch ----------------------------------------------------------------------------------


def _run_11(plugin: CalicoPlugin, command: str) -> int:
    """STATUS and GC: the 1.1.0 commands ``spec.run`` predates."""
    version = spec.CURRENT_VERSION
    try:
        raw = sys.stdin.buffer.read()
        try:
            config = json.loads(raw) if raw.strip() else None
        except ValueError as exc:
            raise CniError(spec.ERR_DECODE, "the network config on stdin is not JSON",
                           str(exc)) from exc
        if not isinstance(config, dict):
            raise CniError(spec.ERR_DECODE, f"no network config on stdin for {command}")
        version = str(config.get("cniVersion") or "0.1.0")
        if spec.version_tuple(version) < (1, 1, 0):
            raise CniError(spec.ERR_INCOMPATIBLE_VERSION,
                           f"cniVersion {version} does not support the {command} command",
                           f"{command} needs cniVersion 1.1.0 or later")
        env = plugin.env
        args = CmdArgs(
            command=command, container_id=env.get("CNI_CONTAINERID", ""),
            netns=env.get("CNI_NETNS", ""), ifname=env.get("CNI_IFNAME", ""),
            args=spec.parse_cni_args(env.get("CNI_ARGS", "")),
            path=[p for p in env.get("CNI_PATH", "").split(os.pathsep) if p],
            stdin=raw, config=config,
        )
        if command == "STATUS":
            plugin.cmd_status(args)
        else:
            plugin.cmd_gc(args)
        return 0
    except CniError as err:
        sys.stdout.write(json.dumps(err.to_json(version), indent=4) + "\n")
        return 1
    except Exception as exc:
        wrapped = CniError(spec.ERR_INTERNAL, str(exc) or type(exc).__name__, type(exc).__name__)
        sys.stdout.write(json.dumps(wrapped.to_json(version), indent=4) + "\n")
        return 1


def run(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    spans = cnilog.make_spans(env)
    plugin = CalicoPlugin(env, spans)
    command = env.get("CNI_COMMAND", "")
    try:
        if command in ("STATUS", "GC"):
            rc = _run_11(plugin, command)
        else:
            rc = spec.run(add=plugin.cmd_add, delete=plugin.cmd_del, check=plugin.cmd_check,
                          supported=SUPPORTED_VERSIONS, env=env)
    finally:
        plugin.close()
    spans.finish(command, rc == 0)
    return rc


def main() -> None:
    rc = run()
    # Everything is written and flushed (stdout here, the log after each line, timings on
    # close) and every child has been waited for: skip the interpreter's teardown, which
    # with grpc loaded costs a per-pod process ~20 ms for nothing.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    main()
