"""Fitting a head: labelled examples → `LinearHead`. Needs the `learned` extra (scikit-learn).

Ridge regression of (strong score - weak score) on the hashed text vector and the log sizes.
Scikit-learn's sparse ridge solver over 2^18 hashed columns fits 14k prompts in about a second;
a 3-class logistic regression on the same columns took minutes and ranked prompts no better
(docs/learned-router.md). The ridge strength is chosen by inner cross-validation on APGR, the
number the router is judged by. Only training imports scikit-learn: scoring is numpy + the JSON.

`length_prior` (β) adds β standard deviations of the held-out score per standard deviation of
log prompt length. β = 0 is best in-domain; β ≈ 2 makes a head trained on one kind of traffic
no worse than the length heuristic on another (measured; see the docs), at a cost in-domain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold

from routing.learned.calibration import knots_of, quality_curve
from routing.learned.embedders import Embedder, make_embedder
from routing.learned.features import SIZE_FEATURES, RecordedFeatures
from routing.learned.head import HeadCalibration, LinearHead
from routing.learned.labels import Example
from routing.learned.metrics import apgr, routing_curve

ALPHAS = (3.0, 10.0, 30.0)


def design(examples: Sequence[Example], embedder: Embedder) -> sp.csr_matrix:
    """One row per example: the text vector, then the log sizes (last columns)."""
    rows, cols, vals = [], [], []
    for i, e in enumerate(examples):
        index, values = embedder.embed(e.features.text)
        sizes = e.features.sizes()
        rows.append(np.full(len(index) + len(sizes), i))
        cols.append(np.concatenate([index, embedder.dim + np.arange(len(sizes))]))
        vals.append(np.concatenate([values, np.asarray(sizes, np.float32)]))
    n_sizes = 3
    if not rows:
        return sp.csr_matrix((0, embedder.dim + n_sizes), dtype=np.float32)
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(len(examples), embedder.dim + n_sizes), dtype=np.float32)


def design_recorded(recorded: Sequence[RecordedFeatures], dim: int) -> sp.csr_matrix:
    """`design` for features the audit trail kept (their embedder's vectors, no text)."""
    rows, cols, vals = [], [], []
    for i, r in enumerate(recorded):
        sizes = r.features().sizes()
        rows.append(np.full(len(r.index) + len(sizes), i))
        cols.append(np.concatenate([np.asarray(r.index, np.int64),
                                    dim + np.arange(len(sizes))]))
        vals.append(np.asarray([*r.value, *sizes], np.float32))
    if not rows:
        return sp.csr_matrix((0, dim + len(SIZE_FEATURES)), dtype=np.float32)
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(len(recorded), dim + len(SIZE_FEATURES)), dtype=np.float32)


def targets(examples: Sequence[Example]) -> tuple[np.ndarray, np.ndarray]:
    weak = np.array([e.weak for e in examples], dtype=float)
    strong = np.array([e.strong for e in examples], dtype=float)
    return weak, strong


def fit(X: sp.csr_matrix, gain: np.ndarray, alpha: float) -> Ridge:
    model = Ridge(alpha=alpha)
    model.fit(X, gain)
    return model


def choose_alpha(X: sp.csr_matrix, weak: np.ndarray, strong: np.ndarray,
                 alphas: Sequence[float] = ALPHAS, folds: int = 3, seed: int = 0) -> float:
    """The ridge strength with the best held-out APGR over an inner k-fold split."""
    if len(alphas) == 1:
        return alphas[0]
    best, best_apgr = alphas[0], -np.inf
    for alpha in alphas:
        scores = held_out_scores(X, weak, strong, alpha, folds, seed)
        value = apgr(routing_curve(scores, weak, strong), weak.mean(), strong.mean())
        if value > best_apgr:
            best, best_apgr = alpha, value
    return best


def held_out_scores(X: sp.csr_matrix, weak: np.ndarray, strong: np.ndarray, alpha: float,
                    folds: int, seed: int) -> np.ndarray:
    """Each row scored by a model that did not see it (k-fold)."""
    scores = np.zeros(X.shape[0])
    for train, test in KFold(folds, shuffle=True, random_state=seed).split(scores):
        scores[test] = fit(X[train], strong[train] - weak[train], alpha).predict(X[test])
    return scores


def length_slope(scores: np.ndarray, X: sp.csr_matrix, dim: int, beta: float) -> float:
    """The weight on log text length that adds β score-deviations per length-deviation."""
    log_chars = X[:, dim].toarray().ravel()
    spread = float(log_chars.std())
    return beta * float(scores.std()) / spread if spread > 0 else 0.0


