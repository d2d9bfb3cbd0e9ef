"""FHIR R4 content rules: which resources a record may hold, and whether one is well formed.

Record content is HL7 FHIR R4 JSON. ``fhir.resources`` does not ship R4 (4.0.1) itself; it
ships R4B (4.3.0), the technical correction of R4, which is identical for the clinical
resources listed in :data:`SUPPORTED_TYPES`, so the R4B models are used to validate.

:func:`validate_resource` keeps the client's JSON object exactly as given (field order,
extensions, number spelling as far as JSON floats allow) and only *checks* it against the
model; the model's re-serialization is never stored. Because the models coerce loosely
(``"5"`` is accepted for an integer, ``"true"`` for a boolean, ``null`` and ``[]`` are
dropped), the original JSON is also checked for the FHIR JSON rules the models let through:
no ``null`` members, no empty objects or arrays, and JSON types that match the element types.
The ``status``/``intent``/``gender`` codes with a required binding are checked as well.

Errors never echo input values: an issue is ``"<path>: <kind of problem>"`` built from the
element path and the kind of error only, so no clinical content or names reach logs.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

__all__ = [
    "SUPPORTED_TYPES",
    "FhirValidationError",
    "ValidatedResource",
    "content_bytes",
    "json_references",
    "map_references",
    "patient_reference",
    "references",
    "validate_resource",
]

SUPPORTED_TYPES: frozenset[str] = frozenset(
    {
        "Patient",
        "Practitioner",
        "Organization",
        "Encounter",
        "Condition",
        "Observation",
        "Procedure",
        "AllergyIntolerance",
        "MedicationRequest",
        "MedicationDispense",
        "Immunization",
        "DiagnosticReport",
        "DocumentReference",
        "Consent",
        "AuditEvent",
        "Provenance",
        "ServiceRequest",
        "Location",
    }
)
"""Resource types a record may hold."""

# Types that may appear in ``contained`` besides the supported ones (e.g. a contained
# Medication in a MedicationRequest). Anything else is refused before model validation:
# ``fhir.resources`` raises a raw KeyError that echoes an unknown contained resourceType.
_CONTAINABLE_TYPES: frozenset[str] = SUPPORTED_TYPES | frozenset(
    {
        "Medication",
        "Substance",
        "Specimen",
        "Device",
        "RelatedPerson",
        "PractitionerRole",
        "Group",
        "BodyStructure",
    }
)

# Top-level code elements with a *required* binding in R4 (the models do not check codes).
_ENCOUNTER_STATUS = frozenset(
    {
        "planned",
        "arrived",
        "triaged",
        "in-progress",
        "onleave",
        "finished",
        "cancelled",
        "entered-in-error",
        "unknown",
    }
)
_GENDER = frozenset({"male", "female", "other", "unknown"})
_REQUIRED_CODES: Mapping[str, Mapping[str, frozenset[str]]] = {
    "Patient": {"gender": _GENDER},
    "Practitioner": {"gender": _GENDER},
    "Encounter": {"status": _ENCOUNTER_STATUS},
    "Observation": {
        "status": frozenset(
            {
                "registered",
                "preliminary",
                "final",
                "amended",
                "corrected",
                "cancelled",
                "entered-in-error",
                "unknown",
            }
        )
    },
    "Procedure": {
        "status": frozenset(
            {
                "preparation",
                "in-progress",
                "not-done",
                "on-hold",
                "stopped",
                "completed",
                "entered-in-error",
                "unknown",
            }
        )
    },
    "MedicationRequest": {
        "status": frozenset(
            {
                "active",
                "on-hold",
                "cancelled",
                "completed",
                "entered-in-error",
                "stopped",
                "draft",
                "unknown",
            }
        ),
        "intent": frozenset(
            {
                "proposal",
                "plan",
                "order",
                "original-order",
                "reflex-order",
                "filler-order",
                "instance-order",
                "option",
            }
        ),
    },
    "MedicationDispense": {
        "status": frozenset(
            {
                "preparation",
                "in-progress",
                "cancelled",
                "on-hold",
                "completed",
                "entered-in-error",
                "stopped",
                "declined",
                "unknown",
            }
        )
    },
    "Immunization": {"status": frozenset({"completed", "entered-in-error", "not-done"})},
    "DiagnosticReport": {
        "status": frozenset(
            {
                "registered",
                "partial",
                "preliminary",
                "final",
                "amended",
                "corrected",
                "appended",
                "cancelled",
                "entered-in-error",
                "unknown",
            }
        )
    },
    "DocumentReference": {
        "status": frozenset({"current", "superseded", "entered-in-error"}),
        "docStatus": frozenset({"preliminary", "final", "amended", "entered-in-error"}),
    },
    "Consent": {
        "status": frozenset(
            {"draft", "proposed", "active", "rejected", "inactive", "entered-in-error"}
        )
    },
    "ServiceRequest": {
        "status": frozenset(
            {"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"}
        ),
        "intent": frozenset(
            {
                "proposal",
                "plan",
                "directive",
                "order",
                "original-order",
                "reflex-order",
                "filler-order",
                "instance-order",
                "option",
            }
        ),
    },
    "Location": {"status": frozenset({"active", "suspended", "inactive"})},
}

_MAX_DEPTH = 100
"""Deepest JSON nesting accepted (real resources stay far below)."""

_MAX_INT32 = 2**31 - 1

# A path segment is echoed only if it looks like a FHIR element name; anything else (a key
# the client invented, which could hold free text) is replaced by a placeholder.
_SAFE_KEY = re.compile(r"_?[A-Za-z][A-Za-z0-9_]{0,63}")
_RESOURCE_TYPE_SHAPE = re.compile(r"[A-Z][A-Za-z]{0,63}")
_PATIENT_REF = re.compile(r"Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?")
_CHOICE_FIELDS = re.compile(r"\[((?:'[A-Za-z0-9_]+',?\s*)+)\]")

# Kinds of problem by pydantic / fhir_core error type. Never the error's ``input`` and never
# its free-form ``msg`` (a validator's message could quote the value).
_ERROR_KINDS: Mapping[str, str] = {
    "missing": "field required",
    "model_field_validation.missing": "field required",
    "extra_forbidden": "unknown field",
    "string_type": "expected string",
    "bool_type": "expected boolean",
    "bool_parsing": "expected boolean",
    "int_type": "expected integer",
    "int_parsing": "expected integer",
    "int_from_float": "expected integer",
    "float_type": "expected number",
    "float_parsing": "expected number",
    "decimal_type": "expected number",
    "decimal_parsing": "expected number",
    "list_type": "expected array (without nulls)",
    "dict_type": "expected object",
    "model_type": "expected object",
    "model_attributes_type": "expected object",
    "json_invalid": "expected object",
    "json_type": "expected object",
    "model_validation_format": "wrong kind of value",
    "string_pattern_mismatch": "invalid format",
    "string_too_short": "too short",
    "string_too_long": "too long",
    "too_short": "too few items",
    "too_long": "too many items",
    "greater_than": "value out of range",
    "greater_than_equal": "value out of range",
    "less_than": "value out of range",
    "less_than_equal": "value out of range",
    "date_type": "invalid date",
    "date_parsing": "invalid date",
    "date_from_datetime_parsing": "invalid date",
    "datetime_type": "invalid date-time",
    "datetime_parsing": "invalid date-time",
    "datetime_from_date_parsing": "invalid date-time",
    "time_type": "invalid time",
    "time_parsing": "invalid time",
    "url_type": "invalid URL",
    "url_parsing": "invalid URL",
    "enum": "code not allowed",
    "literal_error": "code not allowed",
    "fhir-validation-wrong-resource-type": "wrong resourceType",
}


class FhirValidationError(ValueError):
    """Content is not an acceptable FHIR R4 resource.

    ``issues`` lists ``"<path>: <problem>"`` strings such as
    ``"Observation.status: field required"``. Neither the message nor the issues ever
    contain input values, so the error is safe to log.
    """

    def __init__(self, issues: list[str]) -> None:
        self.issues: list[str] = list(issues) or ["invalid resource"]
        shown = "; ".join(self.issues[:10])
        more = len(self.issues) - 10
        if more > 0:
            shown += f"; … and {more} more"
        super().__init__(f"invalid FHIR resource: {shown}")


@dataclass(frozen=True)
class ValidatedResource:
    """A FHIR resource that passed :func:`validate_resource`.

    ``data`` is the client's JSON object as given (a private copy when a mapping was passed);
    treat it as read-only.
    """

    resource_type: str
    data: dict[str, Any]


_model_classes: dict[str, Any] = {}


def _model_class(resource_type: str) -> Any:
    """The R4B model class for a resource type, imported once and cached."""
    cls = _model_classes.get(resource_type)
    if cls is None:
        cls = get_fhir_model_class(resource_type)
        _model_classes[resource_type] = cls
    return cls


def _seg(key: object) -> str:
    """A path segment that is safe to echo (see ``_SAFE_KEY``)."""
    if isinstance(key, str) and _SAFE_KEY.fullmatch(key):
        return key
    return "<key>"


def _join(path: str, key: object) -> str:
    """``path`` extended by an object key or array index."""
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{path}[{key}]"
    return f"{path}.{_seg(key)}"


# -- parsing ---------------------------------------------------------------------------------


class _DuplicateKeyError(ValueError):
    pass


class _NonFiniteError(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKeyError
        obj[key] = value
    return obj


def _no_constants(_name: str) -> Any:
    raise _NonFiniteError


def _parse(text: bytes | str) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity. Errors carry positions only."""
    problem: str | None = None
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            problem = f"content is not valid UTF-8 (byte {exc.start})"
            text = ""
    if problem is None:
        try:
            return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
        except _DuplicateKeyError:
            problem = "duplicate key in JSON object"
        except _NonFiniteError:
            problem = "NaN and Infinity are not JSON"
        except json.JSONDecodeError as exc:
            problem = f"invalid JSON at line {exc.lineno} column {exc.colno}"
        except RecursionError:
            problem = "JSON nested too deeply"
    # Raised outside the except blocks so no exception context (which might quote the
    # input) is chained onto the error.
    raise FhirValidationError([f"$: {problem}"])


