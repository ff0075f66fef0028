#!/usr/bin/env bash
# README's test command: set up the machine, check lint, types and stubs, then run every suite.
# Suites: unit (pure logic), integration (real etcd + services on loopback), kernel (network
# namespaces, real iptables/nft/ipset/BIRD; needs root), e2e (the lab). Extra args go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
. .venv/bin/activate

echo "== ruff"; ruff check .
echo "== mypy"; mypy libcalico services
echo "== pytest"
pytest -p no:cacheprovider -q -ra --durations=15 tests "$@"
