"""The deterministic rules: what each transaction type may do, and what it writes to state.

Every node runs exactly these functions, in block order, with the block's time as the only
clock. A rule either returns the rows its transaction writes or raises ``Reject`` with a
reason code; a rejected transaction stays in the block, flagged invalid, and writes nothing.
Reason codes are part of the protocol (docs/ledger.md lists them) and never carry values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rekam.encoding import b64e
from rekam.ledger.state import Row, StateReader
from rekam.ledger.tx import RESOURCE_TYPES, Transaction, id_kind

CLINICAL_ROLES = frozenset({"doctor", "nurse", "pharmacist", "lab_analyst"})
EMERGENCY_ROLES = frozenset({"doctor", "nurse"})
REGISTRAR_ROLES = frozenset({"admin", "registrar", "doctor", "nurse"})
# Roles that never read a record's content on any basis, a direct consent included: an
# auditor searches access events across the network and runs verifications, nothing more.
NO_READ_ROLES = frozenset({"auditor"})

# Which resource types each role may author. Everything not listed is refused.
ROLE_WRITES: dict[str, frozenset[str]] = {
    "doctor": frozenset(RESOURCE_TYPES) - {"MedicationDispense"},
    "nurse": frozenset(
        {
            "Encounter",
            "Observation",
            "Immunization",
            "AllergyIntolerance",
            "Procedure",
            "DocumentReference",
        }
    ),
    "pharmacist": frozenset({"MedicationDispense"}),
    "lab_analyst": frozenset({"Observation", "DiagnosticReport", "DocumentReference"}),
    "registrar": frozenset({"Patient"}),
    "admin": frozenset({"Patient"}),
}

# Purposes of care: what the author and organisation bases allow, and the consent purposes
# under which a member may write new content. Research or insurance access needs a consent
# that says so (and never writes); "own" is the patient's, "emergency" break-glass only.
CARE_PURPOSES = frozenset({"treatment", "referral", "dispensing"})
DAY_MS = 24 * 3600 * 1000


class Reject(Exception):
    """A transaction breaks a rule; ``code`` says which, without any data values."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class Context:
    """What a rule may know besides state: the block it is in and the network policy."""

    height: int
    time: int
    policy: Mapping[str, int]
    orderers: tuple[str, ...]


Write = tuple[str, str, dict[str, Any]]


# ---------------------------------------------------------------------------------------------
# Principals


def active_member(st: StateReader, member_id: str, time: int) -> Row:
    """The member's row if enrolled, not revoked, within validity and of an active org."""
    row = st.get("member", member_id)
    if row is None:
        raise Reject("unknown_member")
    if row["revoked"] or not row["valid_from"] <= time < row["valid_until"]:
        raise Reject("member_inactive")
    org = st.get("org", row["org"])
    if org is None or not org["active"]:
        raise Reject("org_inactive")
    return row


def principal_key(st: StateReader, principal: str, time: int) -> str:
    """The current signing key (base64url) of an active principal; Reject when none."""
    kind = id_kind(principal)
    if kind == "org":
        row = st.get("org", principal)
        if row is None:
            raise Reject("unknown_signer")
        if not row["active"]:
            raise Reject("signer_inactive")
        return str(row["sign_key"])
    if kind == "member":
        return str(active_member(st, principal, time)["sign_key"])
    if kind == "patient":
        row = st.get("patient", principal)
        if row is None:
            raise Reject("unknown_signer")
        return str(row["sign_key"])
    raise Reject("unknown_signer")


def authenticate(
    st: StateReader, tx: Transaction, sig_ok: tuple[bool, ...], time: int
) -> list[str]:
    """Check every signature against the signer's key on record; returns the signer ids."""
    for ok, signature in zip(sig_ok, tx.signatures, strict=True):
        if not ok:
            raise Reject("bad_signature")
        if principal_key(st, signature.by, time) != _key_text(signature.key):
            raise Reject("key_mismatch")
    return [s.by for s in tx.signatures]


# Public keys as stored in state (base64url) by their bytes: a signer's key is encoded once,
# not once per transaction. Bounded, cleared when full.
_KEY_TEXT: dict[bytes, str] = {}
_KEY_TEXT_LIMIT = 4096