# -- checks on the original JSON ---------------------------------------------------------------


def _copy_json(value: Any, path: str, depth: int, issues: list[str]) -> Any:
    """Deep copy of a JSON value, checking the FHIR JSON rules the models do not enforce.

    Mappings become dicts; anything that is not a JSON value is reported. Nulls are allowed
    only inside arrays (the placeholders that align a primitive array with its ``_name``
    extension array), and objects and arrays must not be empty.
    """
    if depth > _MAX_DEPTH:
        issues.append(f"{path}: nested too deeply")
        return None
    if isinstance(value, Mapping):
        if not value:
            issues.append(f"{path}: empty object")
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                issues.append(f"{path}: object key is not a string")
                continue
            child = _join(path, key)
            if key == "fhir_comments":  # STU3 leftover the models still accept
                issues.append(f"{child}: unknown field")
            elif item is None:
                issues.append(f"{child}: null value")
            elif isinstance(item, list) and any(x is None for x in item):
                paired = f"_{key}" in value if not key.startswith("_") else key[1:] in value
                if not paired:
                    issues.append(f"{child}: null in array")
            out[key] = _copy_json(item, child, depth + 1, issues)
        return out
    if isinstance(value, list):
        if not value:
            issues.append(f"{path}: empty array")
        return [
            None if item is None else _copy_json(item, _join(path, i), depth + 1, issues)
            for i, item in enumerate(value)
        ]
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            issues.append(f"{path}: NaN and Infinity are not JSON")
        return value
    issues.append(f"{path}: not a JSON value")
    return None


