"""``calico-policy``: the policy compiler as a gRPC service.

    calico-policy [--config FILE]      # env CALICO_POLICY_* > file > defaults

Object graph (``build``)::

    gRPC PolicyCompiler.Compile ──> PolicyServicer ──> PolicyCompiler (one per stream)
                                                          └─ PolicyModel, renderers, IPSetEmitter

The service is stateless between streams: a driver's session state lives in its stream.

| setting | env | default |
|---|---|---|
| ``listen`` | ``CALICO_POLICY_LISTEN`` (comma-separated) | the lab socket |
| ``felix_config`` | Felix parameters every session starts from (``Name=value,…``) | none |
| ``trace_file`` / ``otlp_endpoint`` | spans (JSON lines / OTLP collector) | none |
| ``metrics_port`` | Prometheus ``/metrics`` on 127.0.0.1 | none |
| ``cpu_affinity`` | ``adaptive``, ``all`` or CPUs ``0-3,6`` (``runtime.cpu_affinity``) | adaptive |
| ``log_level`` | DEBUG/INFO/WARNING/ERROR | INFO |
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from libcalico.api.policy.v1 import policy_pb2_grpc as pb_grpc
from libcalico.errors import ValidationError
from libcalico.runtime import (
    ServerSpec,
    get_logger,
    load_config,
    run_main,
    serve,
    setup_logging,
    setup_tracing,
)
from libcalico.runtime.cpu_affinity import parse_cpu_affinity

from .config import CompilerConfig
from .servicer import PolicyServicer

log = get_logger(__name__)

ENV_PREFIX = "CALICO_POLICY_"
SERVICE_NAME = "calicopy.policy.v1.PolicyCompiler"
LAB_SOCKET = "unix:///run/calico-lab/sock/policy.sock"


@dataclass(frozen=True)
class PolicyServiceConfig:
    listen: tuple[str, ...] = (LAB_SOCKET,)
    felix_config: str = ""
    trace_file: Path | None = None
    otlp_endpoint: str | None = None
    metrics_port: int | None = None
    cpu_affinity: str = "adaptive"
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        parse_cpu_affinity(self.cpu_affinity)

    def felix_params(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in self.felix_config.split(","):
            if not item.strip():
                continue
            name, sep, value = item.partition("=")
            if not sep:
                raise ValidationError(f"felix_config: {item!r} is not Name=value")
            out[name.strip()] = value.strip()
        return out


def build(cfg: PolicyServiceConfig) -> PolicyServicer:
    """The whole object graph: one servicer making one compiler per stream."""
    return PolicyServicer(CompilerConfig(), cfg.felix_params())


def server_spec(servicer: PolicyServicer, cfg: PolicyServiceConfig) -> ServerSpec:
    return ServerSpec(
        service="policy",
        listen=cfg.listen,
        register=lambda server: pb_grpc.add_PolicyCompilerServicer_to_server(servicer, server),
        service_names=[SERVICE_NAME],
        metrics_port=cfg.metrics_port,
        cpu_affinity=cfg.cpu_affinity,
    )


async def amain() -> None:
    cfg = load_config(PolicyServiceConfig, env_prefix=ENV_PREFIX)
    setup_logging("policy", cfg.log_level)
    setup_tracing("policy", otlp_endpoint=cfg.otlp_endpoint, jsonl_path=cfg.trace_file)
    servicer = build(cfg)
    log.info("policy compiler starting", listen=list(cfg.listen))
    await serve(server_spec(servicer, cfg))


def main() -> None:
    run_main(amain)


if __name__ == "__main__":
    main()
