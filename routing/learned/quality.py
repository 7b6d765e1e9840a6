"""A difficulty score → the request's required quality, with the reason recorded.

Below the threshold a prompt stays on the rule's floor. At or above it, the quality rises with
the score's rank among recent scores, from just above the floor to the ceiling: with two tiers
every escalated prompt lands on the strong one (so the escalated share is the strong share); with
more, the hardest go to the top and the rest to the tiers between, and the router's
cheapest-adequate ordering picks the cheapest deployment at or above the level. So `floor` should
be the quality of the tier easy prompts are meant for. Pure Python: on the request path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from routing.learned.calibration import Calibration, rank


@dataclass(frozen=True, slots=True)
class Difficulty:
    """A request's score and the calibration in force when it was scored."""
    score: float
    calibration: Calibration


@dataclass(frozen=True, slots=True)
class LearnedDecision:
    min_quality: int                  # what the learned rule requires (before any header)
    decision: str                     # "floor" | "escalate" | "unscored"
    score: float | None
    threshold: float | None
    source: str                       # where the threshold came from
    header_override: int | None = None  # x-podium-min-quality, which wins when present
    floor: int = 0                    # the rule's floor: the quality of its cheap tier

    @property
    def required_quality(self) -> int:
        """What the plan required: the header's quality when it overrides, else the rule's."""
        return self.header_override if self.header_override is not None else self.min_quality

    @property
    def reason(self) -> str:
        if self.score is None or self.threshold is None:
            text = f"no difficulty score: ceiling {self.min_quality}"
        else:
            side = ">=" if self.decision == "escalate" else "<"
            text = (f"score {self.score:.4f} {side} threshold {self.threshold:.4f} "
                    f"({self.source}): {self.decision}, quality {self.min_quality}")
        if self.header_override is not None:
            text += f"; x-podium-min-quality {self.header_override} overrides"
        return text


def required_quality(score: float, calibration: Calibration, floor: int,
                     ceiling: int) -> tuple[int, str]:
    """The quality a score calls for, and the decision: floor below the threshold; above it,
    floor + 1 .. ceiling by the score's rank among the scores above the threshold."""
    if score < calibration.threshold:
        return floor, "floor"
    start = rank(calibration.threshold, calibration.knots)
    if start >= 1.0:
        return ceiling, "escalate"
    above = (rank(score, calibration.knots) - start) / (1.0 - start)
    level = floor + math.ceil((ceiling - floor) * min(max(above, 0.0), 1.0))
    return min(max(level, floor + 1), ceiling), "escalate"


def decide(difficulty: Difficulty | None, floor: int, ceiling: int,
           header_min_quality: int | None = None) -> LearnedDecision:
    """The learned rule's decision for one request. Unscored requests get the ceiling: when the
    router cannot judge, it errs toward quality, never toward a model that may fail."""
    if difficulty is None:
        return LearnedDecision(ceiling, "unscored", None, None, "", header_min_quality, floor)
    quality, decision = required_quality(difficulty.score, difficulty.calibration, floor,
                                         ceiling)
    cal = difficulty.calibration
    return LearnedDecision(quality, decision, difficulty.score, cal.threshold, cal.source,
                           header_min_quality, floor)
