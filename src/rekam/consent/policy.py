"""Choosing an access basis.

The ledger decides whether a given basis holds (``rekam.ledger.rules.basis_holds``, run by
every node). This module only chooses which basis to claim, from the candidates a node can
see, in a fixed order of preference: the patient themself, the record's author, the
organisation that holds the patient's care, a consent, and last an emergency access. When no
candidate holds, access is denied: there is no default allow.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rekam.ledger.rules import basis_holds
from rekam.ledger.state import Row, StateReader


@dataclass(frozen=True)
class Basis:
    """Why an access is allowed: the basis kind and the consent or emergency it rests on."""

    kind: str
    ref: str | None = None


def choose_basis(
    st: StateReader,
    accessor: str,
    patient_id: str,
    patient: Row,
    record: Row | None,
    resource_type: str,
    purpose: str,
    time: int,
    consents: Iterable[str] = (),
    emergencies: Iterable[str] = (),
) -> Basis | None:
    """The first basis that holds for this access now, or None when access must be denied."""
    candidates = [
        Basis("own"),
        Basis("author"),
        Basis("organisation"),
        *(Basis("consent", c) for c in sorted(consents)),
        *(Basis("emergency", e) for e in sorted(emergencies)),
    ]
    for basis in candidates:
        effective = "own" if basis.kind == "own" else purpose
        if basis.kind == "emergency":
            effective = "emergency"
        problem = basis_holds(
            st,
            accessor,
            patient_id,
            patient,
            record,
            resource_type,
            basis.kind,
            basis.ref,
            effective,
            time,
        )
        if problem is None:
            return basis
    return None


def purpose_for(basis: Basis, requested: str) -> str:
    """The purpose recorded with an access on this basis."""
    if basis.kind == "own":
        return "own"
    if basis.kind == "emergency":
        return "emergency"
    return requested
