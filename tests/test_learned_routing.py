"""`strategy: learned` in the routing config and in the router's plan: validation errors with
paths, the score setting the required quality, the header overriding it, and several tiers."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import ConfigError, parse_config
from gateway.pipeline.identity import Principal
from routing.catalog import Catalog
from routing.health import Health
from routing.learned.calibration import MIN_RECENT_SCORES, for_share
from routing.learned.features import PromptFeatures
from routing.learned.head import HeadError
from routing.learned.labels import Example
from routing.learned.quality import Difficulty
from routing.learned.runtime import LearnedRule
from routing.learned.train import train_head
from routing.router import Router, RouteRequest
from routing.rules import LearnedSettings, RequestFacts

ROOT = Path(__file__).resolve().parents[1]
ANYONE = Principal(key_id="k", name="k", team=None, user=None, allowed_models=None)
LEARNED = {"head": "heads/router.json", "floor": 40, "ceiling": 90, "target_strong_share": 0.4}
CAL = for_share([float(i) for i in range(101)], 0.4, "test")   # threshold 60


def config(tiers: list[tuple[str, int, float]], rule: dict[str, Any] | None = None
           ) -> dict[str, Any]:
    return {"model_list": [
        {"model_name": "chat", "litellm_params": {"model": f"openai/{name}"},
         "model_info": {"id": name, "quality": quality, "input_cost_per_token": price,
                        "output_cost_per_token": price}}
        for name, quality, price in tiers],
        "routing": {"rules": [rule or {"name": "learned", "strategy": "learned",
                                       "learned": LEARNED}]}}


TWO_TIERS = [("small", 40, 1e-7), ("large", 90, 1e-5)]
THREE_TIERS = [("small", 40, 1e-7), ("medium", 70, 1e-6), ("large", 90, 1e-5)]


def router(tiers: list[tuple[str, int, float]], rule: dict[str, Any] | None = None) -> Router:
    cfg = parse_config(config(tiers, rule), env={})
    return Router(Catalog.from_config(cfg), cfg.routing)


def request(score: float | None, header: int | None = None) -> RouteRequest:
    facts = RequestFacts(team=None, key="k", model="chat", has_tools=False, prompt_tokens=10,
                         headers={}, last_user_message="hi")
    return RouteRequest(model="chat", mode="chat", needs=frozenset(), prompt_tokens=10,
                        max_output_tokens=None, facts=facts, header_min_quality=header,
                        difficulty=None if score is None else Difficulty(score, CAL))


def problems(rule: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(config(TWO_TIERS, rule), env={})
    return caught.value.problems


@pytest.mark.parametrize(("rule", "expected"), [
    ({"name": "r", "strategy": "learned"},
     "routing.rules[0]: Value error, strategy 'learned' needs a 'learned:' section"),
    ({"name": "r", "learned": LEARNED},
     "routing.rules[0]: Value error, a 'learned:' section needs 'strategy: learned'"),
    ({"name": "r", "strategy": "learned", "learned": {**LEARNED, "floor": 95}},
     "routing.rules[0].learned: Value error, floor (95) must be below ceiling (90)"),
    ({"name": "r", "strategy": "learned",
      "learned": {**LEARNED, "min_relative_quality": 0.95}},
     "routing.rules[0].learned: Value error, give exactly one of 'target_strong_share' or "
     "'min_relative_quality'"),
    ({"name": "r", "strategy": "learned", "learned": {**LEARNED, "target_strong_share": 1.5}},
     "routing.rules[0].learned.target_strong_share: Input should be less than 1"),
    ({"name": "r", "strategy": "learned", "learned": {**LEARNED, "threshold": 0.2}},
     "routing.rules[0].learned.threshold: Extra inputs are not permitted"),
    ({"name": "r", "strategy": "learned", "learned": {**LEARNED, "head": ""}},
     "routing.rules[0].learned.head: String should have at least 1 character"),
])
def test_learned_rules_are_validated_with_paths(rule: dict[str, Any], expected: str) -> None:
    assert any(p.startswith(expected) for p in problems(rule)), problems(rule)


def test_a_quality_target_is_a_valid_alternative_to_a_share() -> None:
    rule = {"name": "r", "strategy": "learned",
            "learned": {"head": "h.json", "floor": 40, "ceiling": 90,
                        "min_relative_quality": 0.95}}
    assert parse_config(config(TWO_TIERS, rule), env={}).routing.rules[0].learned is not None


def test_easy_prompts_stay_on_the_floor_and_hard_ones_escalate() -> None:
    r = router(TWO_TIERS)
    easy = r.plan(request(10.0), ANYONE, Health())
    hard = r.plan(request(95.0), ANYONE, Health())
    assert (easy.chain[0].id, easy.min_quality, easy.strategy) == ("small", 40, "learned")
    assert (hard.chain[0].id, hard.chain) == ("large", hard.chain[:1])
    assert easy.learned is not None and hard.learned is not None
    assert (easy.learned.decision, hard.learned.decision) == ("floor", "escalate")
    assert hard.learned.score == 95.0 and hard.learned.threshold == CAL.threshold
    assert "score 95.0000 >= threshold 60.0000" in hard.learned.reason


def test_the_header_overrides_the_score_and_the_override_is_recorded() -> None:
    plan = router(TWO_TIERS).plan(request(95.0, header=30), ANYONE, Health())
    assert plan.min_quality == 30 and plan.chain[0].id == "small"
    assert plan.learned is not None and plan.learned.header_override == 30
    assert "x-podium-min-quality 30 overrides" in plan.learned.reason


def test_an_unscored_request_goes_to_the_ceiling() -> None:
    plan = router(TWO_TIERS).plan(request(None), ANYONE, Health())
    assert plan.min_quality == 90 and plan.chain[0].id == "large"
    assert plan.learned is not None and plan.learned.decision == "unscored"


def test_other_strategies_carry_no_learned_decision() -> None:
    r = router(TWO_TIERS, {"name": "plain", "min_quality": 60})
    plan = r.plan(request(95.0), ANYONE, Health())
    assert plan.learned is None and plan.min_quality == 60 and plan.strategy == "cheapest"
    assert r.learned_settings(request(None)) is None


def test_the_router_says_when_a_request_needs_a_score() -> None:
    section = router(TWO_TIERS).learned_settings(request(None))
    assert section is not None and section.head == "heads/router.json"


@settings(max_examples=200, deadline=None)
@given(st.floats(-50, 150))
def test_with_three_tiers_the_cheapest_deployment_at_or_above_the_level_wins(
        score: float) -> None:
    plan = ROUTER3.plan(request(score), ANYONE, Health())
    adequate = [(price, name) for name, quality, price in THREE_TIERS
                if quality >= plan.min_quality]
    assert plan.chain[0].id == min(adequate)[1]
    assert 40 <= plan.min_quality <= 90


def test_three_tiers_split_the_escalated_prompts_by_score() -> None:
    picks = {ROUTER3.plan(request(float(s)), ANYONE, Health()).chain[0].id
             for s in range(0, 101, 5)}
    assert picks == {"small", "medium", "large"}


ROUTER3 = router(THREE_TIERS)


# ---- a learned rule compiled from a trained head ---------------------------------------------

def _trained_head(tmp_path: Path) -> Path:
    """A head trained on synthetic labels where longer, 'prove'-style prompts need the strong
    model: enough to see the whole path work, no data files needed."""
    rng = np.random.default_rng(0)
    examples = []
    for i in range(400):
        hard = i % 2 == 0
        words = " ".join(rng.choice(["prove", "derive", "integral", "theorem"] if hard
                                    else ["what", "is", "capital", "colour"], size=8))
        strong = 1.0
        weak = float(rng.random() < (0.2 if hard else 0.9))
        examples.append(Example(PromptFeatures.of_prompt(words), weak, strong))
    path = tmp_path / "head.json"
    train_head(examples, alphas=(1.0,)).save(path)
    return path


def test_a_learned_rule_scores_calibrates_and_plans(tmp_path: Path) -> None:
    _trained_head(tmp_path)
    share = LearnedSettings(head="head.json", floor=40, ceiling=90, target_strong_share=0.5)
    rule = LearnedRule(share, base_dir=tmp_path)
    assert rule.calibration.source == "head prior"
    hard = rule.difficulty(PromptFeatures.of_prompt("prove the theorem with an integral"))
    easy = rule.difficulty(PromptFeatures.of_prompt("what is the capital colour"))
    assert hard.score > easy.score
    r = router(TWO_TIERS)
    base = request(None)
    plans = [r.plan(replace(base, difficulty=d), ANYONE, Health()) for d in (easy, hard)]
    assert [p.chain[0].id for p in plans] == ["small", "large"]
    for i in range(MIN_RECENT_SCORES):
        rule.difficulty(PromptFeatures.of_prompt(f"what is {i}"))
    assert rule.tick(now=1e9).source == f"recent {MIN_RECENT_SCORES + 2} prompts"


def test_a_quality_target_uses_the_heads_labels(tmp_path: Path) -> None:
    path = _trained_head(tmp_path)
    rule = LearnedRule(LearnedSettings(head=str(path), floor=40, ceiling=90,
                                       min_relative_quality=0.95))
    assert rule.calibration.source.startswith("labels: ")
    assert rule.tick() is rule.calibration                    # fixed by the labels
    bare = {**json.loads(path.read_text())}
    bare["calibration"] = {**bare["calibration"], "quality_curve": []}
    path.write_text(json.dumps(bare))
    with pytest.raises(HeadError, match="needs a head trained on labels"):
        LearnedRule(LearnedSettings(head=str(path), floor=40, ceiling=90,
                                    min_relative_quality=0.95))


def test_routing_imports_no_numpy_until_a_learned_rule_is_built() -> None:
    """The gateway's start-up pays for numpy only when a config has a learned rule."""
    code = ("import sys, routing.router, gateway.config, gateway.app, gateway.cli; "
            "print('numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "False"
