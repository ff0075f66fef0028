#!/usr/bin/env python3
"""Regenerate the committed protobuf/gRPC stubs under libcalico/api from protos/.

One generator for the whole repository. ``--check`` writes into a temporary tree and exits 1
when any committed stub differs, which is what the stale-stub test runs.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_ROOT = ROOT


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc  # dev dependency only

    include = Path(grpc_tools.__file__).parent / "_proto"
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Every generated directory below libcalico/ must be a package for the imports to resolve.
    for proto in proto_files():
        rel = proto.parent.relative_to(PROTO_ROOT)
        for depth in range(2, len(rel.parts) + 1):
            (out.joinpath(*rel.parts[:depth]) / "__init__.py").touch()


def stub_files(root: Path) -> list[Path]:
    api = root / "libcalico" / "api"
    return sorted(p.relative_to(root) for p in api.rglob("*") if p.suffix in (".py", ".pyi"))


def check() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_root = Path(tmp)
        generate(tmp_root)
        fresh = stub_files(tmp_root)
        committed = stub_files(OUT_ROOT)
        stale = [str(p) for p in fresh if not (OUT_ROOT / p).exists()
                 or not filecmp.cmp(tmp_root / p, OUT_ROOT / p, shallow=False)]
        extra = [str(p) for p in committed if p not in fresh]
        if stale or extra:
            print("stale generated stubs; run scripts/gen_protos.py:", *stale, *extra, sep="\n  ")
            return 1
    print(f"{len(fresh)} generated files up to date")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed stubs are stale")
    args = parser.parse_args()
    if args.check:
        return check()
    api = OUT_ROOT / "libcalico" / "api"
    if api.exists():
        shutil.rmtree(api)
    generate(OUT_ROOT)
    print(f"wrote {len(stub_files(OUT_ROOT))} files under {api.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