def _key_text(key: bytes) -> str:
    text = _KEY_TEXT.get(key)
    if text is None:
        text = b64e(key)
        if len(_KEY_TEXT) >= _KEY_TEXT_LIMIT:
            _KEY_TEXT.clear()
        _KEY_TEXT[bytes(key)] = text
    return text


def _member_of(st: StateReader, signer: str, org: str, roles: frozenset[str], time: int) -> bool:
    if id_kind(signer) != "member":
        return False
    row = active_member(st, signer, time)
    return bool(row["org"] == org and row["role"] in roles)


def _acts_for_org(st: StateReader, signer: str, org: str, time: int) -> bool:
    """The organisation itself, or one of its active admins."""
    return signer == org or _member_of(st, signer, org, frozenset({"admin"}), time)


def _acts_for_patient(
    st: StateReader, signer: str, patient: Row, patient_id: str, time: int
) -> bool:
    """The patient, or their home organisation (itself or an admin) on their behalf."""
    return signer == patient_id or _acts_for_org(st, signer, patient["home_org"], time)


def _need(st: StateReader, table: str, key: str, code: str) -> Row:
    row = st.get(table, key)
    if row is None:
        raise Reject(code)
    return row


# ---------------------------------------------------------------------------------------------
# The access basis: the one rule deciding whether a principal may see or add to a patient's data


def basis_holds(
    st: StateReader,
    accessor: str,
    patient_id: str,
    patient: Row,
    record: Row | None,
    resource_type: str,
    basis: str,
    basis_ref: str | None,
    purpose: str,
    time: int,
    *,
    member: Row | None = None,
) -> str | None:
    """None when ``basis`` lets ``accessor`` act on the patient's data now, else a reason code.

    ``member`` may pass ``active_member(st, accessor, time)`` when the caller has it already
    (same state, same time), to spare reading it again.
    """
    if basis == "own":
        ok = accessor == patient_id and basis_ref is None and purpose == "own"
        return None if ok else "no_basis"
    if id_kind(accessor) != "member":
        return "no_basis"
    if member is None:
        try:
            member = active_member(st, accessor, time)
        except Reject as rejected:
            return rejected.code
    if member["role"] in NO_READ_ROLES:
        return "no_basis"
    # Clinical staff see clinical content; registration staff only the Patient resource.
    role_ok = member["role"] in CLINICAL_ROLES or resource_type == "Patient"
    if basis == "author":
        ok = record is not None and record["author"] == accessor and basis_ref is None
        return None if ok and purpose in CARE_PURPOSES else "no_basis"
    if basis == "organisation":
        same_org = member["org"] == patient["home_org"] or (
            record is not None and member["org"] == record["author_org"]
        )
        ok = same_org and role_ok and basis_ref is None and purpose in CARE_PURPOSES
        return None if ok else "no_basis"
    if basis == "consent" and basis_ref is not None:
        consent = st.get("consent", basis_ref)
        if consent is None or consent["patient"] != patient_id:
            return "no_basis"
        # A consent to an organisation reaches its members as the organisation basis does.
        if consent["grantee"] != accessor and not (consent["grantee"] == member["org"] and role_ok):
            return "no_basis"
        if consent["revoked"] or not consent["start"] <= time < consent["end"]:
            return "consent_inactive"
        types = consent["resource_types"]
        if types != ["*"] and resource_type not in types:
            return "consent_scope"
        return None if consent["purpose"] == purpose else "consent_purpose"
    if basis == "emergency" and basis_ref is not None:
        grant = st.get("emergency", basis_ref)
        if grant is None or grant["member"] != accessor or grant["patient"] != patient_id:
            return "no_basis"
        if purpose != "emergency":
            return "no_basis"
        return None if grant["start"] <= time < grant["expires"] else "emergency_expired"
    return "no_basis"


def authorship(st: StateReader, record_id: str, version: int) -> Row | None:
    """Who wrote one version of a record: its author and the author's organisation.

    Reads are judged by the version read, so the author of version 1 keeps the author basis
    for it after someone else writes version 2.
    """
    row = st.get("record_version", f"{record_id}@{version}")
    if row is None:
        return None
    author = st.get("member", row["author"])
    return {"author": row["author"], "author_org": author["org"] if author else None}


