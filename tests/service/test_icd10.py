"""ICD-10 (WHO 2019) lookup and search: only codes valid for coding a diagnosis."""

from __future__ import annotations

import pytest

from rekam.service import icd10


def test_lookup_accepts_codable_codes_in_any_common_spelling() -> None:
    assert icd10.lookup("E11.9") == icd10.Icd10Code(
        "E11.9", "Type 2 diabetes mellitus without complications"
    )
    assert icd10.lookup(" e119 ").code == "E11.9"
    assert icd10.lookup("I10").display == "Essential (primary) hypertension"


@pytest.mark.parametrize(
    "code", ["E11", "A09", "A90", "E10-E14", "IV", "Z99.99", "E11.", "", "11.9", "E11.9x"]
)
def test_lookup_refuses_what_cannot_code_a_diagnosis(code: str) -> None:
    with pytest.raises(icd10.Icd10Error):
        icd10.lookup(code)


def test_search_by_code_prefix_words_and_limits() -> None:
    codes, total = icd10.search("E11")
    assert total == 10 and [c.code for c in codes][:2] == ["E11.0", "E11.1"]
    assert all(icd10.lookup(c.code) == c for c in codes)
    codes, total = icd10.search("diabetes")
    assert len(codes) == icd10.LIMIT and total > icd10.LIMIT
    assert [c.code for c in icd10.search("Dengue  WARNING")[0]] == ["A97.0", "A97.1"]
    assert [c.code for c in icd10.search("hypertens essential")[0]] == ["I10", "O10.0"]
    assert icd10.search("qqqqzz") == ([], 0)
    for bad in ("E", " ", "x" * 101, "--"):
        with pytest.raises(icd10.Icd10Error):
            icd10.search(bad)
