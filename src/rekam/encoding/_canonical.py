"""RFC 8785 canonical JSON over an integer-only subset, plus the byte helpers around it."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from typing import Any

import orjson

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


# Built once: json.loads with hooks would build a decoder on every call. Decoders keep no
# state between calls, so threads can share them (as they share json's own default decoder).
# ``decode`` is what json.loads runs for a str; a byte order mark is refused by the scanner.
_DECODER = json.JSONDecoder(
    object_pairs_hook=_no_duplicates, parse_float=_no_float, parse_constant=_no_constant
)


def _safe_int(digits: str) -> int:
    # json hands over the token's text; a safe integer has at most 16 digits and a sign.
    if len(digits) <= 17:
        value = int(digits)
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return value
    raise CanonicalError("integer outside the safe range +-(2**53 - 1)")


# Characters the fast path leaves to the full check: astral characters (their member names sort
# by UTF-16 code units, not code points) and surrogates (only a str input can hold them).
_NOT_BMP = re.compile("[\ud800-\udfff\U00010000-\U0010ffff]")
_UNDECIDED = object()
_FAST_DECODER = json.JSONDecoder(
    parse_int=_safe_int, parse_float=_no_float, parse_constant=_no_constant
)


def _parse_canonical_fast(data: bytes | str) -> Any:
    """The value of ``data`` when it is certainly canonical, else ``_UNDECIDED``.

    Bytes go to ``_parse_canonical_bytes``; for text, accepting here means
    ``_ENCODER.encode(value) == text``, which implies everything the full path checks, so both
    paths accept exactly the same inputs and return equal values:

    - types and ranges: json gives only dict, list, str, int, bool and None; floats and
      NaN/Infinity raise in the hooks and integers outside the safe range in ``_safe_int``;
    - depth: no value is enclosed in more than 32 containers when the text holds at most 32
      opening brackets in all (brackets inside strings only make the count larger);
    - member order and escapes: with no astral character in the text, the encoding, which
      writes every character from U+0020 on as itself, holds none either, so no member name
      has one; then code-point order (``sort_keys``) is UTF-16 order and the C encoder's output
      is exactly ``canonical(value)`` (see ``canonical``);
    - UTF-8: the text has no surrogate, so neither has its equal, the encoding;
    - duplicate member names: the input text *is* the encoding of a dict-based value, which
      writes each object's distinct keys once, so the input has no duplicates either (a
      duplicate would have collapsed into one member while parsing, and the texts would
      differ). The ``object_pairs_hook`` can therefore be left out here.

    Anything else, including every input that is not canonical, goes to the full path, which
    also gives the precise reason for a refusal.
    """
    if not isinstance(data, str):
        return _parse_canonical_bytes(data)
    text = data
    if (not text.isascii() and _NOT_BMP.search(text)) or (
        text.count("{") + text.count("[") > _MAX_DEPTH
    ):
        return _UNDECIDED
    try:
        value = _FAST_DECODER.decode(text)
        encoded = _ENCODER.encode(value)
    except (ValueError, RecursionError):  # CanonicalError included: the full path explains
        return _UNDECIDED
    return value if encoded == text else _UNDECIDED


# A byte that starts a 4-byte UTF-8 sequence (an astral character) or is never valid UTF-8.
_NOT_BMP_BYTES = re.compile(b"[\xf0-\xff]")
_ORJSON_SORTED = orjson.OPT_SORT_KEYS


def _plain(value: Any, depth: int) -> bool:
    """True when a decoded value holds no float, no unsafe integer and nests at most 32 deep."""
    kind = type(value)
    if kind is dict or kind is list:
        if depth >= _MAX_DEPTH:
            return False
        # Each member is looked at here, not by a call of its own: most are strings, and a
        # call per member was a third of checking a transaction's bytes.
        for item in value.values() if kind is dict else value:
            kind = type(item)
            if kind is str or kind is bool or item is None:
                continue
            if kind is dict or kind is list:
                if not _plain(item, depth + 1):
                    return False
            elif kind is not int or not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                return False
        return True
    if kind is int:
        return bool(-MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER)
    return kind is not float


def _parse_canonical_bytes(raw: bytes) -> Any:
    """The fast path for bytes: orjson decodes, re-encodes with sorted keys, and must match.

    Accepting here implies what the full path checks, as for text above:

    - UTF-8: orjson decodes strict UTF-8 only and refuses lone surrogates, escaped or not;
    - types, ranges and depth: orjson gives dict, list, str, int, float, bool and None, and
      ``_plain`` refuses floats, integers outside the safe range and nesting beyond 32 (a
      float such as ``1.0`` would otherwise re-encode to the same bytes);
    - member order and escapes: with no byte from 0xF0 (no astral character, so code-point
      order is UTF-16 order), orjson's sorted, compact output escapes exactly the characters
      RFC 8785 escapes, in the same spelling as the C encoder (``tests/encoding`` compares
      the two over every BMP character and random member names), so equal bytes mean the
      input is ``canonical(value)``;
    - duplicate member names collapse while parsing, so an input holding one never equals
      the re-encoding.
    """
    if not raw.isascii() and _NOT_BMP_BYTES.search(raw):
        return _UNDECIDED
    try:
        value = orjson.loads(raw)
        encoded = orjson.dumps(value, option=_ORJSON_SORTED)
    except (orjson.JSONDecodeError, orjson.JSONEncodeError, RecursionError):
        return _UNDECIDED
    if encoded != raw or not _plain(value, 0):
        return _UNDECIDED
    return value


def parse(data: bytes | str, *, require_canonical: bool = False) -> Any:
    """Parse JSON, refusing duplicate keys and floats; optionally insist the input is canonical."""
    if isinstance(data, bytes | bytearray):
        if require_canonical:
            fast = _parse_canonical_fast(bytes(data))
            if fast is not _UNDECIDED:
                return fast
        # json.loads would guess UTF-16/32 and let surrogates through; we accept UTF-8 only.
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise CanonicalError("not UTF-8") from None
        if data.startswith("\ufeff"):
            raise CanonicalError("a byte order mark is not allowed")
    if require_canonical:
        fast = _parse_canonical_fast(data)
        if fast is not _UNDECIDED:
            return fast
    try:
        value = _DECODER.decode(data)
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


def parse_accepted(raw: bytes) -> Any:
    """The value of bytes that ``parse(raw, require_canonical=True)`` has already accepted.

    For handing a decoded value from one of Rekam's own processes to another as its bytes:
    nothing is checked again, so it must never see bytes from anywhere else. On accepted
    bytes it gives the same value as ``parse``, at a fraction of the cost.
    """
    return orjson.loads(raw)


def digest(value: Any) -> str:
    """SHA-256 of the canonical bytes of a value, as lowercase hex."""
    return hashlib.sha256(canonical(value)).hexdigest()


def b64e(data: bytes) -> str:
    """Encode bytes as unpadded base64url (RFC 4648 section 5)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_B64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# A text of 4k+2 (4k+3) characters ends in one carrying 4 (2) bits beyond the data, which must
# be zero: the last character's alphabet index is then a multiple of 16 (4).
_CLEAN_LAST = {0: "", 2: _B64URL_ALPHABET[::16], 3: _B64URL_ALPHABET[::4]}
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
# Padding by the length of the text modulo 4 (a remainder of 1 is never base64).
_PADDING = {0: b"", 1: b"===", 2: b"==", 3: b"="}


def b64d(text: str) -> bytes:
    """Decode unpadded base64url, refusing padding, other alphabets and non-canonical tails."""
    # After "-" and "_" become "+" and "/", strict decoding refuses whatever is not the
    # standard alphabet or is padded wrongly; "+", "/" and "=" must not be there beforehand.
    if not isinstance(text, str) or "+" in text or "/" in text or "=" in text:
        raise CanonicalError("not unpadded base64url")
    tail = len(text) % 4
    try:
        padded = text.encode("ascii").translate(_TO_STANDARD) + _PADDING[tail]
        data = binascii.a2b_base64(padded, strict_mode=True)
    except (UnicodeEncodeError, binascii.Error):
        raise CanonicalError("not unpadded base64url") from None
    if tail and text[-1] not in _CLEAN_LAST[tail]:
        raise CanonicalError("base64url has non-zero trailing bits")
    return data


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
