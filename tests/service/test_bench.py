"""The benchmarks' own plumbing, on small chains: what they report, not how fast."""

from __future__ import annotations

from pathlib import Path

import pytest

from rekam.service.bench import bench_verify


def test_bench_verify_verifies_the_closed_folder_in_a_process_of_its_own(tmp_path: Path) -> None:
    result = bench_verify(tmp_path, 40)
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
