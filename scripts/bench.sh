#!/usr/bin/env bash
# Run every benchmark once, each beside its same-run baseline; one JSON object per line.
# Usage: bash scripts/bench.sh [TXS]   (default 10000; figures go into docs/benchmarks.md)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
txs="${1:-10000}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
.venv/bin/rekam bench commit -d "$work" --txs "$txs" --json
.venv/bin/rekam bench verify -d "$work" --txs "$txs" --json
.venv/bin/rekam bench write -d "$work" --txs $((txs / 10)) --json
.venv/bin/rekam bench proofs -d "$work" --txs "$txs" --json
