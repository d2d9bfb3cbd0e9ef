"""RFC 8785 canonical JSON over an integer-only subset, plus the byte helpers around it."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from typing import Any

MAX_SAFE_INTEGER = 2**53 - 1
_HEX = re.compile(r"(?:[0-9a-f]{2})*")
_MAX_DEPTH = 32


class CanonicalError(ValueError):
    """A value cannot be canonically encoded, or bytes are not canonical JSON."""


def _utf16_key(key: str) -> bytes:
    # RFC 8785 section 3.2.3 orders member names by their UTF-16 code units; that differs from
    # Python's code-point order only when astral characters meet U+E000..U+FFFF. A lone
    # surrogate passes here and is refused when the text is encoded as UTF-8.
    return key.encode("utf-16-be", "surrogatepass")


def _check(value: Any, depth: int) -> bool:
    """Validate a value for canonical encoding; True when some key needs UTF-16 ordering."""
    if depth > _MAX_DEPTH:
        raise CanonicalError("value nests too deeply")
    kind = type(value)
    if kind is str or value is None or kind is bool:
        return False
    if kind is int:
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return False
        raise CanonicalError("integer outside the safe range +-(2**53 - 1)")
    if kind is dict:
        astral = False
        for key, item in value.items():
            if type(key) is not str:
                raise CanonicalError("object keys must be strings")
            if not key.isascii() and any(ord(c) > 0xFFFF for c in key):
                astral = True
            if _check(item, depth + 1):
                astral = True
        return astral
    if kind is list or kind is tuple:
        astral = False
        for item in value:
            if _check(item, depth + 1):
                astral = True
        return astral
    if kind is float:
        raise CanonicalError("floats are not allowed in canonical data")
    raise CanonicalError(f"type {kind.__name__} cannot be canonically encoded")


def _sorted_utf16(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted_utf16(value[k]) for k in sorted(value, key=_utf16_key)}
    if isinstance(value, list | tuple):
        return [_sorted_utf16(v) for v in value]
    return value


_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
)
_ENCODER_KEEP_ORDER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=False, separators=(",", ":")
)


def canonical(value: Any) -> bytes:
    """Return the RFC 8785 canonical UTF-8 bytes of a JSON-compatible value."""
    if _check(value, 0):
        text = _ENCODER_KEEP_ORDER.encode(_sorted_utf16(value))
    else:
        # Python's json escapes exactly the characters RFC 8785 escapes (quote, backslash,
        # controls below U+0020 with short forms for \b \t \n \f \r, lowercase \u00xx), so
        # the C encoder gives canonical text once key order and number kinds are checked.
        text = _ENCODER.encode(value)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate cannot be canonical UTF-8
        raise CanonicalError("string holds an unpaired surrogate") from exc


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise CanonicalError("duplicate object key")
        result[key] = value
    return result


def _no_float(text: str) -> Any:
    raise CanonicalError("floats are not allowed in canonical data")


def _no_constant(text: str) -> Any:
    raise CanonicalError("NaN and Infinity are not JSON")


def parse(data: bytes | str, *, require_canonical: bool = False) -> Any:
    """Parse JSON, refusing duplicate keys and floats; optionally insist the input is canonical."""
    if isinstance(data, bytes | bytearray):
        # json.loads would guess UTF-16/32 and let surrogates through; we accept UTF-8 only.
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise CanonicalError("not UTF-8") from None
        if data.startswith("\ufeff"):
            raise CanonicalError("a byte order mark is not allowed")
    try:
        value = json.loads(
            data,
            object_pairs_hook=_no_duplicates,
            parse_float=_no_float,
            parse_constant=_no_constant,
        )
    except CanonicalError:
        raise
    except (ValueError, RecursionError) as exc:
        raise CanonicalError("not valid JSON") from exc
    if require_canonical:
        try:
            raw = data.encode("utf-8") if isinstance(data, str) else data
        except UnicodeEncodeError:
            raise CanonicalError("string holds an unpaired surrogate") from None
        if canonical(value) != raw:
            raise CanonicalError("bytes are not in canonical form")
    else:
        # Encoding once checks every rule (types, ranges, surrogates) in one place.
        canonical(value)
    return value


def digest(value: Any) -> str:
    """SHA-256 of the canonical bytes of a value, as lowercase hex."""
    return hashlib.sha256(canonical(value)).hexdigest()


def b64e(data: bytes) -> str:
    """Encode bytes as unpadded base64url (RFC 4648 section 5)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str) -> bytes:
    """Decode unpadded base64url, refusing padding, other alphabets and non-canonical tails."""
    if not isinstance(text, str) or "=" in text or len(text) % 4 == 1:
        raise CanonicalError("not unpadded base64url")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CanonicalError("not unpadded base64url") from exc
    if b64e(raw) != text:
        raise CanonicalError("base64url has non-zero trailing bits")
    return raw


def from_hex(text: str, length: int | None = None) -> bytes:
    """Decode lowercase hex of an expected byte length."""
    if not isinstance(text, str) or not _HEX.fullmatch(text):
        raise CanonicalError("hex must be lowercase hex digits")
    try:
        raw = bytes.fromhex(text)
    except ValueError as exc:
        raise CanonicalError("not hex") from exc
    if length is not None and len(raw) != length:
        raise CanonicalError(f"expected {length} bytes of hex, got {len(raw)}")
    return raw
