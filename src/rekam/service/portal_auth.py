"""Portal account state kept on the node: the optional TOTP second factor (RFC 6238), the
password-reset flags, and the login lockout and TOTP replay state.

Each secret is kept in a node-local file, wrapped with HPKE to the principal's own
encryption key: the node can check a code only after the password has unlocked the
principal's keystore, and a copy of the file alone reveals no secret. A code is accepted
once (a replayed code within its window is refused).

Failed-login counts, lockouts and the last accepted TOTP step live in
``DIR/portal-guard.db`` (:class:`GuardState`), so a restart of the server neither releases a
locked user name or address nor lets a used code be replayed. Sessions are not kept there:
they hold unlocked private keys and stay in the server's memory only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyotp

from rekam.crypto import DecryptionError, wrap_key
from rekam.service.datadir import DataDirError

if TYPE_CHECKING:
    from rekam.service.workspace import Actor

STEP = 30
ISSUER = "Rekam"


def new_secret() -> str:
    """A fresh base32 TOTP secret (160 bits, what authenticator apps expect)."""
    return base64.b32encode(secrets.token_bytes(20)).decode("ascii")


def provisioning_uri(secret: str, account: str) -> str:
    """The otpauth:// URI an authenticator app accepts (shown as text; no QR library)."""
    return pyotp.TOTP(secret).provisioning_uri(name=account, issuer_name=ISSUER)


def _write_private(path: Path, data: object) -> None:
    """Replace a JSON file atomically, readable by the owner only."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _info(principal: str) -> bytes:
    return b"rekam portal totp v1|" + principal.encode("ascii")


_GUARD_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS failure (tag TEXT NOT NULL, at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS failure_tag ON failure (tag)",
    "CREATE INDEX IF NOT EXISTS failure_at ON failure (at)",
    "CREATE TABLE IF NOT EXISTS lockout (tag TEXT PRIMARY KEY, until REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS totp_step (principal TEXT PRIMARY KEY, step INTEGER NOT NULL)",
)


class GuardState:
    """Login throttling and TOTP replay state in ``DIR/portal-guard.db`` (owner-only).

    Holds only what the lockout needs: for each user name or client address a keyed tag
    (HMAC-SHA256 under the node key ``DIR/secrets/portal-guard.key``; a user name or an
    address is low-entropy, so a plain hash would give it away), the times of its recent
    failures (wall-clock seconds) and when its lock ends; and per principal id
    (pseudonymous) the last accepted TOTP time step. Never a password or a code.

    Each call opens its own short connection and runs in one immediate transaction, so
    threads, and several server processes on one folder, see one consistent count.
    """

    def __init__(self, root: Path) -> None:
        self.path = root / "portal-guard.db"
        self._key_path = root / "secrets" / "portal-guard.key"
        self._root = root
        self._key: bytes | None = None
        self._lock = threading.Lock()

    def _ensure(self) -> bytes:
        """The node key, and the database created owner-only (call with the lock held)."""
        if self._key is not None:
            return self._key
        self._key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(self._key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(32))
        key = self._key_path.read_bytes()
        if len(key) != 32:
            raise DataDirError("the portal guard key is damaged")
        # SQLite gives its journal the database file's mode, so creating the file
        # owner-only first keeps both private.
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        with closing(sqlite3.connect(self.path, timeout=10, isolation_level=None)) as db:
            for statement in _GUARD_SCHEMA:
                db.execute(statement)
        self._key = key
        return key

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._ensure()
            with closing(sqlite3.connect(self.path, timeout=10, isolation_level=None)) as db:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")

    def tag(self, key: str) -> str:
        """The stored form of a user name or client address key (keyed, not reversible)."""
        with self._lock:
            node_key = self._ensure()
        return hmac.new(node_key, key.encode("utf-8"), hashlib.sha256).hexdigest()

    def locked(self, tags: list[str], now: float) -> bool:
        """Whether any of these tags is locked out at ``now``."""
        if not tags:
            return False
        marks = ",".join("?" * len(tags))
        with self._tx() as db:
            row = db.execute(
                f"SELECT 1 FROM lockout WHERE until > ? AND tag IN ({marks}) LIMIT 1",  # noqa: S608
                (now, *tags),
            ).fetchone()
        return row is not None

    def failed(
        self, tags: list[str], now: float, window: float, max_failures: int, lockout: float
    ) -> None:
        """Count a failure against each tag; a tag with ``max_failures`` failures within
        ``window`` seconds is locked for ``lockout`` seconds (its count starts again)."""
        with self._tx() as db:
            # Old failures and ended locks are dropped as we go: the file stays small even
            # under a flood of made-up user names.
            db.execute("DELETE FROM failure WHERE at <= ?", (now - window,))
            db.execute("DELETE FROM lockout WHERE until <= ?", (now,))
            for tag in dict.fromkeys(tags):
                db.execute("INSERT INTO failure (tag, at) VALUES (?, ?)", (tag, now))
                (count,) = db.execute(
                    "SELECT count(*) FROM failure WHERE tag = ?", (tag,)
                ).fetchone()
                if count >= max_failures:
                    db.execute(
                        "INSERT INTO lockout (tag, until) VALUES (?, ?) ON CONFLICT (tag)"
                        " DO UPDATE SET until = excluded.until",
                        (tag, now + lockout),
                    )
                    db.execute("DELETE FROM failure WHERE tag = ?", (tag,))

    def clear(self, tags: list[str]) -> None:
        """Forget the failures and any lock of these tags."""
        with self._tx() as db:
            for tag in tags:
                db.execute("DELETE FROM failure WHERE tag = ?", (tag,))
                db.execute("DELETE FROM lockout WHERE tag = ?", (tag,))

    def accept_step(self, principal: str, step: int) -> bool:
        """Accept a TOTP time step for a principal only if it is later than the last one
        accepted (so each code works once, across restarts too)."""
        with self._tx() as db:
            row = db.execute(
                "SELECT step FROM totp_step WHERE principal = ?", (principal,)
            ).fetchone()
            if row is not None and step <= int(row[0]):
                return False
            db.execute(
                "INSERT INTO totp_step (principal, step) VALUES (?, ?) ON CONFLICT (principal)"
                " DO UPDATE SET step = excluded.step",
                (principal, step),
            )
            return True

    def forget_steps(self, principal: str) -> None:
        """Drop a principal's replay state (their factor was removed)."""
        with self._tx() as db:
            db.execute("DELETE FROM totp_step WHERE principal = ?", (principal,))


