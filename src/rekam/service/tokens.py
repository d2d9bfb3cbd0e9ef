"""Bearer tokens for API clients: SMART-style scopes, expiry, revocation, sealed key access.

A token is ``<token-id>.<secret>``. The secret is a fresh random 256-bit AES-GCM key made by
:func:`rekam.crypto.seal`; it seals the principal's keystore passphrase, and only the sealed
passphrase, the token's metadata and a SHA-256 of the secret are stored, in a node-local
SQLite file (``DIR/api/tokens.db``, never on the chain). On a request the bearer's secret
opens the passphrase in memory and unlocks the principal's keystore, so a copy of the data
folder alone unlocks nobody: the server never holds a member's or patient's private keys,
or their passphrase, in the clear at rest. Revocation deletes the sealed passphrase.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rekam.crypto import DecryptionError, load_identity, open_sealed, seal
from rekam.encoding import b64d, b64e
from rekam.ledger.tx import RESOURCE_TYPES, id_kind
from rekam.service.datadir import DataDir

TOKEN_DB = Path("api") / "tokens.db"
MAX_EXPIRY_MS = 365 * 24 * 3600 * 1000
# Types an API client may name in a scope: the record types plus the derived views.
SCOPE_TYPES = frozenset(RESOURCE_TYPES) | {
    "Practitioner",
    "Organization",
    "Consent",
    "AuditEvent",
    "Provenance",
}
_SCOPE = re.compile(r"(patient|user|system)/(\*|[A-Z][A-Za-z]{1,63})\.(read|write|\*)")
_TOKEN = re.compile(r"(t-[0-9a-f]{32})\.([A-Za-z0-9_\-]{43})")


class TokenError(Exception):
    """A token is malformed, unknown, expired or revoked (deliberately one opaque kind)."""


class ScopeError(ValueError):
    """A scope string is not a SMART-style scope this node understands."""


@dataclass(frozen=True)
class Scope:
    """One SMART-style scope: context (patient/user/system), resource type or *, mode."""

    context: str
    resource_type: str
    mode: str

    def allows(self, resource_type: str, mode: str) -> bool:
        """True when this scope covers ``mode`` (read/write) on ``resource_type``."""
        type_ok = self.resource_type in ("*", resource_type)
        return type_ok and self.mode in ("*", mode)

    def __str__(self) -> str:
        return f"{self.context}/{self.resource_type}.{self.mode}"


def parse_scopes(text: str) -> tuple[Scope, ...]:
    """Parse a space- or comma-separated scope list; ScopeError names the bad entry's shape."""
    scopes = []
    for part in re.split(r"[\s,]+", text.strip()):
        if not part:
            continue
        match = _SCOPE.fullmatch(part)
        if match is None or (match.group(2) != "*" and match.group(2) not in SCOPE_TYPES):
            raise ScopeError(
                "scopes look like patient/*.read or user/Observation.write "
                "(context patient|user|system, a supported resource type or *, read|write|*)"
            )
        scopes.append(Scope(match.group(1), match.group(2), match.group(3)))
    if not scopes:
        raise ScopeError("at least one scope is needed")
    return tuple(scopes)


def default_scopes(principal: str) -> str:
    """The scopes a token gets when none are asked for: everything the consent rules allow."""
    return "patient/*.*" if id_kind(principal) == "patient" else "user/*.*"


class OutsideCompartment(Exception):
    """No scope covers the access: none names the type and mode, or only ``patient/``
    scopes do and the token has no patient in context."""


@dataclass(frozen=True)
class TokenInfo:
    """A token's stored metadata (never its secret)."""

    token_id: str
    principal: str
    scopes: tuple[Scope, ...]
    issued: int
    expires: int
    revoked: bool
    label: str
    patient: str | None = None  # the patient in context for ``patient/`` scopes

    def allows(self, resource_type: str, mode: str) -> bool:
        """True when some scope covers this type and mode (the consent rules apply after)."""
        return any(s.allows(resource_type, mode) for s in self.scopes)

    def compartment(self, resource_type: str, mode: str) -> str | None:
        """None when a ``user/`` or ``system/`` scope covers the access; the context patient
        when only ``patient/`` scopes do (the access must stay in that patient's data).

        Raises OutsideCompartment when nothing covers it.
        """
        covering = [s for s in self.scopes if s.allows(resource_type, mode)]
        if any(s.context != "patient" for s in covering):
            return None
        if covering and self.patient is not None:
            return self.patient
        raise OutsideCompartment()


@dataclass(frozen=True)
class Session:
    """An authenticated bearer: the token metadata and the principal's keystore passphrase."""

    info: TokenInfo
    passphrase: str | None  # None for the node's own organisations


