"""What the gateway's own records teach the learned router: `podium router train --from-audit`.

A request routed by a cascade or a learned rule gets a `router` section in its audit record
(`router_section`): the strategy, the plan's first deployment, which tier answered, the
cascade's check verdicts, the learned decision, and, where the audit trail may keep them, the
prompt's features (the embedder's nonzero coordinates and the sizes; never the text). Feedback
(`POST /v1/feedback`) is its own audit event, joined by request id.

Labels (`weak`, `strong`: did the cheap tier / the strong tier answer adequately):

    what the gateway saw                                         weak strong  kind
    cascade: the first deployment's answer passed its checks       1     1    weak-correct
    cascade: it failed, a later answer passed                       0     1    strong-only
    cascade: every answer failed its checks                         0     0    neither
    feedback >= pass score on an answer of the weak tier            1     1    weak-correct
    feedback <  pass score on an answer of the weak tier            0     1    strong-only
    feedback <  pass score on an answer of the strong tier          0     0    neither
    feedback >= pass score on an answer of the strong tier          -     -    skipped

Feedback wins over a check on the same answer (a person judged it; the check is a heuristic).
Where one side was not observed, it is filled by one assumption, the one routing by quality
already makes: the strong tier does at least as well as the weak one. So a weak answer that
was good says the strong one would have been good too, a weak answer that was bad says the
strong one was needed, and a bad strong answer says the weak one would have failed as well.
Nothing is assumed about the weak tier from a good strong answer: that request is skipped, which
is why a learned rule on its own learns slowly, and why a cascade (which tries the cheap tier on
every request) is the best teacher: run one on a share of traffic to collect labels.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from routing.learned.features import RecordedFeatures

if TYPE_CHECKING:
    from routing.router import RoutePlan

PASS_SCORE = 0.5
KINDS = {(True, True): "weak-correct", (False, True): "strong-only",
         (False, False): "neither", (True, False): "weak-only"}


def answer_tier(plan: RoutePlan, answered: str | None) -> str | None:
    """"weak" when the plan's first deployment answered a request planned at the cheap level
    (a cascade always is; a learned rule when it required no more than its floor), "strong"
    when a later deployment answered a cascade or the learned rule escalated; None otherwise
    (no answer, or a fallback that says nothing about either tier)."""
    if answered is None or not plan.chain:
        return None
    first = plan.chain[0].id
    if plan.strategy == "cascade":
        return "weak" if answered == first else "strong"
    learned = plan.learned
    if plan.strategy != "learned" or learned is None:
        return None
    if learned.required_quality > learned.floor:
        return "strong"
    return "weak" if answered == first else None


def router_section(plan: RoutePlan, answered: str | None,
                   checks: Sequence[tuple[str, bool]],
                   features: RecordedFeatures | None) -> dict[str, Any] | None:
    """The `router` section of a request's audit record (None for other strategies)."""
    if plan.strategy not in ("cascade", "learned") or not plan.chain:
        return None
    section: dict[str, Any] = {
        "strategy": plan.strategy, "first": plan.chain[0].id,
        "tier": answer_tier(plan, answered),
        "checks": [{"deployment": d, "passed": ok} for d, ok in checks]}
    if plan.learned is not None:
        d = plan.learned
        section["learned"] = {"score": d.score, "threshold": d.threshold,
                              "decision": d.decision, "min_quality": d.min_quality,
                              "header_override": d.header_override}
    if features is not None:
        section["features"] = features.to_json()
        section["embedder"] = features.embedder   # a flat field the stores can filter on
    return section


@dataclass(frozen=True, slots=True)
class AuditLabel:
    features: RecordedFeatures
    weak: float
    strong: float
    kind: str


@dataclass
class LabelReport:
    labels: list[AuditLabel] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    feedback_used: int = 0

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.kinds.items())) or "none"
        skipped = ", ".join(f"{n} {k}" for k, n in sorted(self.skipped.items())) or "none"
        return (f"{len(self.labels)} labels from the audit trail ({kinds}; feedback used on "
                f"{self.feedback_used}); skipped: {skipped}")


def feedback_by_request(events: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Mean feedback score per request id, from `event: feedback` audit records."""
    scores: dict[str, list[float]] = {}
    for event in events:
        score = event.get("score")
        if isinstance(score, (int, float)) and event.get("request_id"):
            scores.setdefault(str(event["request_id"]), []).append(float(score))
    return {rid: sum(s) / len(s) for rid, s in scores.items()}


def labels_from_audit(requests: Iterable[Mapping[str, Any]], feedback: Mapping[str, float],
                      embedder: str, params: Mapping[str, Any],
                      pass_score: float = PASS_SCORE) -> LabelReport:
    """Labels (see the module docstring) from request records with a `router` section, for
    the features made by `embedder` with `params`; everything else is counted as skipped."""
    report = LabelReport()
    for record in requests:
        section = record.get("router")
        if not isinstance(section, Mapping):
            continue
        features = _features(section, embedder, params)
        if isinstance(features, str):
            report.skipped[features] += 1
            continue
        score = feedback.get(str(record.get("request_id")))
        outcome = _outcome(section, score, pass_score)
        if outcome is None:
            report.skipped["no outcome for the cheap tier"] += 1
            continue
        weak, strong = outcome
        kind = KINDS[(weak, strong)]
        report.labels.append(AuditLabel(features, float(weak), float(strong), kind))
        report.kinds[kind] += 1
        report.feedback_used += score is not None and section.get("tier") is not None
    return report


def _features(section: Mapping[str, Any], embedder: str,
              params: Mapping[str, Any]) -> RecordedFeatures | str:
    raw = section.get("features")
    if raw is None:
        return "no features kept"
    try:
        features = RecordedFeatures.from_json(raw)
    except (KeyError, TypeError, ValueError):
        return "unreadable features"
    if features.embedder != embedder or dict(features.params) != dict(params):
        return "features of another embedder"
    return features


def _outcome(section: Mapping[str, Any], feedback: float | None,
             pass_score: float) -> tuple[bool, bool] | None:
    weak: bool | None = None
    strong: bool | None = None
    checks = [c for c in section.get("checks") or () if isinstance(c, Mapping)]
    if checks and checks[0].get("deployment") == section.get("first"):
        weak = bool(checks[0].get("passed"))
        if len(checks) > 1:
            strong = bool(checks[-1].get("passed"))
    tier = section.get("tier")
    if feedback is not None and tier in ("weak", "strong"):
        if tier == "weak":
            weak = feedback >= pass_score
        else:
            strong = feedback >= pass_score
    if weak is not None and strong is None:
        strong = True                 # the strong tier does at least as well as the weak one
    if strong is False and weak is None:
        weak = False
    return None if weak is None or strong is None else (weak, strong)
