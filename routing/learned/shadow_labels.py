"""Labels from shadow trials: `podium router train --from-shadow`.

A shadow trial answered one real request with two models: the one that served the client and
the candidate. Whichever of the two is cheaper (by the deployments' token prices) is the weak
tier, the other the strong one, and the pair is a label on the user's own traffic:

    weak    1.0 when the cheap answer passed the cascade's checks and agreed with the dear one
            (the judge's verdict where one graded it, else the similarity threshold), else 0.0
    strong  1.0 when the dear answer passed its checks, else 0.0

so "the cheap model said the same and said it well" is weak-correct, "the cheap one refused or
wandered off" is strong-only. A trial whose candidate failed, or whose request kept no features
(PII found, confidential or restricted data, features off: see docs/learned-router.md,
"Privacy"), is skipped and counted. Like the other label sources (labels.py, outcomes.py), this
is an iterator of labels that training never needs to know the origin of.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson

from routing.learned.features import RecordedFeatures
from routing.learned.outcomes import KINDS, AuditLabel, LabelReport


def shadow_labels(pairs: Iterable[Mapping[str, Any]], embedder: str,
                  params: Mapping[str, Any], skipped: Any = None) -> Iterator[AuditLabel]:
    """A label for each usable stored pair (`ShadowPair` as a mapping); the reason for each
    unusable one is counted in `skipped` (a Counter), when given."""
    for pair in pairs:
        found = _label(pair, embedder, params)
        if isinstance(found, str):
            if skipped is not None:
                skipped[found] += 1
            continue
        yield found


def labels_from_shadow(pairs: Iterable[Mapping[str, Any]], embedder: str,
                       params: Mapping[str, Any]) -> LabelReport:
    report = LabelReport()
    for label in shadow_labels(pairs, embedder, params, report.skipped):
        report.labels.append(label)
        report.kinds[label.kind] += 1
    return report


def summary(report: LabelReport) -> str:
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(report.kinds.items())) or "none"
    skipped = ", ".join(f"{n} {k}" for k, n in sorted(report.skipped.items())) or "none"
    return f"{len(report.labels)} labels from shadow trials ({kinds}); skipped: {skipped}"


def _label(pair: Mapping[str, Any], embedder: str,
           params: Mapping[str, Any]) -> AuditLabel | str:
    if pair.get("status") != "ok" or pair.get("agreed") is None:
        return "candidate failed"
    raw = pair.get("features")
    if not raw:
        return "no features kept"
    try:
        features = RecordedFeatures.from_json(orjson.loads(raw) if isinstance(raw, str)
                                              else raw)
    except (KeyError, TypeError, ValueError):
        return "unreadable features"
    if features.embedder != embedder or dict(features.params) != dict(params):
        return "features of another embedder"
    agreed = bool(pair["agreed"])
    primary_ok, candidate_ok = bool(pair.get("primary_passed")), \
        bool(pair.get("candidate_passed"))
    if pair.get("candidate_cheaper"):
        weak, strong = candidate_ok and agreed, primary_ok
    else:
        weak, strong = primary_ok and agreed, candidate_ok
    return AuditLabel(features, float(weak), float(strong), KINDS[(weak, strong)])