def _event(
    tx: Transaction,
    ctx: Context,
    patient: str,
    actor: str,
    actor_org: str | None,
    *,
    record: str | None = None,
    version: int | None = None,
    allowed: bool | None = None,
    basis: str | None = None,
    basis_ref: str | None = None,
    purpose: str | None = None,
) -> Write:
    row = {
        "patient": patient,
        "time": ctx.time,
        "kind": tx.type,
        "actor": actor,
        "actor_org": actor_org,
        "record": record,
        "version": version,
        "allowed": allowed,
        "basis": basis,
        "basis_ref": basis_ref,
        "purpose": purpose,
    }
    return ("event", tx.tx_id, row)


def _org_of(st: StateReader, principal: str) -> str | None:
    kind = id_kind(principal)
    if kind == "org":
        return principal
    if kind == "member":
        row = st.get("member", principal)
        return None if row is None else str(row["org"])
    return None


# ---------------------------------------------------------------------------------------------
# One function per transaction type


def _org_quorum(st: StateReader, signers: list[str], all_orgs: list[str]) -> None:
    # A majority of the organisations active now must have signed: "approved by the network".
    active = [o for o in all_orgs if (row := st.get("org", o)) is not None and row["active"]]
    signed = {s for s in signers if s in active}
    if len(signed) * 2 <= len(active):
        raise Reject("quorum")


def org_enrol(
    st: StateReader, ctx: Context, tx: Transaction, signers: list[str], orgs: list[str]
) -> list[Write]:
    """A new organisation joins with signatures from a majority of active organisations."""
    b = tx.body
    if st.get("org", b["org"]) is not None:
        raise Reject("exists")
    _org_quorum(st, signers, orgs)
    row = {
        "kind": b["kind"],
        "sign_key": b["sign_key"],
        "enc_key": b["enc_key"],
        "active": True,
        "since": ctx.height,
    }
    return [("org", b["org"], row)]


def org_revoke(
    st: StateReader, ctx: Context, tx: Transaction, signers: list[str], orgs: list[str]
) -> list[Write]:
    """An organisation is removed by a majority of active organisations."""
    row = dict(_need(st, "org", tx.body["org"], "unknown_org"))
    if not row["active"]:
        raise Reject("org_inactive")
    _org_quorum(st, signers, orgs)
    if tx.body["org"] in ctx.orderers:
        others = [
            o
            for o in ctx.orderers
            if o != tx.body["org"] and (other := st.get("org", o)) is not None and other["active"]
        ]
        if not others:
            raise Reject("last_orderer")  # the chain would halt: nobody could sign a block
    row["active"] = False
    return [("org", tx.body["org"], row)]


def member_enrol(st: StateReader, ctx: Context, tx: Transaction) -> list[Write]:
    """An organisation (or its admin) enrols a member with a role and keys."""
    b = tx.body
    org = _need(st, "org", b["org"], "unknown_org")
    if not org["active"]:
        raise Reject("org_inactive")
    if not _acts_for_org(st, tx.signer, b["org"], ctx.time):
        raise Reject("not_authorised")
    if st.get("member", b["member"]) is not None:
        raise Reject("exists")
    if b["valid_from"] >= b["valid_until"]:
        raise Reject("bad_period")
    row = {
        "org": b["org"],
        "role": b["role"],
        "sign_key": b["sign_key"],
        "enc_key": b["enc_key"],
        "valid_from": b["valid_from"],
        "valid_until": b["valid_until"],
        "revoked": False,
    }
    return [("member", b["member"], row)]


def member_revoke(st: StateReader, ctx: Context, tx: Transaction) -> list[Write]:
    """The member's organisation (or its admin) revokes the member."""
    row = dict(_need(st, "member", tx.body["member"], "unknown_member"))
    if row["revoked"]:
        raise Reject("member_inactive")
    if not _acts_for_org(st, tx.signer, row["org"], ctx.time):
        raise Reject("not_authorised")
    row["revoked"] = True
    return [("member", tx.body["member"], row)]


