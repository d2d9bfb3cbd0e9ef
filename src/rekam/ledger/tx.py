"""Transactions: the signed envelope, its canonical bytes, and the schema of every body.

Envelope (canonical JSON, RFC 8785 subset, see docs/encoding.md)::

    {"sigs": [{"by": ID, "key": B64, "sig": B64}, ...],
     "tx": {"v": 1, "network": HEX64, "type": TYPE, "created": MS, "nonce": HEX32,
            "signer": ID, "body": {...}}}

The transaction id is SHA-256 over the canonical bytes of ``tx`` (signatures excluded, so a
re-signed copy is still the same transaction). Each signature covers
``b"rekam/tx/v1\\n" + canonical(tx)``. The first signature is by ``tx.signer``; further ones
are co-signatures (an organisation joining needs a majority of existing organisations).
Bodies have an exact key set per type: an unknown field is refused, so no free text can ride
along onto the chain.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from rekam.crypto import Signer
from rekam.encoding import CanonicalError, b64d, b64e, canonical, parse, parse_accepted
from rekam.ledger._errors import MalformedError

TX_VERSION = 1
SIGNING_DOMAIN = b"rekam/tx/v1\n"
MAX_TX_BYTES = 16 * 1024
MAX_SIGNATURES = 32

# Always used with fullmatch: "$" would also accept a trailing newline, giving one id two
# spellings.
ORG_RE = re.compile(r"[a-z0-9][a-z0-9-]{2,62}")
HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_ID_PREFIX = {"m": "member", "p": "patient", "r": "record", "c": "consent", "e": "emergency"}
_ID_BODY = re.compile(r"[0-9a-f]{32}")

ORG_KINDS = ("clinic", "hospital", "lab", "pharmacy")
ROLES = ("admin", "doctor", "nurse", "pharmacist", "lab_analyst", "registrar", "auditor")
RESOURCE_TYPES = (
    "AllergyIntolerance",
    "Condition",
    "DiagnosticReport",
    "DocumentReference",
    "Encounter",
    "Immunization",
    "MedicationDispense",
    "MedicationRequest",
    "Observation",
    "Patient",
    "Procedure",
    "ServiceRequest",
)
PURPOSES = ("treatment", "dispensing", "referral", "emergency", "research", "insurance", "own")
# What a patient can consent to; "own" and "emergency" are never granted, they are bases.
CONSENT_PURPOSES = ("treatment", "dispensing", "referral", "research", "insurance")
# Only organisation changes carry co-signatures (a majority of organisations).
COSIGNED_TYPES = frozenset({"org.enrol", "org.revoke"})
BASES = ("own", "author", "organisation", "consent", "emergency", "none")
EMERGENCY_REASONS = ("unconscious", "life_threatening", "unable_to_consent", "urgent_transfer")
ERASE_REASONS = ("patient_request", "legal_order", "entered_in_error")


def new_id(kind: str) -> str:
    """A fresh random identifier of a kind (member, patient, record, consent, emergency)."""
    prefix = {v: k for k, v in _ID_PREFIX.items()}
    return f"{prefix[kind]}-{secrets.token_hex(16)}"


def id_kind(value: object) -> str | None:
    """Which kind of identifier a string is (org, member, patient, ...), or None.

    Random ids are a one-letter prefix, a dash and 32 lowercase hex digits; anything else
    that is a lowercase slug is an organisation. A slug shaped like a random id is therefore
    never an organisation, so the two can never be confused.
    """
    if type(value) is str:
        # The rules ask about the same few principals several times per transaction.
        # "" is never a kind: it marks a string not looked at yet (one lookup, so another
        # thread clearing the table in between does no harm).
        kind = _KINDS.get(value, "")
        if kind == "":
            if len(_KINDS) >= _KINDS_LIMIT:
                _KINDS.clear()
            kind = _KINDS[value] = _id_kind(value)
        return kind
    return _id_kind(value) if isinstance(value, str) else None


def _id_kind(value: str) -> str | None:
    if len(value) == 34 and value[1] == "-" and _ID_BODY.fullmatch(value, 2):
        return _ID_PREFIX.get(value[0])
    if ORG_RE.fullmatch(value):
        return "org"
    return None


# Answers of id_kind by string (a pure function of it); bounded, cleared when full.
_KINDS: dict[str, str | None] = {}
_KINDS_LIMIT = 65_536


# ---------------------------------------------------------------------------------------------
# Field checkers: each returns None when the value fits, else a short reason (never the value).

Check = Callable[[Any], str | None]


def _ident(*kinds: str) -> Check:
    def check(v: Any) -> str | None:
        if isinstance(v, str) and id_kind(v) in kinds:
            return None
        return f"must be an id of kind {'/'.join(kinds)}"

    return check


def _enum(options: Sequence[str]) -> Check:
    allowed = frozenset(options)

    def check(v: Any) -> str | None:
        return None if isinstance(v, str) and v in allowed else "not an allowed value"

    return check


def _int(low: int = 0) -> Check:
    def check(v: Any) -> str | None:
        return None if type(v) is int and v >= low else f"must be an integer >= {low}"

    return check


def _bool(v: Any) -> str | None:
    return None if type(v) is bool else "must be true or false"


def _hex64(v: Any) -> str | None:
    return None if isinstance(v, str) and HEX64.fullmatch(v) else "must be 64 lowercase hex digits"


def _key(v: Any) -> str | None:
    try:
        raw = b64d(v)
    except CanonicalError:
        return "must be base64url"
    return None if 16 <= len(raw) <= 2048 else "key has an impossible length"


def _sign_key(v: Any) -> str | None:
    try:
        raw = b64d(v)
    except CanonicalError:
        return "must be base64url"
    return None if len(raw) == 32 else "an Ed25519 public key is 32 bytes"


def _nullable(check: Check) -> Check:
    def wrapped(v: Any) -> str | None:
        return None if v is None else check(v)

    return wrapped


def _types_list(v: Any) -> str | None:
    if v == ["*"]:
        return None
    if (
        isinstance(v, list)
        and 0 < len(v) <= len(RESOURCE_TYPES)
        and all(isinstance(x, str) and x in RESOURCE_TYPES for x in v)
        and v == sorted(set(v))
    ):
        return None
    return 'must be ["*"] or a sorted list of distinct resource types'


_ORG = _ident("org")
_MEMBER = _ident("member")
_PATIENT = _ident("patient")
_RECORD = _ident("record")
_SUBJECT = _ident("org", "member", "patient")

BODY_SCHEMAS: dict[str, dict[str, Check]] = {
    "org.enrol": {
        "org": _ORG,
        "kind": _enum(ORG_KINDS),
        "sign_key": _sign_key,
        "enc_key": _key,
    },
    "org.revoke": {"org": _ORG},
    "member.enrol": {
        "member": _MEMBER,
        "org": _ORG,
        "role": _enum(ROLES),
        "sign_key": _sign_key,
        "enc_key": _key,
        "valid_from": _int(),
        "valid_until": _int(),
    },
    "member.revoke": {"member": _MEMBER},
    "key.rotate": {"subject": _SUBJECT, "sign_key": _sign_key, "enc_key": _key},
    "patient.register": {
        "patient": _PATIENT,
        "home_org": _ORG,
        "sign_key": _sign_key,
        "enc_key": _key,
    },
    "record.write": {
        "record": _RECORD,
        "version": _int(1),
        "patient": _PATIENT,
        "resource_type": _enum(RESOURCE_TYPES),
        "content_hash": _hex64,
        "content_size": _int(1),
        "basis": _enum(BASES),
        "basis_ref": _nullable(_ident("consent", "emergency")),
    },
    "record.erase": {"record": _RECORD, "reason": _enum(ERASE_REASONS)},
    "consent.grant": {
        "consent": _ident("consent"),
        "patient": _PATIENT,
        "grantee": _ident("member", "org"),
        "resource_types": _types_list,
        "purpose": _enum(CONSENT_PURPOSES),
        "start": _int(),
        "end": _int(),
    },
    "consent.revoke": {"consent": _ident("consent")},
    # A clinician asks the patient for access: the grantee is the signer; no free text.
    "consent.request": {
        "patient": _PATIENT,
        "resource_types": _types_list,
        "purpose": _enum(CONSENT_PURPOSES),
        "days": _int(1),
    },
    # The patient (or their home organisation) declines a request, named by its tx id.
    "consent.decline": {"request": _hex64},
    "access.read": {
        "patient": _PATIENT,
        "record": _RECORD,
        "version": _int(1),
        "accessor": _ident("member", "patient"),
        "allowed": _bool,
        "basis": _enum(BASES),
        "basis_ref": _nullable(_ident("consent", "emergency")),
        "purpose": _enum(PURPOSES),
    },
    "emergency.open": {
        "access": _ident("emergency"),
        "patient": _PATIENT,
        "member": _MEMBER,
        "reason": _enum(EMERGENCY_REASONS),
        "expires": _int(),
    },
    "prescription.dispense": {
        "prescription": _RECORD,
        "version": _int(1),
        "pharmacy": _ORG,
        "dispense_record": _nullable(_RECORD),
        "basis": _enum(BASES),
        "basis_ref": _nullable(_ident("consent", "emergency")),
    },
}

TX_TYPES = tuple(sorted(BODY_SCHEMAS))


def check_body(tx_type: str, body: Any) -> None:
    """Raise MalformedError when a body does not match its type's exact schema."""
    schema = BODY_SCHEMAS.get(tx_type) if isinstance(tx_type, str) else None
    if schema is None:
        raise MalformedError("unknown transaction type")
    if not isinstance(body, dict):
        raise MalformedError("body must be an object")
    if body.keys() != schema.keys():
        extra = sorted(set(body) - set(schema))
        missing = sorted(set(schema) - set(body))
        raise MalformedError(f"body fields: missing {missing}, unexpected {extra}")
    for field, check in schema.items():
        problem = check(body[field])
        if problem is not None:
            raise MalformedError(f"{tx_type}.{field}: {problem}")


