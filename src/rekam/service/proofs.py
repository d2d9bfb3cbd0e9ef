"""Checkpoints and receipts: proofs that anyone can check with only the network's public keys.

Two Merkle trees (RFC 9162 hashing) link a transaction to a cosigned checkpoint:

* per block, the header's ``tx_root`` over the envelopes and a results tree over
  ``canonical([tx_id, code])`` (the validity every node derives);
* across blocks, the block log: leaf ``h`` is ``canonical({"block": hash, "results": root})``.

A checkpoint signs ``{network, height, head, blocks_root}``; organisations cosign it. A
receipt carries the transaction, its block header and orderer signature, both inclusion
proofs, the result proof and a checkpoint. ``verify_receipt`` needs nothing else but the
organisations' public signing keys (genesis.json, or ``rekam keys export``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rekam.crypto import Signer, verify_signature
from rekam.encoding import CanonicalError, b64d, b64e, canonical, parse
from rekam.ledger.block import BLOCK_DOMAIN, Checkpoint, Genesis, check_header
from rekam.ledger.merkle import (
    MerkleLog,
    ProofError,
    inclusion_proof,
    leaf_hash,
    root_from_leaf_hashes,
    verify_inclusion,
)
from rekam.ledger.tx import Transaction
from rekam.service.ports import ChainStore

RECEIPT_FORMAT = "rekam-receipt/1"
KEYS_FORMAT = "rekam-keys/1"


class ReceiptError(Exception):
    """A receipt does not prove what it claims; the message says which check failed."""


def result_leaf(tx_id: str, code: str) -> bytes:
    """The leaf of a block's results tree."""
    return canonical([tx_id, code])


def block_leaf(block_hash: str, results_root: str) -> bytes:
    """The leaf of the block log."""
    return canonical({"block": block_hash, "results": results_root})


def results_root(results: Sequence[tuple[str, str]]) -> str:
    """Merkle root over a block's (tx_id, code) results, hex."""
    return root_from_leaf_hashes([leaf_hash(result_leaf(t, c)) for t, c in results]).hex()


class BlockLog:
    """The Merkle log over all blocks and their results, built from a store."""

    def __init__(self) -> None:
        self.log = MerkleLog()
        self.results: list[str] = []

    @classmethod
    def build(cls, store: ChainStore, height: int | None = None) -> BlockLog:
        """Read blocks 0..height from the store into a log."""
        log = cls()
        end = None if height is None else height + 1
        for block, records in store.iter_block_records(0, end):
            results = [(r.tx_id, r.code) for r in records]
            root = results_root(results)
            log.results.append(root)
            log.log.append(leaf_hash(block_leaf(block.hash, root)))
        return log

    def root(self, size: int) -> bytes:
        """Root over the first ``size`` blocks."""
        return self.log.root(size)


def make_checkpoint(
    store: ChainStore, network: str, signers: Mapping[str, Signer], log: BlockLog | None = None
) -> Checkpoint:
    """Sign a checkpoint of the current head by each local organisation and store it."""
    head = store.head()
    assert head is not None
    log = log or BlockLog.build(store, head[0])
    body = {
        "network": network,
        "height": head[0],
        "head": head[1],
        "blocks_root": log.root(head[0] + 1).hex(),
    }
    unsigned = Checkpoint(body, ())
    checkpoint = Checkpoint(
        body, tuple((org, s.sign(unsigned.message())) for org, s in sorted(signers.items()))
    )
    store.put_checkpoint(checkpoint)
    return checkpoint


def build_receipt(
    store: ChainStore, tx_id: str, checkpoint: Checkpoint, log: BlockLog | None = None
) -> dict[str, Any]:
    """A receipt proving a committed transaction and its result up to a checkpoint."""
    stored = store.get_tx(tx_id)
    if stored is None:
        raise ReceiptError("no such transaction")
    height = int(checkpoint.body["height"])
    if stored.height > height:
        raise ReceiptError("the checkpoint is older than the transaction")
    block = store.get_block(stored.height)
    assert block is not None
    tx_leaves = [leaf_hash(t) for t in block.txs]
    results = [(r.tx_id, r.code) for r in store.block_txs(stored.height)]
    result_leaves = [leaf_hash(result_leaf(t, c)) for t, c in results]
    if log is None or log.log.size < height + 1:
        log = BlockLog.build(store, height)
    return {
        "format": RECEIPT_FORMAT,
        "network": checkpoint.body["network"],
        "tx": b64e(stored.raw),
        "tx_id": tx_id,
        "block": {"header": dict(block.header), "sig": b64e(block.signature)},
        "index": stored.index,
        "tx_proof": [h.hex() for h in inclusion_proof(tx_leaves, stored.index)],
        "code": stored.code,
        "results_root": log.results[stored.height],
        "result_proof": [h.hex() for h in inclusion_proof(result_leaves, stored.index)],
        "block_proof": [h.hex() for h in log.log.inclusion_proof(stored.height, height + 1)],
        "checkpoint": checkpoint.to_json(),
    }


