"""Labels from the gateway's own records (routing/learned/outcomes.py): the semantics table row
by row, the tier of an answer, and what is skipped and why."""

from __future__ import annotations

from typing import Any

import pytest

from routing.learned.features import RecordedFeatures
from routing.learned.outcomes import feedback_by_request, labels_from_audit

PARAMS = {"bits": 18, "word_ngrams": 2, "char_ngrams": None}
FEATURES = RecordedFeatures("hashed", PARAMS, (3, 77), (0.6, 0.8), 20, 20, 1).to_json()


def record(rid: str, tier: str | None, checks: tuple[tuple[str, bool], ...] = (),
           strategy: str = "cascade", features: Any = FEATURES) -> dict[str, Any]:
    router = {"strategy": strategy, "first": "cheap", "tier": tier,
              "checks": [{"deployment": d, "passed": ok} for d, ok in checks]}
    if features is not None:
        router |= {"features": features, "embedder": "hashed"}
    return {"request_id": rid, "router": router}


def label(rec: dict[str, Any], feedback: float | None = None) -> tuple[float, float, str] | None:
    scores = {rec["request_id"]: feedback} if feedback is not None else {}
    report = labels_from_audit([rec], scores, "hashed", PARAMS)
    if not report.labels:
        return None
    [one] = report.labels
    return one.weak, one.strong, one.kind


@pytest.mark.parametrize(("rec", "feedback", "expected"), [
    # cascade checks
    (record("a", "weak", (("cheap", True),)), None, (1.0, 1.0, "weak-correct")),
    (record("b", "strong", (("cheap", False), ("strong", True))), None,
     (0.0, 1.0, "strong-only")),
    (record("c", "strong", (("cheap", False), ("strong", False))), None,
     (0.0, 0.0, "neither")),
    # the cheap deployment failed upstream, so its answer was never judged
    (record("d", "strong", (("strong", True),)), None, None),
    # feedback, on a learned rule's answers
    (record("e", "weak", strategy="learned"), 0.9, (1.0, 1.0, "weak-correct")),
    (record("f", "weak", strategy="learned"), 0.1, (0.0, 1.0, "strong-only")),
    (record("g", "strong", strategy="learned"), 0.1, (0.0, 0.0, "neither")),
    (record("h", "strong", strategy="learned"), 0.9, None),   # says nothing about the weak
    (record("i", "weak", strategy="learned"), None, None),    # no outcome at all
    # feedback wins over the check on the same answer
    (record("j", "weak", (("cheap", True),)), 0.2, (0.0, 1.0, "strong-only")),
    (record("k", "strong", (("cheap", False), ("strong", True))), 0.0,
     (0.0, 0.0, "neither")),
    (record("l", "weak", (("cheap", True),)), 0.5, (1.0, 1.0, "weak-correct")),  # pass score
])
def test_each_row_of_the_label_table(rec: dict[str, Any], feedback: float | None,
                                     expected: tuple[float, float, str] | None) -> None:
    assert label(rec, feedback) == expected


def test_what_is_skipped_is_counted_with_its_reason() -> None:
    records = [record("a", "weak", (("cheap", True),)),
               record("b", "weak", (("cheap", True),), features=None),
               record("c", "weak", (("cheap", True),), features={**FEATURES, "index": "x"}),
               record("d", "weak", (("cheap", True),),
                      features={**FEATURES, "params": {**PARAMS, "bits": 16}}),
               record("e", "weak", strategy="learned"),
               {"request_id": "f"}]
    report = labels_from_audit(records, {"a": 0.2}, "hashed", PARAMS)
    assert [la.kind for la in report.labels] == ["strong-only"]
    assert report.feedback_used == 1
    assert dict(report.skipped) == {"no features kept": 1, "unreadable features": 1,
                                    "features of another embedder": 1,
                                    "no outcome for the cheap tier": 1}
    assert report.summary().startswith("1 labels from the audit trail (strong-only 1; "
                                       "feedback used on 1)")


def test_feedback_is_averaged_per_request() -> None:
    events = [{"request_id": "a", "score": 1.0}, {"request_id": "a", "score": 0.0},
              {"request_id": "b", "score": 0.75}, {"request_id": "c"}]
    assert feedback_by_request(events) == {"a": 0.5, "b": 0.75}


def test_recorded_features_survive_their_json() -> None:
    features = RecordedFeatures("hashed", PARAMS, (1, 2), (0.5, 0.25), 10, 30, 3)
    assert RecordedFeatures.from_json(features.to_json()) == features
    assert features.features().sizes() == pytest.approx(
        (2.3978952728, 3.4339872045, 1.0986122887))
    with pytest.raises(ValueError):
        RecordedFeatures.from_json({**features.to_json(), "value": [0.5]})
