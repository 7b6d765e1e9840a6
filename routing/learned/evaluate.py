"""`podium router eval`'s numbers: held-out curves for the learned head and its guard rows.

In-domain rows are k-fold (5, seed 0 by default): each fold's head is trained exactly as
`podium router train` would train it on the other folds (ridge strength by inner 3-fold CV),
its scores on the held-out fold are pooled, and RouteLLM's curve is drawn over all of them.
Cross rows train on one labelled set and test on another. Guard rows: random (seeded), prompt
length (longer → strong) and the oracle (RouteLLM's "optimal"). The learned row is only worth
shipping when it sits clearly above random and length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.model_selection import KFold

from routing.learned.embedders import Embedder, make_embedder
from routing.learned.labels import Example, LabelledSet
from routing.learned.metrics import RouterReport, oracle_scores, report
from routing.learned.train import ALPHAS, design, fit_head, head_scores, targets


@dataclass(frozen=True)
class EvalSettings:
    embedder: str = "hashed"
    folds: int = 5
    seed: int = 0
    alphas: tuple[float, ...] = ALPHAS
    length_prior: float = 0.0
    bins: int = 10                    # RouteLLM's --num-results


@dataclass(frozen=True)
class Evaluation:
    dataset: str                      # what the rows are measured on
    split: str                        # "5-fold" | "cross"
    train: str                        # what the learned head was trained on
    examples: int
    weak_quality: float
    strong_quality: float
    reports: list[RouterReport] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        return [{**r.row(), "dataset": self.dataset, "split": self.split, "train": self.train}
                for r in self.reports]

    def to_json(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "split": self.split, "train": self.train,
                "examples": self.examples, "weak_quality": round(self.weak_quality, 4),
                "strong_quality": round(self.strong_quality, 4)}


class Design:
    """A labelled set's design matrix, built once and shared by every row that needs it."""

    def __init__(self, labelled: LabelledSet, embedder: Embedder) -> None:
        self.labelled, self.embedder = labelled, embedder
        self.X = design(labelled.examples, embedder)
        self.weak, self.strong = targets(labelled.examples)


def evaluate_all(sets: Sequence[LabelledSet], settings: EvalSettings) -> list[Evaluation]:
    """k-fold rows for each set, then (with two or more) pooled and every cross pair."""
    embedder = make_embedder(settings.embedder)
    designs = [Design(s, embedder) for s in sets]
    out = [in_domain(d, settings) for d in designs]
    if len(sets) > 1:
        pooled = LabelledSet("+".join(s.name for s in sets),
                             tuple(e for s in sets for e in s.examples),
                             sets[0].weak_model, sets[0].strong_model)
        out.append(in_domain(Design(pooled, embedder), settings))
        out += [cross(a, b, settings) for a in designs for b in designs if a is not b]
    return out


def in_domain(d: Design, settings: EvalSettings) -> Evaluation:
    return _evaluation(d, f"{settings.folds}-fold", d.labelled.name,
                       held_out_scores(d, settings), settings)


def held_out_scores(d: Design, settings: EvalSettings) -> np.ndarray:
    """Every prompt scored by a head trained (as `router train` would) on the other folds."""
    scores = np.zeros(len(d.weak))
    for train, test in KFold(settings.folds, shuffle=True, random_state=settings.seed).split(
            scores):
        head = fit_head(d.X[train], d.weak[train], d.strong[train], d.embedder,
                        settings.alphas, settings.length_prior, settings.seed)
        scores[test] = head_scores(head, d.X[test])
    return scores


def cross(train: Design, test: Design, settings: EvalSettings) -> Evaluation:
    head = fit_head(train.X, train.weak, train.strong, train.embedder, settings.alphas,
                    settings.length_prior, settings.seed)
    return _evaluation(test, "cross", train.labelled.name, head_scores(head, test.X), settings)


def _evaluation(d: Design, split: str, trained_on: str, learned: np.ndarray,
                settings: EvalSettings) -> Evaluation:
    w, s = d.weak, d.strong
    reports = [report("learned", learned, w, s, settings.bins)]
    reports += guard_reports(d.labelled.examples, w, s, settings.seed, settings.bins)
    return Evaluation(d.labelled.name, split, trained_on, len(w), float(w.mean()),
                      float(s.mean()), reports)


def guard_reports(examples: Sequence[Example], weak: np.ndarray, strong: np.ndarray,
                  seed: int = 0, bins: int = 10) -> list[RouterReport]:
    rng = np.random.default_rng(seed)
    return [report("random", rng.random(len(weak)), weak, strong, bins),
            report("length", [e.features.text_chars for e in examples], weak, strong, bins),
            report("oracle", oracle_scores(weak, strong), weak, strong, bins)]
