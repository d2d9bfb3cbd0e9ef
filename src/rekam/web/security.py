"""Portal sessions, CSRF tokens and login throttling.

A session holds the principal's unlocked keys (an :class:`Actor`); the browser gets only a
random session id in an HttpOnly, SameSite=Strict cookie. Sessions end on logout or after
a period of inactivity, and the keys are dropped with them. Sessions live in the server's
memory only, on purpose: a restart logs everyone out rather than writing unlocked keys
anywhere. The login throttle's counts are kept on disk (:class:`GuardState`) so that a
restart does not release a lockout.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from rekam.service.portal_auth import GuardState
from rekam.service.workspace import Actor


@dataclass
class WebSession:
    """One logged-in browser: the unlocked principal, its role and a CSRF token."""

    sid: str
    actor: Actor
    role: str
    org: str | None
    name: str
    csrf: str
    last_seen: float
    # A TOTP secret shown on the account page and not yet confirmed with a code.
    pending_totp: str | None = None
    # Logged in with a one-time password from an admin reset: only the change-password
    # page (and logout) answer until the member has chosen their own.
    must_change: bool = False


def same_token(expected: str, given: str | None) -> bool:
    """Constant-time comparison of a CSRF token."""
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


class SessionStore:
    """Live sessions by id, expiring after ``idle_seconds`` without a request."""

    def __init__(self, idle_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_seconds = idle_seconds
        self.clock = clock
        self._sessions: dict[str, WebSession] = {}
        self._lock = threading.Lock()

    def create(self, actor: Actor, role: str, org: str | None, name: str) -> WebSession:
        """A new session with fresh random id and CSRF token."""
        session = WebSession(
            sid=secrets.token_urlsafe(32),
            actor=actor,
            role=role,
            org=org,
            name=name,
            csrf=secrets.token_urlsafe(32),
            last_seen=self.clock(),
        )
        with self._lock:
            self._sweep(session.last_seen)
            self._sessions[session.sid] = session
        return session

    def _sweep(self, now: float) -> None:
        # Expired sessions are dropped even if their browser never comes back: the unlocked
        # keys must not outlive the inactivity limit in memory.
        for sid in [s for s, v in self._sessions.items() if now - v.last_seen > self.idle_seconds]:
            del self._sessions[sid]

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def get(self, sid: str | None) -> tuple[WebSession | None, bool]:
        """(the live session, whether a session id was given but had expired)."""
        now = self.clock()
        with self._lock:
            session = self._sessions.get(sid) if sid else None
            self._sweep(now)
            if session is None:
                return None, False
            if now - session.last_seen > self.idle_seconds:
                # Automatic logoff: the sweep above already dropped it and its keys.
                return None, True
            session.last_seen = now
            return session, False

    def end(self, sid: str | None) -> None:
        """Log out: forget the session and its keys."""
        if sid:
            with self._lock:
                self._sessions.pop(sid, None)

    def end_principal(self, principal: str) -> int:
        """End every session of a principal (their password was reset); returns how many."""
        with self._lock:
            ended = [sid for sid, s in self._sessions.items() if s.actor.id == principal]
            for sid in ended:
                del self._sessions[sid]
            return len(ended)


class LoginGuard:
    """Lock a user name (and a client address) out after repeated failed logins.

    The counts and locks are kept in the node's :class:`GuardState` file, not in memory:
    restarting the server must not release an attacker's lockout.
    """

    def __init__(
        self,
        state: GuardState,
        max_failures: int = 5,
        window_seconds: float = 900.0,
        lockout_seconds: float = 900.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.max_failures = max_failures
        self.window = window_seconds
        self.lockout = lockout_seconds
        # Wall-clock seconds: the times are stored and must mean the same after a restart.
        self.clock = clock

    def _tags(self, keys: tuple[str, ...]) -> list[str]:
        return [self.state.tag(key) for key in keys]

    def locked(self, *keys: str) -> bool:
        """Whether any of these keys (user name, client address) is locked out now."""
        return self.state.locked(self._tags(keys), self.clock())

    def failed(self, *keys: str) -> None:
        """Count a failed login against each key; lock a key that reaches the limit."""
        self.state.failed(
            self._tags(keys), self.clock(), self.window, self.max_failures, self.lockout
        )

    def clear(self, *keys: str) -> None:
        """Forget the failures and any lock of these keys (an admin reset the password)."""
        self.state.clear(self._tags(keys))

    def succeeded(self, user_key: str) -> None:
        """Clear a user name's failures after a successful login."""
        self.state.clear(self._tags((user_key,)))
