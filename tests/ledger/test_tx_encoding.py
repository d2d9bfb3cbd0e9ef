"""Transactions, blocks, genesis and checkpoints reproduce tests/encoding/vectors.json exactly.

Every id, hash and signature is recomputed from the vector inputs twice: with Rekam's own
functions, and from the formulas of docs/encoding.md using only hashlib and the canonical
encoder, so the code and the specification cannot drift apart unnoticed. Then: what
``Transaction.decode`` refuses, and that no single-byte change to an envelope goes unnoticed.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rekam.crypto import Ed25519Signer, verify_signature
from rekam.encoding import b64d, b64e, canonical, parse
from rekam.ledger._errors import GenesisError, MalformedError
from rekam.ledger.block import (
    BLOCK_DOMAIN,
    CHECKPOINT_DOMAIN,
    ZERO_HASH,
    Block,
    Checkpoint,
    Genesis,
    cut_block,
    genesis_block,
    tx_root,
)
from rekam.ledger.merkle import leaf_hash, merkle_root
from rekam.ledger.tx import (
    MAX_SIGNATURES,
    MAX_TX_BYTES,
    SIGNING_DOMAIN,
    Transaction,
    sign_tx,
    unsigned_tx,
)

VECTORS = json.loads(
    (Path(__file__).parents[1] / "encoding" / "vectors.json").read_text(encoding="utf-8")
)
KEYS = VECTORS["keys"]
GENESIS = VECTORS["genesis"]
TXS = VECTORS["transactions"]
BLOCK = VECTORS["block"]
CHECKPOINT = VECTORS["checkpoint"]
NETWORK = GENESIS["network_id"]


def _signer(who: str) -> Ed25519Signer:
    return Ed25519Signer(bytes.fromhex(KEYS[who]["ed25519_seed_hex"]))


def _public(who: str) -> bytes:
    return b64d(KEYS[who]["sign_key"])


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _envelopes() -> list[bytes]:
    return [bytes.fromhex(v["envelope_canonical_hex"]) for v in TXS]


# --- keys and domains ----------------------------------------------------------------------


def test_domains() -> None:
    assert VECTORS["domains"] == {
        "tx": "rekam/tx/v1\n",
        "block": "rekam/block/v1\n",
        "checkpoint": "rekam/checkpoint/v1\n",
    }
    assert SIGNING_DOMAIN == b"rekam/tx/v1\n"
    assert BLOCK_DOMAIN == b"rekam/block/v1\n"
    assert CHECKPOINT_DOMAIN == b"rekam/checkpoint/v1\n"


@pytest.mark.parametrize("who", sorted(KEYS))
def test_key_vector(who: str) -> None:
    assert b64e(_signer(who).public_key) == KEYS[who]["sign_key"]
    assert len(_public(who)) == 32
    assert b64d(KEYS[who]["enc_key"])[0] == 0x01  # X25519 suite byte + 32 bytes
    assert len(b64d(KEYS[who]["enc_key"])) == 33


# --- genesis -------------------------------------------------------------------------------


def test_genesis_vector() -> None:
    doc = GENESIS["doc"]
    raw = bytes.fromhex(GENESIS["canonical_hex"])
    assert raw == GENESIS["canonical"].encode("utf-8") == canonical(doc)
    genesis = Genesis.create(doc["name"], doc["created"], doc["orgs"], doc["orderers"])
    assert genesis.doc == doc
    assert genesis.to_bytes() == raw
    assert genesis.network_id == NETWORK == _sha256(raw)
    assert Genesis.from_bytes(raw).network_id == NETWORK
    # A non-canonical copy of the document still names the same network.
    pretty = json.dumps(doc, indent=2).encode("utf-8")
    assert Genesis.from_bytes(pretty).network_id == NETWORK


def test_genesis_block_vector() -> None:
    raw = bytes.fromhex(GENESIS["canonical_hex"])
    block0 = genesis_block(Genesis.from_bytes(raw))
    vec = GENESIS["block0"]
    assert vec["leaf_hash"] == _leaf(raw).hex()
    assert vec["header"] == {
        "v": 1,
        "network": NETWORK,
        "height": 0,
        "prev": ZERO_HASH,
        "time": GENESIS["doc"]["created"],
        "tx_count": 1,
        "tx_root": _leaf(raw).hex(),  # a one-leaf tree's head is the leaf hash
        "orderer": GENESIS["doc"]["orderers"][0],
    }
    assert dict(block0.header) == vec["header"]
    assert (
        block0.header_bytes.hex() == vec["header_canonical_hex"] == canonical(vec["header"]).hex()
    )
    assert block0.hash == vec["hash"] == _sha256(canonical(vec["header"]))
    assert block0.signature == b"" and vec["signature_b64url"] == ""


# --- transactions --------------------------------------------------------------------------


@pytest.mark.parametrize("vec", TXS, ids=[v["name"] for v in TXS])
def test_transaction_vector(vec: dict[str, Any]) -> None:
    tx = vec["tx"]
    rebuilt = unsigned_tx(
        tx["network"], tx["type"], tx["signer"], tx["body"], tx["created"], tx["nonce"]
    )
    assert rebuilt == tx
    assert tx["network"] == NETWORK
    unsigned = bytes.fromhex(vec["tx_canonical_hex"])
    assert unsigned == vec["tx_canonical"].encode("utf-8") == canonical(tx)
    assert vec["tx_id"] == _sha256(unsigned)
    message = bytes.fromhex(vec["signed_message_hex"])
    assert message == b"rekam/tx/v1\n" + unsigned
    # Signatures are deterministic (RFC 8032), so re-signing reproduces the envelope.
    signed = sign_tx(tx, [(who, _signer(who)) for who in vec["signers"]])
    envelope = bytes.fromhex(vec["envelope_canonical_hex"])
    assert signed.raw == envelope == vec["envelope_canonical"].encode("utf-8")
    assert envelope == canonical({"tx": tx, "sigs": vec["signatures"]})
    for sig in vec["signatures"]:
        assert sig["key"] == KEYS[sig["by"]]["sign_key"]
        assert b64e(_signer(sig["by"]).sign(message)) == sig["sig"]
        assert verify_signature(b64d(sig["key"]), message, b64d(sig["sig"]))
    decoded = Transaction.decode(envelope)
    assert decoded.tx == tx
    assert decoded.tx_id == vec["tx_id"]
    assert decoded.signed_message == message
    assert decoded.signer == vec["signers"][0]
    assert [(s.by, b64e(s.key), b64e(s.sig)) for s in decoded.signatures] == [
        (s["by"], s["key"], s["sig"]) for s in vec["signatures"]
    ]


def test_tx_id_ignores_cosignatures_of_org_changes() -> None:
    """A cosigned copy of an organisation change is the same transaction."""
    signer = vec_signer = TXS[0]["signers"][0]
    body = {
        "org": "lab-baru",
        "kind": "lab",
        "sign_key": b64e(bytes(32)),
        "enc_key": b64e(bytes(33)),
    }
    tx = unsigned_tx(GENESIS["network_id"], "org.enrol", signer, body, 1_700_000_000_000, "ab" * 16)
    one = sign_tx(tx, [(signer, _signer(vec_signer))])
    two = sign_tx(tx, [(signer, _signer(vec_signer)), ("lab-b", _signer("lab-b"))])
    assert two.raw != one.raw
    assert two.tx_id == one.tx_id
    assert two.signed_message == one.signed_message


def test_cosigned_copy_of_other_types_does_not_decode() -> None:
    """Elsewhere an added signature would make a second copy with the same id: refused."""
    vec = TXS[0]
    with pytest.raises(MalformedError, match="co-signatures"):
        sign_tx(
            vec["tx"],
            [(vec["signers"][0], _signer(vec["signers"][0])), ("lab-b", _signer("lab-b"))],
        )


def test_signature_does_not_verify_without_the_domain_or_on_another_domain() -> None:
    vec = TXS[0]
    unsigned = bytes.fromhex(vec["tx_canonical_hex"])
    sig = b64d(vec["signatures"][0]["sig"])
    key = b64d(vec["signatures"][0]["key"])
    assert verify_signature(key, SIGNING_DOMAIN + unsigned, sig)
    assert not verify_signature(key, unsigned, sig)
    assert not verify_signature(key, BLOCK_DOMAIN + unsigned, sig)
    assert not verify_signature(key, CHECKPOINT_DOMAIN + unsigned, sig)


# --- block ---------------------------------------------------------------------------------


def test_block_vector() -> None:
    envelopes = _envelopes()
    leaves = [_leaf(e) for e in envelopes]
    assert leaves == [leaf_hash(e) for e in envelopes]
    assert [h.hex() for h in leaves] == BLOCK["leaf_hashes"]
    root = _node(leaves[0], leaves[1]).hex()  # RFC 9162 MTH of two leaves
    assert root == BLOCK["tx_root"] == tx_root(envelopes) == merkle_root(envelopes).hex()
    header = BLOCK["header"]
    assert header == {
        "v": 1,
        "network": NETWORK,
        "height": 1,
        "prev": GENESIS["block0"]["hash"],
        "time": header["time"],
        "tx_count": 2,
        "tx_root": root,
        "orderer": BLOCK["orderer"],
    }
    header_bytes = bytes.fromhex(BLOCK["header_canonical_hex"])
    assert header_bytes == canonical(header) == BLOCK["header_canonical"].encode("utf-8")
    assert BLOCK["hash"] == _sha256(header_bytes)
    message = bytes.fromhex(BLOCK["signed_message_hex"])
    assert message == b"rekam/block/v1\n" + header_bytes
    signature = b64d(BLOCK["signature_b64url"])
    assert verify_signature(_public(BLOCK["orderer"]), message, signature)

    txs = [Transaction.decode(e) for e in envelopes]
    block = cut_block(
        NETWORK, 1, header["prev"], header["time"], txs, BLOCK["orderer"], _signer(BLOCK["orderer"])
    )
    assert dict(block.header) == header
    assert block.hash == BLOCK["hash"]
    assert block.signed_message() == message
    assert block.signature == signature
    transport = bytes.fromhex(BLOCK["block_canonical_hex"])
    assert block.to_bytes() == transport
    assert transport == canonical(
        {"header": header, "sig": BLOCK["signature_b64url"], "txs": [b64e(e) for e in envelopes]}
    )
    again = Block.from_bytes(transport)
    assert again.hash == BLOCK["hash"] and again.txs == tuple(envelopes)


def test_empty_tx_root() -> None:
    assert BLOCK["empty_tx_root"] == tx_root([]) == _sha256(b"")


# --- checkpoint ----------------------------------------------------------------------------


def test_checkpoint_vector() -> None:
    log = CHECKPOINT["block_log"]
    assert [e["block_hash"] for e in log] == [GENESIS["block0"]["hash"], BLOCK["hash"]]
    assert log[0]["results"] == [[NETWORK, "ok"]]  # the genesis document's id is the network id
    assert [r[0] for r in log[1]["results"]] == [v["tx_id"] for v in TXS]
    leaves = []
    for entry in log:
        result_leaves = [_leaf(canonical([tx_id, code])) for tx_id, code in entry["results"]]
        results_root = merkle_root([canonical(r) for r in entry["results"]]).hex()
        if len(result_leaves) == 1:
            assert results_root == result_leaves[0].hex()
        else:
            assert results_root == _node(*result_leaves).hex()
        assert entry["results_root"] == results_root
        leaf = canonical({"block": entry["block_hash"], "results": results_root})
        assert entry["leaf"].encode("utf-8") == leaf
        assert entry["leaf_hash"] == _leaf(leaf).hex()
        leaves.append(_leaf(leaf))
    body = CHECKPOINT["body"]
    assert body == {
        "network": NETWORK,
        "height": 1,
        "head": BLOCK["hash"],
        "blocks_root": _node(leaves[0], leaves[1]).hex(),
    }
    assert CHECKPOINT["body_canonical"].encode("utf-8") == canonical(body)
    message = bytes.fromhex(CHECKPOINT["message_hex"])
    assert message == b"rekam/checkpoint/v1\n" + canonical(body)
    assert Checkpoint(body, ()).message() == message

    doc = CHECKPOINT["json"]
    assert [s["by"] for s in doc["sigs"]] == ["clinic-a", "lab-b"]
    for sig in doc["sigs"]:
        assert b64e(_signer(sig["by"]).sign(message)) == sig["sig"]
    checkpoint = Checkpoint.from_json(doc)
    assert checkpoint.to_json() == doc
    assert canonical(doc) == CHECKPOINT["json_canonical"].encode("utf-8")
    keys = {who: _public(who) for who in ("clinic-a", "lab-b")}
    assert checkpoint.valid_signers(keys) == ["clinic-a", "lab-b"]
    assert checkpoint.valid_signers({"clinic-a": keys["lab-b"]}) == []


def test_checkpoint_block_log_matches_the_proof_service() -> None:
    proofs = pytest.importorskip("rekam.service.proofs")
    for entry in CHECKPOINT["block_log"]:
        results = [(t, c) for t, c in entry["results"]]
        assert proofs.results_root(results) == entry["results_root"]
        assert proofs.block_leaf(entry["block_hash"], entry["results_root"]) == entry[
            "leaf"
        ].encode("utf-8")


def test_checkpoint_results_are_what_the_rules_decide() -> None:
    """The vector's block 1 results are the ones a node derives (docs/ledger.md codes)."""
    from rekam.ledger.state import MemoryState
    from rekam.ledger.validate import ChainHead, apply_block, genesis_delta

    genesis = Genesis.from_bytes(bytes.fromhex(GENESIS["canonical_hex"]))
    block0 = genesis_block(genesis)
    block1 = Block.from_bytes(bytes.fromhex(BLOCK["block_canonical_hex"]))
    state = MemoryState()
    state.apply(genesis_delta(genesis), [NETWORK])
    result = apply_block(
        state,
        genesis,
        ChainHead(0, block0.hash, block0.time),
        block1,
        [o["org"] for o in genesis.orgs],
    )
    assert [[r.tx_id, r.code] for r in result.results] == CHECKPOINT["block_log"][1]["results"]


