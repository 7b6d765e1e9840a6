"""One `learned:` rule section compiled into what serves it: a scorer and a calibration; and
the learned rules of a whole config, compiled together (`compile_rules`).

The gateway builds one `LearnedRule` per learned rule when a config is loaded (and on reload),
scores each matching request with `assess` (on a worker thread when the scorer expects it to
be costly; see `live.py`), passes the result to the router in `RouteRequest.difficulty`, and
calls `tick` from a periodic task so a target share follows the traffic. A quality target is
fixed by the head's labels and never moves; it is recomputed only when the head file changes.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from routing.learned.calibration import Calibration, ShareCalibrator, for_quality, rank
from routing.learned.embedders import Embedder, make_embedder
from routing.learned.features import PromptFeatures, RecordedFeatures
from routing.learned.head import HeadError, LinearHead
from routing.learned.quality import Difficulty
from routing.learned.scorer import DifficultyScorer, recorded
from routing.rules import LearnedSettings, RouteSettings, RoutingConfig, learned_sections


@dataclass(frozen=True, slots=True)
class Assessment:
    """What the route hop learnt about one request's prompt."""
    difficulty: Difficulty | None = None          # for a learned rule
    features: RecordedFeatures | None = None      # for the audit trail, when it keeps them


class LearnedRule:
    def __init__(self, settings: LearnedSettings, base_dir: Path | None = None,
                 head: LinearHead | None = None, scorer: DifficultyScorer | None = None) -> None:
        path = head_path(settings, base_dir)
        head = head or (scorer.head if scorer is not None else LinearHead.load(path))
        self.settings = settings
        self.scorer = scorer or DifficultyScorer(head, cache_size=settings.cache_size)
        self.calibrator: ShareCalibrator | None = None
        self._fixed: Calibration | None = None
        # Whether each of the last `window` scored requests escalated: the realised share.
        self._escalated: deque[bool] = deque(maxlen=settings.window)
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

    @property
    def target_share(self) -> float:
        """The strong share aimed at: the configured one, or the one the labels call for."""
        if self.calibrator is not None:
            return self.calibrator.share
        knots = self.calibration.knots
        return 1.0 - rank(self.calibration.threshold, knots) if knots else 1.0

    def difficulty(self, features: PromptFeatures) -> Difficulty:
        """Score one request and note it for the share calibration; CPU-bound (see scorer)."""
        return self._observe(self.scorer.score(features))

    def cached(self, features: PromptFeatures, live: bool = True) -> Assessment | None:
        """The assessment from a cached score (no features kept), or None: on the loop."""
        score = self.scorer.cached(features)
        return Assessment(self._observe(score, live)) if score is not None else None

    def assess(self, features: PromptFeatures, record: bool, live: bool = True) -> Assessment:
        """The score, and the features for the audit trail when `record`; CPU-bound. Only a
        `live` request (not an explanation) counts toward the calibration and realised share."""
        if not record:
            return Assessment(self._observe(self.scorer.score(features), live))
        score, kept = self.scorer.score_and_record(features)
        return Assessment(self._observe(score, live), kept)

    def _observe(self, score: float, live: bool = True) -> Difficulty:
        if live and self.calibrator is not None:
            self.calibrator.observe(score)
        calibration = self.calibration
        if live:
            self._escalated.append(score >= calibration.threshold)
        return Difficulty(score, calibration)

    def quality_target(self) -> float | None:
        return self.settings.min_relative_quality

    def threshold(self) -> float:
        return self.calibration.threshold

    def due(self, now: float | None = None) -> bool:
        return self.calibrator is not None and self.calibrator.due(now)

    def tick(self, now: float | None = None) -> Calibration:
        """Recalibrate a target share if due; the calibration in force either way."""
        return self.calibrator.tick(now) if self.calibrator is not None else self.calibration

    def recent_share(self) -> float | None:
        """The realised strong share: of the last `window` scored requests, the share that
        escalated (None before any score)."""
        recent = list(self._escalated)
        return sum(recent) / len(recent) if recent else None


def head_path(settings: LearnedSettings, base_dir: Path | None) -> Path:
    path = Path(settings.head)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path      # relative to the config file, like other config paths
    return path


# ---- a whole config's learned rules -------------------------------------------------------

@dataclass(frozen=True)
class Compiled:
    rules: Mapping[str, LearnedRule]
    digests: Mapping[str, str]                    # rule name → sha256 of its head file
    recorder: Embedder | None                     # records features for cascade rules

    def record(self, features: PromptFeatures) -> RecordedFeatures | None:
        """A cascade request's features for the audit trail (the default embedder's, which
        `podium router train` uses by default); CPU-bound like a score."""
        return recorded(self.recorder, features) if self.recorder is not None else None


def compile_rules(routing: RoutingConfig, base_dir: Path | None, record_cascades: bool,
                  previous: Compiled | None = None) -> tuple[Compiled, list[str]]:
    """Every rule whose strategy is learned (its own section or the default's), each head file
    read once; a rule whose section and head file are unchanged since `previous` keeps its
    scorer and calibration (a reload does not forget the recent scores). Problems name the
    config path of the section: `routing.rules[2].learned.head: <file>: ...`."""
    rules: dict[str, LearnedRule] = {}
    digests: dict[str, str] = {}
    problems: list[str] = []
    heads: dict[Path, tuple[str, LinearHead] | str] = {}
    for name, where, section in learned_sections(routing):
        path = head_path(section, base_dir)
        if path not in heads:
            heads[path] = _read_head(path)
        loaded = heads[path]
        if isinstance(loaded, str):
            problems.append(f"{where}.head: {loaded}")
            continue
        digest, head = loaded
        digests[name] = digest
        old = previous.rules.get(name) if previous is not None else None
        if old is not None and previous is not None and previous.digests.get(name) == digest \
                and old.settings == section:
            rules[name] = old
            continue
        try:
            rules[name] = LearnedRule(section, base_dir, head=head)
            rules[name].scorer.warm()   # lazy weights load now, not in a request
        except (HeadError, ValueError, RuntimeError) as err:
            problems.append(f"{where}.head: {err}")
    cascades = record_cascades and any(s.strategy == "cascade" for s in _all(routing))
    recorder = (previous.recorder if previous is not None and previous.recorder is not None
                else make_embedder("hashed")) if cascades else None
    return Compiled(rules, digests, recorder), sorted(set(problems))


def _all(routing: RoutingConfig) -> list[RouteSettings]:
    return [routing.default, *routing.rules]


def _read_head(path: Path) -> tuple[str, LinearHead] | str:
    """The head at `path` and the digest of its file, or what is wrong with it."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return f"{path}: cannot read: {exc.strerror}"
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"{path}: not JSON: {getattr(exc, 'msg', exc)}"
    try:
        head = LinearHead.from_json(data, str(path))
        head.make_embedder()                      # an unknown embedder or a wrong size
    except (HeadError, ValueError, RuntimeError) as err:
        return str(err)
    return hashlib.sha256(raw).hexdigest(), head
