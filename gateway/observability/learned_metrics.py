"""The learned router in `/metrics`: its decisions, and its calibration against its target.

    podium_learned_decisions_total{route, decision}   floor | escalate | unscored, per request
    podium_learned_target_strong_share{route}         the share a rule aims to escalate: its
                                                      `target_strong_share`, or the share its
                                                      head's labels call for
    podium_learned_target_relative_quality{route}     `min_relative_quality` (quality targets)
    podium_learned_threshold{route}                   the score threshold in force
    podium_learned_recent_strong_share{route}         the share of the recent window's scores
                                                      at or above that threshold

The realised strong share is escalate / (floor + escalate) of the decisions counter, summed
over workers; the gauges are each process's own (each calibrates on its own traffic) and under
`--workers` the scrape shows the most recent one written.
"""

from __future__ import annotations

from typing import Protocol

from gateway.observability import samples as plain


class LearnedState(Protocol):
    """What the metrics read from a learned rule (`routing.learned.runtime.LearnedRule`)."""

    @property
    def target_share(self) -> float:
        """The strong share aimed at."""
        ...

    def quality_target(self) -> float | None:
        """`min_relative_quality`, or None for a share target."""
        ...

    def threshold(self) -> float:
        """The score threshold in force."""
        ...

    def recent_share(self) -> float | None:
        """The recent window's share at or above the threshold (None: no window)."""
        ...


class LearnedMetrics:
    def __init__(self, samples: plain.Samples) -> None:
        self.decisions = samples.counter(
            "podium_learned_decisions_total", "Learned rules' decisions per request: floor, "
            "escalate, or unscored", ["route", "decision"])
        self.target_share = samples.gauge(
            "podium_learned_target_strong_share", "The share of requests a learned rule aims "
            "to escalate", ["route"], mode="livemostrecent")
        self.target_quality = samples.gauge(
            "podium_learned_target_relative_quality", "A learned rule's min_relative_quality",
            ["route"], mode="livemostrecent")
        self.threshold = samples.gauge(
            "podium_learned_threshold", "The difficulty score at or above which a learned "
            "rule escalates", ["route"], mode="livemostrecent")
        self.recent_share = samples.gauge(
            "podium_learned_recent_strong_share", "The share of a learned rule's recent "
            "scores at or above its threshold", ["route"], mode="livemostrecent")

    def calibration(self, rule: str, state: LearnedState) -> None:
        self.target_share.labels(rule).set(state.target_share)
        self.threshold.labels(rule).set(state.threshold())
        quality = state.quality_target()
        if quality is not None:
            self.target_quality.labels(rule).set(quality)
        recent = state.recent_share()
        if recent is not None:
            self.recent_share.labels(rule).set(recent)


Samples = dict[str, list[tuple[dict[str, str], float]]]  # parsed exposition: name → samples


def learned_report(samples: Samples) -> dict[str, dict[str, float | None]]:
    """Per learned rule, what the dashboard shows: the decisions since start, the realised
    strong share against the target, the threshold in force and the recent window's share."""
    decisions: dict[str, dict[str, float]] = {}
    for labels, value in samples.get("podium_learned_decisions_total", ()):
        counted = decisions.setdefault(labels.get("route", ""), {})
        decision = labels.get("decision", "")
        counted[decision] = counted.get(decision, 0.0) + value
    gauges = {name: {labels.get("route", ""): value for labels, value in samples.get(name, ())}
              for name in ("podium_learned_target_strong_share", "podium_learned_threshold",
                           "podium_learned_recent_strong_share",
                           "podium_learned_target_relative_quality")}
    report: dict[str, dict[str, float | None]] = {}
    for rule in sorted(set(decisions) | set(gauges["podium_learned_threshold"])):
        counts = decisions.get(rule, {})
        floor, escalate = counts.get("floor", 0.0), counts.get("escalate", 0.0)
        report[rule] = {
            "floor": floor, "escalate": escalate, "unscored": counts.get("unscored", 0.0),
            "strong_share": round(escalate / (floor + escalate), 4) if floor + escalate else None,
            "target_strong_share": gauges["podium_learned_target_strong_share"].get(rule),
            "target_relative_quality":
                gauges["podium_learned_target_relative_quality"].get(rule),
            "threshold": gauges["podium_learned_threshold"].get(rule),
            "recent_strong_share": gauges["podium_learned_recent_strong_share"].get(rule)}
    return report
