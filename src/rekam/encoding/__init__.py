"""Canonical bytes: the one place that makes every byte Rekam hashes or signs.

The encoding is RFC 8785 (JSON Canonicalization Scheme) restricted to a subset that every
language can reproduce exactly: objects with string keys, arrays, strings, booleans, null and
integers in the IEEE-754 safe range (|n| <= 2**53 - 1). Floats are refused, because their
textual form is where independent implementations disagree. Binary values travel as
unpadded base64url strings, digests and identifiers as lowercase hex. docs/encoding.md is the
specification; tests/encoding/vectors.json holds the test vectors.
"""

from rekam.encoding._canonical import (
    MAX_SAFE_INTEGER,
    CanonicalError,
    b64d,
    b64e,
    canonical,
    digest,
    from_hex,
    parse,
    parse_accepted,
)

__all__ = [
    "MAX_SAFE_INTEGER",
    "CanonicalError",
    "b64d",
    "b64e",
    "canonical",
    "digest",
    "from_hex",
    "parse",
    "parse_accepted",
]
