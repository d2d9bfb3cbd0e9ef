"""The benchmarks' own plumbing, on small chains: what they report, not how fast."""

from __future__ import annotations

from pathlib import Path

import pytest

from rekam.service.bench import bench_verify


def test_bench_verify_verifies_the_closed_folder_in_a_process_of_its_own(tmp_path: Path) -> None:
    result = bench_verify(tmp_path, 40, runs=1)
    # The chain holds the benchmark's writes and its set-up (a member and a patient).
    assert result["bench"] == "verify"
    assert result["txs"] == 42
    assert result["blocks"] >= 2
    assert result["seconds"] > 0
    # seconds are rounded to the millisecond
    assert result["txs"] / result["tx_per_s"] == pytest.approx(result["seconds"], abs=0.0006)
    assert result["ratio_to_ed25519"] == pytest.approx(
        result["tx_per_s"] / result["ed25519_verify_per_s"], rel=0.01
    )
    assert list(tmp_path.iterdir()) == []  # the throw-away network is gone


def test_bench_verify_reports_the_median_of_its_runs_each_beside_its_own_baseline(
    tmp_path: Path,
) -> None:
    result = bench_verify(tmp_path, 10, runs=3)
    runs = result["runs"]
    assert len(runs) == 3
    for run in runs:
        assert run["ratio_to_ed25519"] == pytest.approx(
            run["tx_per_s"] / run["ed25519_verify_per_s"], rel=0.01
        )
    for name in ("seconds", "tx_per_s", "ed25519_verify_per_s", "ratio_to_ed25519"):
        assert result[name] == sorted(run[name] for run in runs)[1], name
