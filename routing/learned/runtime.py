"""One `learned:` rule section compiled into what serves it: a scorer and a calibration.

The gateway builds one `LearnedRule` per learned rule at start-up (and on reload), scores each
matching request with `difficulty` (on a worker thread when `scorer.runs_off_loop`), passes the
result to the router in `RouteRequest.difficulty`, and calls `tick` from a periodic task so a
target share follows the traffic. A quality target is fixed by the head's labels and never
moves; it is recomputed only when the head file changes.
"""

from __future__ import annotations

from pathlib import Path

from routing.learned.calibration import Calibration, ShareCalibrator, for_quality
from routing.learned.features import PromptFeatures
from routing.learned.head import HeadError, LinearHead
from routing.learned.quality import Difficulty
from routing.learned.scorer import DifficultyScorer
from routing.rules import LearnedSettings


class LearnedRule:
    def __init__(self, settings: LearnedSettings, base_dir: Path | None = None) -> None:
        path = Path(settings.head)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path      # relative to the config file, like other config paths
        head = LinearHead.load(path)
        self.settings = settings
        self.scorer = DifficultyScorer(head, cache_size=settings.cache_size)
        self.calibrator: ShareCalibrator | None = None
        self._fixed: Calibration | None = None
        cal = head.calibration
        if settings.target_strong_share is not None:
            self.calibrator = ShareCalibrator(settings.target_strong_share, cal.score_quantiles,
                                              settings.window, settings.recalibrate_every_s)
        elif not cal.quality_curve:
            raise HeadError(f"{path}: min_relative_quality needs a head trained on labels "
                            "(its file has no quality curve)")
        else:
            assert settings.min_relative_quality is not None   # the config guarantees one
            self._fixed = for_quality(cal.quality_curve, cal.score_quantiles,
                                      settings.min_relative_quality)

    @property
    def calibration(self) -> Calibration:
        if self.calibrator is not None:
            return self.calibrator.current
        assert self._fixed is not None
        return self._fixed

    def difficulty(self, features: PromptFeatures) -> Difficulty:
        """Score one request and note it for the share calibration; CPU-bound (see scorer)."""
        score = self.scorer.score(features)
        if self.calibrator is not None:
            self.calibrator.observe(score)
        return Difficulty(score, self.calibration)

    def tick(self, now: float | None = None) -> Calibration:
        """Recalibrate a target share if due; the calibration in force either way."""
        return self.calibrator.tick(now) if self.calibrator is not None else self.calibration