@dataclass(frozen=True)
class ReceiptCheck:
    """What a verified receipt establishes."""

    tx_id: str
    tx_type: str
    height: int
    valid: bool
    code: str
    checkpoint_height: int
    cosigners: list[str]


def network_keys(doc: Mapping[str, Any]) -> tuple[str, dict[str, bytes]]:
    """(network id, org -> signing key) from a genesis document or a keys export."""
    if doc.get("format") == KEYS_FORMAT:
        return str(doc["network"]), {org: b64d(k) for org, k in doc["orgs"].items()}
    genesis = Genesis(doc)
    genesis.check()
    return genesis.network_id, {o["org"]: b64d(o["sign_key"]) for o in genesis.orgs}


def verify_receipt(
    receipt: Any, keys_doc: Mapping[str, Any], min_cosigners: int = 1
) -> ReceiptCheck:
    """Check a receipt offline against the network's keys; raises ReceiptError on any flaw."""
    try:
        return _verify_receipt(receipt, keys_doc, min_cosigners)
    except ReceiptError:
        raise
    except ProofError as exc:
        raise ReceiptError(f"Merkle proof: {exc}") from None
    except (CanonicalError, KeyError, TypeError, ValueError) as exc:
        raise ReceiptError(f"receipt is malformed: {type(exc).__name__}: {exc}") from None


def _hashes(items: Any) -> list[bytes]:
    return [bytes.fromhex(h) for h in items]


def _verify_receipt(receipt: Any, keys_doc: Mapping[str, Any], min_cosigners: int) -> ReceiptCheck:
    if not isinstance(receipt, dict) or receipt.get("format") != RECEIPT_FORMAT:
        raise ReceiptError(f"not a {RECEIPT_FORMAT} document")
    network, keys = network_keys(keys_doc)
    if receipt["network"] != network:
        raise ReceiptError("receipt is for another network than these keys")
    raw = b64d(receipt["tx"])
    tx = Transaction.decode(raw)
    if tx.tx_id != receipt["tx_id"] or tx.network != network:
        raise ReceiptError("transaction id or network does not match the transaction bytes")
    for signature in tx.signatures:
        if not verify_signature(signature.key, tx.signed_message, signature.sig):
            raise ReceiptError(f"transaction signature by {signature.by} does not verify")
    header = receipt["block"]["header"]
    check_header(header)
    height = int(header["height"])
    orderer_key = keys.get(header["orderer"])
    if orderer_key is None:
        raise ReceiptError(f"orderer {header['orderer']} is not among the given keys")
    if not verify_signature(
        orderer_key, BLOCK_DOMAIN + canonical(header), b64d(receipt["block"]["sig"])
    ):
        raise ReceiptError("block signature does not verify with the orderer's key")
    index, size = int(receipt["index"]), int(header["tx_count"])
    verify_inclusion(
        leaf_hash(raw), index, size, _hashes(receipt["tx_proof"]), bytes.fromhex(header["tx_root"])
    )
    code = str(receipt["code"])
    verify_inclusion(
        leaf_hash(result_leaf(tx.tx_id, code)),
        index,
        size,
        _hashes(receipt["result_proof"]),
        bytes.fromhex(receipt["results_root"]),
    )
    checkpoint = Checkpoint.from_json(receipt["checkpoint"])
    if checkpoint.body["network"] != network:
        raise ReceiptError("checkpoint is for another network")
    cp_height = int(checkpoint.body["height"])
    block_hash = hashlib.sha256(canonical(header)).hexdigest()
    if cp_height == height and checkpoint.body["head"] != block_hash:
        raise ReceiptError("checkpoint head is not this block")
    verify_inclusion(
        leaf_hash(block_leaf(block_hash, receipt["results_root"])),
        height,
        cp_height + 1,
        _hashes(receipt["block_proof"]),
        bytes.fromhex(checkpoint.body["blocks_root"]),
    )
    cosigners = checkpoint.valid_signers(keys)
    if len(cosigners) < min_cosigners:
        raise ReceiptError(
            f"checkpoint has {len(cosigners)} valid cosignatures, need {min_cosigners}"
        )
    return ReceiptCheck(tx.tx_id, tx.type, height, code == "ok", code, cp_height, cosigners)


def export_keys(network: str, org_rows: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """The organisations' current signing keys, for offline receipt verification."""
    return {
        "format": KEYS_FORMAT,
        "network": network,
        "orgs": {org: row["sign_key"] for org, row in org_rows if row["active"]},
    }


def load_json(raw: bytes) -> Any:
    """Parse a receipt or keys file strictly (no duplicate keys, no floats)."""
    try:
        return parse(raw)
    except CanonicalError as exc:
        raise ReceiptError(f"not valid JSON: {exc}") from None
