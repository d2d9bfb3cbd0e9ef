"""An in-memory network for ledger tests: real keys, real blocks, MemoryState, no I/O."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from rekam.crypto import Ed25519Signer, generate_encryption_key, signing_public_key
from rekam.encoding import b64e
from rekam.ledger.block import Block, Genesis, cut_block, genesis_block
from rekam.ledger.state import MemoryState
from rekam.ledger.tx import Transaction, make_tx, new_id
from rekam.ledger.validate import BlockResult, ChainHead, TxResult, apply_block, genesis_delta

T0 = 1_700_000_000_000
DAY = 24 * 3600 * 1000


class Principal:
    """Keys of one org, member or patient, made from a fixed seed."""

    def __init__(self, pid: str, seed_byte: int) -> None:
        self.id = pid
        self.seed = bytes([seed_byte]) * 32
        self.signer = Ed25519Signer(self.seed)
        self.sign_key = b64e(signing_public_key(self.seed))
        self.enc_key = b64e(generate_encryption_key()[1])


class LedgerSim:
    """A chain in memory that applies blocks exactly as a node does."""

    def __init__(
        self,
        orgs: Sequence[tuple[str, str]] = (
            ("clinic-a", "clinic"),
            ("clinic-b", "clinic"),
            ("pharma", "pharmacy"),
        ),
    ) -> None:
        self.keys: dict[str, Principal] = {}
        self._seed = 1
        founding = []
        for org, kind in orgs:
            p = self._principal(org)
            founding.append(
                {"org": org, "kind": kind, "sign_key": p.sign_key, "enc_key": p.enc_key}
            )
        self.genesis = Genesis.create("sim", T0, founding, [orgs[0][0]])
        self.state = MemoryState()
        g = genesis_block(self.genesis)
        self.state.apply(
            genesis_delta(self.genesis), [hashlib.sha256(self.genesis.to_bytes()).hexdigest()]
        )
        self.head = ChainHead(0, g.hash, g.time)
        self.blocks: list[Block] = [g]
        self.time = T0 + 1000
        self.orderer = orgs[0][0]

    def _principal(self, pid: str) -> Principal:
        p = Principal(pid, self._seed)
        self._seed += 1
        self.keys[pid] = p
        return p

    def tx(
        self,
        signer: str,
        tx_type: str,
        body: Mapping[str, Any],
        *,
        created: int | None = None,
        cosigners: Sequence[str] = (),
    ) -> Transaction:
        """A signed transaction by a known principal."""
        return make_tx(
            self.genesis.network_id,
            tx_type,
            signer,
            self.keys[signer].signer,
            body,
            self.time if created is None else created,
            [(c, self.keys[c].signer) for c in cosigners],
        )

    def block(self, txs: Sequence[Transaction | bytes], *, time: int | None = None) -> BlockResult:
        """Cut, sign and apply a block; returns the results."""
        block = cut_block(
            self.genesis.network_id,
            self.head.height + 1,
            self.head.hash,
            self.time if time is None else time,
            txs,
            self.orderer,
            self.keys[self.orderer].signer,
        )
        result = apply_block(
            self.state, self.genesis, self.head, block, list(self.state.tables["org"])
        )
        self.state.apply(result.delta, result.delta.tx_ids)
        self.head = ChainHead(block.height, block.hash, block.time)
        self.blocks.append(block)
        return result

    def one(self, tx: Transaction) -> TxResult:
        """Commit one transaction in its own block and return its result."""
        return self.block([tx]).results[0]

    # -- builders -------------------------------------------------------------------------

    def enrol(self, org: str, role: str) -> str:
        """Enrol a member and return its id."""
        member = new_id("member")
        p = self._principal(member)
        body = {
            "member": member,
            "org": org,
            "role": role,
            "sign_key": p.sign_key,
            "enc_key": p.enc_key,
            "valid_from": T0,
            "valid_until": T0 + 365 * DAY,
        }
        result = self.one(self.tx(org, "member.enrol", body))
        assert result.valid, result.code
        return member

    def register(self, org: str) -> str:
        """Register a patient at a home organisation and return its id."""
        patient = new_id("patient")
        p = self._principal(patient)
        body = {"patient": patient, "home_org": org, "sign_key": p.sign_key, "enc_key": p.enc_key}
        result = self.one(self.tx(org, "patient.register", body))
        assert result.valid, result.code
        return patient

    def write(
        self,
        author: str,
        patient: str,
        resource_type: str = "Condition",
        *,
        record: str | None = None,
        version: int = 1,
        basis: str = "organisation",
        basis_ref: str | None = None,
    ) -> tuple[str, TxResult]:
        """Write a record version (content hash is synthetic) and return (record id, result)."""
        record = record or new_id("record")
        body = {
            "record": record,
            "version": version,
            "patient": patient,
            "resource_type": resource_type,
            "content_hash": hashlib.sha256(f"{record}@{version}".encode()).hexdigest(),
            "content_size": 100,
            "basis": basis,
            "basis_ref": basis_ref,
        }
        return record, self.one(self.tx(author, "record.write", body))

    def grant(
        self,
        signer: str,
        patient: str,
        grantee: str,
        types: Sequence[str] = ("*",),
        purpose: str = "treatment",
        start: int | None = None,
        end: int | None = None,
    ) -> tuple[str, TxResult]:
        """Grant consent; returns (consent id, result)."""
        consent = new_id("consent")
        body = {
            "consent": consent,
            "patient": patient,
            "grantee": grantee,
            "resource_types": list(types),
            "purpose": purpose,
            "start": self.time if start is None else start,
            "end": self.time + 30 * DAY if end is None else end,
        }
        return consent, self.one(self.tx(signer, "consent.grant", body))

    def read(
        self,
        accessor: str,
        patient: str,
        record: str,
        *,
        version: int = 1,
        allowed: bool = True,
        basis: str = "organisation",
        basis_ref: str | None = None,
        purpose: str = "treatment",
        signer: str | None = None,
    ) -> TxResult:
        """Record an access event."""
        body = {
            "patient": patient,
            "record": record,
            "version": version,
            "accessor": accessor,
            "allowed": allowed,
            "basis": basis,
            "basis_ref": basis_ref,
            "purpose": purpose,
        }
        return self.one(self.tx(signer or accessor, "access.read", body))