# ---------------------------------------------------------------------------------------------


class Signature(NamedTuple):
    """One signature on a transaction: who, with which public key, and the signature bytes."""

    by: str
    key: bytes
    sig: bytes


@dataclass(frozen=True)
class Transaction:
    """A decoded, well-formed signed transaction (signatures not yet checked against state)."""

    tx: Mapping[str, Any]
    signatures: tuple[Signature, ...]
    raw: bytes
    tx_id: str
    signed_message: bytes

    #: The transaction type, e.g. ``record.write``.
    type: str = dataclasses.field(init=False, repr=False, compare=False)
    #: The id of the principal that authored and first signed the transaction.
    signer: str = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Plain attributes, set once: the rules read both several times per transaction.
        object.__setattr__(self, "type", str(self.tx["type"]))
        object.__setattr__(self, "signer", str(self.tx["signer"]))

    @property
    def created(self) -> int:
        """Creation time claimed by the author, milliseconds since the Unix epoch."""
        return int(self.tx["created"])

    @property
    def network(self) -> str:
        """The network id the transaction was made for."""
        return str(self.tx["network"])

    @property
    def body(self) -> Mapping[str, Any]:
        """The type-specific body."""
        body: Mapping[str, Any] = self.tx["body"]
        return body

    @classmethod
    def decode(cls, raw: bytes) -> Transaction:
        """Decode canonical envelope bytes, checking structure and schema (not signatures)."""
        if len(raw) > MAX_TX_BYTES:
            raise MalformedError("transaction too large")
        try:
            envelope = parse(raw, require_canonical=True)
        except CanonicalError as exc:
            raise MalformedError(f"transaction bytes: {exc}") from None
        return cls._from_envelope(envelope, raw)

    @classmethod
    def _from_envelope(cls, envelope: Any, raw: bytes) -> Transaction:
        if not isinstance(envelope, dict) or envelope.keys() != _ENVELOPE_KEYS:
            raise MalformedError("envelope must have exactly tx and sigs")
        tx = envelope["tx"]
        if not isinstance(tx, dict) or tx.keys() != _TX_KEYS:
            raise MalformedError(
                "tx must have exactly v, network, type, created, nonce, signer, body"
            )
        if type(tx["v"]) is not int or tx["v"] != TX_VERSION:
            raise MalformedError("unsupported transaction version")
        if _hex64(tx["network"]) is not None:
            raise MalformedError("network must be 64 lowercase hex digits")
        if not isinstance(tx["nonce"], str) or not _HEX32.fullmatch(tx["nonce"]):
            raise MalformedError("nonce must be 32 lowercase hex digits")
        if _NON_NEGATIVE(tx["created"]) is not None:
            raise MalformedError("created must be a non-negative integer")
        if _SUBJECT(tx["signer"]) is not None:
            raise MalformedError("signer must be an org, member or patient id")
        check_body(tx["type"], tx["body"])
        sigs = envelope["sigs"]
        if not isinstance(sigs, list) or not 1 <= len(sigs) <= MAX_SIGNATURES:
            raise MalformedError("sigs must be a non-empty list")
        parsed: list[Signature] = []
        for item in sigs:
            if not isinstance(item, dict) or item.keys() != _SIGNATURE_KEYS:
                raise MalformedError("each signature must have exactly by, key, sig")
            if _SUBJECT(item["by"]) is not None:
                raise MalformedError("signature by must be an org, member or patient id")
            try:
                key, sig = _public_key(item["key"]), b64d(item["sig"])
            except CanonicalError:
                raise MalformedError("signature key and sig must be base64url") from None
            parsed.append(Signature(item["by"], key, sig))
        if parsed[0].by != tx["signer"]:
            raise MalformedError("first signature must be by the signer")
        # Co-signatures are not covered by the transaction id, so they are allowed only where
        # the rules need them; elsewhere a copy with an extra signature must not decode.
        if len(parsed) > 1 and tx["type"] not in COSIGNED_TYPES:
            raise MalformedError("only organisation changes carry co-signatures")
        if len({s.by for s in parsed}) != len(parsed):
            raise MalformedError("a principal signed twice")
        return cls._build(tx, tuple(parsed), raw)

    @classmethod
    def _build(
        cls,
        tx: dict[str, Any],
        signatures: tuple[Signature, ...],
        raw: bytes,
        tx_id: str | None = None,
    ) -> Transaction:
        unsigned = _unsigned_bytes(raw, tx)
        made = object.__new__(cls)
        # The dataclass's own __init__ sets each field through object.__setattr__ (it is
        # frozen), then __post_init__ two more: a tenth of a whole decode. Filling the
        # instance's dictionary directly makes the same object (tests/ledger compares them).
        made.__dict__.update(
            tx=tx,
            signatures=signatures,
            raw=raw,
            tx_id=hashlib.sha256(unsigned).hexdigest() if tx_id is None else tx_id,
            signed_message=SIGNING_DOMAIN + unsigned,
            type=str(tx["type"]),
            signer=str(tx["signer"]),
        )
        return made

    @classmethod
    def accepted(cls, raw: bytes, tx_id: str) -> Transaction:
        """The transaction of bytes that ``decode`` has already accepted, with their id.

        For handing decoded transactions between Rekam's own processes (``rekam verify``'s
        workers decode, the verifier rebuilds): nothing is checked again, so it must never
        see bytes or ids from anywhere else. Costs a fraction of ``decode``.
        """
        envelope = parse_accepted(raw)
        signatures = tuple(
            [Signature(s["by"], _public_key(s["key"]), b64d(s["sig"])) for s in envelope["sigs"]]
        )
        return cls._build(envelope["tx"], signatures, raw, tx_id)