# --- Transaction.decode refusals -----------------------------------------------------------

ENVELOPE = bytes.fromhex(TXS[1]["envelope_canonical_hex"])  # record.write, basis_ref null
SIGNER = TXS[1]["signers"][0]


def _mutated(change: Any) -> bytes:
    envelope = copy.deepcopy(parse(ENVELOPE))
    change(envelope)
    return canonical(envelope)


def _refused(raw: bytes) -> None:
    with pytest.raises(MalformedError):
        Transaction.decode(raw)


def test_decode_accepts_the_vector() -> None:
    assert Transaction.decode(ENVELOPE).tx_id == TXS[1]["tx_id"]


@pytest.mark.parametrize(
    "raw",
    [
        ENVELOPE + b"\n",
        b" " + ENVELOPE,
        ENVELOPE.replace(b'":', b'": ', 1),
        json.dumps(parse(ENVELOPE), indent=1).encode(),
        # sigs and tx swapped: members out of order
        b'{"tx":'
        + canonical(parse(ENVELOPE)["tx"])
        + b',"sigs":'
        + canonical(parse(ENVELOPE)["sigs"])
        + b"}",
        ENVELOPE.replace(b'"v":1', b'"v":1.0'),
        ENVELOPE.replace(b'"version":1', b'"version":1e0'),
        ENVELOPE.replace(b'"v":1', b'"v":01'),
        ENVELOPE.replace(b"record.write", b"record\\u002ewrite"),
        ENVELOPE.replace(b'"v":1}', b'"v":1,"v":1}'),
        b"\xef\xbb\xbf" + ENVELOPE,
        ENVELOPE.decode().encode("utf-16"),
        ENVELOPE[:-1],
        b"",
        b"null",
        b"[]",
    ],
    ids=[
        "trailing newline",
        "leading space",
        "space after colon",
        "indented",
        "members out of order",
        "float 1.0",
        "exponent",
        "leading zero",
        "needless escape",
        "duplicate key",
        "BOM",
        "UTF-16",
        "truncated",
        "empty",
        "null",
        "array",
    ],
)
def test_decode_refuses_non_canonical_or_invalid_bytes(raw: bytes) -> None:
    _refused(raw)


