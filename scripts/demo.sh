#!/usr/bin/env bash
# The README's first command: set up this machine (idempotent), then `calico-lab demo`: a 3-node
# lab, pods in two namespaces, connectivity matrices before and after a deny and an allow
# policy. The lab keeps running afterwards; `calico-lab down` takes it down.
#   scripts/demo.sh [--mode vxlan|ipip|bgp|vxlan-crosssubnet|ipip-crosssubnet] [--state-dir DIR]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
exec "$ROOT/.venv/bin/calico-lab" demo "$@"
