"""id_kind answers from its memo exactly as it computes afresh."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rekam.ledger import tx as txmod
from rekam.ledger.tx import id_kind, new_id

_SHAPES = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"[a-z0-9][a-z0-9-]{2,62}", fullmatch=True),
    st.from_regex(r"[mprcex]-[0-9a-f]{32}", fullmatch=True),
    st.sampled_from([new_id("member"), new_id("record"), "klinik-a", "m-" + "A" * 32, ""]),
)


@given(_SHAPES)
def test_memoised_answer_equals_a_fresh_one(value: str) -> None:
    fresh = txmod._id_kind(value)
    assert id_kind(value) == fresh
    assert id_kind(value) == fresh  # second time from the memo


def test_known_kinds_and_non_strings() -> None:
    assert id_kind("klinik-a") == "org"
    assert id_kind(new_id("patient")) == "patient"
    assert id_kind("p-" + "0" * 31 + "\n") is None
    assert id_kind(12) is None
    assert id_kind(None) is None

    class Text(str):
        pass

    assert id_kind(Text("klinik-a")) == "org"  # a str subclass is judged, not memoised
    assert all(type(k) is str for k in txmod._KINDS)


def test_the_memo_is_bounded() -> None:
    limit = txmod._KINDS_LIMIT
    for i in range(limit + 10):
        id_kind(f"org-{i:06d}")
    assert len(txmod._KINDS) <= limit
    assert id_kind("org-000001") == "org"
