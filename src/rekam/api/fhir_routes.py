"""FHIR R4 REST interactions under ``/fhir``."""

from __future__ import annotations

import json
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response

from rekam.api.outcome import FHIR_JSON, ApiError, fhir_response
from rekam.ledger.tx import id_kind
from rekam.service.errors import ServiceError
from rekam.service.fhir_store import (
    FHIR_TYPES,
    RECORD_TYPES,
    FhirVersion,
    SearchParams,
    check_date_param,
    iso,
)
from rekam.service.satusehat import SatusehatMapping
from rekam.service.tokens import OutsideCompartment
from rekam.service.workspace import Actor

if TYPE_CHECKING:
    from rekam.api.app import ApiContext

FHIR_VERSION = "4.0.1"
_BODY = {
    "requestBody": {
        "required": True,
        "content": {FHIR_JSON: {"schema": {"type": "object"}}},
    }
}
_SEARCH_PARAMS = {"patient", "subject", "code", "date", "_lastUpdated", "_count", "_offset", "_id"}
_VIEW_SEARCH = {
    "Consent": {"patient"},
    "AuditEvent": {"patient"},
    "Provenance": {"target"},
    "Practitioner": set(),
    "Organization": set(),
}


def _check_type(resource_type: str) -> None:
    if resource_type not in FHIR_TYPES:
        raise ApiError(404, "not-supported", "this resource type is not supported here")


async def _scope(
    ctx: ApiContext,
    request: Request,
    resource_type: str,
    mode: str,
    fhir_id: str | None = None,
) -> tuple[Actor, str | None]:
    """The acting principal, and the patient it is confined to by ``patient/`` scopes.

    A read the token's scopes do not cover is refused; when it names a record (``fhir_id``)
    or, for a search, a patient, the refusal is put on the chain like any other denial, so
    the patient sees the attempt.
    """
    session, actor = await ctx.authenticate(request)
    try:
        return actor, session.info.compartment(resource_type, mode)
    except OutsideCompartment:
        if mode == "read" and resource_type in RECORD_TYPES:
            await ctx.call(_record_scope_denial, ctx, actor, resource_type, fhir_id, request)
        raise ApiError(403, "forbidden", f"the token's scopes do not allow {mode} here") from None


def _record_scope_denial(
    ctx: ApiContext, actor: Actor, resource_type: str, fhir_id: str | None, request: Request
) -> None:
    """Commit the denial of a read refused by scope, when it names a known patient's data."""
    if fhir_id is not None:
        try:
            patient = ctx.fhir.patient_of(resource_type, fhir_id)
        except ServiceError:
            return  # no such record: nothing of anyone's was at stake
    else:
        patient = request.query_params.get("patient") or request.query_params.get("subject", "")
        patient = patient.removeprefix("Patient/")
    if id_kind(patient) == "patient" and ctx.ws.node.store.get("patient", patient) is not None:
        ctx.fhir.refuse(actor, resource_type, fhir_id, patient)


def _confine(compartment: str | None, patient: str | None) -> None:
    """Refuse an access outside the token's patient in context (``patient/`` scopes)."""
    if compartment is not None and patient != compartment:
        raise ApiError(403, "forbidden", "the token's patient scopes cover another patient")


async def _confine_read(
    ctx: ApiContext,
    actor: Actor,
    compartment: str | None,
    patient: str,
    resource_type: str | None,
    fhir_id: str | None,
) -> None:
    """As _confine for reads, recording the refusal on the chain like any other denial."""
    if compartment is None or patient == compartment:
        return
    if id_kind(patient) == "patient" and ctx.ws.node.store.get("patient", patient) is not None:
        await ctx.call(ctx.fhir.refuse, actor, resource_type, fhir_id, patient)
    _confine(compartment, patient)


def _body_patient(body: Any) -> str | None:
    """The patient a resource body names in subject or patient, for the scope check."""
    if not isinstance(body, dict):
        return None
    for element in ("subject", "patient"):
        ref = body.get(element)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            rtype, _, rid = ref["reference"].partition("/")
            if rtype == "Patient":
                return str(rid).split("/")[0]
    return None


async def _json_body(ctx: ApiContext, request: Request) -> Any:
    """The request body parsed as JSON, refusing oversized bodies before reading them all."""
    limit = ctx.config.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too-costly", "the request body is too large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too-costly", "the request body is too large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise ApiError(400, "structure", "the body is not valid JSON") from None


def _no_constant(_name: str) -> Any:
    raise ValueError("NaN and Infinity are not JSON")


def _location(request: Request, version: FhirVersion) -> str:
    base = str(request.base_url).rstrip("/")
    return f"{base}/fhir/{version.resource_type}/{version.fhir_id}/_history/{version.version}"


