"""The lab's control plane: etcd and the control-plane services, started in dependency order,
each waited on until healthy, all described in one place (``SERVICES``).

Start order and readiness (each level starts at once, then is waited on)::

    etcd (EtcdServer, 127.0.0.1, /health)
      └── datastore  (gRPC health over <state>/sock/datastore.sock)
            ├── ipam        (<state>/sock/ipam.sock)
            └── calc_graph  (<state>/sock/calc_graph.sock)
    policy (no dependency; <state>/sock/policy.sock)

A service is started only if its package is importable and has a ``main`` module (the others
are being written; the lab picks each up as soon as it lands) -- ``available_services`` says
which. Each runs as its console script (``calico-datastore``...) from this interpreter's bin
directory when installed, else as ``python -c 'from services.X.main import main; main()'``.

Configuration goes through each service's environment (prefix ``CALICO_<SERVICE>_``): its
listen address (the unix socket), the etcd endpoint or datastore address it depends on, plus
``CALICO_STATE_DIR`` and ``CALICO_TRACE_FILE=<state>/traces.jsonl`` for traces, and the log
format the runtime picks for a non-TTY (JSON lines) into ``<state>/logs/<service>.log``.

Readiness is bounded: a process that exits, or is not SERVING within ``READY_TIMEOUT_S``, fails
``up`` with the tail of its log.
"""

from __future__ import annotations

import fcntl
import http.client
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from libcalico.cli.lab.processes import ProcessSpec, ProcessTable

READY_TIMEOUT_S = 30.0
HEALTH_RPC_TIMEOUT_S = 1.0
# How long a running process of ours may take to answer before `up` replaces it, and the
# health call timeout of `status`: generous, a loaded machine must not cause restarts.
RUNNING_GRACE_S = 5.0
ETCD = "etcd"


@dataclass(frozen=True)
class ServiceDef:
    """One control-plane service as the lab runs it."""

    name: str  # socket and log name: <state>/sock/<name>.sock, <state>/logs/<name>.log
    package: str  # importable package; <package>.main:main is the entry point
    console_script: str
    env_prefix: str
    # env field names (after the prefix) -> which lab address to put there:
    # "listen" (this service's socket target), "etcd" (etcd client URL),
    # "datastore" (the datastore service's socket target)
    wiring: Mapping[str, str] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()


SERVICES: tuple[ServiceDef, ...] = (
    ServiceDef(
        "datastore", "services.datastore", "calico-datastore", "CALICO_DATASTORE_",
        {"LISTEN": "listen", "ETCD_ENDPOINTS": "etcd"}, (ETCD,),
    ),
    ServiceDef(
        "ipam", "services.ipam", "calico-ipam-service", "CALICO_IPAM_",
        {"LISTEN": "listen", "DATASTORE": "datastore"}, ("datastore",),
    ),
    ServiceDef(
        "calc_graph", "services.calc_graph", "calico-calc-graph", "CALICO_CALC_GRAPH_",
        {"LISTEN": "listen", "DATASTORE": "datastore"}, ("datastore",),
    ),
    # The policy compiler is fed by its callers (calc graph, dataplane); it reads no datastore.
    ServiceDef(
        "policy", "services.policy", "calico-policy", "CALICO_POLICY_",
        {"LISTEN": "listen"}, (),
    ),
)  # fmt: skip


class LabError(Exception):
    """``up`` could not bring the lab to health; the message says which process and why."""


