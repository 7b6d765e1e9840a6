"""The learned router end to end, through a real `podium serve` and its simulator: a learned
rule over a cheap and a strong simulated deployment, with a head trained in the test. A short
factual question stays on the cheap tier, a long multi-step one goes to the strong tier, explain
(HTTP and CLI) says why, `x-podium-route` carries the score, threshold and decision, the header
`x-podium-min-quality` overrides the score, and /metrics and the dashboard count the decisions
against the target."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio

from tests.support.learned import EASY, HARD, learned_rule, train_synthetic_head, two_tiers
from tests.support.net import free_port
from tests.support.pool import running_pool
from tests.support.waiting import until

# One gateway serves every test here: the tests share its event loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")
ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-test-learned-0123456789"
ADMIN = "sk-admin-learned-0123456789"


def config(tmp: Path, rule: dict[str, Any] | None = None) -> dict[str, Any]:
    sim_port = free_port()
    return {
        "simulator": {"enabled": True, "port": sim_port},
        "model_list": two_tiers(f"http://127.0.0.1:{sim_port}/v1"),
        "keys": [{"key": KEY, "name": "support-app", "team": "support"}],
        "admin_keys": [{"key": ADMIN, "name": "ops"}],
        "routing": {"rules": [rule or learned_rule("heads/router.json")]},
        "storage": {"path": str(tmp / "podium.sqlite3")},
        "key_store": {"path": str(tmp / "keys.sqlite3")},
    }


@dataclass
class Served:
    base: str
    config: Path

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base + "/v1", api_key=KEY, max_retries=0)

    async def ask(self, prompt: str, temperature: float | None = None,
                  **headers: str) -> tuple[str, str]:
        """(the deployment that answered, x-podium-route) for one chat request."""
        raw = await self.client().chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": prompt}],
            extra_headers=headers or None,
            **({"temperature": temperature} if temperature is not None else {}))
        return raw.headers["x-podium-deployment"], raw.headers["x-podium-route"]

    async def explain(self, prompt: str, **headers: str) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.post(
                self.base + "/v1/route/explain", json={"model": "chat", "messages": [
                    {"role": "user", "content": prompt}]},
                headers={"Authorization": f"Bearer {KEY}", **headers}) as resp:
            assert resp.status == 200, await resp.text()
            return dict(await resp.json())


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    tmp = tmp_path_factory.mktemp("learned")
    (tmp / "heads").mkdir()
    train_synthetic_head(tmp / "heads" / "router.json")
    async with running_pool(config(tmp), tmp, workers=1) as (_, base):
        yield Served(base, tmp / "gateway.yaml")


def params(route: str) -> dict[str, str]:
    """`x-podium-route`'s `; name=value` parameters, with the rule under "rule"."""
    rule, *rest = route.split("; ")
    return {"rule": rule, **dict(p.split("=", 1) for p in rest)}


async def test_easy_questions_stay_cheap_and_hard_ones_go_strong(served: Served) -> None:
    easy_dep, easy_route = await served.ask(EASY)
    hard_dep, hard_route = await served.ask(HARD)
    assert (easy_dep, hard_dep) == ("sim-cheap", "sim-strong")
    easy, hard = params(easy_route), params(hard_route)
    assert (easy["rule"], easy["decision"], easy["quality"]) == ("support-learned", "floor", "40")
    assert hard["decision"] == "escalate" and 40 < int(hard["quality"]) <= 90
    assert easy["threshold"] == hard["threshold"]          # one calibration for both
    assert float(easy["score"]) < float(easy["threshold"]) <= float(hard["score"])


async def test_explain_shows_the_score_the_threshold_and_why(served: Served) -> None:
    easy, hard = await served.explain(EASY), await served.explain(HARD)
    assert easy["learned"]["decision"] == "floor" and easy["chain"][0] == "sim-cheap"
    assert hard["learned"]["decision"] == "escalate" and hard["chain"] == ["sim-strong"]
    learned = hard["learned"]
    assert learned["score"] >= learned["threshold"] > easy["learned"]["score"]
    assert learned["threshold_source"] == "head prior"  # too few requests to recalibrate yet
    assert f"score {learned['score']:.4f} >= threshold" in learned["reason"]
    dropped = {c["deployment"]: c["reason"] for c in hard["candidates"] if not c["kept"]}
    assert dropped == {"sim-cheap": f"quality 40 < required {learned['quality']}"}


async def test_the_quality_header_overrides_the_score(served: Served) -> None:
    dep, route = await served.ask(HARD, **{"x-podium-min-quality": "30"})
    assert dep == "sim-cheap", route
    assert params(route)["decision"] == "escalate"        # the score's verdict, on record ...
    assert params(route)["header-min-quality"] == "30"    # ... and what overrode it
    # A cached cheap answer (temperature 0 is cached) never serves a request that needs more.
    assert (await served.ask(EASY, temperature=0))[0] == "sim-cheap"
    assert (await served.ask(EASY, temperature=0, **{"x-podium-min-quality": "85"}))[0] \
        == "sim-strong"
    explained = await served.explain(EASY, **{"x-podium-min-quality": "85"})
    assert explained["chain"] == ["sim-strong"] and explained["min_quality"] == 85
    assert "x-podium-min-quality 85 overrides" in explained["learned"]["reason"]


async def test_the_cli_explains_the_same_decision(served: Served) -> None:
    request = json.dumps({"model": "chat", "messages": [{"role": "user", "content": HARD}]})
    out = (await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "gateway", "route", "--explain", "--config",
                         str(served.config), "--key", "support-app"], input=request, cwd=ROOT,
        capture_output=True, text=True, timeout=120, check=True)).stdout
    assert "learned: score " in out and ": escalate, quality " in out
    assert "plan: sim-strong" in out


async def test_metrics_count_the_decisions_against_the_target(served: Served) -> None:
    await served.ask(EASY)

    async def learned() -> dict[str, Any] | None:
        """The dashboard's learned panel, once the calibration task has reported (1 s)."""
        async with aiohttp.ClientSession() as session, session.get(
                served.base + "/admin/dashboard/data",
                headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
            rule = (await resp.json())["learned"].get("support-learned")
        return rule if rule and rule["target_strong_share"] is not None else None

    panel = await until(learned, "the learned rule's calibration on the dashboard")
    async with aiohttp.ClientSession() as session, session.get(
            served.base + "/metrics") as resp:
        metrics = await resp.text()
    assert 'podium_learned_decisions_total{decision="floor",route="support-learned"}' in metrics
    assert 'podium_learned_target_strong_share{route="support-learned"} 0.5' in metrics
    assert panel["target_strong_share"] == 0.5 and panel["floor"] >= 1
    assert panel["threshold"] == pytest.approx(float(params((await served.ask(EASY))[1])[
        "threshold"]), abs=1e-4)
    assert panel["strong_share"] == pytest.approx(
        panel["escalate"] / (panel["floor"] + panel["escalate"]), abs=1e-4)