def _public_key(text: str) -> bytes:
    """``b64d`` of a signature's public key, remembered: the same few signers sign most
    transactions. Raises CanonicalError as ``b64d`` does."""
    key = _PUBLIC_KEYS.get(text) if type(text) is str else None
    if key is None:
        key = b64d(text)
        if len(_PUBLIC_KEYS) >= _KINDS_LIMIT:
            _PUBLIC_KEYS.clear()
        _PUBLIC_KEYS[text] = key
    return key


# Decoded public keys by their base64url text (a pure function of it); bounded like _KINDS.
_PUBLIC_KEYS: dict[str, bytes] = {}


_ENVELOPE_KEYS = frozenset({"tx", "sigs"})
_TX_KEYS = frozenset({"v", "network", "type", "created", "nonce", "signer", "body"})
_SIGNATURE_KEYS = frozenset({"by", "key", "sig"})
_NON_NEGATIVE = _int()
_TX_MEMBER = b',"tx":'


def _unsigned_bytes(raw: bytes, tx: dict[str, Any]) -> bytes:
    """``canonical(tx)`` of a decoded envelope, cut out of its bytes instead of re-encoded.

    ``raw`` is ``C(envelope)``, checked byte for byte by ``parse``, and the envelope's members
    are exactly ``sigs`` and ``tx``, in that (sorted) order, so::

        raw == b'{"sigs":' + C(sigs) + b',"tx":' + C(tx) + b'}'

    The signatures have been checked to hold only ids and base64url (letters, digits, ``-``
    and ``_``) under the names ``by``, ``key`` and ``sig``, so ``C(sigs)`` contains exactly
    one ``]``, its last byte, and nothing before it in ``raw`` is a ``]`` either: the first
    ``]`` in ``raw`` ends the signatures. The separator and the closing brace are checked all
    the same; should they ever not be there, the bytes are encoded afresh.
    """
    end = raw.find(b"]") + 1
    start = end + len(_TX_MEMBER)
    if end and raw[end:start] == _TX_MEMBER and raw.endswith(b"}"):
        return raw[start:-1]
    return canonical(tx)  # not reached for envelopes that decode


