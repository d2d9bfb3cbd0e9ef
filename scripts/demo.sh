#!/usr/bin/env bash
# Quick start, part one: set up and run the demo network in ./demo-data (a fresh folder each run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
dir="${1:-demo-data}"
if [ -e "$dir" ]; then
  echo "removing the previous demo folder $dir"
  rm -rf -- "$dir"
fi
exec .venv/bin/rekam demo --data-dir "$dir"
