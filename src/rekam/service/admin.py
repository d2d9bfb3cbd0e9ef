"""Identity administration: enrolling and revoking members, registering patients, key rotation.

New principals get fresh keys in an encrypted keystore in the data folder; only their public
keys go on the chain. A patient is registered under a random pseudonymous id: their name and
national id (NIK) live only inside their encrypted Patient record.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rekam.crypto import CryptoError, DecryptionError, change_passphrase, wrap_key
from rekam.encoding import b64e
from rekam.ledger.tx import ROLES, Transaction, id_kind, new_id
from rekam.ledger.validate import TxResult
from rekam.service.errors import (
    AccessDenied,
    InvalidContentError,
    NotFoundError,
    RejectedError,
)
from rekam.service.portal_auth import PasswordResets, TotpStore
from rekam.service.records import DEK_INFO, WriteResult, binding

if TYPE_CHECKING:
    from rekam.service.workspace import Actor, Workspace

YEAR_MS = 365 * 24 * 3600 * 1000
# A password a person chooses: long enough for a pass phrase; Argon2id does the stretching.
MIN_PASSWORD = 12
# One-time passwords from a reset: 20 characters without look-alikes (0/O, 1/l/I), in groups
# of five for reading aloud; 20 * log2(31) is about 99 bits.
_OTP_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"


def one_time_password() -> str:
    """A random password for an admin to hand over in person (never stored in the clear)."""
    chars = "".join(secrets.choice(_OTP_ALPHABET) for _ in range(20))
    return "-".join(chars[i : i + 5] for i in range(0, 20, 5))


@dataclass(frozen=True)
class Registered:
    """A new principal and the transaction that put it on the chain."""

    id: str
    tx_id: str


@dataclass(frozen=True)
class PasswordReset:
    """The outcome of a reset: the one-time password is shown once and kept nowhere."""

    member: str
    tx_id: str
    one_time_password: str
    rewrapped: int  # content keys wrapped again to the member's new key
    lost: int  # content keys held only under the old personal key: not readable any more


@dataclass(frozen=True)
class ResetEvent:
    """A committed reset as the chain holds it: the key.rotate transaction."""

    tx_id: str
    member: str
    by: str
    height: int
    time: int


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

    # -- passwords ------------------------------------------------------------------------

    def change_password(self, actor: Actor, old: str, new: str) -> None:
        """Re-encrypt the actor's own keystore under a new password (the keys stay).

        Raises AccessDenied when ``old`` does not open the keystore (nothing is changed) and
        InvalidContentError for a new password that is too short or the same as the old.
        """
        if actor.kind not in ("member", "patient"):
            raise InvalidContentError("organisation keystores are managed by the operator")
        if len(new) < MIN_PASSWORD:
            raise InvalidContentError(f"the new password needs at least {MIN_PASSWORD} characters")
        if new == old:
            raise InvalidContentError("the new password must differ from the current one")
        try:
            change_passphrase(self.ws.datadir.keystore_path(actor.id), old, new)
        except (CryptoError, ValueError):
            raise AccessDenied("the current password is wrong") from None
        PasswordResets(self.ws.datadir.root).changed(actor.id)

    def reset_member_password(self, actor: Actor, member: str) -> PasswordReset:
        """Give a member of the actor's organisation new keys under a one-time password.

        The admin never learns the old password nor sees the member's data: the node makes a
        fresh keystore under a random one-time password, and a ``key.rotate`` signed by the
        admin (the ledger lets an admin of the member's organisation rotate its members'
        keys) puts the new public keys on the chain. The old keystore is kept, retired, as
        :meth:`rotate_keys` does. Content keys the node holds for the member are wrapped
        again to the new key where one of this node's organisation identities (the member's
        organisation or the patient's home organisation, as a read would use) opens the
        same content key; those held only under the member's old personal key cannot be
        re-wrapped and are counted as lost. The member must choose their own password at
        the next login, and their TOTP factor (wrapped to the old key) is dropped.
        """
        if id_kind(member) != "member":
            raise InvalidContentError("only a member's password can be reset here")
        store = self.ws.node.store
        row = store.get("member", member)
        if row is None:
            raise NotFoundError("unknown member")
        if member == actor.id:
            raise InvalidContentError("change your own password on your account page")
        if row["revoked"]:
            raise InvalidContentError("a revoked member's password is not reset")
        org = self._org_of(actor)
        if org != row["org"]:
            raise AccessDenied("only an admin of the member's organisation resets a password")
        password = one_time_password()
        path = self.ws.datadir.keystore_path(member)
        backup = path.with_suffix(".resetting.json")
        had_keystore = path.is_file()
        if had_keystore:
            path.replace(backup)
        try:
            sign_pub, enc_pub = self.ws.datadir.create_keystore(member, password)
            body = {"subject": member, "sign_key": b64e(sign_pub), "enc_key": b64e(enc_pub)}
            result = self.ws.submit(actor, "key.rotate", body)
        except BaseException:
            path.unlink(missing_ok=True)
            if had_keystore:
                backup.replace(path)
            raise
        if had_keystore:
            backup.replace(path.with_suffix(f".retired-{self.ws.node.head.height}.json"))
        rewrapped, lost = self._rewrap_from_orgs(member, row["org"], enc_pub)
        TotpStore(self.ws.datadir.root).remove(member)
        PasswordResets(self.ws.datadir.root).record(member, org, result.tx_id)
        return PasswordReset(member, result.tx_id, password, rewrapped, lost)

    def _rewrap_from_orgs(self, member: str, org: str, enc_pub: bytes) -> tuple[int, int]:
        """Wrap the member's content keys to ``enc_pub`` from organisation wraps on this node."""
        store = self.ws.node.store
        orgs = self.ws.org_identities
        entries, lost = [], 0
        for record_id, version, _old in store.wrapped_keys_for(member):
            record = store.get("record", record_id)
            patient = store.get("patient", record["patient"]) if record else None
            if record is None or patient is None:
                continue
            info = DEK_INFO + binding(record_id, version, record["patient"])
            dek = None
            for holder in dict.fromkeys((org, patient["home_org"])):
                wrapped = store.get_wrapped_key(record_id, version, holder)
                if holder not in orgs or wrapped is None:
                    continue
                try:
                    dek = orgs[holder].unwrap(wrapped, info)
                    break
                except DecryptionError:
                    continue
            if dek is None:
                lost += 1
                continue
            entries.append((record_id, version, member, wrap_key(dek, enc_pub, info)))
        store.put_wrapped_keys(entries)
        return len(entries), lost

    def resets_for_org(self, org: str) -> list[ResetEvent]:
        """The organisation's password resets, newest first, as committed on the chain."""
        store = self.ws.node.store
        out = []
        for tx_id in PasswordResets(self.ws.datadir.root).for_org(org):
            stored = store.get_tx(tx_id)
            if stored is None or not stored.valid:
                continue
            tx = Transaction.decode(stored.raw)
            block = store.get_block(stored.height)
            out.append(
                ResetEvent(
                    tx_id=tx_id,
                    member=str(tx.body["subject"]),
                    by=tx.signer,
                    height=stored.height,
                    time=block.time if block else tx.created,
                )
            )
        return list(reversed(out))