def _set(path: tuple[Any, ...], value: Any) -> Any:
    def change(env: Any) -> None:
        target = env
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


def _delete(path: tuple[Any, ...]) -> Any:
    def change(env: Any) -> None:
        target = env
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return change


SIG0 = parse(ENVELOPE)["sigs"][0]
REFUSALS: dict[str, Any] = {
    # unknown or missing fields, at every level
    "unknown envelope field": _set(("extra",), 1),
    "unknown tx field": _set(("tx", "note"), "free text"),
    "unknown body field": _set(("tx", "body", "note"), "free text"),
    "unknown signature field": _set(("sigs", 0, "when"), 1),
    "missing tx": _delete(("tx",)),
    "missing sigs": _delete(("sigs",)),
    "missing nonce": _delete(("tx", "nonce")),
    "missing body field": _delete(("tx", "body", "basis_ref")),
    "missing signature sig": _delete(("sigs", 0, "sig")),
    # wrong types and values
    "tx is a list": lambda env: env.__setitem__("tx", [env["tx"]]),
    "v is 2": _set(("tx", "v"), 2),
    "v is a string": _set(("tx", "v"), "1"),
    "v is null": _set(("tx", "v"), None),
    "network upper-case": _set(("tx", "network"), NETWORK.upper()),
    "network short": _set(("tx", "network"), NETWORK[:62]),
    "network not hex": _set(("tx", "network"), "g" * 64),
    "nonce short": _set(("tx", "nonce"), "00" * 15),
    "nonce upper-case": _set(("tx", "nonce"), "AB" * 16),
    "nonce integer": _set(("tx", "nonce"), 7),
    "created string": _set(("tx", "created"), "1700000120000"),
    "created negative": _set(("tx", "created"), -1),
    "created bool": _set(("tx", "created"), True),
    "signer not an id": _set(("tx", "signer"), "Clinic A"),
    "signer a record id": _set(("tx", "signer"), "r-" + "0" * 32),
    "type unknown": _set(("tx", "type"), "record.delete"),
    "type null": _set(("tx", "type"), None),
    "body a list": _set(("tx", "body"), []),
    "body version 0": _set(("tx", "body", "version"), 0),
    "body version bool": _set(("tx", "body", "version"), True),
    "body version string": _set(("tx", "body", "version"), "1"),
    "body resource type unknown": _set(("tx", "body", "resource_type"), "Secret"),
    "body content_hash upper-case": _set(("tx", "body", "content_hash"), "AB" * 32),
    "body patient id malformed": _set(("tx", "body", "patient"), "p-" + "0" * 31),
    "body basis_ref wrong kind": _set(("tx", "body", "basis_ref"), "r-" + "0" * 32),
    # signatures
    "sigs not a list": _set(("sigs",), SIG0),
    "missing signature": _set(("sigs",), []),
    "first signature not by signer": _set(("sigs", 0, "by"), "clinic-a"),
    "signature by not an id": _set(("sigs", 0, "by"), 5),
    "duplicate signer": _set(("sigs",), [SIG0, SIG0]),
    "too many signatures": _set(
        ("sigs",),
        [SIG0]
        + [
            {"by": f"org-{i:03d}", "key": SIG0["key"], "sig": SIG0["sig"]}
            for i in range(MAX_SIGNATURES)
        ],
    ),
    "signature entry a string": _set(("sigs",), ["sig"]),
    "key padded": _set(("sigs", 0, "key"), SIG0["key"] + "="),
    "key standard alphabet": _set(("sigs", 0, "key"), "+/" + SIG0["key"][2:]),
    "key bad trailing bits": _set(("sigs", 0, "key"), SIG0["key"][:-1] + "B"),
    "sig length 4k+1": _set(("sigs", 0, "sig"), (SIG0["sig"] + "AAAA")[: 4 * 22 + 1]),
    "sig not a string": _set(("sigs", 0, "sig"), 12),
    "sig with whitespace": _set(("sigs", 0, "sig"), SIG0["sig"][:10] + " " + SIG0["sig"][10:]),
}


