#!/usr/bin/env bash
# Set up Rekam in ./.venv with pinned dependencies (constraints.txt). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

need_python() {
  command -v python3 >/dev/null 2>&1 && python3 - <<'PY'
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY
}
apt_install() {
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' 2>/dev/null | head -1)" ]; then
      apt-get update -qq
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "please install: $* (needs root and apt-get)" >&2
    return 1
  fi
}

if ! need_python; then
  echo "Rekam needs Python 3.11 or newer; installing Debian's python3" >&2
  apt_install python3 python3-venv python3-pip
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv 2>/dev/null || { apt_install python3-venv && python3 -m venv .venv; }
fi
stamp=.venv/.rekam-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
  touch "$stamp"
fi