def key_rotate(st: StateReader, ctx: Context, tx: Transaction) -> list[Write]:
    """A principal (or who acts for it) replaces its signing and encryption keys."""
    subject = tx.body["subject"]
    kind = id_kind(subject)
    table = {"org": "org", "member": "member", "patient": "patient"}[str(kind)]
    row = dict(_need(st, table, subject, "unknown_subject"))
    allowed = tx.signer == subject
    if kind == "member":
        allowed = allowed or _acts_for_org(st, tx.signer, row["org"], ctx.time)
    if kind == "patient":
        allowed = allowed or _acts_for_org(st, tx.signer, row["home_org"], ctx.time)
    if not allowed:
        raise Reject("not_authorised")
    row["sign_key"] = tx.body["sign_key"]
    row["enc_key"] = tx.body["enc_key"]
    writes: list[Write] = [(table, subject, row)]
    if kind == "patient":
        # Whoever can change a patient's keys can act as the patient: they must see it.
        writes.append(_event(tx, ctx, subject, tx.signer, _org_of(st, tx.signer)))
    return writes


def patient_register(st: StateReader, ctx: Context, tx: Transaction) -> list[Write]:
    """The home organisation registers a patient under a random pseudonymous id."""
    b = tx.body
    org = _need(st, "org", b["home_org"], "unknown_org")
    if not org["active"]:
        raise Reject("org_inactive")
    if not (
        tx.signer == b["home_org"]
        or _member_of(st, tx.signer, b["home_org"], REGISTRAR_ROLES, ctx.time)
    ):
        raise Reject("not_authorised")
    if st.get("patient", b["patient"]) is not None:
        raise Reject("exists")
    row = {
        "home_org": b["home_org"],
        "sign_key": b["sign_key"],
        "enc_key": b["enc_key"],
        "registered": ctx.time,
    }
    event = _event(tx, ctx, b["patient"], tx.signer, _org_of(st, tx.signer))
    return [("patient", b["patient"], row), event]


def record_write(st: StateReader, ctx: Context, tx: Transaction) -> list[Write]:
    """A member writes a record's first version, or a new version superseding the head."""
    b = tx.body
    signer = tx.signer
    member = active_member(st, signer, ctx.time) if id_kind(signer) == "member" else None
    if member is None:
        raise Reject("not_authorised")
    if b["resource_type"] not in ROLE_WRITES.get(member["role"], frozenset()):
        raise Reject("role_cannot_write")
    patient = _need(st, "patient", b["patient"], "unknown_patient")
    record = st.get("record", b["record"])
    if b["version"] == 1:
        if record is not None:
            raise Reject("exists")
    else:
        if record is None:
            raise Reject("unknown_record")
        if record["erased"]:
            raise Reject("erased")
        if b["version"] != record["version"] + 1:
            raise Reject("bad_version")
        if record["patient"] != b["patient"] or record["resource_type"] != b["resource_type"]:
            raise Reject("record_mismatch")
    purpose = "emergency" if b["basis"] == "emergency" else "treatment"
    if b["basis"] == "consent" and b["basis_ref"] is not None:
        consent = st.get("consent", b["basis_ref"])
        if consent is not None and consent["purpose"] in CARE_PURPOSES:
            purpose = consent["purpose"]
    problem = basis_holds(
        st,
        signer,
        b["patient"],
        patient,
        record,
        b["resource_type"],
        b["basis"],
        b["basis_ref"],
        purpose,
        ctx.time,
        member=member,  # the signer's row, read above at the same time
    )
    if problem is not None:
        raise Reject(problem)
    created = ctx.time if record is None else record["created"]
    head = {
        "patient": b["patient"],
        "resource_type": b["resource_type"],
        "version": b["version"],
        "content_hash": b["content_hash"],
        "author": tx.signer,
        "author_org": member["org"],
        "created": created,
        "updated": ctx.time,
        "erased": False,
        "dispensed": False if record is None else record["dispensed"],
    }
    version = {
        "record": b["record"],
        "version": b["version"],
        "patient": b["patient"],
        "content_hash": b["content_hash"],
        "content_size": b["content_size"],
        "author": tx.signer,
        "tx": tx.tx_id,
        "time": ctx.time,
    }
    event = _event(
        tx,
        ctx,
        b["patient"],
        tx.signer,
        member["org"],
        record=b["record"],
        version=b["version"],
        basis=b["basis"],
        basis_ref=b["basis_ref"],
        purpose=purpose,
    )
    return [
        ("record", b["record"], head),
        ("record_version", f"{b['record']}@{b['version']}", version),
        event,
    ]


