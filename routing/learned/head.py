"""The difficulty head: a linear function of a prompt's embedding and sizes, kept in a JSON file.

The score estimates how much more often the strong model than the weak one gets the prompt right:
E[strong - weak]. For right/wrong labels that is P(only the strong one is right) - P(only the weak
one is), the quantity RouteLLM-style 3-class heads compute, but here fitted directly by ridge
regression: one weight vector, so the score is linear, cheap, and works unchanged for graded
labels (feedback scores, judge scores). Measured against a 3-class logistic regression in
docs/learned-router.md: no worse, and training takes seconds instead of minutes.

Scoring needs numpy and this file only: no scikit-learn at run time. The file carries what built
it (embedder and its parameters, training data, hyperparameters) and its own calibration data,
so a head is one self-describing artefact.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from routing.learned.calibration import CurvePoint
from routing.learned.embedders import Embedder, make_embedder
from routing.learned.features import SIZE_FEATURES, PromptFeatures

FORMAT = "podium-learned-head/1"


class HeadError(ValueError):
    """A head file that is missing, unreadable or inconsistent; the message names the file."""


@dataclass(frozen=True)
class HeadCalibration:
    score_quantiles: tuple[float, ...] = ()      # scores of the training prompts at 0..100 %
    # held-out relative quality per strong share (calibration.quality_curve)
    quality_curve: tuple[CurvePoint, ...] = ()
    examples: int = 0


@dataclass(frozen=True)
class LinearHead:
    embedder: str
    embedder_params: Mapping[str, Any]
    intercept: float
    size_weights: tuple[float, ...]               # one per SIZE_FEATURES entry
    text_weights: np.ndarray                      # float32, one per embedding coordinate
    calibration: HeadCalibration = HeadCalibration()
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def make_embedder(self) -> Embedder:
        embedder = make_embedder(self.embedder, **self.embedder_params)
        if embedder.dim != len(self.text_weights):
            raise HeadError(f"the head has {len(self.text_weights)} text weights but the "
                            f"{self.embedder!r} embedder makes {embedder.dim}-d vectors")
        return embedder

    def score(self, features: PromptFeatures, embedder: Embedder) -> float:
        """The difficulty score of one prompt (higher: the strong model is needed more)."""
        return self.score_embedded(features, *embedder.embed(features.text))

    def score_embedded(self, features: PromptFeatures, index: np.ndarray,
                       values: np.ndarray) -> float:
        """`score` for a text already embedded (by this head's embedder)."""
        text = float(self.text_weights[index] @ values) if len(index) else 0.0
        sizes = sum(w * x for w, x in zip(self.size_weights, features.sizes(), strict=True))
        return self.intercept + text + sizes

    def to_json(self) -> dict[str, Any]:
        nonzero = np.flatnonzero(self.text_weights)
        cal = self.calibration
        return {
            "format": FORMAT,
            "embedder": {"name": self.embedder, "params": dict(self.embedder_params)},
            "intercept": self.intercept,
            "size_features": list(SIZE_FEATURES),
            "size_weights": list(self.size_weights),
            "text_weights": {"dim": len(self.text_weights), "index": nonzero.tolist(),
                             # 7 significant digits is float32's precision: nothing is lost.
                             "value": [float(f"{v:.7g}") for v in self.text_weights[nonzero]]},
            "calibration": {"examples": cal.examples,
                            "score_quantiles": list(cal.score_quantiles),
                            "quality_curve": [[p.share, p.relative_quality, p.lower_bound]
                                              for p in cal.quality_curve]},
            "provenance": dict(self.provenance),
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "head") -> LinearHead:
        try:
            return _parse(data)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            if isinstance(exc, HeadError):
                raise HeadError(f"{where}: {exc}") from None
            raise HeadError(f"{where}: not a {FORMAT} file ({type(exc).__name__}: {exc})") \
                from None

    def save(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), separators=(",", ":")) + "\n")

    @classmethod
    def load(cls, path: Path) -> LinearHead:
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise HeadError(f"{path}: cannot read: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise HeadError(f"{path}: not JSON: {exc.msg}") from None
        return cls.from_json(data, str(path))


def _parse(data: Mapping[str, Any]) -> LinearHead:
    if data.get("format") != FORMAT:
        raise HeadError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
    if list(data["size_features"]) != list(SIZE_FEATURES):
        raise HeadError(f"size_features must be {list(SIZE_FEATURES)}")
    text = data["text_weights"]
    weights = np.zeros(int(text["dim"]), dtype=np.float32)
    weights[np.asarray(text["index"], dtype=np.int64)] = np.asarray(text["value"], np.float32)
    cal = data.get("calibration", {})
    return LinearHead(
        embedder=str(data["embedder"]["name"]),
        embedder_params=dict(data["embedder"].get("params", {})),
        intercept=_finite(data["intercept"]),
        size_weights=tuple(_finite(w) for w in data["size_weights"]),
        text_weights=weights,
        calibration=HeadCalibration(
            score_quantiles=tuple(_finite(q) for q in cal.get("score_quantiles", [])),
            quality_curve=tuple(CurvePoint(*map(_finite, p))
                                for p in cal.get("quality_curve", [])),
            examples=int(cal.get("examples", 0))),
        provenance=dict(data.get("provenance", {})))


def _finite(value: Any) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise HeadError(f"{value!r} is not a finite number")
    return number


def quantiles(values: Sequence[float] | np.ndarray, points: int = 101) -> tuple[float, ...]:
    """Evenly spaced quantiles, 0 to 100 % (101 points: one per percent)."""
    return tuple(float(q) for q in np.quantile(np.asarray(values, float),
                                               np.linspace(0, 1, points)))
