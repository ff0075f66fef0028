#!/usr/bin/env bash
# Installs everything calico-py needs on a fresh Debian machine, idempotently:
# the real networking tools it drives (etcd, BIRD, iptables, ipset, nft, iproute2, CNI plugins,
# GoBGP for interop tests) and a virtualenv at .venv with the project and its dev tools.
# Safe to run again: it skips apt when every package is present and pip when nothing changed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CALICO_VENV:-$ROOT/.venv}"
PACKAGES=(
  etcd-server etcd-client bird2 iptables ipset nftables iproute2 iputils-ping conntrack
  containernetworking-plugins tcpdump gobgpd
)

log() { printf '[setup] %s\n' "$*" >&2; }

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "Debian packages present"
fi

# Debian's etcd-server package starts a system etcd on 2379; the lab and tests run their own
# on other ports, but a stray system one only wastes memory.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  systemctl stop etcd || true
fi

PY="${PYTHON:-python3}"
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
fi

stamp="$VENV/.calico-py-installed"
if [[ ! -f "$stamp" || "$ROOT/pyproject.toml" -nt "$stamp" ]]; then
  log "installing calico-py and dev tools into $VENV"
  piplog="$VENV/pip-install.log"
  if ! { "$VENV/bin/python" -m pip install -q --upgrade pip \
         && "$VENV/bin/python" -m pip install -q -e "$ROOT[dev]"; } >"$piplog" 2>&1; then
    tail -n 30 "$piplog" >&2
    log "pip install failed (full log: $piplog)"
    exit 1
  fi
  "$VENV/bin/python" -c "import libcalico, grpc, aetcd, pyroute2" \
    || { log "virtualenv is missing packages (see $piplog)"; exit 1; }
  touch "$stamp"
else
  log "virtualenv up to date"
fi
log "ready: activate with '. $VENV/bin/activate'"
