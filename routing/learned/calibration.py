"""Where the threshold between "floor" and "escalate" comes from. Pure Python, no numpy: the
router imports this on the request path.

Two ways, as a rule chooses:
- `target_strong_share: s` needs no labels. The threshold is the (1 - s) quantile of the scores
  of the user's own recent prompts (a sliding window, `ShareCalibrator`), recomputed on a
  schedule. It tracks the traffic: if prompts get harder, scores rise and the threshold follows,
  so the share stays on target (and the quality moves). Measured: within 1 point of the target
  from 3k prompts (bench/router_eval.py).
- `min_relative_quality: m` needs labels. Training measured, on held-out labelled prompts, which
  share of strong calls keeps m of the strong model's quality, with a safety margin: the deficit
  must hold with 95 % confidence (one-sided, normal approximation of the per-prompt losses'
  standard error), so a small label set buys a larger share, never a quality promise it cannot
  keep. That share is turned into a threshold over the held-out scores' distribution.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Enough scores for a quantile to mean something; below it the head's own training prior holds.
MIN_RECENT_SCORES = 200
ONE_SIDED_95 = 1.645


@dataclass(frozen=True, slots=True)
class Calibration:
    threshold: float                   # scores at or above it escalate
    knots: tuple[float, ...]           # score quantiles 0..100 %: maps a score to its rank
    source: str                        # e.g. "recent 3000 prompts", "head prior", "labels"


def quantile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of sorted values (numpy's default method)."""
    if not ordered:
        raise ValueError("no values")
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def knots_of(scores: Iterable[float], points: int = 101) -> tuple[float, ...]:
    ordered = sorted(scores)
    return tuple(quantile(ordered, i / (points - 1)) for i in range(points))


def rank(score: float, knots: Sequence[float]) -> float:
    """Where a score falls among the knots' distribution, 0..1 (piecewise-linear CDF)."""
    if not knots or score <= knots[0]:
        return 0.0
    if score >= knots[-1]:
        return 1.0
    i = bisect.bisect_right(knots, score) - 1
    width = knots[i + 1] - knots[i]
    frac = (score - knots[i]) / width if width > 0 else 0.0
    return (i + frac) / (len(knots) - 1)


def for_share(scores: Iterable[float], share: float, source: str) -> Calibration:
    """The calibration that sends `share` of these scores (the highest) to escalation."""
    knots = knots_of(scores)
    return Calibration(quantile(knots, 1.0 - share), knots, source)


class ShareCalibrator:
    """Keeps the last `window` scores and recalibrates from them at most every `every_s`
    seconds; the gateway calls `observe` per scored request and `tick` from a periodic task.
    Until `MIN_RECENT_SCORES` have been seen, the head's prior (its training scores) holds."""

    def __init__(self, share: float, prior: Sequence[float], window: int = 3000,
                 every_s: float = 60.0) -> None:
        self.share, self.every_s = share, every_s
        self._recent: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()   # scores arrive from worker threads
        self._since = 0
        self._last = -math.inf
        self.current = (for_share(prior, share, "head prior") if prior
                        else Calibration(0.0, (), "no prior"))

    def observe(self, score: float) -> None:
        with self._lock:
            self._recent.append(score)
            self._since += 1

    def due(self, now: float | None = None) -> bool:
        """Whether `tick` would recalibrate now: the time has come and there is something new."""
        now = time.monotonic() if now is None else now
        return (now - self._last >= self.every_s and self._since > 0
                and len(self._recent) >= MIN_RECENT_SCORES)

    def tick(self, now: float | None = None) -> Calibration:
        """Recalibrate if due (and there is something new); returns the calibration in force."""
        now = time.monotonic() if now is None else now
        with self._lock:
            due = self.due(now)
            recent = list(self._recent) if due else []
            self._since = 0 if due else self._since
        if due:
            self.current = for_share(recent, self.share, f"recent {len(recent)} prompts")
            self._last = now
        return self.current

    @property
    def recent(self) -> int:
        return len(self._recent)


@dataclass(frozen=True, slots=True)
class CurvePoint:
    share: float
    relative_quality: float
    lower_bound: float


def quality_curve(scores: Sequence[float], weak: Sequence[float], strong: Sequence[float],
                  points: int = 101, z: float = ONE_SIDED_95) -> list[CurvePoint]:
    """Relative quality (routed / strong) for strong shares 0..1, with a one-sided lower bound:
    routed = strong - deficit, deficit = mean of (strong - weak) over the prompts kept on the
    weak model; its standard error comes from those per-prompt losses."""
    n = len(scores)
    order = sorted(range(n), key=lambda i: scores[i], reverse=True)
    gains = [strong[i] - weak[i] for i in order]
    strong_mean = sum(strong) / n
    tail, tail_sq = [0.0] * (n + 1), [0.0] * (n + 1)  # sums over the prompts left on weak
    for k in range(n - 1, -1, -1):
        tail[k] = tail[k + 1] + gains[k]
        tail_sq[k] = tail_sq[k + 1] + gains[k] ** 2
    curve = []
    for p in range(points):
        k = round(n * p / (points - 1))
        deficit = tail[k] / n
        se = math.sqrt(max(tail_sq[k] / n - deficit ** 2, 0.0) / n)
        routed = strong_mean - deficit
        curve.append(CurvePoint(k / n, routed / strong_mean, (routed - z * se) / strong_mean))
    return curve


def share_for_quality(curve: Sequence[CurvePoint], min_relative_quality: float) -> float:
    """The smallest strong share whose lower bound keeps `min_relative_quality`; all (1.0) when
    none does, the only share that keeps any quality promise."""
    return next((p.share for p in curve if p.lower_bound >= min_relative_quality), 1.0)


def for_quality(curve: Sequence[CurvePoint], knots: Sequence[float],
                min_relative_quality: float) -> Calibration:
    share = share_for_quality(curve, min_relative_quality)
    return Calibration(quantile(knots, 1.0 - share) if knots else 0.0, tuple(knots),
                       f"labels: {share:.0%} strong keeps {min_relative_quality:.0%}")