# -- layout ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Paths under the state dir (see ``libcalico.cli.lab`` for the whole layout)."""

    root: Path

    @property
    def sock_dir(self) -> Path:
        return self.root / "sock"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd"

    @property
    def state_file(self) -> Path:
        return self.root / "lab.json"

    @property
    def lock_file(self) -> Path:
        return self.root / "lab.lock"

    @property
    def trace_file(self) -> Path:
        return self.root / "traces.jsonl"

    def socket(self, name: str) -> Path:
        return self.sock_dir / f"{name}.sock"

    def target(self, name: str) -> str:
        return f"unix://{self.socket(name)}"

    @contextmanager
    def locked(self, *, exclusive: bool = True) -> Iterator[None]:
        """Hold ``lab.lock``: exclusive for what changes the lab (up, down), shared for
        what only adds to it (pods, namespaces), so those can run side by side."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self.lock_file.open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def available_services() -> list[ServiceDef]:
    """The services whose ``<package>.main`` module exists in this installation."""
    out = []
    for svc in SERVICES:
        try:
            found = importlib.util.find_spec(f"{svc.package}.main") is not None
        except ModuleNotFoundError:
            found = False
        if found:
            out.append(svc)
    return out


def service_argv(svc: ServiceDef) -> list[str]:
    script = Path(sys.executable).parent / svc.console_script
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c",
            f"import sys; from {svc.package}.main import main; sys.exit(main())"]


def service_env(svc: ServiceDef, layout: Layout, etcd_endpoint: str) -> dict[str, str]:
    addresses = {
        "listen": layout.target(svc.name),
        "etcd": etcd_endpoint,
        "datastore": layout.target("datastore"),
    }
    env = {
        k: v for k, v in os.environ.items()
        # Our own settings for every service win over whatever the caller's shell has.
        if not k.startswith(("CALICO_", "OTEL_"))
    }
    env.update({
        "PYTHONUNBUFFERED": "1",
        "CALICO_STATE_DIR": str(layout.root),
        "CALICO_TRACE_FILE": str(layout.trace_file),
    })
    for var, what in svc.wiring.items():
        env[svc.env_prefix + var] = addresses[what]
    return env


# -- health ------------------------------------------------------------------------------------


def etcd_healthy(endpoint: str) -> bool:
    host_port = endpoint.split("://", 1)[-1]
    host, _, port = host_port.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=HEALTH_RPC_TIMEOUT_S)
    try:
        conn.request("GET", "/health")
        return bool(json.loads(conn.getresponse().read()).get("health") == "true")
    except (OSError, ValueError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def grpc_health(target: str, timeout: float = HEALTH_RPC_TIMEOUT_S) -> str:
    """``SERVING``, ``NOT_SERVING``, ... from the gRPC health service, or ``UNREACHABLE``."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code == grpc.StatusCode.UNIMPLEMENTED:
                return "NO_HEALTH_SERVICE"
            return "UNREACHABLE"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def _etcd_healthy_within(endpoint: str, seconds: float = RUNNING_GRACE_S) -> bool:
    deadline = time.monotonic() + seconds
    while not etcd_healthy(endpoint):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def serving_within(target: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if grpc_health(target) == "SERVING":
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def wait_until(
    what: str,
    ready: Callable[[], bool],
    alive: Callable[[], bool],
    log_tail: Callable[[], str],
    timeout: float = READY_TIMEOUT_S,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return
        if not alive():
            raise LabError(f"{what} exited during start-up; last log lines:\n{log_tail()}")
        if time.monotonic() > deadline:
            raise LabError(f"{what} not healthy after {timeout:g}s; last log lines:\n{log_tail()}")
        time.sleep(0.1)


# -- state file --------------------------------------------------------------------------------


def read_state(layout: Layout) -> dict[str, object]:
    try:
        data = json.loads(layout.state_file.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_state(layout: Layout, state: Mapping[str, object]) -> None:
    tmp = layout.state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    tmp.replace(layout.state_file)


def _service_names(state: Mapping[str, object]) -> list[str]:
    names = state.get("services")
    return [str(n) for n in names] if isinstance(names, list) else []


# -- up ----------------------------------------------------------------------------------------


def _start_etcd(
    layout: Layout, table: ProcessTable, state: dict[str, object]
) -> tuple[str, str]:
    """Start etcd unless ours already runs; returns its client URL and what was done."""
    endpoint = str(state.get("etcd_endpoint") or "")
    if table.pid(ETCD) is not None and endpoint and _etcd_healthy_within(endpoint):
        return endpoint, "already running"
    table.stop(ETCD)  # a recorded but unhealthy etcd of ours is replaced
    from libcalico.etcd_server import EtcdServer, EtcdStartError

    # Re-use the previous ports when the data dir is kept, so the member's URLs stay valid.
    ports = state.get("etcd_ports")
    client_port = peer_port = 0
    if isinstance(ports, list) and len(ports) == 2 and layout.etcd_data.exists():
        client_port, peer_port = int(ports[0]), int(ports[1])
    table.log_dir.mkdir(parents=True, exist_ok=True)
    for attempt in (0, 1):
        etcd = EtcdServer(layout.etcd_data, client_port=client_port, peer_port=peer_port,
                          name="calico-lab")
        etcd.log_path = table.log_path(ETCD)
        try:
            etcd.start(timeout=READY_TIMEOUT_S)
            break
        except EtcdStartError as exc:
            if attempt or not client_port:
                raise LabError(str(exc)) from exc
            client_port = peer_port = 0  # the old ports are taken: pick new ones
    assert etcd.proc is not None
    table.record(ETCD, etcd.proc.pid)
    state["etcd_ports"] = [etcd.client_port, etcd.peer_port]
    state["etcd_endpoint"] = etcd.endpoint
    return etcd.endpoint, "started"


def _start_wave(
    wave: list[ServiceDef], layout: Layout, table: ProcessTable, etcd_endpoint: str
) -> dict[str, str]:
    """Start every service of ``wave`` that is not already running healthy, all at once, then
    wait for each; returns what was done per service."""
    done: dict[str, str] = {}
    for svc in wave:
        if table.pid(svc.name) is not None:
            if serving_within(layout.target(svc.name), RUNNING_GRACE_S):
                done[svc.name] = "already running"
                continue
            table.stop(svc.name)
        layout.socket(svc.name).unlink(missing_ok=True)  # a stale socket from a crash
        table.start(
            ProcessSpec(svc.name, service_argv(svc), service_env(svc, layout, etcd_endpoint))
        )
        done[svc.name] = "started"
    for svc in wave:
        if done[svc.name] == "started":
            _wait_serving(svc, layout, table)
    return done


def _wait_serving(svc: ServiceDef, layout: Layout, table: ProcessTable) -> None:
    target = layout.target(svc.name)
    wait_until(
        svc.console_script,
        lambda: layout.socket(svc.name).exists() and grpc_health(target) == "SERVING",
        lambda: table.pid(svc.name) is not None,
        lambda: table.log_tail(svc.name),
    )


def waves(services: list[ServiceDef]) -> tuple[list[list[ServiceDef]], list[ServiceDef]]:
    """Services grouped so that each group needs only etcd and earlier groups; the second
    value lists those whose dependencies are not available at all."""
    ready: set[str] = {ETCD}
    remaining = list(services)
    out: list[list[ServiceDef]] = []
    while remaining:
        wave = [s for s in remaining if all(d in ready for d in s.depends_on)]
        if not wave:
            break
        out.append(wave)
        ready.update(s.name for s in wave)
        remaining = [s for s in remaining if s not in wave]
    return out, remaining


def up(layout: Layout, report: Callable[[str], None]) -> dict[str, object]:
    """Bring etcd and every available service to health (idempotent). Raises LabError."""
    table = ProcessTable(layout.root)
    for d in (layout.root, layout.sock_dir, table.log_dir, table.pid_dir):
        d.mkdir(parents=True, exist_ok=True)
    state = read_state(layout)
    state["state_dir"] = str(layout.root)
    etcd_endpoint, what = _start_etcd(layout, table, state)
    report(f"{ETCD:<12} {etcd_endpoint}   (pid {table.pid(ETCD)}, {what})")
    services = available_services()
    state["services"] = [s.name for s in services]
    write_state(layout, state)
    groups, blocked = waves(services)
    for wave in groups:
        done = _start_wave(wave, layout, table, etcd_endpoint)
        for svc in wave:
            report(f"{svc.name:<12} {layout.target(svc.name)}   "
                   f"(pid {table.pid(svc.name)}, {done[svc.name]})")
    for svc in blocked:
        report(f"{svc.name:<12} skipped: needs {', '.join(svc.depends_on)}")
    missing_svcs = [s.name for s in SERVICES if s not in services]
    if missing_svcs:
        report(f"not built yet: {', '.join(missing_svcs)}")
    state["started_at"] = state.get("started_at") or time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_state(layout, state)
    return state


# -- status ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessStatus:
    name: str
    pid: int | None
    alive: bool
    health: str
    address: str


def status(layout: Layout) -> list[ProcessStatus]:
    table = ProcessTable(layout.root)
    state = read_state(layout)
    names = [ETCD, *_service_names(state)]
    names += [n for n in table.names() if n not in names]
    out = []
    for name in names:
        pid = table.pid(name)
        alive = pid is not None
        if name == ETCD:
            address = str(state.get("etcd_endpoint") or "")
            if not alive:
                health = "-"
            elif address and _etcd_healthy_within(address):
                health = "SERVING"
            else:
                health = "UNREACHABLE"
        else:
            address = layout.target(name)
            health = (grpc_health(address, RUNNING_GRACE_S)
                      if alive and layout.socket(name).exists() else "-")
        out.append(ProcessStatus(name, pid if alive else table.recorded_pid(name), alive,
                                 health, address))
    return out


# -- down --------------------------------------------------------------------------------------


def down(layout: Layout, report: Callable[[str], None], purge: bool = False) -> bool:
    """Stop every process of ours, dependents first; remove sockets, pid files and lab.json.
    Returns False when a process could not be stopped."""
    import shutil

    table = ProcessTable(layout.root)
    state = read_state(layout)
    order = list(reversed(_service_names(state)))
    order += [n for n in table.names() if n not in order and n != ETCD]
    order.append(ETCD)
    ok = True
    for name in order:
        if not table.pid_path(name).exists():
            continue
        result = table.stop(name)
        if result.startswith("still running"):
            ok = False
        report(f"{name:<12} {result}")
        layout.socket(name).unlink(missing_ok=True)
    if layout.sock_dir.is_dir():
        for sock in layout.sock_dir.glob("*.sock"):
            sock.unlink(missing_ok=True)
    if ok:
        layout.state_file.unlink(missing_ok=True)
        if purge:
            for sub in ("etcd", "logs", "pids", "sock"):
                shutil.rmtree(layout.root / sub, ignore_errors=True)
            for f in (layout.trace_file, layout.lock_file):
                f.unlink(missing_ok=True)
    return ok
