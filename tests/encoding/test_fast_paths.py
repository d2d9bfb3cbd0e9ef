"""The fast paths of rekam.encoding decide exactly as the full definitions do.

``parse(..., require_canonical=True)`` first tries a fast check (decode, re-encode with the C
encoder, compare) and falls back to the full path (duplicate-key hook, range and type check,
UTF-16 key order) whenever it cannot be sure. ``b64d`` checks the trailing bits of the last
character instead of re-encoding. These tests hold both to their reference definitions: the
same inputs accepted, with equal values, and the same refused.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rekam.encoding import (
    MAX_SAFE_INTEGER,
    CanonicalError,
    _canonical,
    b64d,
    b64e,
    canonical,
    parse,
)

VECTORS = json.loads((Path(__file__).parent / "vectors.json").read_text(encoding="utf-8"))
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _raw(case: dict[str, Any]) -> bytes:
    if "input_hex" in case:
        return bytes.fromhex(case["input_hex"])
    return str(case["input"]).encode("utf-8")


def _full_parse(data: bytes | str) -> Any:
    """parse(require_canonical=True) with the fast path switched off: the reference."""
    original = _canonical._parse_canonical_fast
    _canonical._parse_canonical_fast = lambda text: _canonical._UNDECIDED
    try:
        return parse(data, require_canonical=True)
    finally:
        _canonical._parse_canonical_fast = original


def _outcome(parser: Any, data: bytes | str) -> tuple[str, Any]:
    try:
        return "accepted", parser(data)
    except CanonicalError:
        return "refused", None


def _same_decision(data: bytes | str) -> None:
    fast = _outcome(lambda d: parse(d, require_canonical=True), data)
    full = _outcome(_full_parse, data)
    assert fast == full
    if fast[0] == "accepted":  # equal values, and of the same types (True is not 1)
        assert json.dumps(fast[1], sort_keys=True) == json.dumps(full[1], sort_keys=True)


def _fast_accepts(data: bytes | str) -> bool:
    return _canonical._parse_canonical_fast(data) is not _canonical._UNDECIDED


# --- the vectors -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", VECTORS["rejections"], ids=lambda c: c["name"])
def test_every_rejection_vector_is_refused_by_both_paths(case: dict[str, Any]) -> None:
    raw = _raw(case)
    with pytest.raises(CanonicalError):
        parse(raw, require_canonical=True)
    with pytest.raises(CanonicalError):
        _full_parse(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return
    assert not _fast_accepts(text)


@pytest.mark.parametrize("case", VECTORS["canonical"], ids=lambda c: c["name"])
def test_canonical_vectors_decide_alike(case: dict[str, Any]) -> None:
    expected = bytes.fromhex(case["canonical_hex"])
    _same_decision(expected)
    _same_decision(expected.decode("utf-8"))
    _same_decision(_raw(case))


def test_transaction_envelopes_take_the_fast_path() -> None:
    for vector in VECTORS["transactions"]:
        raw = bytes.fromhex(vector["envelope_canonical_hex"])
        text = raw.decode("utf-8")
        assert _fast_accepts(text)
        assert _fast_accepts(raw)
        assert parse(text, require_canonical=True) == _full_parse(text)
        assert parse(raw, require_canonical=True) == _full_parse(raw)


# --- the bytes fast path (orjson) against the C encoder -------------------------------------


def test_orjson_escapes_every_bmp_character_as_the_c_encoder_does() -> None:
    """The bytes fast path relies on orjson writing each character exactly as canonical()."""
    for code in range(0x10000):
        if 0xD800 <= code <= 0xDFFF:
            continue  # surrogates are no characters: both refuse them
        value = {"k" + chr(code): chr(code)}
        assert orjson.dumps(value, option=orjson.OPT_SORT_KEYS) == canonical(value), hex(code)


@FAST
@given(
    st.dictionaries(
        st.text(st.characters(max_codepoint=0xFFFF, exclude_categories=["Cs"]), max_size=4),
        st.integers(0, 9),
        max_size=8,
    )
)
def test_orjson_sorts_bmp_member_names_as_canonical_does(value: dict[str, int]) -> None:
    assert orjson.dumps(value, option=orjson.OPT_SORT_KEYS) == canonical(value)


@pytest.mark.parametrize(
    "text",
    [
        "[1.0]",
        '{"a":1e3}',
        "[-0.5]",
        "[9007199254740992]",
        "[-9007199254740992]",
        "1.0",
        "[" * 33 + "]" * 33,
        '{"a":1,"a":1}',
        '"\\ud800"',
        '"\\ud83d\\ude00"',
        '"\U0001f600"',
    ],
)
def test_bytes_fast_path_leaves_these_to_the_full_path(text: str) -> None:
    assert not _fast_accepts(text.encode("utf-8"))


# --- what the fast path must leave to the full one ---------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"a":1,"a":1}',
        '{"a":1,"a":2}',
        '{"a":{"b":1,"b":1}}',
        '[{"k":null,"k":null}]',
        '{"a":1,"\\u0061":1}',
    ],
)
def test_duplicate_keys_are_refused(text: str) -> None:
    """The fast path needs no duplicate-key hook: a duplicate never survives its comparison."""
    assert not _fast_accepts(text)
    with pytest.raises(CanonicalError, match=r"duplicate|canonical"):
        parse(text.encode(), require_canonical=True)
    with pytest.raises(CanonicalError):
        parse(text, require_canonical=True)


def test_integer_range_and_spelling() -> None:
    for good in (MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER, 0, 1, -1):
        assert parse(str(good).encode(), require_canonical=True) == good
        assert _fast_accepts(str(good))
    for bad in ("9007199254740992", "-9007199254740992", "1" + "0" * 40, "9" * 5000):
        with pytest.raises(CanonicalError):
            parse(bad.encode(), require_canonical=True)
        with pytest.raises(CanonicalError):
            parse(f"[{bad}]".encode(), require_canonical=True)
    for bad in ("-0", "1.0", "1e3", "-0.0", "01", "+1", "NaN", "Infinity", "-Infinity"):
        with pytest.raises(CanonicalError):
            parse(bad.encode(), require_canonical=True)


def _nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


def test_depth_limit() -> None:
    assert parse(_nested(32).encode(), require_canonical=True) is not None
    assert _fast_accepts(_nested(32))
    for too_deep in (_nested(33), '{"a":' * 33 + "1" + "}" * 33, _nested(33).replace("1", "[]")):
        with pytest.raises(CanonicalError):
            parse(too_deep.encode(), require_canonical=True)
    # Brackets inside strings count towards the fast path's bound, never towards the depth.
    text = '["' + "[{" * 40 + '"]'
    assert not _fast_accepts(text)
    assert parse(text.encode(), require_canonical=True) == ["[{" * 40]


def test_astral_member_names_sort_by_utf16_units() -> None:
    value = {"\U0001f600": 1, "\ufb33": 2, "a": 3}
    raw = canonical(value)
    assert raw.index("\U0001f600".encode()) < raw.index("\ufb33".encode())
    assert parse(raw, require_canonical=True) == value
    code_point_order = json.dumps(
        value, ensure_ascii=False, sort_keys=True, separators=(",", ":")
    ).encode()
    assert code_point_order != raw
    with pytest.raises(CanonicalError):
        parse(code_point_order, require_canonical=True)


@pytest.mark.parametrize("text", ['"\ud800"', '["\udfff"]', '{"\ud83d":1}', '"a\ud83dz"'])
def test_str_input_with_a_raw_surrogate_is_refused(text: str) -> None:
    assert not _fast_accepts(text)
    with pytest.raises(CanonicalError):
        parse(text, require_canonical=True)


@pytest.mark.parametrize("text", ['"\\ud800"', '"\\ud83d\\ude00"', '{"\\ud83d\\ude00":1}'])
def test_escaped_surrogates_are_refused(text: str) -> None:
    with pytest.raises(CanonicalError):
        parse(text.encode(), require_canonical=True)


# --- properties --------------------------------------------------------------------------------

_CHARS = st.one_of(
    st.sampled_from(["\x00", "\x1f", '"', "\\", "\u2028", "\ue000", "\ufb33", "\U0001f600"]),
    st.characters(exclude_categories=["Cs"]),
)
_TEXT = st.text(_CHARS, max_size=6)
_INTS = st.one_of(
    st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER),
    st.sampled_from([MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER, MAX_SAFE_INTEGER + 1, 2**64]),
)
VALUES = st.recursive(
    # Floats are outside the subset: every path must refuse them, at any depth.
    st.one_of(st.none(), st.booleans(), _INTS, _TEXT, st.floats(allow_nan=False)),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(_TEXT, children, max_size=5)
    ),
    max_leaves=20,
)


def _spellings(value: Any) -> Iterator[str]:
    """Several JSON texts of a value: canonical-looking and not."""
    yield json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    yield json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    yield json.dumps(value, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
    yield json.dumps(value, ensure_ascii=False, sort_keys=True)


@FAST
@given(VALUES)
def test_fast_and_full_paths_decide_alike(value: Any) -> None:
    for text in _spellings(value):
        _same_decision(text.encode("utf-8", "surrogatepass"))
        _same_decision(text)


@FAST
@given(VALUES, st.data())
def test_fast_and_full_paths_decide_alike_on_mutations(value: Any, data: st.DataObject) -> None:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    raw = bytearray(text.encode("utf-8"))
    for _ in range(data.draw(st.integers(1, 3))):
        kind = data.draw(st.sampled_from(["replace", "insert", "delete"]))
        at = data.draw(st.integers(0, len(raw)))
        byte = data.draw(st.sampled_from(b'{}[]",:0-1a\\ \xf0\x9f\x98\x80\xed\xa0'))
        if kind == "insert":
            raw.insert(at, byte)
        elif at < len(raw) and kind == "replace":
            raw[at] = byte
        elif at < len(raw):
            del raw[at]
    _same_decision(bytes(raw))


@FAST
@given(VALUES)
def test_duplicated_member_is_always_refused(value: Any) -> None:
    """Any object with one member written twice is refused, whatever the value."""
    try:
        encoded = canonical({"k": value, "z": 1}).decode("utf-8")
    except CanonicalError:
        return  # outside the subset anyway
    member = encoded[1 : encoded.rindex(',"z":')]  # '"k":<value>'
    for text in (f"{{{member},{member}}}", f"[{{{member},{member}}}]"):
        assert not _fast_accepts(text)
        with pytest.raises(CanonicalError):
            parse(text.encode(), require_canonical=True)


# --- base64url -------------------------------------------------------------------------------


def _b64d_reference(text: Any) -> bytes:
    """b64d as first written: decode, then insist the re-encoding gives back the text."""
    if not isinstance(text, str) or "=" in text or len(text) % 4 == 1:
        raise CanonicalError("not unpadded base64url")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CanonicalError("not unpadded base64url") from exc
    if b64e(raw) != text:
        raise CanonicalError("base64url has non-zero trailing bits")
    return raw


_B64_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@FAST
@given(
    st.one_of(
        st.text(st.sampled_from(_B64_CHARS), max_size=12),
        st.text(st.sampled_from(_B64_CHARS + "+/= \n\t.\u0661\uff21"), max_size=12),
        st.binary(max_size=9).map(b64e),
    )
)
def test_b64d_matches_its_reference(text: str) -> None:
    assert _outcome(b64d, text) == _outcome(_b64d_reference, text)


@pytest.mark.parametrize("text", [None, 1, b"AA", "AA==", "A", "AB", "AAB", "AA\n", "A A", "A+"])
def test_b64d_refusals(text: Any) -> None:
    with pytest.raises(CanonicalError):
        b64d(text)
    with pytest.raises(CanonicalError):
        _b64d_reference(text)