def train_head(examples: Sequence[Example], embedder: str = "hashed",
               embedder_params: Mapping[str, Any] | None = None,
               alphas: Sequence[float] = ALPHAS, length_prior: float = 0.0, seed: int = 0,
               provenance: Mapping[str, Any] | None = None) -> LinearHead:
    """Fit a head on labelled examples from any source (see labels.py)."""
    if len(examples) < 10:
        raise ValueError(f"need at least 10 labelled examples to train, got {len(examples)}")
    emb = make_embedder(embedder, **dict(embedder_params or {}))
    weak, strong = targets(examples)
    return fit_head(design(examples, emb), weak, strong, emb, alphas, length_prior, seed,
                    provenance)


def train_mixed(examples: Sequence[Example], kept: Sequence[tuple[RecordedFeatures, float, float]],
                embedder: str = "hashed", alphas: Sequence[float] = ALPHAS,
                length_prior: float = 0.0, seed: int = 0,
                provenance: Mapping[str, Any] | None = None) -> LinearHead:
    """A head from labelled prompts (text) and from the audit trail's labels (recorded
    features, `routing/learned/outcomes.py`) together: the same design matrix for both."""
    emb = make_embedder(embedder)
    n = len(examples) + len(kept)
    if n < 10:
        raise ValueError(f"need at least 10 labelled examples to train, got {n}")
    weak, strong = targets(examples)
    weak = np.concatenate([weak, [w for _, w, _ in kept]])
    strong = np.concatenate([strong, [s for _, _, s in kept]])
    if len(set((strong - weak).tolist())) < 2:
        raise ValueError("every label says the same (no prompt needs the strong model more "
                         "than another): there is nothing to learn yet")
    X = sp.vstack([design(examples, emb), design_recorded([f for f, _, _ in kept], emb.dim)],
                  format="csr")
    return fit_head(X, weak, strong, emb, alphas, length_prior, seed, provenance)


def fit_head(X: sp.csr_matrix, weak: np.ndarray, strong: np.ndarray, emb: Embedder,
             alphas: Sequence[float] = ALPHAS, length_prior: float = 0.0, seed: int = 0,
             provenance: Mapping[str, Any] | None = None) -> LinearHead:
    """The head for a design matrix (see `design`); what `train_head` and evaluation share."""
    alpha = choose_alpha(X, weak, strong, alphas, seed=seed)
    model = fit(X, strong - weak, alpha)
    held_out = held_out_scores(X, weak, strong, alpha, 3, seed)
    slope = length_slope(held_out, X, emb.dim, length_prior)
    held_out = held_out + slope * X[:, emb.dim].toarray().ravel()
    coef = np.asarray(model.coef_, dtype=np.float64)
    return LinearHead(
        embedder=emb.name, embedder_params=emb.params, intercept=float(model.intercept_),
        size_weights=(float(coef[emb.dim] + slope), float(coef[emb.dim + 1]),
                      float(coef[emb.dim + 2])),
        text_weights=coef[: emb.dim].astype(np.float32),
        calibration=HeadCalibration(
            score_quantiles=knots_of(held_out.tolist()),
            quality_curve=tuple(quality_curve(held_out.tolist(), weak.tolist(),
                                              strong.tolist())),
            examples=len(weak)),
        provenance={**dict(provenance or {}), "alpha": alpha, "length_prior": length_prior,
                    "examples": len(weak), "seed": seed,
                    "held_out_apgr": _apgr_or_none(held_out, weak, strong),
                    "weak_quality": round(float(weak.mean()), 4),
                    "strong_quality": round(float(strong.mean()), 4)})


def _apgr_or_none(scores: np.ndarray, weak: np.ndarray, strong: np.ndarray) -> float | None:
    """Held-out APGR, or None where it means nothing (the strong model is no better)."""
    if strong.mean() <= weak.mean():
        return None
    return round(float(apgr(routing_curve(scores, weak, strong), weak.mean(), strong.mean())), 4)


def head_scores(head: LinearHead, X: sp.csr_matrix) -> np.ndarray:
    """`head.score` for every row of a design matrix at once (the same numbers, vectorised)."""
    dim = len(head.text_weights)
    text = X[:, :dim] @ head.text_weights.astype(np.float64)
    sizes = X[:, dim:].toarray() @ np.asarray(head.size_weights)
    return np.asarray(head.intercept + text + sizes, dtype=float).ravel()