def unsigned_tx(
    network: str,
    tx_type: str,
    signer: str,
    body: Mapping[str, Any],
    created: int,
    nonce: str | None = None,
) -> dict[str, Any]:
    """Assemble and schema-check an unsigned transaction."""
    tx = {
        "v": TX_VERSION,
        "network": network,
        "type": tx_type,
        "created": created,
        "nonce": nonce if nonce is not None else secrets.token_hex(16),
        "signer": signer,
        "body": dict(body),
    }
    check_body(tx_type, tx["body"])
    return tx


def sign_tx(tx: Mapping[str, Any], signers: Sequence[tuple[str, Signer]]) -> Transaction:
    """Sign an unsigned transaction by each (id, signer) in order and decode the result."""
    if not signers or signers[0][0] != tx["signer"]:
        raise MalformedError("the first signer must be the transaction's signer")
    message = SIGNING_DOMAIN + canonical(tx)
    envelope = {
        "tx": tx,
        "sigs": [
            {"by": who, "key": b64e(s.public_key), "sig": b64e(s.sign(message))}
            for who, s in signers
        ],
    }
    return Transaction.decode(canonical(envelope))


def make_tx(
    network: str,
    tx_type: str,
    signer_id: str,
    signer: Signer,
    body: Mapping[str, Any],
    created: int,
    cosigners: Sequence[tuple[str, Signer]] = (),
) -> Transaction:
    """Build and sign a transaction in one step."""
    tx = unsigned_tx(network, tx_type, signer_id, body, created)
    return sign_tx(tx, [(signer_id, signer), *cosigners])
