"""Regenerate tests/encoding/vectors.json, the test vectors of docs/encoding.md.

    PYTHONPATH=src python tests/encoding/make_vectors.py           # rewrite vectors.json
    PYTHONPATH=src python tests/encoding/make_vectors.py --check   # exit 1 if it is stale

Everything is derived with Rekam's own functions from fixed inputs: fixed Ed25519 seeds
(signatures are deterministic, RFC 8032), fixed X25519 keys, fixed times, nonces and ids. So the
output is byte-for-byte reproducible, and any change to the encoding shows up as a diff here
and as a failure in tests/encoding and tests/ledger/test_tx_encoding.py.

The seeds are published test keys: never use them for anything else.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from rekam.crypto import Ed25519Signer, encryption_public_key
from rekam.encoding import b64e, canonical, parse
from rekam.ledger.block import (
    BLOCK_DOMAIN,
    CHECKPOINT_DOMAIN,
    Checkpoint,
    Genesis,
    cut_block,
    genesis_block,
    tx_root,
)
from rekam.ledger.merkle import leaf_hash, root_from_leaf_hashes
from rekam.ledger.tx import SIGNING_DOMAIN, sign_tx, unsigned_tx

VECTORS_PATH = Path(__file__).with_name("vectors.json")

# --- canonical JSON ------------------------------------------------------------------------

# (name, input JSON text). The expected canonical form is computed by rekam.encoding; the
# tests also check it against the reference implementation (the rfc8785 package).
CANONICAL_CASES: list[tuple[str, str]] = [
    ("empty object", "{}"),
    ("empty array", "[]"),
    ("literals", "[true, false, null]"),
    ("whitespace removed and members sorted", ' {\n  "b" : 2 ,\t"a" : 1\r\n} '),
    ("member order is lexicographic, shorter prefix first", '{"b":3,"ab":1,"a":2,"":0}'),
    (
        "nested objects and arrays are sorted at every level",
        '{"z":[{"d":1,"c":[{"y":true,"x":null}]}],"a":{"k":[],"j":{}}}',
    ),
    ("array order is kept", '[3,1,2,"b","a",[2,1]]'),
    # RFC 8785 section 3.2.3's example: member names sort by UTF-16 code units, so U+1F600
    # (surrogates D83D DE00) sorts before U+FB33, unlike code-point order.
    (
        "RFC 8785 3.2.3 key order (UTF-16 code units)",
        '{"\\u20ac":"Euro Sign","\\r":"Carriage Return","\\ufb33":"Hebrew Letter Dalet With '
        'Dagesh","1":"One","\\ud83d\\ude00":"Emoji: Grinning Face","\\u0080":"Control",'
        '"\\u00f6":"Latin Small Letter O With Diaeresis"}',
    ),
    (
        "astral key before U+E000..U+FFFF keys",
        '{"\\uffff":1,"\\ue000":2,"\\ud800\\udc00":3,"\\ud83d\\ude00":4,"\\ud7ff":5}',
    ),
    (
        "UTF-16 order inside a nested object",
        '{"outer":{"\\ufb33":"dalet","\\ud83d\\ude00":"grin","\\u20ac":"euro"}}',
    ),
    (
        "control characters: short escapes, else lowercase \\u00xx",
        '"\\u0000\\u0001\\u0007\\b\\t\\n\\u000b\\f\\r\\u000e\\u001f\\u0020"',
    ),
    (
        "quote and backslash escaped; solidus, DEL and U+2028 are not",
        '"\\"\\\\\\/\\u007f\\u2028\\u2029"',
    ),
    ("non-ASCII is raw UTF-8, never \\u-escaped", '"\\u00e9\\u20ac\\ud83d\\ude00\\ufeff\\uffff"'),
    ("raw UTF-8 input stays raw", '"é€😀"'),
    ("unnecessary escapes are removed", '"\\u0041\\u0062\\u002F\\u00E9"'),
    (
        "integers: safe range limits and zero",
        "[9007199254740991,-9007199254740991,0,1,-1,4294967296]",
    ),
    ("minus zero is the integer 0", "[-0]"),
    ("keys that look like numbers sort as strings", '{"10":1,"9":2,"1":3,"-1":4}'),
    ("value nested in 32 containers (the deepest allowed)", "[" * 32 + "1" + "]" * 32),
    (
        "a transaction-like object",
        '{"tx":{"v":1,"type":"record.erase","body":{"reason":'
        '"entered_in_error","record":"r-00112233445566778899aabbccddeeff"}},"sigs":[]}',
    ),
]

# (name, input, reason, value_outside_subset). The input is JSON text, or bytes given as
# "hex:..." for inputs that are not valid UTF-8 text. value_outside_subset is true when the
# parsed value itself cannot be encoded (so a parser must refuse it even when it does not
# insist on canonical bytes); false when only the byte form is wrong.
REJECTION_CASES: list[tuple[str, str, str, bool]] = [
    ("float with fraction", "1.5", "floats are not allowed", True),
    ("float with zero fraction", "1.0", "floats are not allowed, even integral ones", True),
    ("exponent", "1e3", "exponent notation is a float", True),
    ("upper-case exponent", "[1E3]", "exponent notation is a float", True),
    ("negative zero float", "-0.0", "floats are not allowed", True),
    ("float member", '{"a":0.5}', "floats are not allowed", True),
    ("NaN", "NaN", "NaN is not JSON", True),
    ("Infinity", "[Infinity]", "Infinity is not JSON", True),
    ("-Infinity", "-Infinity", "Infinity is not JSON", True),
    ("duplicate key", '{"a":1,"a":2}', "duplicate member names", True),
    ("duplicate key, same value", '{"a":1,"a":1}', "duplicate member names", True),
    ("nested duplicate key", '{"x":[{"b":1,"b":1}]}', "duplicate member names", True),
    ("duplicate key via escape", '{"a":1,"\\u0061":2}', "duplicate member names", True),
    ("2^53", "9007199254740992", "integer outside +-(2^53-1)", True),
    ("-(2^53)", "[-9007199254740992]", "integer outside +-(2^53-1)", True),
    ("huge integer", "123456789012345678901234567890", "integer outside +-(2^53-1)", True),
    ("lone high surrogate", '"\\ud800"', "unpaired surrogate has no UTF-8 form", True),
    ("lone low surrogate", '"\\udc00"', "unpaired surrogate has no UTF-8 form", True),
    ("surrogates in the wrong order", '"\\ude00\\ud83d"', "unpaired surrogates", True),
    ("lone surrogate in a key", '{"\\ud800":1}', "unpaired surrogate has no UTF-8 form", True),
    ("too deep", "[" * 33 + "1" + "]" * 33, "a value inside more than 32 containers", True),
    ("trailing comma", "[1,]", "not JSON", True),
    ("single quotes", "{'a':1}", "not JSON", True),
    ("leading zero", "[01]", "not JSON", True),
    ("plus sign", "[+1]", "not JSON", True),
    ("raw control character in a string", '"a\tb"', "not JSON: controls must be escaped", True),
    ("trailing data", "{} {}", "not JSON: one value only", True),
    ("empty input", "", "not JSON", True),
    ("invalid UTF-8", "hex:22ff22", "bytes are not UTF-8", True),
    ("overlong UTF-8", "hex:22c0af22", "bytes are not UTF-8", True),
    ("CESU-8 surrogate", "hex:22eda080eda08022", "bytes are not UTF-8", True),
    ("UTF-8 byte order mark", "hex:efbbbf7b7d", "canonical bytes have no BOM", False),
    ("UTF-16 text", "hex:fffe7b007d00", "canonical bytes are UTF-8", False),
    ("whitespace", '{"a": 1}', "canonical bytes have no whitespace", False),
    ("trailing newline", '{"a":1}\n', "canonical bytes have no whitespace", False),
    ("unsorted members", '{"b":1,"a":2}', "members must be sorted", False),
    (
        "code-point order instead of UTF-16 order",
        '{"\ufb33":1,"\U0001f600":2}',
        "members must be sorted by UTF-16 code units",
        False,
    ),
    ("unnecessary escape", '"\\u0041"', "only required characters are escaped", False),
    ("escaped solidus", '"\\/"', "the solidus is not escaped", False),
    ("escaped non-ASCII", '"\\u00e9"', "non-ASCII characters are raw UTF-8", False),
    ("upper-case escape", '"\\u001F"', "escapes use lower-case hex", False),
    ("long form of a short escape", '"\\u000a"', "\\n has a short form", False),
    ("minus zero", "-0", "the integer zero is written 0", False),
]


def _input_bytes(text: str) -> bytes:
    return bytes.fromhex(text[4:]) if text.startswith("hex:") else text.encode("utf-8")


def canonical_vectors() -> list[dict[str, str]]:
    """Input text -> canonical UTF-8 (as text and as hex)."""
    out = []
    for name, text in CANONICAL_CASES:
        encoded = canonical(parse(text))
        out.append(
            {
                "name": name,
                "input": text,
                "canonical": encoded.decode("utf-8"),
                "canonical_hex": encoded.hex(),
            }
        )
    return out


def rejection_vectors() -> list[dict[str, Any]]:
    """Inputs that are not canonical JSON of the Rekam subset, with the reason."""
    out = []
    for name, text, reason, outside in REJECTION_CASES:
        case: dict[str, Any] = {"name": name}
        if text.startswith("hex:"):
            case["input_hex"] = text[4:]
        else:
            case["input"] = text
        case["reason"] = reason
        case["value_outside_subset"] = outside
        out.append(case)
    return out


BASE64URL_VALID = ["", "00", "0000", "000000", "ff", "fbff", "fbffbf", "00010203040506070809"]
BASE64URL_INVALID = [
    ("AA==", "padding is not allowed"),
    ("AA=", "padding is not allowed"),
    ("A", "a length of 4k+1 characters encodes no bytes"),
    ("AB", "non-zero bits after the last byte"),
    ("AAB", "non-zero bits after the last byte"),
    ("+/8", "standard alphabet; base64url uses - and _"),
    ("AA AA", "whitespace"),
    ("AAAA\n", "whitespace"),
    ("AA.A", "not in the alphabet"),
]


def base64url_vectors() -> dict[str, Any]:
    """Unpadded base64url (RFC 4648 section 5) examples, valid and invalid."""
    return {
        "valid": [{"hex": h, "b64url": b64e(bytes.fromhex(h))} for h in BASE64URL_VALID],
        "invalid": [{"b64url": t, "reason": r} for t, r in BASE64URL_INVALID],
    }


# --- keys, ids and the ledger objects ------------------------------------------------------

ORG_A = "clinic-a"  # founding clinic; the orderer; registers the patient
ORG_B = "lab-b"  # second founding organisation; cosigns the checkpoint
PATIENT = "p-5e1f0c2a9b7d4e6f8a1b2c3d4e5f6071"
MEMBER = "m-3c9a0b1d2e4f5a6b7c8d9e0f1a2b3c4d"
RECORD = "r-0a1b2c3d4e5f60718293a4b5c6d7e8f9"

KEY_SEEDS: dict[str, bytes] = {
    ORG_A: bytes(range(32)),
    ORG_B: bytes([0x2A] * 32),
    PATIENT: bytes([7] * 32),
    MEMBER: bytes([9] * 32),
}
# X25519 private keys (suite byte 0x01 + 32 bytes); only their public halves are used.
ENC_PRIVATE: dict[str, bytes] = {
    ORG_A: b"\x01" + bytes([0x11] * 32),
    ORG_B: b"\x01" + bytes([0x22] * 32),
    PATIENT: b"\x01" + bytes([0x33] * 32),
    MEMBER: b"\x01" + bytes([0x44] * 32),
}

GENESIS_NAME = "rekam-test"
GENESIS_CREATED = 1_700_000_000_000
TX1_CREATED = 1_700_000_060_000
TX1_NONCE = "000102030405060708090a0b0c0d0e0f"
TX2_CREATED = 1_700_000_120_000
TX2_NONCE = "f0e0d0c0b0a090807060504030201000"
BLOCK1_TIME = 1_700_000_180_000
CONTENT = b"rekam test vector: the sealed record bytes"

# The result codes the ledger rules give the two transactions of block 1 (docs/ledger.md):
# the home organisation may register the patient; the member was never enrolled, so its
# record.write is committed but invalid. They enter the checkpoint through the block log.
BLOCK1_CODES = ("ok", "unknown_member")


def _signer(who: str) -> Ed25519Signer:
    return Ed25519Signer(KEY_SEEDS[who])


def _sign_key(who: str) -> str:
    return b64e(_signer(who).public_key)


def _enc_key(who: str) -> str:
    return b64e(encryption_public_key(ENC_PRIVATE[who]))


def key_vectors() -> dict[str, Any]:
    """The fixed test keys: Ed25519 seed and public key, X25519 public key."""
    return {
        who: {
            "ed25519_seed_hex": KEY_SEEDS[who].hex(),
            "sign_key": _sign_key(who),
            "enc_key": _enc_key(who),
        }
        for who in KEY_SEEDS
    }


def make_genesis() -> Genesis:
    """The test network's genesis document."""
    orgs = [
        {"org": ORG_A, "kind": "clinic", "sign_key": _sign_key(ORG_A), "enc_key": _enc_key(ORG_A)},
        {"org": ORG_B, "kind": "lab", "sign_key": _sign_key(ORG_B), "enc_key": _enc_key(ORG_B)},
    ]
    return Genesis.create(GENESIS_NAME, GENESIS_CREATED, orgs, [ORG_A])


