"""The web portal: server-rendered pages for patients, clinicians and pharmacies at ``/``.

Every page is rendered on the server from Jinja2 templates; there is no JavaScript. Content
is read through :meth:`RecordService.read` (consent checked, each read an audited ledger
event) and written through the same services the CLI and the FHIR API use; this module only
maps their errors to HTTP status codes and pages.

Security measures: sessions in server memory behind an HttpOnly, SameSite=Strict cookie
(Secure over https); a per-session CSRF token on every POST (a double-submit cookie before
login); a Content-Security-Policy that allows no scripts at all; login lockout per user name
and per client address; inactivity expiry. URLs carry only pseudonymous ids, never names,
NIKs or clinical content, and nothing about a request is logged.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import jinja2
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException

from rekam.api.outcome import http_status
from rekam.crypto import CryptoError
from rekam.ledger.tx import EMERGENCY_REASONS, RESOURCE_TYPES, ROLES, id_kind
from rekam.records import synthetic
from rekam.service import icd10
from rekam.service.admin import MIN_PASSWORD
from rekam.service.audit import EVENT_KINDS, EventFilter
from rekam.service.datadir import DataDirError
from rekam.service.errors import (
    AccessDenied,
    ServiceError,
)
from rekam.service.icd10 import Icd10Code
from rekam.service.portal import (
    LAB_TESTS,
    MAX_PATIENT_HITS,
    OBSERVATION_KINDS,
    LabResultIndex,
    OrgAdminQueries,
    PatientQueryError,
    PatientSearch,
    PortalActions,
    PortalService,
    common_diagnoses,
    export_bundle,
)
from rekam.service.portal_auth import (
    GuardState,
    PasswordResets,
    TotpStore,
    new_secret,
    provisioning_uri,
)
from rekam.service.verify import VerifyReport, verify_workspace
from rekam.service.workspace import Workspace
from rekam.web import chart, i18n
from rekam.web.security import LoginGuard, SessionStore, WebSession, same_token

log = logging.getLogger("rekam.web")
T = TypeVar("T")
HERE = Path(__file__).parent
SESSION_COOKIE = "rekam_sid"
PRELOGIN_COOKIE = "rekam_pre"
LANG_COOKIE = "rekam_lang"
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
CLINICAL_ROLES = ("doctor", "nurse", "lab_analyst")
# Message keys a redirect may carry in ?msg=; anything else is ignored.
FLASH_KEYS = (
    "logged_out",
    "expired",
    "granted",
    "revoked",
    "added",
    "emergency_opened",
    "dispensed_ok",
    "enrolled",
    "member_revoked",
    "totp_enabled",
    "totp_disabled",
    "erased_ok",
    "password_changed",
    "password_must_change",
    "request_sent",
    "request_declined",
)
# Who may ask a patient for access (the ledger's clinical roles).
REQUESTER_ROLES = ("doctor", "nurse", "lab_analyst", "pharmacist")
PORTAL_PURPOSES = ("treatment", "dispensing", "referral")
DAY_MS = 24 * 3600 * 1000
# Pages a session with a reset's one-time password may still use.
_WHILE_MUST_CHANGE = ("/account/password", "/logout")


class ServiceLock(Protocol):
    """The API's shared/exclusive lock, so a FHIR transaction Bundle runs alone."""

    def acquire(self, exclusive: bool) -> None:
        """Wait until the lock can be held."""

    def release(self, exclusive: bool) -> None:
        """Give the lock back."""


@dataclass(frozen=True)
class PortalConfig:
    """Limits of the portal's sessions and logins."""

    idle_seconds: float = 15 * 60
    max_failures: int = 5
    lockout_seconds: float = 15 * 60
    # Monotonic seconds for session expiry. Tests set it to drive the lockout too; by
    # default the lockout uses the wall clock, since its times are stored across restarts.
    clock: Callable[[], float] | None = None
    # Wall-clock seconds for TOTP codes and (by default) the lockout.
    wall_clock: Callable[[], float] | None = None
    credentials: Mapping[str, Any] = field(default_factory=dict)
    # On a node of an etcd-ordered network: the cluster as etcd sees it (peers' heights and
    # lag, etcd members' health), shown on the admin and audit pages. None when embedded.
    network_view: Callable[[], Mapping[str, Any]] | None = None


class PortalError(Exception):
    """A page refused with an HTTP status and a catalog message key."""

    def __init__(self, status: int, key: str) -> None:
        super().__init__(key)
        self.status = status
        self.key = key


class LoginRequired(Exception):
    """No live session: send the browser to the login page."""

    def __init__(self, expired: bool) -> None:
        super().__init__("login required")
        self.expired = expired


class PasswordChangeRequired(Exception):
    """The session logged in with a reset's one-time password: choose a new one first."""


# The message shown for each status a service error maps to.
_MESSAGE_KEYS = {400: "bad_request", 422: "bad_request", 404: "not_found", 410: "not_found"}


def _status_for(exc: ServiceError) -> tuple[int, str]:
    status = http_status(exc)
    return status, "forbidden" if status == 403 else _MESSAGE_KEYS.get(status, "error")


