"""calico-policy over real gRPC (in-process server on a unix socket): one compiler per stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from libcalico.api.policy.v1 import policy_pb2 as pb
from libcalico.api.policy.v1 import policy_pb2_grpc as pb_grpc
from libcalico.runtime import make_channel, start_in_process
from services.policy import examples as ex
from services.policy.main import PolicyServiceConfig, build, server_spec


async def test_compile_stream_returns_increments(tmp_path: Path) -> None:
    cfg = PolicyServiceConfig(listen=(f"unix://{tmp_path}/policy.sock",),
                              felix_config="IptablesFilterDenyAction=REJECT")
    server = await start_in_process(server_spec(build(cfg), cfg))
    try:
        async with make_channel(server.target, service="policy") as ch:
            stub = pb_grpc.PolicyCompilerStub(ch)
            requests = [
                pb.CompileRequest(sequence_number=1, node="n1", messages=ex.workload()),
                pb.CompileRequest(sequence_number=2, node="n1", messages=[
                    ex.ipset_delta("s:frontend", added=["10.65.0.12/32"])]),
                pb.CompileRequest(sequence_number=3, node="n1", full=True),
            ]

            async def gen() -> AsyncIterator[pb.CompileRequest]:
                for r in requests:
                    yield r

            responses = [r async for r in stub.Compile(gen())]
        first, delta, full = responses
        assert [r.sequence_number for r in responses] == [1, 2, 3]
        tables = {(t.ip_version, t.table) for t in first.iptables}
        assert tables == {(v, t) for v in (4, 6) for t in ("raw", "mangle", "nat", "filter")}
        f4 = next(t for t in first.iptables if (t.ip_version, t.table) == (4, "filter"))
        assert f4.restore_input.startswith("*filter\n")
        assert any(c.name == "cali-tw-cali12345678901" for c in f4.chains)
        assert "--jump REJECT" in f4.restore_input  # the service's felix_config applied
        assert len(first.hooks) == 24 and first.hooks[0].rule.startswith("-I PREROUTING 1 ")
        assert "add table ip calico" in first.nft_script

        assert not delta.iptables and not delta.hooks
        assert delta.ipset_restore == "add cali40s:frontend 10.65.0.12/32 -exist\n"

        assert full.full and full.hooks
        assert "delete table ip calico" in full.nft_script
        assert "10.65.0.12/32" in full.ipset_restore
    finally:
        await server.stop()
