"""Identity administration: enrolling and revoking members, registering patients, key rotation.

New principals get fresh keys in an encrypted keystore in the data folder; only their public
keys go on the chain. A patient is registered under a random pseudonymous id: their name and
national id (NIK) live only inside their encrypted Patient record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rekam.crypto import DecryptionError, wrap_key
from rekam.encoding import b64e
from rekam.ledger.tx import ROLES, id_kind, new_id
from rekam.ledger.validate import TxResult
from rekam.service.errors import InvalidContentError, NotFoundError, RejectedError
from rekam.service.records import DEK_INFO, WriteResult, binding

if TYPE_CHECKING:
    from rekam.service.workspace import Actor, Workspace

YEAR_MS = 365 * 24 * 3600 * 1000


@dataclass(frozen=True)
class Registered:
    """A new principal and the transaction that put it on the chain."""

    id: str
    tx_id: str


class AdminService:
    """Enrol members, register patients and rotate keys."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    def _org_of(self, actor: Actor) -> str:
        if actor.kind == "org":
            return actor.id
        member = self.ws.node.store.get("member", actor.id)
        if member is None:
            raise NotFoundError("unknown member")
        return str(member["org"])

    def enrol_member(
        self,
        actor: Actor,
        role: str,
        passphrase: str,
        *,
        label: str = "",
        years: int = 2,
    ) -> Registered:
        """Enrol a member of the actor's organisation with a role and a new keystore."""
        if role not in ROLES:
            raise InvalidContentError(f"role must be one of {', '.join(ROLES)}")
        org = self._org_of(actor)
        member = new_id("member")
        sign_pub, enc_pub = self.ws.datadir.create_keystore(member, passphrase, label=label)
        now = self.ws.node.clock()
        body = {
            "member": member,
            "org": org,
            "role": role,
            "sign_key": b64e(sign_pub),
            "enc_key": b64e(enc_pub),
            "valid_from": now - 60_000,
            "valid_until": now + years * YEAR_MS,
        }
        try:
            result = self.ws.submit(actor, "member.enrol", body)
        except RejectedError:
            self.ws.datadir.keystore_path(member).unlink(missing_ok=True)
            raise
        if label:
            self.ws.datadir.set_label(member, label)
        return Registered(member, result.tx_id)

    def revoke_member(self, actor: Actor, member: str) -> TxResult:
        """Revoke a member: their signatures and accesses stop being valid from now on."""
        if id_kind(member) != "member" or self.ws.node.store.get("member", member) is None:
            raise NotFoundError("unknown member")
        return self.ws.submit(actor, "member.revoke", {"member": member})

    def register_patient(
        self,
        actor: Actor,
        passphrase: str,
        *,
        home_org: str | None = None,
        demographics: Mapping[str, Any] | None = None,
        writer: Actor | None = None,
    ) -> tuple[Registered, WriteResult | None]:
        """Register a patient with a pseudonymous id; their Patient resource is stored encrypted.

        ``demographics`` is a FHIR Patient resource (name, NIK, contact); it is written as the
        patient's first record by ``writer`` (a registrar or admin member), never on the chain.
        """
        org = home_org or self._org_of(actor)
        patient = new_id("patient")
        sign_pub, enc_pub = self.ws.datadir.create_keystore(patient, passphrase)
        body = {
            "patient": patient,
            "home_org": org,
            "sign_key": b64e(sign_pub),
            "enc_key": b64e(enc_pub),
        }
        try:
            result = self.ws.submit(actor, "patient.register", body)
        except RejectedError:
            self.ws.datadir.keystore_path(patient).unlink(missing_ok=True)
            raise
        written = None
        if demographics is not None:
            resource = {**demographics, "id": patient}
            written = self.ws.records.write(
                writer or actor, resource, patient=patient, expected_type="Patient"
            )
        return Registered(patient, result.tx_id), written

    def rotate_keys(self, actor: Actor, passphrase: str) -> TxResult:
        """Give a member or patient new keys and re-wrap their content keys on this node.

        Once the chain has taken the new public keys, every content key this node holds for
        the holder is unwrapped with the old private key (unlocked in ``actor``) and wrapped
        again to the new one, so nothing they could read is lost. The old keystore is kept
        beside the new one, named by the height of the rotation, for keys held elsewhere.
        """
        if actor.kind not in ("member", "patient"):
            raise InvalidContentError("organisation keys are rotated by the operator tooling")
        path = self.ws.datadir.keystore_path(actor.id)
        backup = path.with_suffix(".rotating.json")
        path.replace(backup)
        try:
            sign_pub, enc_pub = self.ws.datadir.create_keystore(actor.id, passphrase)
            body = {"subject": actor.id, "sign_key": b64e(sign_pub), "enc_key": b64e(enc_pub)}
            result = self.ws.submit(actor, "key.rotate", body)
        except BaseException:
            path.unlink(missing_ok=True)
            backup.replace(path)
            raise
        backup.replace(path.with_suffix(f".retired-{self.ws.node.head.height}.json"))
        self._rewrap(actor, enc_pub)
        return result

    def _rewrap(self, actor: Actor, enc_pub: bytes) -> int:
        """Wrap every content key held for ``actor`` to its new public key; returns how many."""
        store = self.ws.node.store
        entries = []
        for record_id, version, wrapped in store.wrapped_keys_for(actor.id):
            record = store.get("record", record_id)
            if record is None:
                continue
            info = DEK_INFO + binding(record_id, version, record["patient"])
            try:
                dek = actor.identity.unwrap(wrapped, info)
            except DecryptionError:
                continue  # not ours to open (already re-wrapped, or damaged): leave it
            entries.append((record_id, version, actor.id, wrap_key(dek, enc_pub, info)))
        store.put_wrapped_keys(entries)
        return len(entries)