def record_erase(st: StateReader, ctx: Context, tx: Transaction) -> list[Write]:
    """The patient or their home organisation erases a record: content and keys are shredded."""
    record = dict(_need(st, "record", tx.body["record"], "unknown_record"))
    if record["erased"]:
        raise Reject("erased")
    patient = _need(st, "patient", record["patient"], "unknown_patient")
    if not _acts_for_patient(st, tx.signer, patient, record["patient"], ctx.time):
        raise Reject("not_authorised")
    record["erased"] = True
    record["updated"] = ctx.time
    event = _event(
        tx,
        ctx,
        record["patient"],
        tx.signer,
        _org_of(st, tx.signer),
        record=tx.body["record"],
        version=record["version"],
    )
    return [("record", tx.body["record"], record), event]


def consent_grant(st: StateReader, ctx: Context, tx: Transaction) -> list[Write]:
    """The patient (or their home organisation for them) grants a member or organisation access."""
    b = tx.body
    patient = _need(st, "patient", b["patient"], "unknown_patient")
    if not _acts_for_patient(st, tx.signer, patient, b["patient"], ctx.time):
        raise Reject("not_authorised")
    if st.get("consent", b["consent"]) is not None:
        raise Reject("exists")
    grantee_kind = id_kind(b["grantee"])
    if grantee_kind == "member":
        active_member(st, b["grantee"], ctx.time)
    else:
        org = _need(st, "org", b["grantee"], "unknown_org")
        if not org["active"]:
            raise Reject("org_inactive")
    if not b["start"] < b["end"] or b["end"] <= ctx.time:
        raise Reject("bad_period")
    if b["end"] - b["start"] > ctx.policy["max_consent_ms"]:
        raise Reject("bad_period")
    row = {
        "patient": b["patient"],
        "grantee": b["grantee"],
        "grantee_kind": str(grantee_kind),
        "resource_types": list(b["resource_types"]),
        "purpose": b["purpose"],
        "start": b["start"],
        "end": b["end"],
        "revoked": False,
        "granted_by": tx.signer,
    }
    event = _event(
        tx,
        ctx,
        b["patient"],
        tx.signer,
        _org_of(st, tx.signer),
        basis="consent",
        basis_ref=b["consent"],
        purpose=b["purpose"],
    )
    return [("consent", b["consent"], row), event]


def consent_revoke(st: StateReader, ctx: Context, tx: Transaction) -> list[Write]:
    """The patient (or their home organisation) revokes a consent; future reads stop."""
    consent = dict(_need(st, "consent", tx.body["consent"], "unknown_consent"))
    if consent["revoked"]:
        raise Reject("consent_inactive")
    patient = _need(st, "patient", consent["patient"], "unknown_patient")
    if not _acts_for_patient(st, tx.signer, patient, consent["patient"], ctx.time):
        raise Reject("not_authorised")
    consent["revoked"] = True
    event = _event(
        tx,
        ctx,
        consent["patient"],
        tx.signer,
        _org_of(st, tx.signer),
        basis="consent",
        basis_ref=tx.body["consent"],
        purpose=consent["purpose"],
    )
    return [("consent", tx.body["consent"], consent), event]


def consent_request(st: StateReader, ctx: Context, tx: Transaction) -> list[Write]:
    """An active clinical member asks a patient for access; the patient sees the event.

    Nothing is granted: the request is only an event row (keyed by its transaction id) that
    the patient answers with a ``consent.grant`` or a ``consent.decline``.
    """
    b = tx.body
    if id_kind(tx.signer) != "member":
        raise Reject("not_authorised")
    member = active_member(st, tx.signer, ctx.time)
    if member["role"] not in CLINICAL_ROLES:
        raise Reject("not_authorised")
    _need(st, "patient", b["patient"], "unknown_patient")
    if b["days"] * DAY_MS > ctx.policy["max_consent_ms"]:
        raise Reject("bad_period")
    return [
        _event(tx, ctx, b["patient"], tx.signer, member["org"], purpose=b["purpose"]),
    ]


def consent_decline(st: StateReader, ctx: Context, tx: Transaction) -> list[Write]:
    """The patient (or their home organisation) declines an open access request.

    The request's event row gets ``allowed: false`` (closed), and the decline is an event
    of its own.
    """
    request = st.get("event", tx.body["request"])
    if request is None or request["kind"] != "consent.request":
        raise Reject("unknown_request")
    patient = _need(st, "patient", request["patient"], "unknown_patient")
    if not _acts_for_patient(st, tx.signer, patient, request["patient"], ctx.time):
        raise Reject("not_authorised")
    if request["allowed"] is False:
        raise Reject("request_closed")
    closed = {**request, "allowed": False}
    event = _event(
        tx,
        ctx,
        request["patient"],
        tx.signer,
        _org_of(st, tx.signer),
        purpose=request["purpose"],
    )
    return [("event", tx.body["request"], closed), event]