def _header_vector(block: Any) -> dict[str, Any]:
    return {
        "header": dict(block.header),
        "header_canonical": block.header_bytes.decode("utf-8"),
        "header_canonical_hex": block.header_bytes.hex(),
        "hash": block.hash,
    }


def genesis_vector(genesis: Genesis) -> dict[str, Any]:
    """The genesis document, the network id and block 0."""
    block0 = genesis_block(genesis)
    raw = genesis.to_bytes()
    return {
        "doc": dict(genesis.doc),
        "canonical": raw.decode("utf-8"),
        "canonical_hex": raw.hex(),
        "network_id": genesis.network_id,
        "block0": {
            "leaf_hash": leaf_hash(raw).hex(),
            **_header_vector(block0),
            "signature_b64url": b64e(block0.signature),
        },
    }


def _tx_vector(name: str, tx: dict[str, Any], signers: list[str]) -> tuple[dict[str, Any], Any]:
    unsigned = canonical(tx)
    signed = sign_tx(tx, [(who, _signer(who)) for who in signers])
    return {
        "name": name,
        "signers": signers,
        "tx": tx,
        "tx_canonical": unsigned.decode("utf-8"),
        "tx_canonical_hex": unsigned.hex(),
        "tx_id": signed.tx_id,
        "signed_message_hex": signed.signed_message.hex(),
        "signatures": [
            {"by": s.by, "key": b64e(s.key), "sig": b64e(s.sig)} for s in signed.signatures
        ],
        "envelope_canonical": signed.raw.decode("utf-8"),
        "envelope_canonical_hex": signed.raw.hex(),
    }, signed


