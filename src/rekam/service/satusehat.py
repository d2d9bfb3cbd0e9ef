"""The SATUSEHAT export shape: plain R4 resources rewritten the way Indonesia's platform wants.

SATUSEHAT (Kementerian Kesehatan) refers to organisations, practitioners, patients and
locations by its own ids (an organisation id, IHS numbers, location UUIDs), and expects an
Encounter to name its ``serviceProvider``, ``location``, an ``identifier`` in the
organisation's ``http://sys-ids.kemkes.go.id/encounter/{org-id}`` system and a
``statusHistory``. Plain R4 from Rekam refers to chain ids instead. The node operator keeps
the mapping in ``DIR/satusehat.json``::

    {"organizations": {"klinik-melati": "10000004"},
     "practitioners": {"m-...": "10009880728"},
     "patients": {"p-...": "P02478375538"},
     "locations": {"klinik-melati": {"id": "b017aa54-...", "display": "Poli Umum"}}}

The mapping is node-local configuration, never on the chain (IHS numbers identify people).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rekam.records.fhir import map_references
from rekam.service.errors import InvalidContentError

ENCOUNTER_ID_SYSTEM = "http://sys-ids.kemkes.go.id/encounter/{org}"
MAPPING_FILE = "satusehat.json"


@dataclass(frozen=True)
class SatusehatMapping:
    """Chain ids to SATUSEHAT ids, from the node's ``satusehat.json``."""

    organizations: Mapping[str, str] = field(default_factory=dict)
    practitioners: Mapping[str, str] = field(default_factory=dict)
    patients: Mapping[str, str] = field(default_factory=dict)
    locations: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path) -> SatusehatMapping:
        """Read ``DIR/satusehat.json``; InvalidContentError when it is missing or malformed."""
        path = root / MAPPING_FILE
        if not path.is_file():
            raise InvalidContentError("this node has no SATUSEHAT mapping (satusehat.json)")
        try:
            doc = json.loads(path.read_text("utf-8"))
            mapping = cls(
                organizations=_strings(doc.get("organizations", {})),
                practitioners=_strings(doc.get("practitioners", {})),
                patients=_strings(doc.get("patients", {})),
                locations={str(k): _strings(v) for k, v in dict(doc.get("locations", {})).items()},
            )
        except (ValueError, TypeError, AttributeError):
            raise InvalidContentError("satusehat.json is malformed") from None
        return mapping

    def reference(self, ref: str) -> str:
        """A chain reference rewritten to SATUSEHAT's id where the mapping has one."""
        rtype, sep, rid = ref.partition("/")
        table = {
            "Organization": self.organizations,
            "Practitioner": self.practitioners,
            "Patient": self.patients,
        }.get(rtype)
        if not sep or table is None or rid not in table:
            return ref
        return f"{rtype}/{table[rid]}"


def _strings(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise TypeError("not an object")
    return {str(k): str(v) for k, v in value.items()}


def to_satusehat(
    resource: Mapping[str, Any], author_org: str | None, mapping: SatusehatMapping
) -> dict[str, Any]:
    """One resource in SATUSEHAT's shape; ``author_org`` is the chain org that wrote it."""
    out: dict[str, Any] = map_references(resource, mapping.reference)
    if out.get("resourceType") == "Patient" and out.get("id") in mapping.patients:
        out["id"] = mapping.patients[out["id"]]
    if out.get("resourceType") != "Encounter" or author_org is None:
        return out
    org_id = mapping.organizations.get(author_org)
    if org_id is not None:
        out.setdefault("serviceProvider", {"reference": f"Organization/{org_id}"})
        identifiers = out.setdefault("identifier", [])
        system = ENCOUNTER_ID_SYSTEM.format(org=org_id)
        if not any(isinstance(i, Mapping) and i.get("system") == system for i in identifiers):
            identifiers.append({"system": system, "value": str(resource.get("id", ""))})
    location = mapping.locations.get(author_org)
    if location is not None and "location" not in out:
        entry: dict[str, Any] = {"reference": f"Location/{location['id']}"}
        if location.get("display"):
            entry["display"] = location["display"]
        out["location"] = [{"location": entry}]
    if "statusHistory" not in out and isinstance(out.get("status"), str):
        history: dict[str, Any] = {"status": out["status"]}
        if isinstance(out.get("period"), Mapping):
            history["period"] = dict(out["period"])
        out["statusHistory"] = [history]
    return out
