"""The form blocks take in etcd: compressed transport bytes, read back exactly or refused."""

from __future__ import annotations

import time
import zlib
from pathlib import Path

import pytest

from rekam.ledger._errors import MalformedError
from rekam.ledger.block import cut_block
from rekam.ordering.etcd import BLOCK_ZLIB, MAX_BLOCK_TRANSPORT, block_from_value, block_value
from rekam.service.bench import presigned_writes
from rekam.service.workspace import OrgSpec, Workspace


def test_a_block_value_in_etcd_reads_back_as_the_same_block(tmp_path: Path) -> None:
    with Workspace.create(
        tmp_path / "n", "rekam-test", [OrgSpec("klinik-a", "clinic", "A")], kdf="fast"
    ) as ws:
        org = ws.actor("klinik-a")
        doctor = ws.actor(ws.admin.enrol_member(org, "doctor", "pw").id, "pw")
        patient = ws.admin.register_patient(org, "pw")[0].id
        blobs = [ws.node.blobs.put(b"content %d" % i) for i in range(4)]
        txs = presigned_writes(
            ws.node.network_id, doctor, patient, blobs, 50, time.time_ns() // 1_000_000
        )
        block = cut_block(ws.node.network_id, 7, "ab" * 32, 1, txs, "klinik-a", org.identity.signer)
    value = block_value(block)
    assert value.startswith(BLOCK_ZLIB) and len(value) < len(block.to_bytes())
    again = block_from_value(value)
    assert again.hash == block.hash and again.to_bytes() == block.to_bytes()
    # Plain transport bytes (as written before compression) are still read.
    assert block_from_value(block.to_bytes()).hash == block.hash
    with pytest.raises(MalformedError):
        block_from_value(BLOCK_ZLIB + b"not zlib at all")
    with pytest.raises(MalformedError):
        block_from_value(value[:-10])  # truncated
    with pytest.raises(MalformedError):
        block_from_value(BLOCK_ZLIB + zlib.compress(b" " * (MAX_BLOCK_TRANSPORT + 1)))