def _check_contained(data: dict[str, Any], resource_type: str, issues: list[str]) -> None:
    """Contained resources: objects of an allowed type, with no nested ``contained``."""
    contained = data.get("contained")
    if not isinstance(contained, list):
        return  # absent, or the model reports the wrong type
    for i, item in enumerate(contained):
        path = f"{resource_type}.contained[{i}]"
        if not isinstance(item, dict):
            issues.append(f"{path}: expected object")
            continue
        inner = item.get("resourceType")
        if inner is None:
            issues.append(f"{path}.resourceType: field required")
        elif not isinstance(inner, str) or inner not in _CONTAINABLE_TYPES:
            issues.append(f"{path}.resourceType: resource type not allowed here")
        if "contained" in item:
            issues.append(f"{path}.contained: contained resources cannot nest resources")


def _kind_mismatch(original: Any, dumped: Any) -> str | None:
    """Problem when the original JSON value has another JSON type than the element's."""
    if isinstance(dumped, bool):
        return None if isinstance(original, bool) else "expected boolean"
    if isinstance(dumped, int):
        if isinstance(original, int) and not isinstance(original, bool):
            return None
        # A float dumped as an int is an integer element given as 3.0; decimals are only
        # dumped as ints when huge (1e16 and up), far beyond FHIR's 32-bit integers.
        if isinstance(original, float) and abs(dumped) > _MAX_INT32:
            return None
        return "expected integer"
    if isinstance(dumped, float):
        ok = isinstance(original, (int, float)) and not isinstance(original, bool)
        return None if ok else "expected number"
    if isinstance(dumped, str):
        return None if isinstance(original, str) else "expected string"
    if isinstance(dumped, dict):
        return None if isinstance(original, dict) else "expected object"
    if isinstance(dumped, list):
        return None if isinstance(original, list) else "expected array"
    return None


