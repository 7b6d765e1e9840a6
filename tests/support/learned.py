"""Prompts and a small trained head for the learned router's gateway tests.

The head is trained in the test from synthetic labels (about a second): short factual questions
that the cheap model mostly gets right, and long multi-step problems that mostly only the strong
one does. That is the shape of real labels (RouteLLM's: length and wording both carry signal),
small enough that no data file is needed.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from routing.learned.features import PromptFeatures
from routing.learned.labels import Example
from routing.learned.train import train_head

_PLACES = ["France", "Peru", "Japan", "Kenya", "Norway", "Chile", "Egypt", "Canada", "India",
           "Spain", "Ghana", "Nepal", "Italy", "Mexico", "Poland", "Vietnam"]
_THINGS = ["gold", "iron", "neon", "salt", "water", "copper", "oxygen", "silver"]
_STEPS = ["First", "Then", "Next", "After that", "Finally"]


def easy_prompt(rng: random.Random) -> str:
    return rng.choice([
        f"What is the capital of {rng.choice(_PLACES)}?",
        f"What is the chemical symbol for {rng.choice(_THINGS)}?",
        f"Which continent is {rng.choice(_PLACES)} in?",
        f"What colour is {rng.choice(_THINGS)}?",
    ])


def hard_prompt(rng: random.Random) -> str:
    steps = " ".join(
        f"{step}, derive how the {rng.choice(_THINGS)} budget of {rng.choice(_PLACES)} changes "
        f"if its growth rate rises by {rng.randint(2, 9)} percent, and prove the bound holds "
        f"for every year after {rng.randint(1990, 2020)}." for step in _STEPS)
    return (f"Solve this multi-step problem carefully, showing every step. {steps} "
            "Then combine the results into one closed-form expression and justify each step.")


EASY = "What is the capital of Portugal?"
HARD = hard_prompt(random.Random(99))


def train_synthetic_head(path: Path, n: int = 400, seed: int = 0) -> Path:
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        hard = i % 2 == 0
        prompt = hard_prompt(rng) if hard else easy_prompt(rng)
        weak = float(rng.random() < (0.15 if hard else 0.9))
        examples.append(Example(PromptFeatures.of_prompt(prompt), weak, 1.0))
    train_head(examples, alphas=(1.0,)).save(path)
    return path


def two_tiers(sim_url: str, cheap: str = "sim-cheap",
              strong: str = "sim-strong") -> list[dict[str, Any]]:
    """A cheap (quality 40) and a strong (quality 90) simulated deployment of group `chat`."""
    def entry(model: str, quality: int, price: float) -> dict[str, Any]:
        return {"model_name": "chat",
                "litellm_params": {"model": f"openai/{model}", "api_base": sim_url,
                                   "api_key": "simulator"},
                "model_info": {"id": model, "quality": quality, "input_cost_per_token": price,
                               "output_cost_per_token": price}}
    return [entry(cheap, 40, 1e-7), entry(strong, 90, 1e-5)]


def learned_rule(head: str, **extra: Any) -> dict[str, Any]:
    section = {"head": head, "floor": 40, "ceiling": 90, "target_strong_share": 0.5, **extra}
    return {"name": "support-learned", "strategy": "learned", "learned": section}
