"""Read-only FHIR views of the ledger: Consent, AuditEvent, Provenance, Practitioner, Organization.

These resources are not stored; they are built from chain state on each request, so they
always say what the chain says. They carry no clinical content: consents, access events and
authorship are metadata the chain holds in the clear (pseudonymous ids only). Staff and
organisation names come from the node's local directory of display labels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rekam.ledger.tx import id_kind
from rekam.service.audit import AuditEntry
from rekam.service.errors import AccessDenied, NotFoundError
from rekam.service.fhir_store import (
    DCM,
    LEDGER_TX_EXT,
    RECEIPT_EXT,
    FhirService,
    iso,
)

if TYPE_CHECKING:
    from rekam.service.workspace import Actor

_ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
_PURPOSE_CODES = {
    "treatment": "TREAT",
    "dispensing": "TREAT",
    "referral": "TREAT",
    "research": "HRESCH",
    "insurance": "COVERAGE",
    "emergency": "ETREAT",
    "own": "PATRQT",
}
_ROLE_CODES = {
    "doctor": ("http://snomed.info/sct", "158965000", "Medical practitioner"),
    "nurse": ("http://snomed.info/sct", "106292003", "Professional nurse"),
    "pharmacist": ("http://snomed.info/sct", "46255001", "Pharmacist"),
    "lab_analyst": ("http://snomed.info/sct", "159282002", "Laboratory technician"),
}
_ORG_TYPES = {"clinic": "prov", "hospital": "prov", "lab": "prov", "pharmacy": "prov"}
_AUDIT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
_RESTFUL = "http://hl7.org/fhir/restful-interaction"


def actor_reference(principal: str) -> str:
    """The FHIR reference a chain principal is shown under."""
    kind = id_kind(principal)
    if kind == "member":
        return f"Practitioner/{principal}"
    if kind == "patient":
        return f"Patient/{principal}"
    return f"Organization/{principal}"


class LedgerViews:
    """Build the derived read-only resources, checking who may see them."""

    def __init__(self, fhir: FhirService) -> None:
        self.fhir = fhir
        self.ws = fhir.ws

    def _require_patient_view(self, actor: Actor, patient: str) -> None:
        if not self.fhir.may_see_patient_metadata(actor, patient):
            raise AccessDenied("only the patient, their home organisation or a grantee")

    # -- directory views ---------------------------------------------------------------------

    def practitioner(self, member: str) -> dict[str, Any]:
        """A member as a Practitioner: id, active flag, display label, role qualification."""
        row = self.ws.node.store.get("member", member) if id_kind(member) == "member" else None
        if row is None:
            raise NotFoundError("unknown Practitioner")
        label = self.ws.datadir.labels().get(member)
        out: dict[str, Any] = {
            "resourceType": "Practitioner",
            "id": member,
            "active": not row["revoked"],
        }
        if label:
            out["name"] = [{"text": label}]
        role = _ROLE_CODES.get(row["role"])
        if role:
            out["qualification"] = [
                {"code": {"coding": [{"system": role[0], "code": role[1], "display": role[2]}]}}
            ]
        return out

    def organization(self, org: str) -> dict[str, Any]:
        """An organisation of the network as an Organization."""
        row = self.ws.node.store.get("org", org) if id_kind(org) == "org" else None
        if row is None:
            raise NotFoundError("unknown Organization")
        out: dict[str, Any] = {
            "resourceType": "Organization",
            "id": org,
            "active": bool(row["active"]),
            "type": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/organization-type",
                            "code": _ORG_TYPES.get(row["kind"], "other"),
                        }
                    ],
                    "text": row["kind"],
                }
            ],
        }
        label = self.ws.datadir.labels().get(org)
        if label:
            out["name"] = label
        return out

    def practitioners(self) -> list[dict[str, Any]]:
        """Every member of the network as a Practitioner."""
        return [self.practitioner(k) for k, _ in self.ws.node.store.query("member", {})]

    def organizations(self) -> list[dict[str, Any]]:
        """Every organisation of the network."""
        return [self.organization(k) for k, _ in self.ws.node.store.query("org", {})]

    # -- Consent -----------------------------------------------------------------------------

    def _consent(self, key: str, row: dict[str, Any]) -> dict[str, Any]:
        now = self.ws.node.clock()
        if row["revoked"]:
            status = "inactive"
        elif row["start"] <= now < row["end"]:
            status = "active"
        else:
            status = "inactive"
        provision: dict[str, Any] = {
            "type": "permit",
            "period": {"start": iso(row["start"]), "end": iso(row["end"])},
            "actor": [
                {
                    "role": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                "code": "PRCP",
                            }
                        ]
                    },
                    "reference": {"reference": actor_reference(row["grantee"])},
                }
            ],
            "purpose": [
                {"system": _ACT_REASON, "code": _PURPOSE_CODES.get(row["purpose"], "TREAT")}
            ],
        }
        if row["resource_types"] != ["*"]:
            provision["class"] = [
                {"system": "http://hl7.org/fhir/resource-types", "code": t}
                for t in row["resource_types"]
            ]
        return {
            "resourceType": "Consent",
            "id": key,
            "status": status,
            "scope": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                        "code": "patient-privacy",
                    }
                ]
            },
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": f"Patient/{row['patient']}"},
            "dateTime": iso(row["start"]),
            "performer": [{"reference": actor_reference(row["granted_by"])}],
            "policyRule": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}
                ]
            },
            "provision": provision,
        }

    def consents(self, actor: Actor, patient: str) -> list[dict[str, Any]]:
        """A patient's grants as Consent resources."""
        self._require_patient_view(actor, patient)
        rows = self.ws.node.store.query("consent", {"patient": patient}, order_by="start")
        return [self._consent(str(k), dict(r)) for k, r in rows]

    def consent(self, actor: Actor, consent: str) -> dict[str, Any]:
        """One grant as a Consent resource."""
        row = self.ws.node.store.get("consent", consent) if id_kind(consent) == "consent" else None
        if row is None:
            raise NotFoundError("unknown Consent")
        self._require_patient_view(actor, str(row["patient"]))
        return self._consent(consent, dict(row))

    # -- AuditEvent --------------------------------------------------------------------------

    def _audit_event(self, patient: str, entry: AuditEntry) -> dict[str, Any]:
        read = entry.kind == "access.read"
        if entry.kind == "emergency.open":
            event_type = {
                "system": DCM,
                "code": "110127",
                "display": "Emergency Override Started",
            }
        else:
            event_type = {"system": _AUDIT_TYPE, "code": "rest", "display": "Restful Operation"}
        subtype = {
            "access.read": "read",
            "record.write": "create" if entry.version == 1 else "update",
            "record.erase": "delete",
        }.get(entry.kind)
        action = {"read": "R", "create": "C", "update": "U", "delete": "D"}.get(subtype or "", "E")
        agent: dict[str, Any] = {
            "who": {"reference": actor_reference(entry.actor)},
            "requestor": True,
        }
        if entry.purpose:
            agent["purposeOfUse"] = [
                {
                    "coding": [
                        {
                            "system": _ACT_REASON,
                            "code": _PURPOSE_CODES.get(entry.purpose, "TREAT"),
                        }
                    ]
                }
            ]
        out: dict[str, Any] = {
            "resourceType": "AuditEvent",
            "id": entry.tx_id,
            "type": event_type,
        }
        if subtype:
            out["subtype"] = [{"system": _RESTFUL, "code": subtype}]
        out["action"] = action
        out["recorded"] = iso(entry.time)
        # 0 success, 4 minor failure: a denied read is refused, not a system error.
        out["outcome"] = "4" if read and entry.allowed is False else "0"
        if read and entry.allowed is False:
            out["outcomeDesc"] = "access denied"
        out["agent"] = [agent]
        out["source"] = {
            "observer": {"reference": actor_reference(entry.actor_org or entry.actor)},
            "type": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": "4",
                }
            ],
        }
        entities: list[dict[str, Any]] = [
            {
                "what": {"reference": f"Patient/{patient}"},
                "type": {
                    "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                    "code": "1",
                },
                "role": {
                    "system": "http://terminology.hl7.org/CodeSystem/object-role",
                    "code": "1",
                },
            }
        ]
        if entry.record and entry.resource_type:
            target = patient if entry.resource_type == "Patient" else entry.record
            ref = f"{entry.resource_type}/{target}"
            if entry.version:
                ref += f"/_history/{entry.version}"
            entities.append(
                {
                    "what": {"reference": ref},
                    "type": {
                        "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                        "code": "2",
                    },
                }
            )
        out["entity"] = entities
        out["extension"] = [{"url": LEDGER_TX_EXT, "valueString": entry.tx_id}]
        return out

    def audit_events(self, actor: Actor, patient: str) -> list[dict[str, Any]]:
        """A patient's access history as AuditEvent resources (IHE BALP style), oldest first."""
        self._require_patient_view(actor, patient)
        return [self._audit_event(patient, e) for e in self.ws.audit.history(patient)]

    # -- Provenance --------------------------------------------------------------------------

    def provenance(self, actor: Actor, resource_type: str, fhir_id: str) -> list[dict[str, Any]]:
        """One Provenance per version of a resource: its ledger transaction and receipt."""
        record_id, row = self.fhir._record_of(resource_type, fhir_id)
        self._require_patient_view(actor, str(row["patient"]))
        out = []
        store = self.ws.node.store
        for _, version in store.query("record_version", {"record": record_id}, order_by="version"):
            tx_id = str(version["tx"])
            out.append(
                {
                    "resourceType": "Provenance",
                    "id": tx_id,
                    "extension": [
                        {"url": LEDGER_TX_EXT, "valueString": tx_id},
                        {"url": RECEIPT_EXT, "valueUri": f"/api/receipts/{tx_id}"},
                    ],
                    "target": [
                        {"reference": f"{resource_type}/{fhir_id}/_history/{version['version']}"}
                    ],
                    "recorded": iso(int(version["time"])),
                    "activity": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                                "code": "CREATE" if version["version"] == 1 else "UPDATE",
                            }
                        ]
                    },
                    "agent": [{"who": {"reference": actor_reference(str(version["author"]))}}],
                }
            )
        return out