def _compare(original: Any, dumped: Any, path: str, issues: list[str]) -> None:
    """Walk the original JSON beside the model's JSON dump and report JSON type mismatches.

    The models coerce (``"5"`` -> 5, ``"true"`` -> True), so a resource whose stored JSON
    has the wrong primitive types would pass model validation alone.
    """
    problem = _kind_mismatch(original, dumped)
    if problem is not None:
        issues.append(f"{path}: {problem}")
        return
    if isinstance(dumped, dict):
        for key, value in original.items():
            child = _join(path, key)
            if key not in dumped:
                issues.append(f"{child}: element not recognised")
            else:
                _compare(value, dumped[key], child, issues)
    elif isinstance(dumped, list):
        if len(original) != len(dumped):
            issues.append(f"{path}: array not recognised")
            return
        for i, (value, dumped_value) in enumerate(zip(original, dumped, strict=True)):
            if value is None:
                continue
            if dumped_value is None:
                issues.append(f"{_join(path, i)}: element not recognised")
            else:
                _compare(value, dumped_value, _join(path, i), issues)


def _check_codes(data: dict[str, Any], resource_type: str, issues: list[str]) -> None:
    """Required-binding codes of top-level elements (see ``_REQUIRED_CODES``)."""
    for element, codes in _REQUIRED_CODES.get(resource_type, {}).items():
        value = data.get(element)
        if isinstance(value, str) and value not in codes:
            issues.append(f"{resource_type}.{element}: code not in the required value set")


def _pydantic_issues(error: ValidationError, resource_type: str) -> list[str]:
    """Issues from a pydantic error, built from ``loc`` and ``type`` only."""
    issues: list[str] = []
    for detail in error.errors(include_url=False, include_context=False, include_input=False):
        path = resource_type
        for part in detail["loc"]:
            path = _join(path, "resourceType" if part == "resource_type" else part)
        kind = _ERROR_KINDS.get(detail["type"])
        if kind is None and detail["type"] == "value_error":
            element, kind = _value_error_kind(detail["msg"])
            if element is not None:  # choice-type problem: name the choice element
                path = f"{path}.{element}"
        issues.append(f"{path}: {kind or 'invalid value'}")
    return issues


def _value_error_kind(msg: str) -> tuple[str | None, str]:
    """Classify a fhir_core ``value_error`` message into a fixed phrase.

    Returns ``(choice element, phrase)``. Only fixed phrases are returned; for choice-type
    errors the element name (``value[x]``) is derived from the *model's* field names listed
    in the message, never from input.
    """
    if "does not match spec regex" in msg:
        return None, "invalid format"
    if "timezone aware" in msg:
        return None, "date-time with a time needs a timezone"
    choice = _CHOICE_FIELDS.search(msg)
    if choice and ("but got multiple" in msg or "Expect any of field value" in msg):
        names = [n.strip().strip("'") for n in choice.group(1).split(",") if n.strip()]
        prefix = _common_prefix(names)
        element = f"{prefix}[x]" if prefix and _SAFE_KEY.fullmatch(prefix) else "<choice>[x]"
        if "but got multiple" in msg:
            return element, "more than one type given for a choice element"
        return element, "field required"
    return None, "invalid value"


def _common_prefix(names: list[str]) -> str:
    if not names:
        return ""
    first, last = min(names), max(names)
    i = 0
    while i < min(len(first), len(last)) and first[i] == last[i]:
        i += 1
    return first[:i]


# -- public API --------------------------------------------------------------------------------