def _version_headers(request: Request, version: FhirVersion) -> dict[str, str]:
    return {
        "ETag": f'W/"{version.version}"',
        "Last-Modified": formatdate(version.time / 1000, usegmt=True),
        "Location": _location(request, version),
    }


def _bundle(
    request: Request,
    bundle_type: str,
    resources: list[dict[str, Any]],
    total: int | None = None,
    links: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    base = str(request.base_url).rstrip("/") + "/fhir"
    out: dict[str, Any] = {"resourceType": "Bundle", "type": bundle_type}
    if total is not None:
        out["total"] = total
    if links:
        out["link"] = links
    out["entry"] = [
        {
            "fullUrl": f"{base}/{r['resourceType']}/{r['id']}",
            "resource": r,
            **({"search": {"mode": "match"}} if bundle_type == "searchset" else {}),
        }
        for r in resources
    ]
    if not out["entry"]:
        del out["entry"]
    return out


def _patient_param(value: str) -> str:
    """``Patient/p-...`` or ``p-...`` as a patient id."""
    return value.split("/", 1)[1] if value.startswith("Patient/") else value


def _parse_search(ctx: ApiContext, resource_type: str, request: Request) -> SearchParams:
    params = SearchParams()
    allowed = _SEARCH_PARAMS | ({"identifier", "name"} if resource_type == "Patient" else set())
    for key, value in request.query_params.multi_items():
        if key not in allowed:
            # The parameter's name is not echoed: it is client input like any other.
            raise ApiError(400, "not-supported", "unsupported search parameter")
        if key in ("patient", "subject"):
            if resource_type == "Patient":
                raise ApiError(400, "not-supported", "use _id to search Patient by id")
            params.patient = _patient_param(value)
        elif key == "code":
            params.code.extend(v for v in value.split(",") if v)
        elif key == "date":
            params.date.append(check_date_param(value))
        elif key == "_lastUpdated":
            params.last_updated.append(check_date_param(value))
        elif key == "identifier":
            params.identifier = value
        elif key == "name":
            # Given and family name tokens, each matched whole or by a prefix of 3 or more.
            params.name = value
        elif key == "_id":
            params.ids.extend(v for v in value.split(",") if v)
        elif key in ("_count", "_offset"):
            if not value.isdigit() or len(value) > 6:
                raise ApiError(400, "invalid", f"{key} must be a non-negative integer")
            number = int(value)
            if key == "_count":
                params.count = max(1, min(number, ctx.config.max_count))
            else:
                params.offset = number
    return params


def _paging_links(
    request: Request, resource_type: str, params: SearchParams, total: int
) -> list[dict[str, str]]:
    base = str(request.base_url).rstrip("/") + f"/fhir/{resource_type}"
    query = [(k, v) for k, v in request.query_params.multi_items() if k != "_offset"]

    def url(offset: int) -> str:
        return base + "?" + urlencode([*query, ("_offset", str(offset))])

    links = [{"relation": "self", "url": url(params.offset)}]
    if params.offset + params.count < total:
        links.append({"relation": "next", "url": url(params.offset + params.count)})
    if params.offset > 0:
        links.append({"relation": "previous", "url": url(max(0, params.offset - params.count))})
    return links


def capability_statement(base: str) -> dict[str, Any]:
    """A CapabilityStatement listing only what this server implements."""
    record_params = [
        {"name": "patient", "type": "reference"},
        {"name": "subject", "type": "reference"},
        {"name": "code", "type": "token"},
        {"name": "date", "type": "date"},
        {"name": "_lastUpdated", "type": "date"},
        {"name": "_id", "type": "token"},
    ]
    resources = []
    for rtype in sorted(FHIR_TYPES):
        if rtype in RECORD_TYPES:
            interactions = ["read", "vread", "update", "history-instance", "create", "search-type"]
            params = list(record_params)
            if rtype == "Patient":
                params = [
                    {"name": "identifier", "type": "token"},
                    {"name": "name", "type": "string"},
                    {"name": "_id", "type": "token"},
                    {"name": "_lastUpdated", "type": "date"},
                ]
        else:
            interactions = ["read", "search-type"]
            params = [{"name": n, "type": "reference"} for n in sorted(_VIEW_SEARCH[rtype])]
        entry: dict[str, Any] = {
            "type": rtype,
            "interaction": [{"code": c} for c in interactions],
            "versioning": "versioned" if rtype in RECORD_TYPES else "no-version",
            "readHistory": rtype in RECORD_TYPES,
            "updateCreate": False,
        }
        if params:
            entry["searchParam"] = params
        if rtype == "Patient":
            entry["operation"] = [
                {
                    "name": "everything",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                }
            ]
        resources.append(entry)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        # When this statement last changed (FHIR's meaning of the element): Patient?name=.
        "date": "2026-11-24",
        "kind": "instance",
        "software": {"name": "Rekam", "version": "0.1.0"},
        "implementation": {"description": "Rekam node FHIR API", "url": base},
        "fhirVersion": FHIR_VERSION,
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "description": "Bearer tokens issued with `rekam token`; SMART-style scopes.",
                },
                "resource": resources,
                "interaction": [{"code": "transaction"}],
            }
        ],
    }


