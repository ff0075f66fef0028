"""Endpoint status files: the dataplane driver says an endpoint is programmed, the CNI plugin
waits for it (Calico's ``EndpointStatusPathPrefix`` / ``endpoint_status_dir`` and the CNI
plugin's ``policy_setup_timeout_seconds``).

The driver writes ``<dir>/<name>`` with ``{"status": "up", ...}`` once an apply that includes the
endpoint succeeded (policy, routes and interface programmed), rewrites it on every status change
and removes it with the endpoint. The name is the endpoint's ``(orchestrator, workload,
endpoint)`` ID joined with ``/`` and percent-encoded, so it is one path component; both sides
build it here. Writes are atomic (temp file + rename): a reader never sees a torn file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

DEFAULT_DIR = "/var/run/calico/endpoint-status"


def filename(orchestrator: str, workload: str, endpoint: str) -> str:
    return quote(f"{orchestrator}/{workload}/{endpoint}", safe="")


def write(directory: str | Path, name: str, data: dict[str, Any]) -> None:
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{name}.tmp")
    tmp.write_text(json.dumps(data, sort_keys=True) + "\n")
    os.replace(tmp, path)


def remove(directory: str | Path, name: str) -> None:
    (Path(directory) / name).unlink(missing_ok=True)


def read(directory: str | Path, name: str) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(directory) / name).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
