"""The node-local keyed patient index: identifiers and name tokens to pseudonymous ids.

Patient names and identifiers live only inside encrypted Patient records; the chain knows a
patient by a random pseudonymous id. To find "the patient with NIK 99..." or "Ana Contoh",
this node keeps a small SQLite table of ``(tag, patient)`` pairs in ``DIR/index/patients.db``
where every tag is HMAC-SHA256 under a random node key in ``DIR/secrets/patient-index.key``.
Without the key the file reveals neither names nor identifiers; a plain hash would not do,
since a NIK or a name is easy to guess and hash.

What is indexed, for the head version of each Patient resource this node writes or reads
under audit (:class:`~rekam.service.records.RecordService` calls :meth:`PatientIndex.update`):

- every identifier as ``system|value`` and as the bare ``value`` (exact, case-sensitive);
- every name token of ``name[].given``, ``name[].family`` and ``name[].text``, normalised
  (Unicode NFKD, accents stripped, casefolded, split at anything not a letter or digit), and
  every prefix of at least :data:`MIN_PREFIX` characters of each token. So "ana", "anas"
  and "anastasia" all find "Anastasia"; a query token shorter than :data:`MIN_PREFIX` must
  equal a whole name token.

A name query matches a patient when every query token matches one of the patient's tokens.
What the file does reveal to someone without the key: how many tags each pseudonymous
patient has (roughly the length of their name) and which patients share a tag (a family
name, a prefix). The tags are not tied to the chain's content, and the file stays with the
node, owner-only, like the keystores.
The index only yields candidates; callers decide who may see what through the audited read
path. A new head version replaces the patient's tags, so a corrected name stops matching;
erasing the Patient resource removes them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# Prefixes shorter than this would match a large share of all patients ("a", "su").
MIN_PREFIX = 3
# Longest name token kept in the index; longer tokens are cut (no real name part is longer).
MAX_TOKEN = 40
_SPLIT = re.compile(r"[^0-9a-z]+")
# Medical record numbers are per organisation: an identifier whose system names the
# organisation (reserved example domain: no real registry is implied). SATUSEHAT's NIK
# system stays https://fhir.kemkes.go.id/id/nik.
MRN_PREFIX = "https://rekam.example/org/"
MRN_SUFFIX = "/mrn"
NIK_SYSTEM = "https://fhir.kemkes.go.id/id/nik"


def mrn_system(org: str) -> str:
    """The identifier system of an organisation's medical record numbers."""
    return f"{MRN_PREFIX}{org}{MRN_SUFFIX}"


def mrn_org(system: str) -> str | None:
    """The organisation an MRN identifier system belongs to, or None if it is not one."""
    if system.startswith(MRN_PREFIX) and system.endswith(MRN_SUFFIX):
        org = system[len(MRN_PREFIX) : -len(MRN_SUFFIX)]
        return org if org and "/" not in org else None
    return None


def name_tokens(text: str) -> list[str]:
    """Normalised tokens of a name or query: accents stripped, casefolded, letters/digits."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return [t[:MAX_TOKEN] for t in _SPLIT.split(stripped) if t]


def _name_parts(resource: Mapping[str, Any]) -> Iterable[str]:
    names = resource.get("name")
    for name in names if isinstance(names, list) else []:
        if not isinstance(name, Mapping):
            continue
        given = name.get("given")
        for part in given if isinstance(given, list) else []:
            if isinstance(part, str):
                yield part
        for key in ("family", "text"):
            if isinstance(name.get(key), str):
                yield name[key]


def _identifiers(resource: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    idents = resource.get("identifier")
    for ident in idents if isinstance(idents, list) else []:
        if isinstance(ident, Mapping) and isinstance(ident.get("value"), str):
            system = ident.get("system")
            yield (system if isinstance(system, str) else ""), ident["value"].strip()


class PatientIndex:
    """Keyed index from identifiers and name tokens to pseudonymous patient ids.

    Opened lazily: a process that never indexes or searches (``rekam verify``) creates no
    file. Thread-safe (one connection behind a lock).
    """

    def __init__(self, root: Path) -> None:
        self._root = root
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._key = b""

    def _open(self) -> sqlite3.Connection:
        """The database (created on first use); call with the lock held."""
        if self._db is not None:
            return self._db
        key_path = self._root / "secrets" / "patient-index.key"
        key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not key_path.is_file():
            # Created owner-only from the start: the key is what keeps the index opaque.
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(32))
        self._key = key_path.read_bytes()
        path = self._root / "index" / "patients.db"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        db.execute(
            "CREATE TABLE IF NOT EXISTS patient_tag (tag TEXT NOT NULL, patient TEXT NOT NULL,"
            " PRIMARY KEY (tag, patient))"
        )
        db.execute("CREATE INDEX IF NOT EXISTS patient_tag_patient ON patient_tag (patient)")
        self._db = db
        return db

    def _tag(self, kind: str, value: str) -> str:
        # The kind keeps an identifier value and a name token with the same text apart.
        message = f"{kind}\x00{value}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def _tags_of(self, resource: Mapping[str, Any]) -> set[str]:
        tags = set()
        for system, value in _identifiers(resource):
            if value:
                tags.add(self._tag("id", f"{system}|{value}"))
                tags.add(self._tag("id*", value))
        for part in _name_parts(resource):
            for token in name_tokens(part):
                tags.add(self._tag("name", token))
                for end in range(MIN_PREFIX, len(token)):
                    tags.add(self._tag("name", token[:end]))
        return tags

    def update(self, patient: str, resource: Mapping[str, Any]) -> None:
        """Replace the patient's entries with those of this (head) Patient resource."""
        with self._lock:
            db = self._open()
            tags = self._tags_of(resource)
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DELETE FROM patient_tag WHERE patient = ?", (patient,))
                db.executemany(
                    "INSERT OR IGNORE INTO patient_tag VALUES (?, ?)",
                    [(t, patient) for t in sorted(tags)],
                )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def remove(self, patient: str) -> None:
        """Drop every entry of a patient (their Patient resource was erased)."""
        with self._lock:
            self._open().execute("DELETE FROM patient_tag WHERE patient = ?", (patient,))

    def _lookup(self, tag_of: Iterable[tuple[str, str]]) -> set[str]:
        with self._lock:
            db = self._open()
            tags = [self._tag(kind, value) for kind, value in tag_of]
            found: set[str] = set()
            for tag in tags:
                rows = db.execute("SELECT patient FROM patient_tag WHERE tag = ?", (tag,))
                found.update(str(r[0]) for r in rows)
            return found

    def find_identifier(self, token: str) -> list[str]:
        """Patients with an identifier matching ``system|value`` or a bare ``value``."""
        token = token.strip()
        if not token:
            return []
        system, sep, value = token.rpartition("|")
        if sep:
            return sorted(self._lookup([("id", f"{system}|{value.strip()}")]))
        return sorted(self._lookup([("id*", token)]))

    def find_name(self, query: str) -> list[str]:
        """Patients whose name tokens match every token of the query (prefixes allowed)."""
        tokens = name_tokens(query)
        if not tokens:
            return []
        found: set[str] | None = None
        for token in dict.fromkeys(tokens):
            hits = self._lookup([("name", token)])
            found = hits if found is None else found & hits
            if not found:
                return []
        return sorted(found or ())

    def find(self, query: str) -> list[str]:
        """The portal's one-field search: identifier (NIK, MR number) or name matches."""
        return sorted(set(self.find_identifier(query)) | set(self.find_name(query)))

    def close(self) -> None:
        """Close the index database (reopened if used again)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