def build_fhir_router(ctx: ApiContext) -> APIRouter:
    """The ``/fhir`` routes bound to one API context."""
    router = APIRouter(prefix="/fhir", tags=["FHIR R4"])

    @router.get("/metadata", summary="CapabilityStatement")
    async def metadata(request: Request) -> Response:
        return fhir_response(capability_statement(str(request.base_url).rstrip("/") + "/fhir"))

    @router.post("", summary="Transaction Bundle (atomic import)", openapi_extra=_BODY)
    async def transaction(request: Request) -> Response:
        session, actor = await ctx.authenticate(request)
        bundle = await _json_body(ctx, request)
        if not isinstance(bundle, dict):
            raise ApiError(400, "structure", "the body must be a Bundle")

        def may_write(resource_type: str) -> bool:
            # A Bundle may register patients and span several: it needs user/ scopes.
            try:
                return session.info.compartment(resource_type, "write") is None
            except OutsideCompartment:
                return False

        def run() -> list[Any]:
            return ctx.fhir.transaction(actor, bundle, may_write)

        outcomes = await ctx.call(run, exclusive=True)
        entries = [
            {
                "response": {
                    "status": "201 Created" if o.created else "200 OK",
                    "location": f"{o.resource_type}/{o.fhir_id}/_history/{o.version}",
                    "etag": f'W/"{o.version}"',
                    "lastModified": iso(o.time),
                }
            }
            for o in outcomes
        ]
        return fhir_response(
            {"resourceType": "Bundle", "type": "transaction-response", "entry": entries}
        )

    @router.get("/Patient/{patient_id}/$everything", summary="Export a patient's records")
    async def everything(
        request: Request, patient_id: str, shape: Literal["r4", "satusehat"] = "r4"
    ) -> Response:
        actor, compartment = await _scope(ctx, request, "Patient", "read")
        await _confine_read(ctx, actor, compartment, patient_id, None, None)
        if shape == "satusehat":
            # Loaded before any read, so a node without a mapping audits nothing in vain.
            mapping = SatusehatMapping.load(ctx.ws.datadir.root)
            resources = await ctx.call(ctx.fhir.export_satusehat, actor, patient_id, mapping)
        else:
            versions = await ctx.call(ctx.fhir.everything, actor, patient_id)
            resources = [v.resource for v in versions]
        return fhir_response(_bundle(request, "searchset", resources, len(resources)))

    @router.get("/{resource_type}", summary="Search a resource type")
    async def search(request: Request, resource_type: str) -> Response:
        _check_type(resource_type)
        actor, compartment = await _scope(ctx, request, resource_type, "read")
        if resource_type in RECORD_TYPES:
            params = _parse_search(ctx, resource_type, request)
            if compartment is not None:
                wanted = params.patient or compartment
                await _confine_read(ctx, actor, compartment, wanted, resource_type, None)
                params.patient = compartment
            result = await ctx.call(ctx.fhir.search, actor, resource_type, params)
            links = _paging_links(request, resource_type, params, result.total)
            resources = [h.resource for h in result.hits]
            return fhir_response(_bundle(request, "searchset", resources, result.total, links))
        resources = await ctx.call(_view_search, ctx, actor, resource_type, request, compartment)
        return fhir_response(_bundle(request, "searchset", resources, len(resources)))

    @router.post("/{resource_type}", summary="Create a resource", openapi_extra=_BODY)
    async def create(request: Request, resource_type: str) -> Response:
        _check_type(resource_type)
        if resource_type not in RECORD_TYPES:
            raise ApiError(405, "not-supported", "this type is a read-only view of the ledger")
        actor, compartment = await _scope(ctx, request, resource_type, "write")
        body = await _json_body(ctx, request)
        _confine(compartment, None if resource_type == "Patient" else _body_patient(body))
        version = await ctx.call(ctx.fhir.create, actor, resource_type, body)
        return fhir_response(version.resource, 201, _version_headers(request, version))

    @router.get("/{resource_type}/{fhir_id}", summary="Read a resource")
    async def read(request: Request, resource_type: str, fhir_id: str) -> Response:
        _check_type(resource_type)
        actor, compartment = await _scope(ctx, request, resource_type, "read", fhir_id)
        if resource_type not in RECORD_TYPES:
            resource = await ctx.call(_view_read, ctx, actor, resource_type, fhir_id, compartment)
            return fhir_response(resource)
        if compartment is not None:
            owner = await ctx.call(ctx.fhir.patient_of, resource_type, fhir_id)
            await _confine_read(ctx, actor, compartment, owner, resource_type, fhir_id)
        version = await ctx.call(ctx.fhir.read, actor, resource_type, fhir_id)
        return fhir_response(version.resource, 200, _version_headers(request, version))

    @router.put("/{resource_type}/{fhir_id}", summary="Update (new version)", openapi_extra=_BODY)
    async def update(request: Request, resource_type: str, fhir_id: str) -> Response:
        _check_type(resource_type)
        if resource_type not in RECORD_TYPES:
            raise ApiError(405, "not-supported", "this type is a read-only view of the ledger")
        actor, compartment = await _scope(ctx, request, resource_type, "write")
        body = await _json_body(ctx, request)
        if compartment is not None:
            owner = await ctx.call(ctx.fhir.patient_of, resource_type, fhir_id)
            _confine(compartment, owner)  # a refused write is not a read: no access event
        version = await ctx.call(ctx.fhir.update, actor, resource_type, fhir_id, body)
        return fhir_response(version.resource, 200, _version_headers(request, version))

    @router.get("/{resource_type}/{fhir_id}/_history", summary="Version history")
    async def history(request: Request, resource_type: str, fhir_id: str) -> Response:
        _check_type(resource_type)
        if resource_type not in RECORD_TYPES:
            raise ApiError(404, "not-supported", "views of the ledger have no version history")
        actor, compartment = await _scope(ctx, request, resource_type, "read", fhir_id)
        if compartment is not None:
            owner = await ctx.call(ctx.fhir.patient_of, resource_type, fhir_id)
            await _confine_read(ctx, actor, compartment, owner, resource_type, fhir_id)
        versions = await ctx.call(ctx.fhir.history, actor, resource_type, fhir_id)
        return fhir_response(
            _bundle(request, "history", [v.resource for v in versions], len(versions))
        )

    @router.get("/{resource_type}/{fhir_id}/_history/{version_id}", summary="Read a version")
    async def vread(
        request: Request, resource_type: str, fhir_id: str, version_id: str
    ) -> Response:
        _check_type(resource_type)
        if resource_type not in RECORD_TYPES:
            raise ApiError(404, "not-supported", "views of the ledger have no versions")
        actor, compartment = await _scope(ctx, request, resource_type, "read", fhir_id)
        if not version_id.isdigit() or len(version_id) > 9:
            raise ApiError(404, "not-found", "unknown version")
        if compartment is not None:
            owner = await ctx.call(ctx.fhir.patient_of, resource_type, fhir_id)
            await _confine_read(ctx, actor, compartment, owner, resource_type, fhir_id)
        version = await ctx.call(ctx.fhir.read, actor, resource_type, fhir_id, int(version_id))
        return fhir_response(version.resource, 200, _version_headers(request, version))

    return router


