"""Portal account state kept on the node: the optional TOTP second factor (RFC 6238) and
the password-reset flags.

Each secret is kept in a node-local file, wrapped with HPKE to the principal's own
encryption key: the node can check a code only after the password has unlocked the
principal's keystore, and a copy of the file alone reveals no secret. A code is accepted
once (a replayed code within its window is refused).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import threading
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


class TotpStore:
    """Wrapped TOTP secrets by principal, in ``DIR/portal-totp.json`` (owner-only)."""

    def __init__(self, root: Path) -> None:
        self.path = root / "portal-totp.json"
        self._lock = threading.Lock()
        # The last accepted time step per principal, so a code works only once.
        self._last_step: dict[str, int] = {}

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
        if step is None or step <= self._last_step.get(principal, -1):
            return False
        self._last_step[principal] = step
        return True

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
            self._last_step.pop(principal, None)
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