def access_read(st: StateReader, ctx: Context, tx: Transaction) -> list[Write]:
    """An access to a record version, allowed or denied, with its basis: the audit trail."""
    b = tx.body
    patient = _need(st, "patient", b["patient"], "unknown_patient")
    record = _need(st, "record", b["record"], "unknown_record")
    if record["patient"] != b["patient"]:
        raise Reject("record_mismatch")
    if st.get("record_version", f"{b['record']}@{b['version']}") is None:
        raise Reject("bad_version")
    accessor = b["accessor"]
    actor_org = _org_of(st, accessor)
    # The accessor signs, or its organisation's node does as the enforcement point.
    if tx.signer != accessor and (actor_org is None or tx.signer != actor_org):
        raise Reject("not_authorised")
    if b["allowed"]:
        if record["erased"]:
            raise Reject("erased")
        problem = basis_holds(
            st,
            accessor,
            b["patient"],
            patient,
            authorship(st, b["record"], b["version"]),
            record["resource_type"],
            b["basis"],
            b["basis_ref"],
            b["purpose"],
            ctx.time,
        )
        if problem is not None:
            raise Reject(problem)
    elif b["basis"] != "none" or b["basis_ref"] is not None:
        raise Reject("bad_denial")
    return [
        _event(
            tx,
            ctx,
            b["patient"],
            accessor,
            actor_org,
            record=b["record"],
            version=b["version"],
            allowed=b["allowed"],
            basis=b["basis"],
            basis_ref=b["basis_ref"],
            purpose=b["purpose"],
        )
    ]


def emergency_open(st: StateReader, ctx: Context, tx: Transaction) -> list[Write]:
    """A doctor or nurse breaks the glass: time-limited access with a coded reason, audited."""
    b = tx.body
    if tx.signer != b["member"]:
        raise Reject("not_authorised")
    member = active_member(st, b["member"], ctx.time)
    if member["role"] not in EMERGENCY_ROLES:
        raise Reject("role_cannot_break_glass")
    _need(st, "patient", b["patient"], "unknown_patient")
    if st.get("emergency", b["access"]) is not None:
        raise Reject("exists")
    if not ctx.time < b["expires"] <= ctx.time + ctx.policy["max_emergency_ms"]:
        raise Reject("bad_period")
    row = {
        "member": b["member"],
        "patient": b["patient"],
        "reason": b["reason"],
        "start": ctx.time,
        "expires": b["expires"],
    }
    event = _event(
        tx,
        ctx,
        b["patient"],
        b["member"],
        member["org"],
        basis="emergency",
        basis_ref=b["access"],
        purpose="emergency",
    )
    return [("emergency", b["access"], row), event]


def prescription_dispense(st: StateReader, ctx: Context, tx: Transaction) -> list[Write]:
    """A pharmacist at a pharmacy dispenses a prescription the patient shared with it."""
    b = tx.body
    if id_kind(tx.signer) != "member":
        raise Reject("not_authorised")
    member = active_member(st, tx.signer, ctx.time)
    pharmacy = _need(st, "org", b["pharmacy"], "unknown_org")
    if member["role"] != "pharmacist" or member["org"] != b["pharmacy"]:
        raise Reject("not_authorised")
    if pharmacy["kind"] == "lab":
        raise Reject("not_a_pharmacy")  # any organisation but a lab may run a pharmacy
    record = dict(_need(st, "record", b["prescription"], "unknown_record"))
    if record["resource_type"] != "MedicationRequest":
        raise Reject("wrong_type")
    if record["erased"]:
        raise Reject("erased")
    if record["dispensed"]:
        raise Reject("already_dispensed")
    if b["version"] != record["version"]:
        raise Reject("bad_version")
    patient = _need(st, "patient", record["patient"], "unknown_patient")
    problem = basis_holds(
        st,
        tx.signer,
        record["patient"],
        patient,
        record,
        "MedicationRequest",
        b["basis"],
        b["basis_ref"],
        "dispensing",
        ctx.time,
    )
    if problem is not None:
        raise Reject(problem)
    if b["dispense_record"] is not None:
        dispense = _need(st, "record", b["dispense_record"], "unknown_record")
        if dispense["resource_type"] != "MedicationDispense":
            raise Reject("wrong_type")
        if dispense["patient"] != record["patient"]:
            raise Reject("record_mismatch")
    record["dispensed"] = True
    record["updated"] = ctx.time
    event = _event(
        tx,
        ctx,
        record["patient"],
        tx.signer,
        member["org"],
        record=b["prescription"],
        version=b["version"],
        basis=b["basis"],
        basis_ref=b["basis_ref"],
        purpose="dispensing",
    )
    return [("record", b["prescription"], record), event]


