"""Canonical JSON (RFC 8785 subset), base64url and hex: the vectors and properties.

The vectors in vectors.json are the contract of docs/encoding.md; the property tests compare
rekam.encoding with the reference RFC 8785 implementation (the rfc8785 package) on random
values of the subset.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rekam.encoding import (
    MAX_SAFE_INTEGER,
    CanonicalError,
    b64d,
    b64e,
    canonical,
    digest,
    from_hex,
    parse,
)

HERE = Path(__file__).parent
VECTORS = json.loads((HERE / "vectors.json").read_text(encoding="utf-8"))

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
QUICK = settings(FAST, max_examples=120)


def _raw(case: dict[str, Any]) -> bytes:
    if "input_hex" in case:
        return bytes.fromhex(case["input_hex"])
    return str(case["input"]).encode("utf-8")


def _ids(cases: list[dict[str, Any]]) -> list[str]:
    return [c["name"] for c in cases]


# --- the vectors file ----------------------------------------------------------------------


def test_vectors_file_is_up_to_date() -> None:
    """vectors.json is exactly what make_vectors.py produces from the current code."""
    spec = importlib.util.spec_from_file_location("rekam_make_vectors", HERE / "make_vectors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = (HERE / "vectors.json").read_text(encoding="utf-8")
    assert module.render() == expected, "run tests/encoding/make_vectors.py and review the diff"


def test_vectors_file_is_ascii() -> None:
    assert (HERE / "vectors.json").read_bytes().isascii()


# --- canonical encoding: vectors -----------------------------------------------------------


@pytest.mark.parametrize("case", VECTORS["canonical"], ids=_ids(VECTORS["canonical"]))
def test_canonical_vector(case: dict[str, Any]) -> None:
    expected = bytes.fromhex(case["canonical_hex"])
    assert expected == case["canonical"].encode("utf-8")
    value = parse(_raw(case))
    assert canonical(value) == expected
    # The reference implementation agrees on every vector.
    assert rfc8785.dumps(json.loads(case["input"])) == expected
    # The canonical bytes are accepted as canonical and decode to the same value ...
    assert parse(expected, require_canonical=True) == value
    assert canonical(parse(expected)) == expected
    # ... and the input, when it differs from them, is refused as non-canonical.
    if _raw(case) != expected:
        with pytest.raises(CanonicalError):
            parse(_raw(case), require_canonical=True)


def test_canonical_vectors_cover_utf16_ordering() -> None:
    """At least one vector orders keys differently by UTF-16 units than by code points."""
    differing = 0
    for case in VECTORS["canonical"]:
        for obj in _objects(parse(case["canonical"])):
            keys = list(obj)
            assert keys == sorted(keys, key=lambda k: k.encode("utf-16-be"))
            differing += keys != sorted(keys)
    assert differing >= 2


def _objects(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        return [value, *(o for v in value.values() for o in _objects(v))]
    if isinstance(value, list):
        return [o for v in value for o in _objects(v)]
    return []


# --- canonical encoding: rejections --------------------------------------------------------


@pytest.mark.parametrize("case", VECTORS["rejections"], ids=_ids(VECTORS["rejections"]))
def test_rejection_vector_is_not_canonical(case: dict[str, Any]) -> None:
    """No rejection input is accepted where canonical bytes are required."""
    with pytest.raises(CanonicalError):
        parse(_raw(case), require_canonical=True)


def _outside(case: dict[str, Any]) -> bool:
    return bool(case["value_outside_subset"])


OUTSIDE = [c for c in VECTORS["rejections"] if _outside(c)]
BYTES_ONLY = [c for c in VECTORS["rejections"] if not _outside(c)]


@pytest.mark.parametrize("case", OUTSIDE, ids=_ids(OUTSIDE))
def test_rejection_vector_has_no_canonical_form(case: dict[str, Any]) -> None:
    """Values outside the subset cannot be parsed and re-encoded either."""
    with pytest.raises(CanonicalError):
        canonical(parse(_raw(case)))


@pytest.mark.parametrize(
    "case",
    OUTSIDE,
    ids=_ids(OUTSIDE),
)
def test_rejection_vector_refused_by_lenient_parse(case: dict[str, Any]) -> None:
    """parse() refuses values outside the subset even when it does not insist on canonical."""
    with pytest.raises(CanonicalError):
        parse(_raw(case))


@pytest.mark.parametrize("case", BYTES_ONLY, ids=_ids(BYTES_ONLY))
def test_rejection_vector_only_the_bytes_are_wrong(case: dict[str, Any]) -> None:
    """Merely non-canonical bytes are refused (BOM, UTF-16) or re-encode differently."""
    try:
        value = parse(_raw(case))
    except CanonicalError:
        return
    assert canonical(value) != _raw(case)


@pytest.mark.parametrize(
    "value",
    [
        1.0,
        0.5,
        float("nan"),
        float("inf"),
        -0.0,
        [1, 2.5],
        {"a": 1e3},
        MAX_SAFE_INTEGER + 1,
        -MAX_SAFE_INTEGER - 1,
        2**64,
        {1: "int key"},
        {None: 1},
        b"bytes",
        {"a"},
        object(),
        "\ud800",
        "\udfff",
        ["\udc00"],
        {"\ud800": 1},
        {"k": "x\ud83d"},
    ],
    ids=repr,
)
def test_canonical_refuses_values_outside_the_subset(value: Any) -> None:
    with pytest.raises(CanonicalError):
        canonical(value)


def test_canonical_refuses_lone_surrogate_key_next_to_astral_key() -> None:
    with pytest.raises(CanonicalError):
        canonical({"\ud800": 1, "\U0001f600": 2})


def test_canonical_depth_limit() -> None:
    deep: Any = 1
    for _ in range(32):
        deep = [deep]
    assert canonical(deep) == b"[" * 32 + b"1" + b"]" * 32
    with pytest.raises(CanonicalError):
        canonical([deep])
    with pytest.raises(CanonicalError):
        canonical({"a": deep})


def test_canonical_accepts_tuples_and_exact_bool_int() -> None:
    assert canonical((1, (True, None))) == b"[1,[true,null]]"
    assert canonical({"b": False, "a": 0}) == b'{"a":0,"b":false}'
    assert canonical(MAX_SAFE_INTEGER) == b"9007199254740991"
    assert canonical(-MAX_SAFE_INTEGER) == b"-9007199254740991"


def test_parse_refuses_raw_lone_surrogate_in_text() -> None:
    # A str input may hold a raw unpaired surrogate: it has no UTF-8 form, so no canonical one.
    with pytest.raises(CanonicalError):
        canonical(parse('"\ud800"'))


def test_parse_require_canonical_refuses_invalid_utf8() -> None:
    with pytest.raises(CanonicalError):
        parse(b'{"a":"\xff"}', require_canonical=True)


def test_digest_is_sha256_of_canonical_bytes() -> None:
    value = {"b": [1, "\u20ac"], "a": None}
    assert digest(value) == hashlib.sha256(canonical(value)).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", digest(value))


# --- canonical encoding: properties against the reference implementation ------------------

# Every Unicode scalar value (no surrogates), biased toward the characters whose order or
# escaping is interesting: controls, quote/backslash, U+E000..U+FFFF and the astral planes.
_TRICKY = st.sampled_from(
    [
        "\x00",
        "\x1f",
        "\x7f",
        '"',
        "\\",
        "/",
        "\u2028",
        "\u20ac",
        "\ud7ff",
        "\ue000",
        "\ufb33",
        "\ufeff",
        "\uffff",
        "\U00010000",
        "\U0001f600",
        "\U0010ffff",
    ]
)
_CHARS = st.one_of(_TRICKY, st.characters(exclude_categories=["Cs"]))
_TEXT = st.text(_CHARS, max_size=8)
_INTS = st.one_of(
    st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER),
    st.sampled_from([0, -1, MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER, 2**31, 2**32]),
)
_SCALARS = st.one_of(st.none(), st.booleans(), _INTS, _TEXT)
VALUES = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(_TEXT, children, max_size=6),
    ),
    max_leaves=25,
)


@FAST
@given(VALUES)
def test_canonical_matches_reference_and_round_trips(value: Any) -> None:
    encoded = canonical(value)
    assert encoded == rfc8785.dumps(value)
    assert parse(encoded) == value
    assert parse(encoded, require_canonical=True) == value
    assert parse(encoded.decode("utf-8"), require_canonical=True) == value
    assert canonical(parse(encoded)) == encoded


@FAST
@given(st.dictionaries(_TEXT, _INTS, min_size=2, max_size=12))
def test_key_order_matches_reference_implementation(value: dict[str, int]) -> None:
    assert canonical(value) == rfc8785.dumps(value)


@QUICK
@given(VALUES, st.sampled_from(["indent", "ascii", "spaces", "unsorted"]))
def test_require_canonical_refuses_other_serialisations(value: Any, style: str) -> None:
    if style == "indent":
        text = json.dumps(value, ensure_ascii=False, indent=1, sort_keys=True)
    elif style == "ascii":
        text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), sort_keys=True)
    elif style == "spaces":
        text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    else:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    raw = text.encode("utf-8")
    assert parse(raw) == value
    if raw == canonical(value):
        assert parse(raw, require_canonical=True) == value
    else:
        with pytest.raises(CanonicalError):
            parse(raw, require_canonical=True)


@QUICK
@given(VALUES, st.data())
def test_inserted_whitespace_is_not_canonical(value: Any, data: st.DataObject) -> None:
    encoded = canonical(value)
    # Whitespace is legal JSON before or after any token; insert it at a token boundary.
    boundaries = [0, len(encoded)] + [
        i for i in range(1, len(encoded)) if encoded[i - 1 : i] in (b",", b":", b"[", b"{")
    ]
    at = data.draw(st.sampled_from(sorted(set(boundaries))))
    ws = data.draw(st.sampled_from([b" ", b"\t", b"\n", b"\r"]))
    mutated = encoded[:at] + ws + encoded[at:]
    try:
        lenient = parse(mutated)
    except CanonicalError:
        return  # landed inside a string: a raw control character is not JSON
    if lenient == value:  # else it landed inside a string and changed it
        with pytest.raises(CanonicalError):
            parse(mutated, require_canonical=True)


# --- base64url -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", VECTORS["base64url"]["valid"], ids=lambda c: c["hex"] or "empty")
def test_base64url_vector(case: dict[str, str]) -> None:
    raw = bytes.fromhex(case["hex"])
    assert b64e(raw) == case["b64url"]
    assert b64d(case["b64url"]) == raw


@pytest.mark.parametrize("case", VECTORS["base64url"]["invalid"], ids=lambda c: repr(c["b64url"]))
def test_base64url_invalid_vector(case: dict[str, str]) -> None:
    with pytest.raises(CanonicalError):
        b64d(case["b64url"])


@FAST
@given(st.binary(max_size=70))
def test_base64url_round_trip(raw: bytes) -> None:
    text = b64e(raw)
    assert re.fullmatch(r"[A-Za-z0-9_-]*", text)
    assert len(text) == (len(raw) * 4 + 2) // 3
    assert b64d(text) == raw


@FAST
@given(st.binary(min_size=1, max_size=40))
def test_base64url_refuses_padding_and_standard_alphabet(raw: bytes) -> None:
    text = b64e(raw)
    padded = text + "=" * (-len(text) % 4 or 4)
    with pytest.raises(CanonicalError):
        b64d(padded)
    standard = text.replace("-", "+").replace("_", "/")
    if standard != text:
        with pytest.raises(CanonicalError):
            b64d(standard)
    with pytest.raises(CanonicalError):
        b64d(text.encode("ascii"))  # type: ignore[arg-type]


@FAST
@given(st.binary(min_size=1, max_size=40).filter(lambda b: len(b) % 3 != 0), st.data())
def test_base64url_refuses_non_zero_trailing_bits(raw: bytes, data: st.DataObject) -> None:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    text = b64e(raw)
    unused = 4 if len(raw) % 3 == 1 else 2  # bits of the last character beyond the data
    last = alphabet.index(text[-1])
    noise = data.draw(st.integers(1, (1 << unused) - 1))
    mutated = text[:-1] + alphabet[last | noise]
    with pytest.raises(CanonicalError):
        b64d(mutated)


# --- hex -----------------------------------------------------------------------------------


def test_from_hex_accepts_lowercase() -> None:
    assert from_hex("00ff10") == b"\x00\xff\x10"
    assert from_hex("ab" * 32, 32) == b"\xab" * 32
    assert from_hex("") == b""


@pytest.mark.parametrize(
    ("text", "length"),
    [
        ("AB", None),
        ("aB", None),
        ("abc", None),
        ("zz", None),
        ("0x00", None),
        ("ab" * 31, 32),
        ("ab" * 33, 32),
        (b"ab", None),
        (None, None),
        ("\uff10\uff10", None),
    ],
)
def test_from_hex_rejects(text: Any, length: int | None) -> None:
    with pytest.raises(CanonicalError):
        from_hex(text, length)


@pytest.mark.parametrize("text", ["ab cd", " abcd", "abcd\n", "ab\tcd"])
def test_from_hex_rejects_whitespace(text: str) -> None:
    with pytest.raises(CanonicalError):
        from_hex(text)