def _local_path(target: str | None) -> str:
    """A same-site path to go back to; anything else (//host, schemes) becomes /."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def summarize(resource: Mapping[str, Any], lang: str) -> list[tuple[str, str]]:
    """A few readable lines of a FHIR resource (code, value, dates, medication, note)."""
    lines: list[tuple[str, str]] = []
    for name in resource.get("name") or []:
        given = " ".join(name.get("given") or [])
        text = name.get("text") or f"{given} {name.get('family', '')}".strip()
        if text:
            lines.append(("name", str(text)))
    for key in ("gender", "birthDate"):
        if isinstance(resource.get(key), str):
            lines.append((key, resource[key]))
    for key in ("code", "medicationCodeableConcept", "type", "class"):
        concept = resource.get(key)
        if isinstance(concept, list):
            concept = concept[0] if concept else None
        if isinstance(concept, Mapping):
            coding = concept.get("coding") or [{}]
            text = concept.get("text") or coding[0].get("display") or coding[0].get("code")
            code = coding[0].get("code")
            if text:
                lines.append((key, f"{text} ({code})" if code and code != text else str(text)))
    quantity = resource.get("valueQuantity")
    if isinstance(quantity, Mapping) and isinstance(quantity.get("value"), int | float):
        value = i18n.format_number(lang, quantity["value"])
        lines.append(("value", f"{value} {quantity.get('unit', '')}".strip()))
    for component in resource.get("component") or []:
        q = component.get("valueQuantity") or {}
        name = (component.get("code") or {}).get("text", "")
        if isinstance(q.get("value"), int | float):
            lines.append((name, f"{i18n.format_number(lang, q['value'])} {q.get('unit', '')}"))
    for key in ("effectiveDateTime", "recordedDate", "authoredOn", "date", "whenHandedOver"):
        if isinstance(resource.get(key), str):
            lines.append((key, resource[key]))
    period = resource.get("period")
    if isinstance(period, Mapping) and period.get("start"):
        lines.append(("period", str(period["start"])))
    for dosage in resource.get("dosageInstruction") or []:
        if dosage.get("text"):
            lines.append(("dosage", str(dosage["text"])))
    for content in resource.get("content") or []:
        attachment = content.get("attachment") or {}
        if str(attachment.get("contentType", "")).startswith("text/plain") and attachment.get(
            "data"
        ):
            try:
                text = base64.b64decode(attachment["data"]).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                continue
            lines.append(("note", text))
    return lines


def create_portal(
    ws: Workspace, *, lock: ServiceLock | None = None, config: PortalConfig | None = None
) -> FastAPI:
    """The portal as an ASGI app over an open workspace (mount it at ``/``)."""
    config = config or PortalConfig()
    clock = config.clock or time.monotonic
    sessions = SessionStore(config.idle_seconds, clock)
    lab_results = LabResultIndex(ws.datadir.root)
    queries = PortalService(ws, lab_results)
    actions = PortalActions(ws, lab_results)
    admin = OrgAdminQueries(ws)
    resets = PasswordResets(ws.datadir.root)
    wall = config.wall_clock or time.time
    # Lockouts and TOTP replay state are kept on disk (a restart must not release them);
    # a test clock, when given, drives the lockout as it drives the sessions.
    guard_state = GuardState(ws.datadir.root)
    totp = TotpStore(ws.datadir.root, guard_state)
    guard = LoginGuard(
        guard_state,
        config.max_failures,
        config.lockout_seconds,
        config.lockout_seconds,
        config.clock or wall,
    )
    credentials = dict(config.credentials) or _load_credentials(ws.datadir.root)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.state.sessions = sessions
    app.state.guard = guard

    async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await _run(False, fn, *args, **kwargs)

    async def call_alone(fn: Callable[..., T], *args: Any) -> T:
        # A full verification compares stored state with a replay: no write may interleave.
        return await _run(True, fn, *args)

    async def _run(exclusive: bool, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        def run() -> T:
            if lock is None:
                return fn(*args, **kwargs)
            lock.acquire(exclusive)
            try:
                return fn(*args, **kwargs)
            finally:
                lock.release(exclusive)

        return await run_in_threadpool(run)

    @app.middleware("http")
    async def headers(request: Request, call_next: Callable[[Request], Any]) -> Response:
        response: Response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        if not request.url.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    def lang_of(request: Request) -> str:
        return i18n.pick_language(request.cookies.get(LANG_COOKIE))

    def render(
        request: Request,
        template: str,
        session: WebSession | None,
        status: int = 200,
        **values: Any,
    ) -> HTMLResponse:
        lang = lang_of(request)
        msg = request.query_params.get("msg")

        def t(key: str, **kw: Any) -> str:
            return i18n.translate(lang, key, **kw)

        labels = ws.datadir.labels()  # read once per page, not once per table row

        html = env.get_template(template).render(
            t=t,
            lang=lang,
            session=session,
            flash=msg if msg in FLASH_KEYS else None,
            path=request.url.path,
            when=lambda ms: i18n.format_time(lang, ms),
            number=lambda v: i18n.format_number(lang, v),
            field=lambda name: i18n.field_label(lang, name),
            label=lambda pid: labels.get(pid, pid),
            **values,
        )
        return HTMLResponse(html, status_code=status)

    def secure(request: Request) -> bool:
        return request.url.scheme == "https"

    def current(request: Request, *roles: str) -> WebSession:
        session, expired = sessions.get(request.cookies.get(SESSION_COOKIE))
        if session is None:
            raise LoginRequired(expired)
        if session.must_change and request.url.path not in _WHILE_MUST_CHANGE:
            raise PasswordChangeRequired()
        if roles and session.role not in roles:
            raise PortalError(403, "forbidden")
        return session

    async def form_of(request: Request, session: WebSession) -> FormData:
        form = await request.form()
        token = form.get("csrf")
        if not same_token(session.csrf, token if isinstance(token, str) else None):
            raise PortalError(403, "csrf")
        return form

    def redirect(path: str, msg: str | None = None) -> RedirectResponse:
        return RedirectResponse(f"{path}?msg={msg}" if msg else path, status_code=303)

    def home_of(session: WebSession) -> str:
        if session.role == "patient":
            return "/me"
        if session.role == "pharmacist":
            return "/pharmacy"
        if session.role == "admin":
            return "/admin"
        if session.role == "auditor":
            return "/audit"
        if session.role == "lab_analyst":
            return "/lab"
        return "/patients"

    @app.exception_handler(PortalError)
    async def _portal_error(request: Request, exc: PortalError) -> Response:
        session, _ = sessions.get(request.cookies.get(SESSION_COOKIE))
        return render(request, "error.html", session, exc.status, key=exc.key)

    @app.exception_handler(LoginRequired)
    async def _login_required(_request: Request, exc: LoginRequired) -> Response:
        response = redirect("/login", "expired" if exc.expired else None)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.exception_handler(PasswordChangeRequired)
    async def _must_change(_request: Request, _exc: PasswordChangeRequired) -> Response:
        return redirect("/account/password", "password_must_change")

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> Response:
        status, key = _status_for(exc)
        session, _ = sessions.get(request.cookies.get(SESSION_COOKIE))
        return render(request, "error.html", session, status, key=key)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        session, _ = sessions.get(request.cookies.get(SESSION_COOKIE))
        key = "not_found" if exc.status_code == 404 else "bad_request"
        return render(request, "error.html", session, exc.status_code, key=key)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        # Type name only: a message could carry content.
        log.error("unexpected %s while serving a portal page", type(exc).__name__)
        return render(request, "error.html", None, 500, key="error")

    # -- login, logout, language ----------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def index(request: Request) -> Response:
        session, _ = sessions.get(request.cookies.get(SESSION_COOKIE))
        return redirect(home_of(session) if session else "/login")

    def login_page(request: Request, status: int = 200, error: str | None = None) -> Response:
        token = request.cookies.get(PRELOGIN_COOKIE) or secrets.token_urlsafe(32)
        response = render(request, "login.html", None, status, csrf=token, error=error)
        response.set_cookie(
            PRELOGIN_COOKIE, token, httponly=True, samesite="strict", secure=secure(request)
        )
        return response

    @app.get("/login")
    async def login_form(request: Request) -> Response:
        return login_page(request)

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        token = form.get("csrf")
        if not same_token(
            request.cookies.get(PRELOGIN_COOKIE) or "\0", token if isinstance(token, str) else None
        ):
            raise PortalError(403, "csrf")
        username = str(form.get("username") or "").strip()[:200]
        password = str(form.get("password") or "")[:1000]
        client = f"ip:{request.client.host if request.client else '-'}"
        user_key = f"user:{username.lower()}"
        if guard.locked(user_key, client):
            return login_page(request, 429, "login_locked")
        principal, name = _resolve(credentials, username)
        try:
            if id_kind(principal) not in ("member", "patient") or not password:
                raise DataDirError("not a member or patient")
            actor = await call(ws.actor, principal, password)
        except (DataDirError, CryptoError, ValueError):
            guard.failed(user_key, client)
            if guard.locked(user_key, client):
                return login_page(request, 429, "login_locked")
            return login_page(request, 401, "login_failed")
        role = queries.role(actor)
        code = str(form.get("code") or "")[:20]
        if role == "none" or not await call(totp.check, actor, code, wall()):
            guard.failed(user_key, client)
            if guard.locked(user_key, client):
                return login_page(request, 429, "login_locked")
            return login_page(request, 401, "login_failed")
        guard.succeeded(user_key)
        session = sessions.create(actor, role, queries.member_org(actor), name or principal)
        session.must_change = await call(resets.must_change, actor.id)
        response = (
            redirect("/account/password", "password_must_change")
            if session.must_change
            else redirect(home_of(session))
        )
        response.set_cookie(
            SESSION_COOKIE,
            session.sid,
            httponly=True,
            samesite="strict",
            secure=secure(request),
            path="/",
        )
        response.delete_cookie(PRELOGIN_COOKIE)
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        session = current(request)
        await form_of(request, session)
        sessions.end(session.sid)
        response = redirect("/login", "logged_out")
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.get("/lang/{code}")
    async def language(request: Request, code: str) -> Response:
        response = RedirectResponse(_local_path(request.query_params.get("next")), status_code=303)
        response.set_cookie(
            LANG_COOKIE,
            i18n.pick_language(code),
            max_age=365 * 24 * 3600,
            samesite="strict",
            secure=secure(request),
            httponly=True,
        )
        return response

    # -- account: optional TOTP second factor ---------------------------------------------

    async def account_page(
        request: Request, session: WebSession, status: int = 200, error: str | None = None
    ) -> Response:
        enabled = await call(totp.enabled, session.actor.id)
        if not enabled and session.pending_totp is None:
            session.pending_totp = new_secret()
        secret = None if enabled else session.pending_totp
        return render(
            request,
            "account.html",
            session,
            status,
            enabled=enabled,
            secret=secret,
            uri=provisioning_uri(secret, session.actor.id) if secret else None,
            error=error,
        )

    @app.get("/account")
    async def account(request: Request) -> Response:
        return await account_page(request, current(request))

    @app.post("/account/totp")
    async def totp_enable(request: Request) -> Response:
        session = current(request)
        form = await form_of(request, session)
        code = str(form.get("code") or "")[:20]
        secret = session.pending_totp
        if secret is None or not await call(totp.enable, session.actor, secret, code, wall()):
            return await account_page(request, session, 400, "totp_wrong")
        session.pending_totp = None
        return redirect("/account", "totp_enabled")

    @app.post("/account/totp/disable")
    async def totp_disable(request: Request) -> Response:
        session = current(request)
        form = await form_of(request, session)
        code = str(form.get("code") or "")[:20]
        if not await call(totp.disable, session.actor, code, wall()):
            return await account_page(request, session, 400, "totp_wrong")
        return redirect("/account", "totp_disabled")

    # -- account: change one's own password (re-encrypts the keystore) ------------------

    def password_page(
        request: Request, session: WebSession, status: int = 200, error: str | None = None
    ) -> Response:
        return render(request, "password.html", session, status, error=error)

    @app.get("/account/password")
    async def password_form(request: Request) -> Response:
        return password_page(request, current(request))

    @app.post("/account/password")
    async def password_change(request: Request) -> Response:
        session = current(request)
        form = await form_of(request, session)
        old = str(form.get("old") or "")[:1000]
        new = str(form.get("new") or "")[:1000]
        if new != str(form.get("confirm") or "")[:1000]:
            return password_page(request, session, 400, "password_mismatch")
        if len(new) < MIN_PASSWORD:
            return password_page(request, session, 400, "password_short")
        if new == old:
            return password_page(request, session, 400, "password_same")
        client = f"ip:{request.client.host if request.client else '-'}"
        user_keys = [f"user:{n.lower()}" for n in _names_of(credentials, session.actor.id)]
        try:
            await call(ws.admin.change_password, session.actor, old, new)
        except AccessDenied:
            # A wrong current password counts as a failed login (under every name the user
            # logs in with): the form must not become a way around the lockout.
            guard.failed(*user_keys, client)
            if guard.locked(*user_keys, client):
                sessions.end(session.sid)
                response = login_page(request, 429, "login_locked")
                response.delete_cookie(SESSION_COOKIE, path="/")
                return response
            return password_page(request, session, 400, "password_wrong")
        session.must_change = False
        return redirect(home_of(session), "password_changed")

    # -- patient --------------------------------------------------------------------------

    @app.get("/me")
    async def timeline(request: Request) -> Response:
        session = current(request, "patient")
        records = await call(ws.records.for_patient, session.actor.id)
        return render(
            request,
            "timeline.html",
            session,
            records=list(reversed(records)),
            completed=await call(queries.completed_orders, records),
        )

    @app.get("/me/chart")
    async def chart_page(request: Request) -> Response:
        session = current(request, "patient")
        heads = await call(ws.records.for_patient, session.actor.id)
        observations = []
        for key, row in heads:
            if row["resource_type"] == "Observation" and not row["erased"]:
                # Each read is the patient's own, audited read, like opening the record.
                result = await call(ws.records.read, session.actor, key, None, "own")
                observations.append(result.resource)
        charts = [
            chart.layout(title, series) for title, series in chart.collect(observations).items()
        ]
        return render(request, "chart.html", session, charts=charts)

    @app.get("/me/export")
    async def export(request: Request) -> Response:
        session = current(request, "patient")
        bundle = await call(export_bundle, ws, session.actor)
        return Response(
            json.dumps(bundle, indent=2, ensure_ascii=False).encode("utf-8"),
            media_type="application/fhir+json",
            headers={"Content-Disposition": 'attachment; filename="rekam-export.json"'},
        )

    @app.post("/records/{record}/erase")
    async def erase(request: Request, record: str) -> Response:
        session = current(request, "patient")
        form = await form_of(request, session)
        head = await call(ws.node.store.get, "record", record[:80])
        if head is None or head["patient"] != session.actor.id:
            raise PortalError(404, "not_found")
        if form.get("confirm") != "yes":
            raise PortalError(400, "bad_request")
        await call(ws.records.erase, session.actor, record)
        return redirect("/me", "erased_ok")

    @app.get("/me/access")
    async def access(request: Request) -> Response:
        session = current(request, "patient")
        events = await call(ws.audit.history, session.actor.id)
        return render(request, "access.html", session, events=list(reversed(events)))

    @app.get("/me/consents")
    async def consents(request: Request) -> Response:
        session = current(request, "patient")
        rows = await call(ws.consent.active_for_patient, session.actor.id)
        grantees = await call(_grantees, ws)
        asked = await call(ws.consent.requests_for_patient, session.actor.id)
        return render(
            request,
            "consents.html",
            session,
            consents=rows,
            requests=[r for r in asked if r.open],
            grantees=grantees,
            resource_types=RESOURCE_TYPES,
            purposes=("treatment", "dispensing", "referral"),
        )

    @app.post("/me/consents")
    async def grant(request: Request) -> Response:
        session = current(request, "patient")
        form = await form_of(request, session)
        grantee = str(form.get("grantee") or "")
        types = [str(v) for v in form.getlist("resource_type")] or ["*"]
        purpose = str(form.get("purpose") or "treatment")
        try:
            days = int(str(form.get("days") or "30"))
        except ValueError:
            raise PortalError(400, "bad_request") from None
        if not 1 <= days <= 365 or purpose not in ("treatment", "dispensing", "referral"):
            raise PortalError(400, "bad_request")
        if "*" in types:
            types = ["*"]
        elif any(t not in RESOURCE_TYPES for t in types):
            raise PortalError(400, "bad_request")
        await call(
            ws.consent.grant,
            session.actor,
            session.actor.id,
            grantee,
            resource_types=types,
            purpose=purpose,
            days=days,
        )
        return redirect("/me/consents", "granted")

    @app.post("/me/consents/{consent}/revoke")
    async def revoke(request: Request, consent: str) -> Response:
        session = current(request, "patient")
        await form_of(request, session)
        row = await call(ws.node.store.get, "consent", consent[:80])
        if row is None or row["patient"] != session.actor.id:
            raise PortalError(404, "not_found")
        await call(ws.consent.revoke, session.actor, consent)
        return redirect("/me/consents", "revoked")

    # A patient answers a clinician's request: grant (a consent of exactly the requested
    # scope) or decline (a consent.decline on the chain); each with its notice.
    request_answers = {
        "grant": (ws.consent.grant_request, "granted"),
        "decline": (ws.consent.decline_request, "request_declined"),
    }

    @app.post("/me/requests/{access_request}/{answer}")
    async def answer_request(request: Request, access_request: str, answer: str) -> Response:
        session = current(request, "patient")
        if answer not in request_answers:
            raise PortalError(404, "not_found")
        await form_of(request, session)
        act, notice = request_answers[answer]
        await call(act, session.actor, session.actor.id, access_request[:80])
        return redirect("/me/consents", notice)

    # -- clinicians: requesting access from a patient ------------------------------------

    async def requests_page(
        request: Request,
        session: WebSession,
        status: int = 200,
        error: str | None = None,
        typed: Mapping[str, Any] | None = None,
    ) -> Response:
        # A refused form comes back with what was entered (ids and codes only).
        typed = typed or {}
        wanted = str(typed.get("patient") or request.query_params.get("patient") or "")
        wanted = wanted.strip()[:40]
        return render(
            request,
            "requests.html",
            session,
            status,
            requests=await call(ws.consent.requests_by, session.actor.id),
            patient=wanted if id_kind(wanted) == "patient" or error else "",
            chosen=list(typed.get("types") or []),
            purpose=str(typed.get("purpose") or "treatment"),
            days=str(typed.get("days") or "30")[:6],
            resource_types=RESOURCE_TYPES,
            purposes=PORTAL_PURPOSES,
            error=error,
        )

    @app.get("/requests")
    async def access_requests(request: Request) -> Response:
        return await requests_page(request, current(request, *REQUESTER_ROLES))

    @app.post("/requests")
    async def request_access(request: Request) -> Response:
        session = current(request, *REQUESTER_ROLES)
        form = await form_of(request, session)
        patient = str(form.get("patient") or "").strip()[:80]
        types = [str(v) for v in form.getlist("resource_type")] or ["*"]
        purpose = str(form.get("purpose") or "")
        typed = {"patient": patient, "types": types, "purpose": purpose, "days": form.get("days")}
        try:
            days = int(str(form.get("days") or ""))
        except ValueError:
            return await requests_page(request, session, 400, "request_invalid", typed)
        if (
            id_kind(patient) != "patient"
            or purpose not in PORTAL_PURPOSES
            or not 1 <= days <= 365
            or any(t != "*" and t not in RESOURCE_TYPES for t in types)
        ):
            return await requests_page(request, session, 400, "request_invalid", typed)
        if await call(ws.node.store.get, "patient", patient) is None:
            return await requests_page(request, session, 404, "request_unknown_patient", typed)
        await call(
            ws.consent.request,
            session.actor,
            patient,
            resource_types=types,
            purpose=purpose,
            days=days,
        )
        return redirect("/requests", "request_sent")

    # -- records (every role) -------------------------------------------------------------

    def purpose_for(session: WebSession, patient: str) -> str:
        if session.role == "patient":
            return "own"
        if session.role == "pharmacist":
            return "dispensing"
        links = {link.patient: link.via for link in queries.patients_for(session.actor)}
        return "emergency" if links.get(patient) == "emergency" else "treatment"

    @app.get("/records/{record}")
    async def record_page(request: Request, record: str) -> Response:
        session = current(request)
        head = await call(ws.node.store.get, "record", record[:80])
        if head is None:
            raise PortalError(404, "not_found")
        purpose = await call(purpose_for, session, head["patient"])
        result = await call(ws.records.read, session.actor, record, None, purpose)
        if result.resource_type == "Observation":
            # A result read here (written on another node or through the FHIR API) tells
            # this node's order lists that its order is done.
            await call(queries.note_read, record, result.resource)
        proof = await call(queries.proof, record, result.version)
        lang = lang_of(request)
        return render(
            request,
            "record.html",
            session,
            record=record,
            head=head,
            result=result,
            proof=proof,
            summary=summarize(result.resource, lang),
            content=json.dumps(result.resource, indent=2, ensure_ascii=False),
            order_completed=head["resource_type"] == "ServiceRequest"
            and bool(await call(queries.completed_orders, [(record, head)])),
            can_attach=session.role == "lab_analyst" and head["resource_type"] == "ServiceRequest",
            can_erase=session.role == "patient" and head["resource_type"] != "Patient",
            can_dispense=session.role == "pharmacist"
            and head["resource_type"] == "MedicationRequest"
            and not head["dispensed"],
        )

    @app.get("/records/{record}/receipt")
    async def receipt(request: Request, record: str) -> Response:
        session = current(request)
        head = await call(ws.node.store.get, "record", record[:80])
        if head is None:
            raise PortalError(404, "not_found")
        # The receipt holds only the signed write transaction (pseudonymous ids and hashes),
        # but it is still handed only to someone with a basis for this patient's data.
        basis = await call(
            ws.records.basis_for,
            session.actor.id,
            head["patient"],
            head,
            head["resource_type"],
            "dispensing" if session.role == "pharmacist" else "treatment",
        )
        if basis is None:
            raise PortalError(403, "forbidden")
        doc = await call(queries.receipt, record, int(head["version"]))
        return Response(
            json.dumps(doc, indent=2).encode(),
            media_type="application/json",
            headers={"Content-Disposition": 'attachment; filename="receipt.json"'},
        )

    # -- clinicians -----------------------------------------------------------------------

    def patients_view(
        request: Request,
        session: WebSession,
        links: list[Any],
        query: str = "",
        found: PatientSearch | None = None,
        error: str | None = None,
    ) -> Response:
        return render(
            request,
            "patients.html",
            session,
            400 if error else 200,
            links=links,
            reasons=EMERGENCY_REASONS,
            emergency_allowed=session.role in ("doctor", "nurse"),
            query=query,
            found=found,
            search_error=error,
            max_hits=MAX_PATIENT_HITS,
            birth=lambda value: i18n.format_date(lang_of(request), value),
        )

    @app.get("/patients")
    async def patients(request: Request) -> Response:
        session = current(request, *CLINICAL_ROLES)
        links = await call(queries.patients_for, session.actor)
        return patients_view(request, session, links)

    @app.post("/patients")
    async def patient_search(request: Request) -> Response:
        # A POST, rendered directly: the query is a name or a NIK and never goes in a URL.
        session = current(request, *CLINICAL_ROLES)
        form = await form_of(request, session)
        query = str(form.get("q") or "")
        links = await call(queries.patients_for, session.actor)
        try:
            found = await call(queries.search_patients, session.actor, query)
        except PatientQueryError:
            return patients_view(request, session, links, query[:100], error="search_short")
        return patients_view(request, session, links, query.strip(), found)

    async def patient_view(
        request: Request,
        session: WebSession,
        patient: str,
        icd_query: str = "",
        icd_found: tuple[list[Icd10Code], int] | None = None,
        icd_error: str | None = None,
    ) -> Response:
        links = {link.patient: link for link in await call(queries.patients_for, session.actor)}
        if patient not in links:
            raise PortalError(403, "forbidden")
        records = await call(ws.records.for_patient, patient)
        return render(
            request,
            "patient.html",
            session,
            400 if icd_error else 200,
            patient=patient,
            link=links[patient],
            records=list(reversed(records)),
            completed=await call(queries.completed_orders, records),
            kinds=("note", *OBSERVATION_KINDS),
            conditions=await call(common_diagnoses),
            medications=synthetic.MEDICATIONS,
            prescriber=session.role == "doctor",
            lab_tests=LAB_TESTS,
            labs=await call(_labs, ws),
            icd_query=icd_query,
            icd_found=icd_found,
            icd_error=icd_error,
        )

    @app.get("/patients/{patient}")
    async def patient_page(request: Request, patient: str) -> Response:
        session = current(request, *CLINICAL_ROLES)
        return await patient_view(request, session, patient)

    @app.post("/patients/{patient}/diagnosis-search")
    async def diagnosis_search(request: Request, patient: str) -> Response:
        # A POST: a diagnosis searched next to a patient is clinical data, not for a URL.
        session = current(request, "doctor")
        form = await form_of(request, session)
        query = str(form.get("icd_q") or "")
        try:
            found = await call(icd10.search, query)
        except icd10.Icd10Error:
            return await patient_view(request, session, patient, query[:100], None, "icd_short")
        return await patient_view(request, session, patient, query.strip(), found)

    @app.post("/patients/{patient}/records")
    async def add_record(request: Request, patient: str) -> Response:
        session = current(request, *CLINICAL_ROLES)
        form = await form_of(request, session)
        kind = str(form.get("kind") or "")
        if kind == "note":
            await call(actions.add_note, session.actor, patient, str(form.get("note") or ""))
        elif kind in OBSERVATION_KINDS:
            raw = str(form.get("value") or "").strip().replace(",", ".")
            try:
                value = float(raw)
            except ValueError:
                raise PortalError(400, "value_required") from None
            if not math.isfinite(value) or not 0 <= value < 10_000:
                raise PortalError(400, "value_required")
            await call(actions.add_observation, session.actor, patient, kind, value)
        else:
            raise PortalError(400, "bad_request")
        return redirect(f"/patients/{patient}", "added")

    @app.post("/patients/{patient}/conditions")
    async def add_condition(request: Request, patient: str) -> Response:
        session = current(request, "doctor")
        form = await form_of(request, session)
        code = str(form.get("icd10") or "")[:20]
        # Checked again in the service (a real ICD-10 code valid for coding); this gives the
        # doctor the form back with a clear message instead of a bare error page.
        try:
            icd10.lookup(code)
        except icd10.Icd10Error:
            return await patient_view(request, session, patient, icd_error="icd_invalid")
        await call(actions.add_condition, session.actor, patient, code)
        return redirect(f"/patients/{patient}", "added")

    @app.post("/patients/{patient}/prescriptions")
    async def add_prescription(request: Request, patient: str) -> Response:
        session = current(request, "doctor")
        form = await form_of(request, session)
        try:
            quantity = int(str(form.get("quantity") or ""))
        except ValueError:
            raise PortalError(400, "bad_request") from None
        kfa = str(form.get("medication") or "")
        await call(actions.add_prescription, session.actor, patient, kfa, quantity)
        return redirect(f"/patients/{patient}", "added")

    @app.post("/patients/{patient}/lab-orders")
    async def order_lab(request: Request, patient: str) -> Response:
        session = current(request, "doctor")
        form = await form_of(request, session)
        test, lab = str(form.get("test") or ""), str(form.get("lab") or "")
        await call(actions.order_lab, session.actor, patient, test, lab)
        return redirect(f"/patients/{patient}", "added")

    @app.get("/lab")
    async def lab_orders(request: Request) -> Response:
        session = current(request, "lab_analyst")
        rows = await call(queries.lab_orders_for, session.actor)
        completed = await call(queries.completed_orders, rows)
        return render(request, "lab.html", session, orders=rows, completed=completed)

    @app.post("/lab/{order}/result")
    async def lab_result(request: Request, order: str) -> Response:
        session = current(request, "lab_analyst")
        form = await form_of(request, session)
        raw = str(form.get("value") or "").strip().replace(",", ".")
        try:
            value = float(raw)
        except ValueError:
            raise PortalError(400, "value_required") from None
        if not math.isfinite(value) or not 0 <= value < 10_000:
            raise PortalError(400, "value_required")
        await call(actions.attach_result, session.actor, order[:80], value)
        return redirect("/lab", "added")

    @app.post("/patients/emergency")
    async def emergency(request: Request) -> Response:
        session = current(request, "doctor", "nurse")
        form = await form_of(request, session)
        patient = str(form.get("patient") or "").strip()[:80]
        reason = str(form.get("reason") or "")
        if reason not in EMERGENCY_REASONS or form.get("confirm") != "yes":
            raise PortalError(400, "bad_request")
        if id_kind(patient) != "patient":
            raise PortalError(404, "not_found")
        await call(ws.consent.emergency, session.actor, patient, reason)
        return redirect(f"/patients/{patient}", "emergency_opened")

    # -- pharmacy -------------------------------------------------------------------------

    @app.get("/pharmacy")
    async def pharmacy(request: Request) -> Response:
        session = current(request, "pharmacist")
        rows = await call(queries.prescriptions_for, session.actor)
        return render(request, "pharmacy.html", session, prescriptions=rows)

    @app.post("/pharmacy/{record}/dispense")
    async def dispense(request: Request, record: str) -> Response:
        session = current(request, "pharmacist")
        await form_of(request, session)
        await call(actions.dispense, session.actor, record[:80])
        return redirect("/pharmacy", "dispensed_ok")

    # -- organisation admin ---------------------------------------------------------------

    def event_page(request: Request) -> int:
        raw = request.query_params.get("page") or "1"
        return int(raw) if raw.isdigit() and 0 < len(raw) < 7 else 1

    async def node_status() -> dict[str, Any]:
        status = await call(admin.status)
        view = config.network_view
        # etcd is asked outside the service lock: a slow cluster must not hold up writes.
        status["cluster"] = await run_in_threadpool(view) if view is not None else None
        return status

    async def admin_page(
        request: Request, session: WebSession, status: int = 200, **extra: Any
    ) -> Response:
        org = session.org or ""
        kind = request.query_params.get("kind") or None
        if kind is not None and kind not in EVENT_KINDS:
            kind = None
        events = await call(ws.audit.search, EventFilter(org=org, kind=kind), event_page(request))
        return render(
            request,
            "admin.html",
            session,
            status,
            members=await call(admin.members, org),
            node=await node_status(),
            events=events.entries,
            paging=events,
            filters={"kind": kind or ""},
            kind=kind,
            kinds=EVENT_KINDS,
            roles=tuple(r for r in ROLES if r != "admin"),
            resets=await call(ws.admin.resets_for_org, org),
            **{"report": None, "error": None, "reset": None, **extra},
        )

    @app.get("/admin")
    async def admin_home(request: Request) -> Response:
        return await admin_page(request, current(request, "admin"))

    @app.post("/admin/members")
    async def enrol(request: Request) -> Response:
        session = current(request, "admin")
        form = await form_of(request, session)
        role = str(form.get("role") or "")
        label = str(form.get("label") or "").strip()[:120]
        password = str(form.get("password") or "")
        if role not in ROLES or role == "admin" or not label:
            raise PortalError(400, "bad_request")
        if len(password) < MIN_PASSWORD:
            return await admin_page(request, session, 400, error="password_short")
        await call(ws.admin.enrol_member, session.actor, role, password, label=label)
        return redirect("/admin", "enrolled")

    async def other_member_of_own_org(session: WebSession, member: str) -> None:
        # An admin acts on members of their own organisation, never on themselves.
        row = await call(ws.node.store.get, "member", member[:80])
        if row is None or row["org"] != session.org or member == session.actor.id:
            raise PortalError(403, "forbidden")

    @app.post("/admin/members/{member}/revoke")
    async def revoke_member(request: Request, member: str) -> Response:
        session = current(request, "admin")
        await form_of(request, session)
        await other_member_of_own_org(session, member)
        await call(ws.admin.revoke_member, session.actor, member)
        return redirect("/admin", "member_revoked")

    @app.post("/admin/members/{member}/reset")
    async def reset_password(request: Request, member: str) -> Response:
        session = current(request, "admin")
        await form_of(request, session)
        await other_member_of_own_org(session, member)
        reset = await call(ws.admin.reset_member_password, session.actor, member)
        # The member's open sessions still hold the old keys: they end now. Their failed
        # logins are forgotten under every name they log in with.
        sessions.end_principal(member)
        guard.clear(*(f"user:{name.lower()}" for name in _names_of(credentials, member)))
        # Shown once, in this response only (no redirect: a URL would keep it); never logged.
        return await admin_page(request, session, reset=reset)

    @app.post("/admin/verify")
    async def verify(request: Request) -> Response:
        session = current(request, "admin")
        await form_of(request, session)
        report = await call_alone(verify_in_server, ws)
        return await admin_page(request, session, report=report)

    # -- auditor: verification and the network-wide access-event search --------------------

    def audit_filter(request: Request) -> EventFilter:
        params = request.query_params
        kind = params.get("kind") or None
        org = params.get("org") or None
        patient = (params.get("patient") or "").strip() or None
        since = _day_start(params.get("from") or "")
        until = _day_start(params.get("to") or "")
        if until is not None:
            until += DAY_MS  # the "to" day is included
        where = EventFilter(org=org, kind=kind, patient=patient, since=since, until=until)
        if (params.get("from") and since is None) or (params.get("to") and until is None):
            raise ValueError("bad date")
        where.check()
        return where

    async def audit_page(
        request: Request, session: WebSession, status: int = 200, **extra: Any
    ) -> Response:
        params = request.query_params
        error = None
        try:
            where = audit_filter(request)
        except (ValueError, ServiceError):
            # Bad filter values: say so and show the unfiltered list, keeping what was typed.
            where, error, status = EventFilter(), "filter_invalid", 400
        events = await call(ws.audit.search, where, event_page(request))
        return render(
            request,
            "audit.html",
            session,
            status,
            node=await node_status(),
            events=events.entries,
            paging=events,
            filters={k: params.get(k, "")[:80] for k in ("kind", "org", "patient", "from", "to")},
            kinds=EVENT_KINDS,
            orgs=await call(_orgs, ws),
            **{"report": None, "error": error, **extra},
        )

    @app.get("/audit")
    async def audit_home(request: Request) -> Response:
        return await audit_page(request, current(request, "auditor"))

    @app.post("/audit/verify")
    async def audit_verify(request: Request) -> Response:
        session = current(request, "auditor")
        await form_of(request, session)
        # Exactly the admin page's check, run alone so no write interleaves.
        report = await call_alone(verify_in_server, ws)
        return await audit_page(request, session, report=report)

    return app


def verify_in_server(ws: Workspace) -> VerifyReport:
    """``verify_workspace`` for the portal, whose other threads go on serving requests."""
    return verify_workspace(ws, in_server=True)


def _grantees(ws: Workspace) -> list[tuple[str, str]]:
    """Members and organisations a patient can grant access to, with display labels."""
    labels = ws.datadir.labels()
    out = [(key, labels.get(key, key)) for key, _ in ws.node.store.query("org", {"active": True})]
    for key, row in ws.node.store.query("member", {"revoked": False}):
        if row["role"] in ("doctor", "nurse", "pharmacist", "lab_analyst"):
            out.append((key, f"{labels.get(key, key)} ({labels.get(row['org'], row['org'])})"))
    return sorted(out, key=lambda item: item[1])


def _labs(ws: Workspace) -> list[tuple[str, str]]:
    """Active laboratory organisations with display labels."""
    labels = ws.datadir.labels()
    rows = ws.node.store.query("org", {"active": True})
    return sorted((key, labels.get(key, key)) for key, row in rows if row["kind"] == "lab")


def _orgs(ws: Workspace) -> list[tuple[str, str]]:
    """Every organisation on the chain with its display label, for the auditor's filter."""
    labels = ws.datadir.labels()
    return sorted(
        ((key, labels.get(key, key)) for key, _ in ws.node.store.state_rows("org")),
        key=lambda item: item[1],
    )


