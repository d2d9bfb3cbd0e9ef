"""Blocks, the genesis document and signed checkpoints.

A block header is canonical JSON::

    {"v": 1, "network": HEX64, "height": N, "prev": HEX64, "time": MS,
     "tx_count": K, "tx_root": HEX64, "orderer": ORG}

``tx_root`` is the RFC 9162 Merkle tree head over the transactions' envelope bytes in block
order. The block hash is SHA-256 of the canonical header; the orderer signs
``b"rekam/block/v1\\n" + canonical(header)``. Height 0 is the genesis block: it carries the
genesis document instead of transactions, its ``prev`` is 64 zeros and it is unsigned (the
network id is the hash of the genesis document, so every node pins it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from rekam.crypto import Signer, verify_signature
from rekam.encoding import CanonicalError, b64d, b64e, canonical, parse
from rekam.ledger._errors import GenesisError, MalformedError
from rekam.ledger.merkle import leaf_hash, root_from_leaf_hashes
from rekam.ledger.tx import HEX64, ORG_KINDS, ORG_RE, Transaction, id_kind

BLOCK_VERSION = 1
BLOCK_DOMAIN = b"rekam/block/v1\n"
CHECKPOINT_DOMAIN = b"rekam/checkpoint/v1\n"
ZERO_HASH = "0" * 64

DEFAULT_POLICY: dict[str, int] = {
    "max_block_txs": 1000,
    "max_tx_age_ms": 24 * 3600 * 1000,
    "max_future_ms": 5 * 60 * 1000,
    "max_emergency_ms": 24 * 3600 * 1000,
    "max_consent_ms": 5 * 365 * 24 * 3600 * 1000,
}


@dataclass(frozen=True)
class Genesis:
    """The founding document of a network: name, founding organisations, orderers, policy."""

    doc: Mapping[str, Any]

    @cached_property
    def network_id(self) -> str:
        """SHA-256 of the canonical genesis document: the network's identity."""
        return hashlib.sha256(canonical(self.doc)).hexdigest()

    @property
    def orgs(self) -> list[Mapping[str, Any]]:
        """The founding organisations with their kinds and public keys."""
        orgs: list[Mapping[str, Any]] = self.doc["orgs"]
        return orgs

    @property
    def orderers(self) -> list[str]:
        """Organisations whose keys may sign blocks."""
        return list(self.doc["orderers"])

    @property
    def policy(self) -> Mapping[str, int]:
        """Network policy numbers (limits in milliseconds and counts)."""
        policy: Mapping[str, int] = self.doc["policy"]
        return policy

    @property
    def created(self) -> int:
        """When the network was founded, milliseconds since the epoch."""
        return int(self.doc["created"])

    def to_bytes(self) -> bytes:
        """Canonical bytes of the document."""
        return canonical(self.doc)

    @classmethod
    def create(
        cls,
        name: str,
        created: int,
        orgs: Sequence[Mapping[str, Any]],
        orderers: Sequence[str],
        policy: Mapping[str, int] | None = None,
    ) -> Genesis:
        """Build and check a genesis document."""
        doc = {
            "v": 1,
            "name": name,
            "created": created,
            "orgs": [dict(o) for o in orgs],
            "orderers": list(orderers),
            "policy": {**DEFAULT_POLICY, **(policy or {})},
        }
        genesis = cls(doc)
        genesis.check()
        return genesis

    @classmethod
    def from_bytes(cls, raw: bytes) -> Genesis:
        """Decode and check a genesis document."""
        try:
            doc = parse(raw)
        except CanonicalError as exc:
            raise GenesisError(f"genesis: {exc}") from None
        genesis = cls(doc)
        genesis.check()
        return genesis

    def check(self) -> None:
        """Raise GenesisError unless the document is well formed."""
        doc = self.doc
        if not isinstance(doc, dict) or doc.keys() != {
            "v",
            "name",
            "created",
            "orgs",
            "orderers",
            "policy",
        }:
            raise GenesisError("genesis must have exactly v, name, created, orgs, orderers, policy")
        if type(doc["v"]) is not int or doc["v"] != 1:
            raise GenesisError("unsupported genesis version")
        if not isinstance(doc["name"], str) or not ORG_RE.fullmatch(doc["name"]):
            raise GenesisError("genesis name must be a lowercase slug")
        if type(doc["created"]) is not int or doc["created"] < 0:
            raise GenesisError("genesis created must be a non-negative integer")
        orgs = doc["orgs"]
        if not isinstance(orgs, list) or not orgs:
            raise GenesisError("genesis needs at least one organisation")
        seen: set[str] = set()
        for org in orgs:
            if not isinstance(org, dict) or org.keys() != {"org", "kind", "sign_key", "enc_key"}:
                raise GenesisError("each organisation needs exactly org, kind, sign_key, enc_key")
            if not isinstance(org["org"], str) or id_kind(org["org"]) != "org":
                raise GenesisError("organisation ids are lowercase slugs")
            if org["kind"] not in ORG_KINDS:
                raise GenesisError("unknown organisation kind")
            try:
                if len(b64d(org["sign_key"])) != 32:
                    raise GenesisError("sign_key must be 32 bytes")
                if not 16 <= len(b64d(org["enc_key"])) <= 2048:
                    raise GenesisError("enc_key has an impossible length")
            except CanonicalError:
                raise GenesisError("organisation keys must be base64url") from None
            if org["org"] in seen:
                raise GenesisError("duplicate organisation")
            seen.add(org["org"])
        orderers = doc["orderers"]
        if (
            not isinstance(orderers, list)
            or not orderers
            or not all(isinstance(o, str) and o in seen for o in orderers)
            or len(set(orderers)) != len(orderers)
        ):
            raise GenesisError("orderers must be a list of distinct founding organisations")
        policy = doc["policy"]
        if not isinstance(policy, dict) or policy.keys() != DEFAULT_POLICY.keys():
            raise GenesisError(f"policy must have exactly {sorted(DEFAULT_POLICY)}")
        if any(type(v) is not int or v <= 0 for v in policy.values()):
            raise GenesisError("policy values must be positive integers")