class TokenStore:
    """The node-local token table: issue, list, revoke and authenticate bearer tokens."""

    def __init__(self, root: Path) -> None:
        self.datadir = DataDir(root)
        path = root / TOKEN_DB
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # One connection shared by the server's threads, serialised by a lock.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS token (id TEXT PRIMARY KEY, principal TEXT NOT NULL,"
                " scopes TEXT NOT NULL, issued INTEGER NOT NULL, expires INTEGER NOT NULL,"
                " revoked INTEGER NOT NULL, label TEXT NOT NULL, secret_hash TEXT NOT NULL,"
                " sealed TEXT, patient TEXT)"
            )
        path.chmod(0o600)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def issue(
        self,
        principal: str,
        passphrase: str | None,
        scopes: str,
        *,
        now: int,
        expires_in_ms: int,
        label: str = "",
        patient: str | None = None,
    ) -> str:
        """Check the passphrase opens the principal's keystore, then store and return a token.

        Organisations local to the node need no passphrase (the node holds their keys).
        ``patient`` is the patient in context for ``patient/`` scopes; a patient's own
        token always has themself in context.
        """
        parsed = parse_scopes(scopes)
        if not 0 < expires_in_ms <= MAX_EXPIRY_MS:
            raise ScopeError("expiry must be between one second and one year")
        kind = id_kind(principal)
        config = self.datadir.config()
        if kind == "org":
            if principal not in config.get("orgs", {}):
                raise TokenError("not an organisation of this node")
            passphrase = None
        elif kind in ("member", "patient"):
            if passphrase is None or not self.datadir.keystore_path(principal).is_file():
                raise TokenError("no keystore for this principal in this data folder")
            # Raises DecryptionError on a wrong passphrase: nothing is stored then.
            load_identity(
                self.datadir.keystore_uri(principal), self.datadir.root, passphrase=passphrase
            )
        else:
            raise TokenError("tokens are issued to organisations, members and patients")
        if kind == "patient":
            patient = principal
        elif patient is not None and id_kind(patient) != "patient":
            raise ScopeError("the patient in context must be a patient id (p-...)")
        token_id = "t-" + secrets.token_hex(16)
        key, sealed = seal((passphrase or "").encode("utf-8"), token_id.encode("ascii"))
        secret = b64e(key)
        with self._lock:
            self._db.execute(
                "INSERT INTO token VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?, ?)",
                (
                    token_id,
                    principal,
                    " ".join(str(s) for s in parsed),
                    now,
                    now + expires_in_ms,
                    label,
                    hashlib.sha256(key).hexdigest(),
                    b64e(sealed),
                    patient,
                ),
            )
        return f"{token_id}.{secret}"

    def _row(self, token_id: str) -> tuple[TokenInfo, str, str | None] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, principal, scopes, issued, expires, revoked, label, secret_hash,"
                " sealed, patient FROM token WHERE id = ?",
                (token_id,),
            ).fetchone()
        if row is None:
            return None
        info = TokenInfo(
            row[0], row[1], parse_scopes(row[2]), row[3], row[4], bool(row[5]), row[6], row[9]
        )
        return info, row[7], row[8]

    def list(self) -> list[TokenInfo]:
        """Every token's metadata, newest first."""
        with self._lock:
            ids = [r[0] for r in self._db.execute("SELECT id FROM token ORDER BY issued DESC")]
        found = [self._row(i) for i in ids]
        return [f[0] for f in found if f is not None]

    def revoke(self, token_id: str) -> bool:
        """Revoke a token and destroy its sealed passphrase; False when it is unknown."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE token SET revoked = 1, sealed = NULL WHERE id = ?", (token_id,)
            )
        return cursor.rowcount > 0

    def revoke_principal(self, principal: str) -> int:
        """Revoke every token of a principal; returns how many."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE token SET revoked = 1, sealed = NULL WHERE principal = ? AND revoked = 0",
                (principal,),
            )
        return int(cursor.rowcount)

    def authenticate(self, bearer: str, now: int) -> Session:
        """The session for a bearer token; TokenError (one opaque kind) for any failure."""
        match = _TOKEN.fullmatch(bearer.strip())
        if match is None:
            raise TokenError("invalid token")
        token_id, secret = match.groups()
        try:
            key = b64d(secret)
        except ValueError:
            raise TokenError("invalid token") from None
        found = self._row(token_id)
        if found is None:
            raise TokenError("invalid token")
        info, secret_hash, sealed = found
        if not hmac.compare_digest(hashlib.sha256(key).hexdigest(), secret_hash):
            raise TokenError("invalid token")
        if info.revoked or sealed is None or now >= info.expires:
            raise TokenError("invalid token")
        try:
            plain = open_sealed(key, b64d(sealed), token_id.encode("ascii"))
        except DecryptionError:
            raise TokenError("invalid token") from None
        passphrase = plain.decode("utf-8") if id_kind(info.principal) != "org" else None
        return Session(info, passphrase)


def scopes_text(scopes: Sequence[Scope]) -> str:
    """Scopes as the space-separated string SMART uses."""
    return " ".join(str(s) for s in scopes)