def _day_start(text: str) -> int | None:
    """Midnight in Jakarta (WIB) of a YYYY-MM-DD date, in ms; None when not such a date."""
    try:
        day = date.fromisoformat(text.strip())
    except ValueError:
        return None
    return int(datetime(day.year, day.month, day.day, tzinfo=i18n.WIB).timestamp() * 1000)


def _load_credentials(root: Path) -> dict[str, Any]:
    """The demo folder's credentials file, if any (for log in by demo name)."""
    path = root / "demo-credentials.json"
    if not path.is_file():
        return {}
    data: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return data


def _names_of(credentials: Mapping[str, Any], principal: str) -> list[str]:
    """Every user name a principal can log in with: its id and its demo names."""
    names = [principal]
    names += [k for k, v in credentials.get("members", {}).items() if v.get("id") == principal]
    for n, entry in enumerate(credentials.get("patients", []), start=1):
        if entry.get("id") == principal:
            names.append(f"patient-{n}")
    return names


def _resolve(credentials: Mapping[str, Any], username: str) -> tuple[str, str]:
    """(principal id, display name) for a demo name, a patient-N alias or an id."""
    members = credentials.get("members", {})
    patients = credentials.get("patients", [])
    if username in members:
        return str(members[username]["id"]), str(members[username].get("name", ""))
    if username.startswith("patient-") and username[8:].isdigit():
        n = int(username[8:])
        if 0 < n <= len(patients):
            return str(patients[n - 1]["id"]), str(patients[n - 1].get("name", ""))
    for entry in [*members.values(), *patients]:
        if entry.get("id") == username:
            return username, str(entry.get("name", ""))
    return username, ""
