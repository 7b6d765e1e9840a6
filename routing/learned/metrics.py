"""How good a router is: its quality-versus-strong-share curve and RouteLLM's numbers on it.

The curve is built exactly as RouteLLM's `evals/benchmarks.py` builds it: thresholds are the
scores' quantiles at 0, 1/n, ..., 1 (n = 10 bins by default, their `--num-results`); at each
threshold the prompts scoring at or above it (strictly above, for the last) go to the strong
model. APGR is their `evaluate.py`'s: the area under that curve (trapezoids over the strong share)
minus the weak model's area, over the strong minus the weak model's area. So an oracle scores
above 1 (it routes only the prompts that the strong model alone gets right) and random ~0.5.

The strong share needed to reach a quality is read off the same curve, at the first point where
the piecewise-linear curve reaches it (RouteLLM interpolates with `np.interp`, which assumes a
monotone curve; the first crossing is the same there and stays sane where it is not).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Curve = tuple[tuple[float, float], ...]  # (strong share, quality) pairs, share ascending


@dataclass(frozen=True, slots=True)
class RouterReport:
    router: str
    apgr: float
    calls_at_95: float | None         # strong share to reach 95 % of the strong model's quality
    share_for_50: float | None        # strong share to recover 50 % of the weak-strong gap
    share_for_80: float | None
    curve: Curve

    def row(self) -> dict[str, object]:
        return {"router": self.router, "apgr": round(self.apgr, 4),
                "calls_at_95": _round(self.calls_at_95), "share_for_50": _round(self.share_for_50),
                "share_for_80": _round(self.share_for_80),
                "curve": [[round(s, 4), round(q, 4)] for s, q in self.curve]}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def routing_curve(scores: Sequence[float] | np.ndarray, weak: np.ndarray, strong: np.ndarray,
                  bins: int = 10) -> Curve:
    """RouteLLM's curve: one point per score quantile, higher score → strong model."""
    s = np.asarray(scores, dtype=float)
    thresholds = np.quantile(s, np.linspace(0.0, 1.0, bins + 1))
    points = []
    for i, t in enumerate(thresholds):
        to_strong = s >= t if i < len(thresholds) - 1 else s > t
        points.append((float(to_strong.mean()),
                       float(np.where(to_strong, strong, weak).mean())))
    return tuple(sorted(points))


def oracle_scores(weak: np.ndarray, strong: np.ndarray) -> np.ndarray:
    """What an all-knowing router would score: strong-only wins, then ties, then weak-only."""
    scores: np.ndarray = np.sign(np.asarray(strong, float) - np.asarray(weak, float))
    return scores


def apgr(curve: Curve, weak_quality: float, strong_quality: float) -> float:
    shares = np.array([p[0] for p in curve])
    quality = np.array([p[1] for p in curve])
    area = float(np.trapezoid(quality, shares))
    span = float(shares[-1] - shares[0])
    return (area - weak_quality * span) / ((strong_quality - weak_quality) * span)


def share_to_reach(curve: Curve, target: float) -> float | None:
    """The smallest strong share at which the (piecewise-linear) curve reaches `target`."""
    (s0, q0) = curve[0]
    if q0 >= target:
        return s0
    for s1, q1 in curve[1:]:
        if q1 >= target:
            return s0 + (s1 - s0) * (target - q0) / (q1 - q0)
        s0, q0 = s1, q1
    return None


def report(router: str, scores: Sequence[float] | np.ndarray,
           weak: Sequence[float] | np.ndarray, strong: Sequence[float] | np.ndarray,
           bins: int = 10) -> RouterReport:
    w, s = np.asarray(weak, float), np.asarray(strong, float)
    wq, sq = float(w.mean()), float(s.mean())
    curve = routing_curve(scores, w, s, bins)
    gap = sq - wq
    return RouterReport(router, apgr(curve, wq, sq), share_to_reach(curve, 0.95 * sq),
                        share_to_reach(curve, wq + 0.5 * gap),
                        share_to_reach(curve, wq + 0.8 * gap), curve)
