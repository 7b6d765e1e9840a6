"""Shadow trials cannot be turned into a leak or a bill.

- A request's data never reaches a candidate (or a judge) its permission scope does not clear:
  a confidential request is not shadowed to a public deployment, and personal data found in a
  request is pseudonymized for a candidate not cleared for it, exactly as for the primary.
- Shadow calls never spend a team's (or a key's) budget: their spend is ledgered under its own
  key, and the shadow budget, rate and concurrency bounds hold.
- The trials are the gateway's own tasks: at shutdown they are cancelled and awaited, however
  long their candidate hangs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest

from gateway.runtime import GATEWAY, Gateway
from gateway.simulator import RECORDED, start_simulator
from tests.conftest import ADMIN, APP_KEY, UPSTREAM_KEY, GatewayFactory, deployment
from tests.support.metrics import scrape, total
from tests.support.waiting import until

EMAIL = "jane.doe@example.com"


@pytest.fixture
async def sim() -> AsyncIterator[tuple[str, Any]]:
    runner, port = await start_simulator("127.0.0.1", 0, {}, api_key=UPSTREAM_KEY)
    yield f"http://127.0.0.1:{port}/v1", runner
    await runner.cleanup()


def config(url: str, candidate: dict[str, Any], judge: dict[str, Any] | None = None,
           shadow: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """`chat` is answered by `sim-primary`, cleared for confidential data; the rule trials the
    group `trial` (and grades with the group `grader`)."""
    models = [deployment("chat", "sim-primary", url, data_clearance="confidential",
                         input_cost_per_token=1e-6, output_cost_per_token=2e-6),
              deployment("trial", **candidate, url=url)]
    if judge is not None:
        models.append(deployment("grader", **judge, url=url))
    trial: dict[str, Any] = {"group": "trial", "share": 1.0}
    if judge is not None:
        trial["judge"] = {"group": "grader", "rubric": "same facts"}
    return {"model_list": models, "keys": [{"key": APP_KEY, "name": "app", "team": "support"}],
            "teams": [{"name": "support"}], "admin_keys": [{"key": ADMIN, "name": "ops"}],
            "routing": {"rules": [{"name": "support", "match": {"model": "chat"},
                                   "shadow": trial}]},
            "shadow": {"rpm": 100_000, "max_concurrent": 64, **(shadow or {})},
            "cache": {"enabled": False}, **extra}


def bodies(runner: Any, model: str) -> list[str]:
    return [str(r.body) for r in runner.app[RECORDED]
            if isinstance(r.body, dict) and r.body.get("model") == model]


async def ask(running: Any, n: int, content: str = "question",
              headers: dict[str, str] | None = None) -> None:
    client = running.client()
    for i in range(n):
        await client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": f"{content} {i}"}],
            extra_headers=headers or {}, max_tokens=40)


async def finished(running: Any) -> Gateway:
    gw: Gateway = running.server.app[GATEWAY]

    async def idle() -> bool:
        return gw.shadow.running == 0
    await until(idle, "the trials to finish")
    return gw


async def test_a_confidential_request_is_never_shadowed_to_an_uncleared_candidate(
        sim: tuple[str, Any], make_gateway: GatewayFactory) -> None:
    url, runner = sim
    running = await make_gateway(config(url, {"upstream_model": "sim-public-cand",
                                              "data_clearance": "public"}))
    await ask(running, 10, "our merger plans", {"x-podium-data-class": "confidential"})
    await ask(running, 3, "public weather")          # the same rule shadows public data
    gw = await finished(running)
    assert len(bodies(runner, "sim-public-cand")) == 3
    assert not any("merger" in b for b in bodies(runner, "sim-public-cand"))
    metrics = await scrape(running.url)
    assert total(metrics, "podium_shadow_trials_total", result="skipped_not_cleared") == 10
    assert gw.shadow.store is not None and len(await gw.shadow.store.pairs(None, None)) == 3


async def test_a_judge_sees_only_what_the_request_may_show_it(
        sim: tuple[str, Any], make_gateway: GatewayFactory) -> None:
    url, runner = sim
    running = await make_gateway(config(
        url, {"upstream_model": "sim-cleared-cand", "data_clearance": "confidential"},
        judge={"upstream_model": "sim-public-judge", "data_clearance": "public"}))
    await ask(running, 4, "board minutes", {"x-podium-data-class": "confidential"})
    gw = await finished(running)
    assert len(bodies(runner, "sim-cleared-cand")) == 4   # cleared: trialled
    assert bodies(runner, "sim-public-judge") == []       # not cleared: never asked to grade
    assert gw.shadow.store is not None
    pairs = await gw.shadow.store.pairs(None, None)
    assert [(p.judge_score, p.judge_cost) for p in pairs] == [(None, 0.0)] * 4


async def test_personal_data_is_pseudonymized_for_the_candidate(
        sim: tuple[str, Any], make_gateway: GatewayFactory) -> None:
    url, runner = sim
    running = await make_gateway(config(url, {"upstream_model": "sim-public-cand",
                                              "data_clearance": "public"}))
    answer = await running.client().chat.completions.create(
        model="chat", messages=[{"role": "user", "content": f"Write to {EMAIL} today"}])
    assert EMAIL in (answer.choices[0].message.content or "")   # the primary is cleared
    await finished(running)
    [sent] = bodies(runner, "sim-public-cand")
    assert EMAIL not in sent and "Write to" in sent


async def test_shadow_spend_never_touches_a_team_budget(
        sim: tuple[str, Any], make_gateway: GatewayFactory) -> None:
    """The candidate costs 50 times the primary; a team budget that pays for its own requests
    only would be spent many times over if the trials were charged to it."""
    url, _ = sim
    cfg = config(url, {"upstream_model": "sim-dear-cand", "input_cost_per_token": 5e-5,
                       "output_cost_per_token": 1e-4},
                 shadow={"budget_usd": 0.02, "budget_period": "day"})
    cfg["teams"] = [{"name": "support", "budget_usd": 0.005, "budget_period": "day"}]
    running = await make_gateway(cfg)
    await ask(running, 40)                       # every one answered: no 429 for the team
    gw = await finished(running)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN}"}) as s:
        async with s.get(running.url.removesuffix("/v1") + "/admin/spend/budgets") as resp:
            [team] = [b for b in (await resp.json())["data"] if b["scope"] == "team"]
        async with s.get(running.url.removesuffix("/v1") + "/admin/spend?group_by=key") as r:
            by_key = {row["key"]: row["cost_usd"] for row in (await r.json())["data"]}
    assert gw.shadow.store is not None
    pairs = await gw.shadow.store.pairs(None, None)
    assert team["spent_usd"] == pytest.approx(sum(p.primary_cost for p in pairs)
                                               + _unshadowed(by_key, pairs))
    # The shadow budget holds: trials stopped when the next could pass it.
    assert 0 < by_key["shadow"] <= 0.02
    assert by_key["shadow"] == pytest.approx(sum(p.candidate_cost for p in pairs))
    metrics = await scrape(running.url)
    assert total(metrics, "podium_shadow_trials_total", result="skipped_budget") == 40 - len(pairs)


def _unshadowed(by_key: dict[str, float], pairs: list[Any]) -> float:
    """The primary cost of the requests whose trial was skipped (they were still answered)."""
    app = next(v for k, v in by_key.items() if k != "shadow")
    return app - sum(p.primary_cost for p in pairs)


async def test_rate_and_concurrency_bounds_hold(sim: tuple[str, Any],
                                                make_gateway: GatewayFactory) -> None:
    url, _ = sim
    running = await make_gateway(config(url, {"upstream_model": "sim-cand"},
                                        shadow={"rpm": 5}))
    await ask(running, 20)
    await finished(running)
    metrics = await scrape(running.url)
    assert total(metrics, "podium_shadow_trials_total", result="skipped_rate") == 15
    assert total(metrics, "podium_shadow_trials_total", result="agreed") + total(
        metrics, "podium_shadow_trials_total", result="disagreed") == 5

    hanging = await make_gateway(config(url, {"upstream_model": "sim-cand-hang"},
                                        shadow={"max_concurrent": 2}))
    await ask(hanging, 6)
    gw: Gateway = hanging.server.app[GATEWAY]
    assert gw.shadow.running == 2                  # two hang; the other four were skipped
    metrics = await scrape(hanging.url)
    assert total(metrics, "podium_shadow_trials_total", result="skipped_busy") == 4


async def test_shutdown_cancels_and_awaits_hanging_trials(sim: tuple[str, Any],
                                                          make_gateway: GatewayFactory) -> None:
    url, _ = sim
    running = await make_gateway(config(url, {"upstream_model": "sim-cand-hang"}))
    await ask(running, 3)
    gw: Gateway = running.server.app[GATEWAY]
    tasks = set(gw.shadow._tasks)
    assert len(tasks) == 3 and not any(t.done() for t in tasks)
    await asyncio.wait_for(running.server.close(), 30)   # the trials' candidate hangs an hour
    assert all(t.cancelled() for t in tasks) and gw.shadow.running == 0
    with pytest.raises(openai.APIConnectionError):
        await running.client().chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "after shutdown"}])