def _view_read(
    ctx: ApiContext, actor: Actor, resource_type: str, fhir_id: str, compartment: str | None
) -> Any:
    views = ctx.views
    # Directory entries belong to no patient: patient scopes do not confine them.
    if resource_type == "Practitioner":
        return views.practitioner(fhir_id)
    if resource_type == "Organization":
        return views.organization(fhir_id)
    if resource_type == "Consent":
        consent = views.consent(actor, fhir_id)
        _confine(compartment, consent["patient"]["reference"].split("/", 1)[1])
        return consent
    raise ApiError(404, "not-supported", "read this view by search (patient or target)")


def _view_search(
    ctx: ApiContext, actor: Actor, resource_type: str, request: Request, compartment: str | None
) -> list[dict[str, Any]]:
    allowed = _VIEW_SEARCH[resource_type]
    params = dict(request.query_params)
    unknown = [k for k in params if k not in allowed and k != "_count"]
    if unknown:
        raise ApiError(400, "not-supported", "unsupported search parameter")
    views = ctx.views
    if resource_type == "Practitioner":
        return views.practitioners()
    if resource_type == "Organization":
        return views.organizations()
    if resource_type == "Provenance":
        target = params.get("target", "")
        rtype, _, fhir_id = target.partition("/")
        if rtype not in RECORD_TYPES or not fhir_id:
            raise ApiError(400, "required", "Provenance search needs target=Type/id")
        fhir_id = fhir_id.split("/_history")[0]
        if compartment is not None:
            _confine(compartment, ctx.fhir.patient_of(rtype, fhir_id))
        return views.provenance(actor, rtype, fhir_id)
    patient = _patient_param(params.get("patient", ""))
    if id_kind(patient) != "patient":
        if compartment is None and actor.kind != "patient":
            raise ApiError(400, "required", f"{resource_type} search needs patient")
        patient = compartment or actor.id
    _confine(compartment, patient)
    if resource_type == "Consent":
        return views.consents(actor, patient)
    return views.audit_events(actor, patient)