@dataclass(frozen=True)
class Block:
    """A block: its header, the orderer's signature, and the transactions' envelope bytes."""

    header: Mapping[str, Any]
    signature: bytes
    txs: tuple[bytes, ...]

    @property
    def height(self) -> int:
        """Position in the chain; genesis is 0."""
        return int(self.header["height"])

    @property
    def prev(self) -> str:
        """Hash of the previous block's header."""
        return str(self.header["prev"])

    @property
    def time(self) -> int:
        """The orderer's time for this block, milliseconds; the rules' only clock."""
        return int(self.header["time"])

    @property
    def orderer(self) -> str:
        """The organisation whose key signed the block."""
        return str(self.header["orderer"])

    # Computed once per block object: a block's hash is asked for by the cutter, the
    # validator, the store and the status alike. The header is never changed after a block
    # is made (a changed block is a new Block), so the cache cannot go stale.
    @cached_property
    def header_bytes(self) -> bytes:
        """Canonical bytes of the header."""
        return canonical(self.header)

    @cached_property
    def hash(self) -> str:
        """SHA-256 of the canonical header, hex."""
        return hashlib.sha256(self.header_bytes).hexdigest()

    def signed_message(self) -> bytes:
        """What the orderer signs."""
        return BLOCK_DOMAIN + self.header_bytes

    def to_bytes(self) -> bytes:
        """Canonical bytes of the whole block, for transport and archives."""
        return canonical(
            {
                "header": self.header,
                "sig": b64e(self.signature),
                "txs": [b64e(t) for t in self.txs],
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> Block:
        """Decode a block from its transport bytes (structure only)."""
        try:
            doc = parse(raw, require_canonical=True)
            if not isinstance(doc, dict) or doc.keys() != {"header", "sig", "txs"}:
                raise MalformedError("block must have exactly header, sig, txs")
            if not isinstance(doc["txs"], list) or not isinstance(doc["sig"], str):
                raise MalformedError("block txs must be a list and sig a string")
            if not all(isinstance(t, str) for t in doc["txs"]):
                raise MalformedError("block txs must be base64url strings")
            block = cls(doc["header"], b64d(doc["sig"]), tuple(b64d(t) for t in doc["txs"]))
        except (CanonicalError, TypeError) as exc:
            raise MalformedError(f"block bytes: {exc}") from None
        check_header(block.header)
        return block


def check_header(header: Any) -> None:
    """Raise MalformedError unless a header has exactly the expected, typed fields."""
    fields = {"v", "network", "height", "prev", "time", "tx_count", "tx_root", "orderer"}
    if not isinstance(header, dict) or header.keys() != fields:
        raise MalformedError(f"header must have exactly {sorted(fields)}")
    for name in ("height", "time", "tx_count"):
        if type(header[name]) is not int or header[name] < 0:
            raise MalformedError(f"header {name} must be a non-negative integer")
    for name in ("network", "prev", "tx_root"):
        value = header[name]
        if not isinstance(value, str) or not HEX64.fullmatch(value):
            raise MalformedError(f"header {name} must be 64 lowercase hex digits")
    if type(header["v"]) is not int or header["v"] != BLOCK_VERSION:
        raise MalformedError("unsupported block version")
    if id_kind(header["orderer"]) != "org":
        raise MalformedError("header orderer must be an organisation id")


def tx_root(txs: Sequence[bytes]) -> str:
    """RFC 9162 Merkle tree head over envelope bytes, hex."""
    return root_from_leaf_hashes([leaf_hash(t) for t in txs]).hex()


def genesis_block(genesis: Genesis) -> Block:
    """Block 0: the genesis document as its single leaf, unsigned."""
    raw = genesis.to_bytes()
    header = {
        "v": BLOCK_VERSION,
        "network": genesis.network_id,
        "height": 0,
        "prev": ZERO_HASH,
        "time": genesis.created,
        "tx_count": 1,
        "tx_root": tx_root([raw]),
        "orderer": genesis.orderers[0],
    }
    return Block(header, b"", (raw,))


def cut_block(
    network: str,
    height: int,
    prev: str,
    time: int,
    txs: Sequence[Transaction | bytes],
    orderer: str,
    signer: Signer,
) -> Block:
    """Assemble and sign a block over transactions in the order given."""
    raw = tuple(t.raw if isinstance(t, Transaction) else t for t in txs)
    header = {
        "v": BLOCK_VERSION,
        "network": network,
        "height": height,
        "prev": prev,
        "time": time,
        "tx_count": len(raw),
        "tx_root": tx_root(raw),
        "orderer": orderer,
    }
    return Block(header, signer.sign(BLOCK_DOMAIN + canonical(header)), raw)


@dataclass(frozen=True)
class Checkpoint:
    """A statement that the chain had a given head: cosigned by organisations."""

    body: Mapping[str, Any]  # {"network", "height", "head", "blocks_root"}
    signatures: tuple[tuple[str, bytes], ...]  # (org, signature)

    def message(self) -> bytes:
        """What each organisation signs."""
        return CHECKPOINT_DOMAIN + canonical(self.body)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "body": dict(self.body),
            "sigs": [{"by": by, "sig": b64e(sig)} for by, sig in self.signatures],
        }

    @classmethod
    def from_json(cls, doc: Any) -> Checkpoint:
        """Decode the JSON form (structure only)."""
        try:
            body = doc["body"]
            sigs = tuple((s["by"], b64d(s["sig"])) for s in doc["sigs"])
        except (KeyError, TypeError, CanonicalError) as exc:
            raise MalformedError(f"checkpoint: {exc}") from None
        if not isinstance(body, dict) or body.keys() != {
            "network",
            "height",
            "head",
            "blocks_root",
        }:
            raise MalformedError("checkpoint body must have network, height, head, blocks_root")
        if type(body["height"]) is not int or body["height"] < 0:
            raise MalformedError("checkpoint height must be a non-negative integer")
        for name in ("network", "head", "blocks_root"):
            if not isinstance(body[name], str) or not HEX64.fullmatch(body[name]):
                raise MalformedError(f"checkpoint {name} must be 64 lowercase hex digits")
        if any(id_kind(by) != "org" for by, _ in sigs):
            raise MalformedError("checkpoint signers must be organisation ids")
        return cls(body, sigs)

    def valid_signers(self, keys: Mapping[str, bytes]) -> list[str]:
        """The organisations among ``keys`` whose signatures on this checkpoint verify."""
        message = self.message()
        return sorted(
            {
                by
                for by, sig in self.signatures
                if by in keys and verify_signature(keys[by], message, sig)
            }
        )
