"""The store under the real ledger: signed transactions validated against it, then replayed."""

from __future__ import annotations

import hashlib

from rekam.crypto import Ed25519Signer
from rekam.encoding import b64e
from rekam.ledger.block import Block, Genesis, cut_block, genesis_block
from rekam.ledger.state import TABLES
from rekam.ledger.tx import Transaction, make_tx, new_id
from rekam.ledger.validate import ChainHead, apply_block, genesis_delta, replay
from rekam.storage import SqlChainStore

T0 = 1_700_000_000_000


def _key(seed: int) -> Ed25519Signer:
    return Ed25519Signer(bytes([seed]) * 32)


def test_blocks_validated_against_the_store_match_a_replay(store: SqlChainStore) -> None:
    clinic = _key(1)
    genesis = Genesis.create(
        "test-net",
        T0,
        [
            {
                "org": "clinic-a",
                "kind": "clinic",
                "sign_key": b64e(clinic.public_key),
                "enc_key": b64e(bytes(32)),
            }
        ],
        ["clinic-a"],
    )
    g = genesis_block(genesis)
    store.initialise(g, genesis_delta(genesis))
    assert store.get_tx(hashlib.sha256(genesis.to_bytes()).hexdigest()) is not None

    def tx(kind: str, body: dict[str, object], at: int) -> Transaction:
        return make_tx(genesis.network_id, kind, "clinic-a", clinic, body, at)

    member = new_id("member")
    patients = [new_id("patient") for _ in range(3)]
    batches: list[list[bytes]] = [
        [
            tx(
                "member.enrol",
                {
                    "member": member,
                    "org": "clinic-a",
                    "role": "doctor",
                    "sign_key": b64e(_key(2).public_key),
                    "enc_key": b64e(bytes(32)),
                    "valid_from": 0,
                    "valid_until": T0 * 2,
                },
                T0 + 1,
            ).raw,
            *(
                tx(
                    "patient.register",
                    {
                        "patient": p,
                        "home_org": "clinic-a",
                        "sign_key": b64e(_key(10 + i).public_key),
                        "enc_key": b64e(bytes(32)),
                    },
                    T0 + 2,
                ).raw
                for i, p in enumerate(patients)
            ),
        ],
    ]
    replayed_tx = batches[0][1]
    batches.append([replayed_tx, b"not a transaction"])  # a duplicate and a malformed one

    head = ChainHead(0, g.hash, g.time)
    blocks: list[Block] = []
    for i, raws in enumerate(batches, start=1):
        block = cut_block(genesis.network_id, i, head.hash, T0 + 1000 * i, raws, "clinic-a", clinic)
        orgs = [key for key, _ in store.state_rows("org")]
        result = apply_block(store, genesis, head, block, orgs)
        store.append_block(block, result.results, result.delta)
        head = ChainHead(block.height, block.hash, block.time)
        blocks.append(block)

    codes = [(r.valid, r.code) for r in store.block_txs(2)]
    assert codes == [(False, "duplicate"), (False, "malformed")]
    first = store.get_tx(Transaction.decode(replayed_tx).tx_id)
    assert first is not None and (first.height, first.valid) == (1, True)
    assert store.get("patient", patients[0]) is not None
    assert store.get("member", member) is not None

    state, replay_head, _ = replay(genesis, store.iter_blocks(1))
    assert (replay_head.height, replay_head.hash) == store.head()
    for spec in TABLES:
        assert dict(store.state_rows(spec.name)) == state.tables[spec.name], spec.name
    assert [b.to_bytes() for b in store.iter_blocks(1)] == [b.to_bytes() for b in blocks]