class TotpStore:
    """Wrapped TOTP secrets by principal, in ``DIR/portal-totp.json`` (owner-only)."""

    def __init__(self, root: Path, state: GuardState | None = None) -> None:
        self.path = root / "portal-totp.json"
        self._lock = threading.Lock()
        # The last accepted time step per principal, so a code works only once.
        self._state = state or GuardState(root)

    def _read(self) -> dict[str, str]:
        if not self.path.is_file():
            return {}
        data: dict[str, str] = json.loads(self.path.read_text("utf-8"))
        return data

    def _write(self, data: dict[str, str]) -> None:
        _write_private(self.path, data)

    def enabled(self, principal: str) -> bool:
        """Whether this principal has a second factor."""
        with self._lock:
            return principal in self._read()

    def _matching_step(self, secret: str, code: str, now: float) -> int | None:
        code = code.strip().replace(" ", "")
        if not code.isdigit() or len(code) != 6:
            return None
        totp = pyotp.TOTP(secret, interval=STEP)
        here = int(now // STEP)
        # One step of drift either way, as RFC 6238 recommends for clock skew.
        for step in (here - 1, here, here + 1):
            if secrets.compare_digest(totp.at(step * STEP), code):
                return step
        return None

    def _accept(self, principal: str, step: int | None) -> bool:
        return step is not None and self._state.accept_step(principal, step)

    def enable(self, actor: Actor, secret: str, code: str, now: float) -> bool:
        """Turn the factor on once the user proves their app holds ``secret``."""
        with self._lock:
            if not self._accept(actor.id, self._matching_step(secret, code, now)):
                return False
            raw = base64.b32decode(secret)
            wrapped = wrap_key(raw, actor.identity.enc_public, _info(actor.id))
            data = self._read()
            data[actor.id] = base64.b64encode(wrapped).decode("ascii")
            self._write(data)
            return True

    def check(self, actor: Actor, code: str, now: float) -> bool:
        """Whether ``code`` is a fresh valid code for this (unlocked) principal."""
        with self._lock:
            wrapped = self._read().get(actor.id)
            if wrapped is None:
                return True
            try:
                raw = actor.identity.unwrap(base64.b64decode(wrapped), _info(actor.id))
            except DecryptionError:
                raise DataDirError("the second factor of this principal cannot be opened") from None
            secret = base64.b32encode(raw).decode("ascii")
            return self._accept(actor.id, self._matching_step(secret, code, now))

    def disable(self, actor: Actor, code: str, now: float) -> bool:
        """Turn the factor off, with a current code."""
        if not self.check(actor, code, now):
            return False
        with self._lock:
            data = self._read()
            data.pop(actor.id, None)
            self._write(data)
            return True

    def remove(self, principal: str) -> bool:
        """Drop a principal's factor without a code: after an admin reset their keys, the
        wrapped secret can no longer be opened, so they enrol their app again."""
        with self._lock:
            data = self._read()
            if data.pop(principal, None) is None:
                return False
            self._write(data)
            self._state.forget_steps(principal)
            return True


class PasswordResets:
    """Admin password resets, in ``DIR/portal-resets.json`` (owner-only).

    Holds who must choose a new password at their next login, and, per organisation, the
    ids of the ``key.rotate`` transactions of its resets: the chain holds each reset, this
    index only finds them without scanning every block. Never a password.
    """

    def __init__(self, root: Path) -> None:
        self.path = root / "portal-resets.json"
        self._lock = threading.Lock()

    def _read(self) -> dict[str, dict[str, Any]]:
        if not self.path.is_file():
            return {"pending": {}, "by_org": {}}
        data: dict[str, dict[str, Any]] = json.loads(self.path.read_text("utf-8"))
        return data

    def record(self, member: str, org: str, tx_id: str) -> None:
        """Note a reset: the member must change the one-time password at the next login."""
        with self._lock:
            data = self._read()
            data["pending"][member] = tx_id
            data["by_org"].setdefault(org, []).append(tx_id)
            _write_private(self.path, data)

    def must_change(self, principal: str) -> bool:
        """Whether the principal still logs in with a one-time password from a reset."""
        with self._lock:
            return principal in self._read()["pending"]

    def changed(self, principal: str) -> None:
        """The principal chose their own password: the flag is cleared."""
        with self._lock:
            data = self._read()
            if data["pending"].pop(principal, None) is not None:
                _write_private(self.path, data)

    def for_org(self, org: str) -> list[str]:
        """The reset transactions made for an organisation's members, oldest first."""
        with self._lock:
            return list(self._read()["by_org"].get(org, []))