@pytest.mark.parametrize("change", list(REFUSALS.values()), ids=list(REFUSALS))
def test_decode_refuses(change: Any) -> None:
    _refused(_mutated(change))


def test_key_bad_trailing_bits_case_is_meaningful() -> None:
    # A 32-byte key is 43 characters whose last one carries 2 unused bits.
    assert len(SIG0["key"]) == 43
    assert SIG0["key"][:-1] + "B" != SIG0["key"]


def test_decode_refuses_oversize() -> None:
    long_sig = b64e(bytes(MAX_TX_BYTES))
    raw = _mutated(_set(("sigs", 0, "sig"), long_sig))
    assert len(raw) > MAX_TX_BYTES
    _refused(raw)
    _refused(ENVELOPE + b" " * MAX_TX_BYTES)


def test_decode_size_limit_is_on_the_bytes() -> None:
    """An envelope of exactly MAX_TX_BYTES bytes is decoded; one byte more is not."""
    base = _mutated(_set(("sigs", 0, "sig"), ""))
    filler = MAX_TX_BYTES - len(base)
    # Base64url grows by 4 characters per 3 bytes, so this lands within 3 bytes of the limit.
    sig = b64e(bytes(3 * (filler // 4)))
    raw = _mutated(_set(("sigs", 0, "sig"), sig))
    assert len(raw) <= MAX_TX_BYTES
    assert Transaction.decode(raw).tx_id == TXS[1]["tx_id"]
    bigger = _mutated(_set(("sigs", 0, "sig"), b64e(bytes(3 * (filler // 4) + 3))))
    assert len(bigger) > MAX_TX_BYTES
    _refused(bigger)


def test_decode_refuses_boolean_version() -> None:
    _refused(_mutated(_set(("tx", "v"), True)))


@pytest.mark.parametrize("value", [[], {}], ids=["list", "object"])
def test_decode_refuses_unhashable_type(value: Any) -> None:
    _refused(_mutated(_set(("tx", "type"), value)))


def test_signature_length_is_left_to_verification() -> None:
    """Decode checks structure only: a short signature decodes and then fails to verify."""
    raw = _mutated(_set(("sigs", 0, "sig"), b64e(b"\x00" * 63)))
    decoded = Transaction.decode(raw)
    s = decoded.signatures[0]
    assert not verify_signature(s.key, decoded.signed_message, s.sig)


# --- no byte of an envelope can change unnoticed -------------------------------------------


def _noticed(original: Transaction, raw: bytes) -> bool:
    try:
        decoded = Transaction.decode(raw)
    except MalformedError:
        return True
    if decoded.tx_id != original.tx_id:
        return True
    return not all(
        verify_signature(s.key, decoded.signed_message, s.sig) for s in decoded.signatures
    )


@pytest.mark.parametrize("index", range(len(TXS)), ids=[v["name"] for v in TXS])
def test_every_single_bit_flip_is_noticed(index: int) -> None:
    raw = bytes.fromhex(TXS[index]["envelope_canonical_hex"])
    original = Transaction.decode(raw)
    for position in range(len(raw)):
        for mask in (0x01, 0x20):
            mutated = bytearray(raw)
            mutated[position] ^= mask
            assert _noticed(original, bytes(mutated)), (position, mask)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_byte_change_is_noticed(data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(TXS) - 1))
    raw = bytes.fromhex(TXS[index]["envelope_canonical_hex"])
    original = Transaction.decode(raw)
    position = data.draw(st.integers(0, len(raw) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda b: b != raw[position]))
    mutated = bytearray(raw)
    mutated[position] = value
    assert _noticed(original, bytes(mutated))


# --- regressions: bugs found in src and fixed ------------------------------------------


def _append_newline(path: tuple[Any, ...]) -> Any:
    def change(env: Any) -> None:
        target = env
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] += "\n"
        if path == ("tx", "signer"):
            env["sigs"][0]["by"] += "\n"

    return change


@pytest.mark.parametrize(
    ("index", "path"),
    [
        (0, ("tx", "signer")),
        (0, ("tx", "nonce")),
        (0, ("tx", "network")),
        (0, ("tx", "body", "home_org")),
        (1, ("tx", "body", "content_hash")),
    ],
    ids=["signer", "nonce", "network", "home_org", "content_hash"],
)
def test_decode_refuses_trailing_newline(index: int, path: tuple[Any, ...]) -> None:
    envelope = copy.deepcopy(parse(bytes.fromhex(TXS[index]["envelope_canonical_hex"])))
    _append_newline(path)(envelope)
    _refused(canonical(envelope))


def _block_with(field: str, value: Any) -> bytes:
    doc = parse(bytes.fromhex(BLOCK["block_canonical_hex"]))
    doc["header"][field] = value
    return canonical(doc)


@pytest.mark.parametrize("field", ["network", "prev", "tx_root"])
def test_block_header_refuses_non_hex(field: str) -> None:
    with pytest.raises(MalformedError):
        Block.from_bytes(_block_with(field, "g" * 64))


def test_block_header_refuses_boolean_version() -> None:
    with pytest.raises(MalformedError):
        Block.from_bytes(_block_with("v", True))


def test_block_header_refuses_wrong_types() -> None:
    for field, value in [("height", -1), ("time", "1"), ("tx_count", True), ("v", 2)]:
        with pytest.raises(MalformedError):
            Block.from_bytes(_block_with(field, value))
    with pytest.raises(MalformedError):
        Block.from_bytes(_block_with("prev", GENESIS["block0"]["hash"].upper()))


def test_genesis_refuses_boolean_version() -> None:
    doc = dict(GENESIS["doc"], v=True)
    with pytest.raises(GenesisError):
        Genesis(doc).check()
