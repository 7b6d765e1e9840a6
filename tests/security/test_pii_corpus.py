"""PII coverage against a labelled corpus: recall per kind on the positives, and no finding at
all on prose written to look like them. Printed as a table with `pytest -s`."""

from __future__ import annotations

from collections import Counter

import pytest

from gateway.pipeline.pii import Pseudonymizer, detect
from tests.security.data.pii_corpus import POSITIVES, PROSE


def _found(kind: str, value: str, text: str) -> bool:
    return any(f.kind == kind and f.value == value for f in detect(text.format(value)))


def test_recall_and_precision_per_kind() -> None:
    hits, totals, false = Counter[str](), Counter[str](), Counter[str]()
    for kind, value, text in POSITIVES:
        totals[kind] += 1
        hits[kind] += _found(kind, value, text)
        false.update(f.kind for f in detect(text.format(value)) if f.value != value)
    for text in PROSE:
        false.update(f.kind for f in detect(text))
    rows = [f"{k:<7} recall {hits[k]}/{totals[k]}  false positives {false[k]}" for k in totals]
    print("\n" + "\n".join(rows))
    missed = [(k, v) for k, v, t in POSITIVES if not _found(k, v, t)]
    assert missed == []
    assert sum(false.values()) == 0, false


@pytest.mark.parametrize("text", PROSE)
def test_prose_has_no_findings(text: str) -> None:
    assert detect(text) == []


# Full-width digits, which NFKC folds to ASCII.
_WIDE = " ".join("".join(chr(ord(c) + 0xFEE0) for c in group) for group in ["4111"] * 4)


@pytest.mark.parametrize(("text", "value"), [
    ("mail jane\u200b.doe@example.com now", "jane\u200b.doe@example.com"),
    ("card 4111\u200b1111\u200b1111\u200b1111 ok", "4111\u200b1111\u200b1111\u200b1111"),
    (f"card {_WIDE} ok", _WIDE),
])
def test_obfuscated_values_are_masked_whole(text: str, value: str) -> None:
    p = Pseudonymizer()
    masked = p.mask(text)
    assert value not in masked and "\u200b" not in masked.split()[1]
    assert p.unmask(masked) == text