def transaction_vectors(network: str) -> tuple[list[dict[str, Any]], list[Any]]:
    """One patient.register and one record.write, signed with the fixed keys."""
    register = unsigned_tx(
        network,
        "patient.register",
        ORG_A,
        {
            "patient": PATIENT,
            "home_org": ORG_A,
            "sign_key": _sign_key(PATIENT),
            "enc_key": _enc_key(PATIENT),
        },
        TX1_CREATED,
        TX1_NONCE,
    )
    write = unsigned_tx(
        network,
        "record.write",
        MEMBER,
        {
            "record": RECORD,
            "version": 1,
            "patient": PATIENT,
            "resource_type": "Observation",
            "content_hash": hashlib.sha256(CONTENT).hexdigest(),
            "content_size": len(CONTENT),
            "basis": "organisation",
            "basis_ref": None,
        },
        TX2_CREATED,
        TX2_NONCE,
    )
    v1, t1 = _tx_vector("patient.register by the home organisation", register, [ORG_A])
    v2, t2 = _tx_vector("record.write by a member", write, [MEMBER])
    return [v1, v2], [t1, t2]


def block_vector(network: str, prev: str, txs: list[Any]) -> tuple[dict[str, Any], Any]:
    """Block 1 over the two transactions, signed by the orderer."""
    block = cut_block(network, 1, prev, BLOCK1_TIME, txs, ORG_A, _signer(ORG_A))
    leaves = [leaf_hash(t.raw) for t in txs]
    return {
        "orderer": ORG_A,
        "leaf_hashes": [h.hex() for h in leaves],
        "tx_root": tx_root([t.raw for t in txs]),
        **_header_vector(block),
        "signed_message_hex": block.signed_message().hex(),
        "signature_b64url": b64e(block.signature),
        "block_canonical_hex": block.to_bytes().hex(),
        "empty_tx_root": tx_root([]),
    }, block


