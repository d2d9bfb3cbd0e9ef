"""Transaction.decode cuts C(tx) out of the envelope bytes instead of encoding it again.

The cut must give exactly ``canonical(tx)`` for every envelope that decodes, so that the id and
the signed message are those of docs/encoding.md section 4.2: checked here on the vectors and
on generated transactions (any type, any number of signatures, ids of every kind).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rekam.encoding import b64e, canonical
from rekam.ledger.tx import (
    COSIGNED_TYPES,
    MAX_SIGNATURES,
    SIGNING_DOMAIN,
    Transaction,
    _unsigned_bytes,
    unsigned_tx,
)

VECTORS = json.loads(
    (Path(__file__).parents[1] / "encoding" / "vectors.json").read_text(encoding="utf-8")
)
NETWORK = VECTORS["genesis"]["network_id"]
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check(decoded: Transaction) -> None:
    unsigned = canonical(decoded.tx)
    # Cut from the bytes, not encoded afresh (the fallback would hide a wrong cut).
    with mock.patch("rekam.ledger.tx.canonical", side_effect=AssertionError("encoded afresh")):
        assert _unsigned_bytes(decoded.raw, dict(decoded.tx)) == unsigned
    assert decoded.signed_message == SIGNING_DOMAIN + unsigned
    assert decoded.tx_id == hashlib.sha256(unsigned).hexdigest()


@pytest.mark.parametrize("vector", VECTORS["transactions"], ids=lambda v: v["name"])
def test_vectors(vector: dict[str, Any]) -> None:
    decoded = Transaction.decode(bytes.fromhex(vector["envelope_canonical_hex"]))
    _check(decoded)
    assert decoded.tx_id == vector["tx_id"]
    assert decoded.signed_message.hex() == vector["signed_message_hex"]


def test_bytes_without_the_layout_are_encoded_afresh() -> None:
    """Never reached through decode; the fallback still gives canonical(tx)."""
    tx = json.loads(VECTORS["transactions"][0]["tx_canonical"])
    assert _unsigned_bytes(b'{"tx":{}}', tx) == canonical(tx)
    assert _unsigned_bytes(b"[]", tx) == canonical(tx)


# --- generated transactions ------------------------------------------------------------------

_HEX = "0123456789abcdef"


def _random_id(prefix: str) -> st.SearchStrategy[str]:
    return st.text(st.sampled_from(_HEX), min_size=32, max_size=32).map(lambda h: f"{prefix}-{h}")


_ORG = st.from_regex(r"[a-z0-9][a-z0-9-]{2,20}", fullmatch=True).filter(
    lambda s: not (len(s) == 34 and s[1] == "-")
)
_PRINCIPAL = st.one_of(_ORG, _random_id("m"), _random_id("p"))
_KEY = st.binary(min_size=16, max_size=80).map(b64e)
_SIGN_KEY = st.binary(min_size=32, max_size=32).map(b64e)
_HEX64 = st.text(st.sampled_from(_HEX), min_size=64, max_size=64)
_TIME = st.integers(0, 2**53 - 1)

_BODIES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "org.enrol": st.fixed_dictionaries(
        {
            "org": _ORG,
            "kind": st.sampled_from(["clinic", "hospital", "lab", "pharmacy"]),
            "sign_key": _SIGN_KEY,
            "enc_key": _KEY,
        }
    ),
    "org.revoke": st.fixed_dictionaries({"org": _ORG}),
    "patient.register": st.fixed_dictionaries(
        {"patient": _random_id("p"), "home_org": _ORG, "sign_key": _SIGN_KEY, "enc_key": _KEY}
    ),
    "record.write": st.fixed_dictionaries(
        {
            "record": _random_id("r"),
            "version": st.integers(1, 2**53 - 1),
            "patient": _random_id("p"),
            "resource_type": st.sampled_from(["Observation", "Condition", "Patient"]),
            "content_hash": _HEX64,
            "content_size": st.integers(1, 2**40),
            "basis": st.sampled_from(["own", "author", "consent", "emergency"]),
            "basis_ref": st.one_of(st.none(), _random_id("c"), _random_id("e")),
        }
    ),
    "consent.grant": st.fixed_dictionaries(
        {
            "consent": _random_id("c"),
            "patient": _random_id("p"),
            "grantee": st.one_of(_ORG, _random_id("m")),
            "resource_types": st.one_of(
                st.just(["*"]),
                st.lists(
                    st.sampled_from(["Condition", "Encounter", "Observation"]),
                    min_size=1,
                    unique=True,
                ).map(sorted),
            ),
            "purpose": st.sampled_from(["treatment", "research"]),
            "start": _TIME,
            "end": _TIME,
        }
    ),
}


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    tx_type = draw(st.sampled_from(sorted(_BODIES)))
    signer = draw(_PRINCIPAL)
    tx = unsigned_tx(
        NETWORK,
        tx_type,
        signer,
        draw(_BODIES[tx_type]),
        draw(_TIME),
        draw(st.text(st.sampled_from(_HEX), min_size=32, max_size=32)),
    )
    cosigners = (
        draw(st.lists(_PRINCIPAL, max_size=MAX_SIGNATURES - 1, unique=True))
        if tx_type in COSIGNED_TYPES
        else []
    )
    by = [signer, *(c for c in cosigners if c != signer)]
    sigs = [
        {
            "by": who,
            "key": draw(st.binary(max_size=40).map(b64e)),
            "sig": draw(st.binary(max_size=70).map(b64e)),
        }
        for who in by
    ]
    return canonical({"sigs": sigs, "tx": tx})


@SETTINGS
@given(envelopes())
def test_generated_transactions(raw: bytes) -> None:
    decoded = Transaction.decode(raw)
    assert decoded.raw == raw
    _check(decoded)


@SETTINGS
@given(envelopes())
def test_decoded_and_accepted_transactions_are_what_the_dataclass_makes(raw: bytes) -> None:
    """decode() and accepted() fill the instance directly; both must give exactly the object
    the dataclass's own constructor makes from the same fields."""
    decoded = Transaction.decode(raw)
    made = Transaction(
        tx=decoded.tx,
        signatures=decoded.signatures,
        raw=decoded.raw,
        tx_id=decoded.tx_id,
        signed_message=decoded.signed_message,
    )
    for other in (made, Transaction.accepted(raw, decoded.tx_id)):
        assert other == decoded
        assert vars(other) == vars(decoded)  # type and signer too, nothing else
        assert (other.type, other.signer) == (decoded.tx["type"], decoded.tx["signer"])
