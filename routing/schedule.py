"""Which attempts a plan makes, in what order, with what waits between retries; and what an
attempt's answer bills. Pure steps of the attempt loop (`fallback.py`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

from routing.catalog import Deployment
from routing.providers.base import Attempt, ChatAnswer, EmbeddingAnswer, Usage
from routing.router import RoutePlan
from routing.rules import RoutingConfig
from routing.tokens import unreported_usage


def schedule(plan: RoutePlan, routing: RoutingConfig,
              made: int = 0) -> Iterator[tuple[Deployment, int]]:
    """The chain in order; a single-deployment plan gets retries instead of fallbacks. `made`:
    attempts already made (by the direct path), skipped."""
    if len(plan.chain) == 1:
        for retry in range(made, routing.retries.attempts + 1):
            yield plan.chain[0], retry
        return
    for dep in plan.chain[made:]:
        yield dep, 0


async def backoff(retry: int, routing: RoutingConfig, deadline: float) -> bool:
    """Sleep before retry number `retry` (jittered, exponential); False if past the deadline."""
    delay = routing.retries.backoff_s * (2 ** (retry - 1)) * random.uniform(0.5, 1.5)
    if asyncio.get_running_loop().time() + delay >= deadline:
        return False
    await asyncio.sleep(delay)
    return True


def billed(operation: str, attempt: Attempt, answer: ChatAnswer | EmbeddingAnswer) -> Usage:
    """The usage to bill: the upstream's, or a local count when it reported none (an
    embeddings answer that counts no input tokens reported none either)."""
    usage = answer.usage
    if usage.reported and (operation != "embeddings" or usage.prompt_tokens > 0):
        return usage
    prompt, completion = unreported_usage(operation, attempt.body, answer.body)
    return Usage(prompt, completion, reported=False)