def _results_root(results: list[tuple[str, str]]) -> str:
    return root_from_leaf_hashes([leaf_hash(canonical([t, c])) for t, c in results]).hex()


def checkpoint_vector(
    network: str, blocks: list[tuple[Any, list[tuple[str, str]]]]
) -> dict[str, Any]:
    """A checkpoint at the last of ``blocks``, cosigned by both organisations."""
    log = []
    for block, results in blocks:
        root = _results_root(results)
        leaf = canonical({"block": block.hash, "results": root})
        log.append(
            {
                "height": block.height,
                "block_hash": block.hash,
                "results": [list(r) for r in results],
                "results_root": root,
                "leaf": leaf.decode("utf-8"),
                "leaf_hash": leaf_hash(leaf).hex(),
            }
        )
    head = blocks[-1][0]
    body = {
        "network": network,
        "height": head.height,
        "head": head.hash,
        "blocks_root": root_from_leaf_hashes([bytes.fromhex(e["leaf_hash"]) for e in log]).hex(),
    }
    message = Checkpoint(body, ()).message()
    assert message == CHECKPOINT_DOMAIN + canonical(body)
    checkpoint = Checkpoint(
        body, tuple((org, _signer(org).sign(message)) for org in sorted((ORG_A, ORG_B)))
    )
    return {
        "block_log": log,
        "body": body,
        "body_canonical": canonical(body).decode("utf-8"),
        "message_hex": message.hex(),
        "json": checkpoint.to_json(),
        "json_canonical": canonical(checkpoint.to_json()).decode("utf-8"),
    }