def validate_resource(
    data: bytes | str | Mapping[str, Any], expected_type: str | None = None
) -> ValidatedResource:
    """Check that ``data`` is a FHIR R4 resource a record may hold.

    ``data`` is JSON text (bytes must be UTF-8) or an already parsed JSON object. JSON text
    with duplicate keys, NaN/Infinity, or a top level that is not an object is refused.
    The ``resourceType`` must be in :data:`SUPPORTED_TYPES` and equal ``expected_type`` when
    given. The object is validated against the ``fhir.resources`` R4B model of its type and
    against the FHIR JSON rules that model lets through (no nulls, no empty objects or
    arrays, matching JSON types, required-binding status codes).

    Returns the original object (a private deep copy for mapping input), so round trips keep
    every field, extension and the field order. Raises :class:`FhirValidationError`, whose
    issues never contain input values.
    """
    parsed = _parse(data) if isinstance(data, (bytes, str)) else data
    if not isinstance(parsed, Mapping):
        raise FhirValidationError(["$: top level is not a JSON object"])

    resource_type = parsed.get("resourceType")
    if resource_type is None:
        raise FhirValidationError(["resourceType: field required"])
    if not isinstance(resource_type, str) or resource_type not in SUPPORTED_TYPES:
        # Not echoed: an unknown value is input, not a type name we know.
        raise FhirValidationError(["resourceType: unsupported resource type"])
    if expected_type is not None and resource_type != expected_type:
        expected = expected_type if expected_type in SUPPORTED_TYPES else "another type"
        raise FhirValidationError([f"resourceType: expected {expected}, got {resource_type}"])

    issues: list[str] = []
    original = _copy_json(parsed, resource_type, 0, issues)
    _check_contained(original, resource_type, issues)
    if issues:
        raise FhirValidationError(issues)

    dumped: dict[str, Any] | None = None
    try:
        model = _model_class(resource_type).model_validate(original)
        dumped = model.model_dump(mode="json", by_alias=True)
    except ValidationError as exc:
        issues = _pydantic_issues(exc, resource_type)
    except Exception:  # a library bug must not leak input through its message
        issues = [f"{resource_type}: resource could not be validated"]
    if dumped is None:
        raise FhirValidationError(issues)

    _compare(original, dumped, resource_type, issues)
    _check_codes(original, resource_type, issues)
    if issues:
        raise FhirValidationError(issues)
    return ValidatedResource(resource_type=resource_type, data=original)


def content_bytes(resource: ValidatedResource) -> bytes:
    """The bytes that are encrypted: compact UTF-8 JSON in the client's field order."""
    return json.dumps(
        resource.data,
        ensure_ascii=False,
        separators=(",", ":"),
        sort_keys=False,
        allow_nan=False,
    ).encode("utf-8")


def references(resource: ValidatedResource) -> list[str]:
    """Every ``reference`` string in the resource, in document order, each once.

    Includes references inside extensions and contained resources, and local ones such as
    ``"#med1"``; e.g. ``["Patient/abc", "Practitioner/dr-1"]``.
    """
    return json_references(resource.data)


def json_references(node: Any) -> list[str]:
    """Every ``reference`` string in FHIR JSON (validated or not), in document order, once."""
    found: dict[str, None] = {}
    stack: list[Any] = [node]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            ref = node.get("reference")
            if isinstance(ref, str):
                found.setdefault(ref, None)
            stack.extend(reversed(node.values()))
        elif isinstance(node, list):
            stack.extend(reversed(node))
    return list(found)


def map_references(node: Any, rewrite: Callable[[str], str]) -> Any:
    """A copy of FHIR JSON with every ``reference`` string replaced by ``rewrite(reference)``."""
    if isinstance(node, Mapping):
        return {
            key: rewrite(value)
            if key == "reference" and isinstance(value, str)
            else map_references(value, rewrite)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [map_references(value, rewrite) for value in node]
    return node


def patient_reference(resource: ValidatedResource) -> str | None:
    """The patient the resource is about, as ``"Patient/<id>"``, if it names one.

    Looks at the top-level ``subject`` and ``patient`` references (a version suffix
    ``/_history/<v>`` is dropped); a Patient resource with an ``id`` is about itself.
    Returns None when there is no such reference or it is not a relative ``Patient/<id>``
    reference (e.g. a Group subject, an absolute URL, a contained or logical reference):
    callers that must tie content to a patient should require a non-None result.
    """
    data = resource.data
    if resource.resource_type == "Patient":
        pid = data.get("id")
        return f"Patient/{pid}" if isinstance(pid, str) else None
    for element in ("subject", "patient"):
        ref = data.get(element)
        if isinstance(ref, dict):
            match = _PATIENT_REF.fullmatch(str(ref.get("reference", "")))
            if match:
                return f"Patient/{match.group(1)}"
    return None
