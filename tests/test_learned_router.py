"""The learned router's parts: embedder, head file, scorer, calibration, and the mapping from a
score to a required quality. Properties where a property says more than an example."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.learned.calibration import (
    MIN_RECENT_SCORES,
    Calibration,
    ShareCalibrator,
    for_quality,
    for_share,
    knots_of,
    quality_curve,
    rank,
    share_for_quality,
)
from routing.learned.embedders import HashedNgrams, make_embedder
from routing.learned.features import PromptFeatures
from routing.learned.head import HeadCalibration, HeadError, LinearHead
from routing.learned.quality import Difficulty, decide, required_quality
from routing.learned.scorer import DifficultyScorer

ROOT = Path(__file__).resolve().parents[1]
texts = st.text(min_size=0, max_size=300)
SMALL = HashedNgrams(bits=12)


def random_head(seed: int = 0, bits: int = 12) -> LinearHead:
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=1 << bits).astype(np.float32)
    weights[rng.random(1 << bits) < 0.5] = 0.0     # sparse, as trained heads are
    return LinearHead("hashed", {"bits": bits, "word_ngrams": 2, "char_ngrams": None},
                      float(rng.normal()), (0.3, -0.1, 0.05), weights,
                      HeadCalibration(knots_of(rng.normal(size=500).tolist()), (), 500),
                      {"note": "random"})


# ---- features and embedder -------------------------------------------------------------------

def test_features_take_the_last_user_turn_and_the_conversation_size() -> None:
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "first question"},
                {"role": "assistant", "content": "an answer"},
                {"role": "user", "content": [{"type": "text", "text": "second"},
                                             {"type": "image_url", "image_url": {"url": "x"}}]}]
    f = PromptFeatures.of_messages(messages)
    assert (f.text, f.text_chars, f.turns) == ("second", 6, 4)
    assert f.total_chars == len("Be brief.") + len("first question") + len("an answer") + 6
    assert PromptFeatures.of_messages([{"role": "assistant", "content": "hi"}]).text == ""


@settings(max_examples=200, deadline=None)
@given(texts)
def test_hashed_vectors_are_unit_length_unique_and_in_range(text: str) -> None:
    index, values = SMALL.embed(text)
    assert len(index) == len(set(index.tolist())) == len(values)
    assert all(0 <= i < SMALL.dim for i in index.tolist())
    if len(index):
        assert math.isclose(float(values @ values), 1.0, rel_tol=1e-5)


def test_hashed_vectors_are_the_same_in_another_process() -> None:
    """No salted hash: a head trained in one process scores the same in another."""
    text = "Natalia sold clips to 48 of her friends in April, and then half as many in May."
    code = ("from routing.learned.embedders import HashedNgrams;"
            f"i, v = HashedNgrams().embed({text!r}); print(i.tolist(), v.round(6).tolist())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True, env={"PYTHONHASHSEED": "123"}).stdout
    index, values = HashedNgrams().embed(text)
    assert out.strip() == f"{index.tolist()} {values.round(6).tolist()}"


def test_unknown_embedder_and_bad_parameters_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown embedder 'bert'"):
        make_embedder("bert")
    with pytest.raises(ValueError, match="bad parameters"):
        make_embedder("hashed", colour="blue")


def test_wordllama_loads_offline_and_leaves_the_root_logger_alone() -> None:
    pytest.importorskip("wordllama")
    code = ("import logging, socket\n"
            "def refuse(*a, **k): raise OSError('network use')\n"
            "socket.socket.connect = refuse\n"
            "logging.getLogger().setLevel(logging.WARNING)\n"
            "from routing.learned.embedders import WordLlamaEmbedder\n"
            "i, v = WordLlamaEmbedder().embed('What is the capital of France?')\n"
            "print(len(i), round(float(v @ v), 3), logging.getLogger().level)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["256", "1.0", str(30)]   # 30 = WARNING, untouched


# ---- head ------------------------------------------------------------------------------------

@settings(max_examples=100, deadline=None)
@given(texts, st.integers(1, 20))
def test_head_score_is_its_linear_function(text: str, turns: int) -> None:
    head = random_head()
    f = PromptFeatures(text, len(text), turns, len(text) * turns)
    index, values = SMALL.embed(text)
    by_hand = (head.intercept + float(sum(head.text_weights[i] * v for i, v in zip(
        index.tolist(), values.tolist(), strict=True)))
        + sum(w * x for w, x in zip(head.size_weights, f.sizes(), strict=True)))
    assert math.isclose(head.score(f, SMALL), by_hand, rel_tol=1e-5, abs_tol=1e-5)


@settings(max_examples=50, deadline=None)
@given(st.lists(texts, min_size=1, max_size=5), st.integers(0, 10_000))
def test_head_survives_a_round_trip_through_its_file(prompts: list[str], seed: int) -> None:
    head = random_head(seed)
    again = LinearHead.from_json(json.loads(json.dumps(head.to_json())))
    embedder = again.make_embedder()
    for text in prompts:
        f = PromptFeatures.of_prompt(text)
        assert math.isclose(again.score(f, embedder), head.score(f, SMALL),
                            rel_tol=1e-6, abs_tol=1e-6)
    assert again.calibration.score_quantiles == head.calibration.score_quantiles


def test_bad_head_files_name_the_file_and_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "head.json"
    with pytest.raises(HeadError, match="cannot read"):
        LinearHead.load(path)
    path.write_text("{")
    with pytest.raises(HeadError, match=r"head\.json: not JSON"):
        LinearHead.load(path)
    data = random_head().to_json()
    path.write_text(json.dumps({**data, "format": "other/9"}))
    with pytest.raises(HeadError, match=r"head\.json: format is 'other/9'"):
        LinearHead.load(path)
    path.write_text(json.dumps({**data, "intercept": float("nan")}))
    with pytest.raises(HeadError, match="not a finite number"):
        LinearHead.load(path)
    mismatched = {**data, "text_weights": {"dim": 7, "index": [], "value": []}}
    with pytest.raises(HeadError, match="7 text weights"):
        LinearHead.from_json(mismatched).make_embedder()


# ---- scorer ----------------------------------------------------------------------------------

def test_scorer_caches_by_digest_within_its_bound_and_measures_its_cost() -> None:
    head = random_head()
    scorer = DifficultyScorer(head, cache_size=2)
    prompts = [PromptFeatures.of_prompt(f"question number {i}") for i in range(3)]
    first = [scorer.score(f) for f in prompts]
    assert (scorer.misses, scorer.hits) == (3, 0)
    assert scorer.cost_ms > 0
    assert scorer.score(prompts[2]) == first[2] and scorer.hits == 1
    scorer.score(prompts[0])                       # evicted (cache of 2): scored again
    assert scorer.misses == 4
    assert first == [head.score(f, scorer.embedder) for f in prompts]
    assert scorer.runs_off_loop == (scorer.cost_ms > scorer.off_loop_ms)
    short, long = PromptFeatures.of_prompt("why?"), PromptFeatures.of_prompt("why? " * 400)
    assert 0 < scorer.expected_ms(short) < scorer.expected_ms(long)  # grows with the text
    assert scorer.off_loop_for(long) == (scorer.expected_ms(long) > scorer.off_loop_ms)


# ---- calibration -----------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=50, max_size=2000, unique=True),
       st.floats(0.05, 0.95))
def test_share_threshold_sends_the_target_share_of_those_scores(scores: list[float],
                                                                share: float) -> None:
    cal = for_share(scores, share, "test")
    sent = sum(s >= cal.threshold for s in scores) / len(scores)
    # Quantiles are taken over 101 knots: within a percentile of the target, plus one score.
    assert abs(sent - share) <= 0.01 + 1 / len(scores) + 1e-9


@given(st.lists(st.floats(-100, 100), min_size=2, max_size=300), st.floats(-200, 200),
       st.floats(-200, 200))
def test_rank_is_a_monotone_map_into_the_unit_interval(scores: list[float], a: float,
                                                       b: float) -> None:
    knots = knots_of(scores)
    low, high = sorted((a, b))
    assert 0.0 <= rank(low, knots) <= rank(high, knots) <= 1.0


def test_share_calibrator_holds_its_prior_until_it_has_seen_enough_and_is_due() -> None:
    rng = np.random.default_rng(0)
    cal = ShareCalibrator(0.4, prior=rng.normal(size=1000).tolist(), window=500, every_s=60)
    assert cal.current.source == "head prior"
    for s in rng.normal(loc=5.0, size=MIN_RECENT_SCORES - 1):
        cal.observe(float(s))
    assert cal.tick(now=1000.0).source == "head prior"        # too few scores yet
    for s in rng.normal(loc=5.0, size=2000):
        cal.observe(float(s))
    assert cal.recent == 500                                   # the window is bounded
    moved = cal.tick(now=1000.0)
    assert moved.source == "recent 500 prompts" and 4.5 < moved.threshold < 5.8
    cal.observe(100.0)
    assert cal.tick(now=1030.0) is moved                       # not due for 60 s
    assert cal.tick(now=1061.0) is not moved


def _labelled(n: int, seed: int) -> tuple[list[float], list[float], list[float]]:
    """Synthetic labels where the score is informative: harder prompts need the strong one."""
    rng = np.random.default_rng(seed)
    score = rng.normal(size=n)
    weak = (rng.random(n) < 1 / (1 + np.exp(2 * score))).astype(float)
    strong = np.maximum(weak, rng.random(n) < 0.8).astype(float)
    return score.tolist(), weak.tolist(), strong.tolist()


def test_quality_target_keeps_a_margin_that_shrinks_with_more_labels() -> None:
    margins = []
    for n in (300, 3000, 30000):
        labelled = _labelled(n, seed=1)
        curve, bare = quality_curve(*labelled), quality_curve(*labelled, z=0.0)
        assert all(p.lower_bound <= p.relative_quality + 1e-12 for p in curve)
        assert curve[-1].relative_quality == pytest.approx(1.0)
        # The margin costs strong calls, never quality: the share is at least the bare one.
        assert share_for_quality(curve, 0.95) >= share_for_quality(bare, 0.95)
        margins.append(curve[30].relative_quality - curve[30].lower_bound)
    assert margins[0] > margins[1] > margins[2] > 0   # ~1/sqrt(n): more labels, less margin


def test_quality_target_holds_on_fresh_prompts() -> None:
    scores, weak, strong = _labelled(3000, seed=2)
    cal = for_quality(quality_curve(scores, weak, strong), knots_of(scores), 0.95)
    fresh_scores, fresh_weak, fresh_strong = _labelled(20000, seed=3)
    routed = [s if x >= cal.threshold else w
              for x, w, s in zip(fresh_scores, fresh_weak, fresh_strong, strict=True)]
    assert sum(routed) / sum(fresh_strong) >= 0.95


def test_when_only_the_strong_model_succeeds_the_margin_buys_extra_strong_calls() -> None:
    labelled = ([float(i) for i in range(100)], [0.0] * 100, [1.0] * 100)
    assert share_for_quality(quality_curve(*labelled, z=0.0), 0.95) == 0.95
    assert share_for_quality(quality_curve(*labelled), 0.95) == 0.98
    assert share_for_quality(quality_curve(*labelled), 1.0) == 1.0


# ---- score → required quality ----------------------------------------------------------------

calibrations = st.builds(
    lambda scores, share: for_share(scores, share, "test"),
    st.lists(st.floats(-10, 10), min_size=2, max_size=200), st.floats(0.05, 0.95))
bounds = st.tuples(st.integers(0, 99), st.integers(1, 100)).filter(lambda b: b[0] < b[1])


@settings(max_examples=300, deadline=None)
@given(calibrations, bounds, st.floats(-20, 20), st.floats(-20, 20))
def test_quality_stays_in_bounds_rises_with_the_score_and_floors_below_threshold(
        cal: Calibration, floor_ceiling: tuple[int, int], a: float, b: float) -> None:
    floor, ceiling = floor_ceiling
    low, high = sorted((a, b))
    q_low, d_low = required_quality(low, cal, floor, ceiling)
    q_high, _ = required_quality(high, cal, floor, ceiling)
    assert floor <= q_low <= q_high <= ceiling
    assert (q_low == floor) == (low < cal.threshold) == (d_low == "floor")


def test_the_highest_scores_reach_the_ceiling_and_unscored_requests_get_it() -> None:
    cal = for_share([float(i) for i in range(100)], 0.4, "test")
    assert required_quality(1000.0, cal, 40, 90) == (90, "escalate")
    unscored = decide(None, 40, 90)
    assert (unscored.min_quality, unscored.decision) == (90, "unscored")
    decision = decide(Difficulty(10.0, cal), 40, 90, header_min_quality=70)
    assert decision.min_quality == 40 and "x-podium-min-quality 70 overrides" in decision.reason
    assert "score 10.0000 < threshold 59.4000 (test): floor, quality 40" in decision.reason