def build() -> dict[str, Any]:
    """All vectors, as one JSON-ready dictionary."""
    genesis = make_genesis()
    network = genesis.network_id
    gvec = genesis_vector(genesis)
    txvecs, txs = transaction_vectors(network)
    block0 = genesis_block(genesis)
    bvec, block1 = block_vector(network, block0.hash, txs)
    cvec = checkpoint_vector(
        network,
        [
            (block0, [(network, "ok")]),
            (block1, [(t.tx_id, code) for t, code in zip(txs, BLOCK1_CODES, strict=True)]),
        ],
    )
    return {
        "about": "Test vectors for docs/encoding.md; regenerate with "
        "tests/encoding/make_vectors.py. The Ed25519 seeds are published test keys.",
        "domains": {
            "tx": SIGNING_DOMAIN.decode("ascii"),
            "block": BLOCK_DOMAIN.decode("ascii"),
            "checkpoint": CHECKPOINT_DOMAIN.decode("ascii"),
        },
        "canonical": canonical_vectors(),
        "rejections": rejection_vectors(),
        "base64url": base64url_vectors(),
        "keys": key_vectors(),
        "genesis": gvec,
        "transactions": txvecs,
        "block": bvec,
        "checkpoint": cvec,
    }


def render() -> str:
    """The vectors file's exact text (ASCII JSON, two-space indent, trailing newline)."""
    return json.dumps(build(), indent=2, ensure_ascii=True) + "\n"


def main(argv: list[str]) -> int:
    """Write vectors.json, or with --check report whether it is up to date."""
    text = render()
    if "--check" in argv:
        current = VECTORS_PATH.read_text(encoding="utf-8") if VECTORS_PATH.exists() else ""
        if current != text:
            print(f"{VECTORS_PATH} is stale; run {Path(__file__).name} to regenerate it")
            return 1
        return 0
    VECTORS_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {VECTORS_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
