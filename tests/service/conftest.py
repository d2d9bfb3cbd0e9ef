"""Fixtures for the service tests."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Child processes a test starts; any still running afterwards are killed and reaped.

    A test appends each process it spawns, so a failing assertion never leaves a worker
    running (or a zombie behind).
    """
    spawned: list[subprocess.Popen[bytes]] = []
    yield spawned
    for proc in spawned:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