Rule = Callable[[StateReader, Context, Transaction], list[Write]]

RULES: dict[str, Rule] = {
    "member.enrol": member_enrol,
    "member.revoke": member_revoke,
    "key.rotate": key_rotate,
    "patient.register": patient_register,
    "record.write": record_write,
    "record.erase": record_erase,
    "consent.grant": consent_grant,
    "consent.revoke": consent_revoke,
    "consent.request": consent_request,
    "consent.decline": consent_decline,
    "access.read": access_read,
    "emergency.open": emergency_open,
    "prescription.dispense": prescription_dispense,
}

QUORUM_RULES = {"org.enrol": org_enrol, "org.revoke": org_revoke}


# Which body fields name state rows, and in which table (None: the id's own kind decides).
_ROW_FIELDS: dict[str, tuple[tuple[str, str | None], ...]] = {
    "org.enrol": (("org", "org"),),
    "org.revoke": (("org", "org"),),
    "member.enrol": (("member", "member"), ("org", "org")),
    "member.revoke": (("member", "member"),),
    "key.rotate": (("subject", None),),
    "patient.register": (("patient", "patient"), ("home_org", "org")),
    "record.write": (("record", "record"), ("patient", "patient"), ("basis_ref", None)),
    "record.erase": (("record", "record"),),
    "consent.grant": (("consent", "consent"), ("patient", "patient"), ("grantee", None)),
    "consent.revoke": (("consent", "consent"),),
    "consent.request": (("patient", "patient"),),
    "consent.decline": (("request", "event"),),
    "access.read": (
        ("patient", "patient"),
        ("record", "record"),
        ("accessor", None),
        ("basis_ref", None),
    ),
    "emergency.open": (("access", "emergency"), ("patient", "patient"), ("member", "member")),
    "prescription.dispense": (
        ("prescription", "record"),
        ("pharmacy", "org"),
        ("dispense_record", "record"),
        ("basis_ref", None),
    ),
}


# Types whose rule reads one version of a record.
_VERSION_READS = frozenset({"record.write", "access.read"})


def state_keys(tx: Transaction) -> dict[str, set[str]]:
    """The state rows a transaction's rule may read, so a store can prefetch them in bulk."""
    wanted: dict[str, set[str]] = {}
    add_state_keys(tx, wanted)
    return wanted


def add_state_keys(tx: Transaction, wanted: dict[str, set[str]]) -> None:
    """Add the rows ``state_keys`` names for ``tx`` to ``wanted`` (a block's keys at once)."""
    b = tx.body
    tx_type = tx.type
    signer = tx.signer
    wanted.setdefault(str(id_kind(signer)), set()).add(signer)
    for signature in tx.signatures:
        if signature.by != signer:
            wanted.setdefault(str(id_kind(signature.by)), set()).add(signature.by)
    for field, table in _ROW_FIELDS[tx_type]:
        value = b[field]
        if value is not None:
            wanted.setdefault(table or str(id_kind(value)), set()).add(value)
    if tx_type in _VERSION_READS:
        wanted.setdefault("record_version", set()).add(f"{b['record']}@{b['version']}")


def apply_rule(
    st: StateReader,
    ctx: Context,
    tx: Transaction,
    signers: list[str],
    orgs: list[str],
) -> list[Write]:
    """Run a transaction's rule once its signers are authenticated."""
    quorum_rule = QUORUM_RULES.get(tx.type)
    if quorum_rule is not None:
        return quorum_rule(st, ctx, tx, signers, orgs)
    return RULES[tx.type](st, ctx, tx)
