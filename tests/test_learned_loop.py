"""The closed loop, through a real `podium serve`: a cascade rule over a cheap simulated model that
cannot do integrals (it refuses them) and a strong one; the gateway records each cascade's
outcome in its audit trail; `podium router train --from-audit` turns those records (and the
feedback given) into a head; a learned rule with that head, reloaded into the same gateway,
then sends integrals straight to the strong model and everything else to the cheap one."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import openai
import yaml

from tests.support.learned import two_tiers
from tests.support.net import free_port
from tests.support.pool import running_pool

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-test-loop-0123456789"
ADMIN = "sk-admin-loop-0123456789"
CHEAP = "sim-cheap-fails-on-integral"      # the simulator refuses prompts with "integral"


def integral(rng: random.Random) -> str:
    k, a = rng.randint(2, 9), rng.randint(1, 7)
    return rng.choice([f"Evaluate the integral of x^{k} times e^x from 0 to {a}.",
                       f"Compute the definite integral of sin({k}x) over [0, {a}].",
                       f"What is the integral of {k}/(1+x^2) from -{a} to {a}?"]) \
        + f" (ticket {rng.randint(1, 10**6)})"   # distinct prompts: no cache hits


def factual(rng: random.Random) -> str:
    place = rng.choice(["France", "Peru", "Japan", "Kenya", "Norway", "Chile", "Egypt", "Spain"])
    return rng.choice([f"What is the capital of {place}?", f"What language is spoken in {place}?",
                       f"Which continent is {place} on?"]) + f" (ticket {rng.randint(1, 10**6)})"


def config(sim_port: int, tmp: Path, rule: dict[str, Any]) -> dict[str, Any]:
    return {"simulator": {"enabled": True, "port": sim_port},
            "model_list": two_tiers(f"http://127.0.0.1:{sim_port}/v1", cheap=CHEAP),
            "keys": [{"key": KEY, "name": "support-app", "team": "support"}],
            "admin_keys": [{"key": ADMIN, "name": "ops"}],
            "storage": {"path": str(tmp / "podium.sqlite3")},
            "key_store": {"path": str(tmp / "keys.sqlite3")},
            "routing": {"rules": [rule]}}


async def ask(client: openai.AsyncOpenAI, prompt: str) -> dict[str, str]:
    raw = await client.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": prompt}])
    return dict(raw.headers)


async def admin(session: aiohttp.ClientSession, method: str, url: str,
                **kw: Any) -> dict[str, Any]:
    async with session.request(method, url, headers={"Authorization": f"Bearer {ADMIN}"},
                               **kw) as resp:
        assert resp.status in (200, 201), await resp.text()
        return dict(await resp.json())


def train(cfg: Path, out: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "gateway", "router", "train", "--from-audit",
                           "--config", str(cfg), "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_cascade_outcomes_train_a_head_that_changes_routing(tmp_path: Path) -> None:
    rng, sim_port = random.Random(3), free_port()
    cascade = config(sim_port, tmp_path, {"name": "support", "strategy": "cascade"})
    async with running_pool(cascade, tmp_path, workers=1) as (_, base), \
            openai.AsyncOpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0) as client, \
            aiohttp.ClientSession() as session:
        hard = await asyncio.gather(*(ask(client, integral(rng)) for _ in range(20)))
        easy = await asyncio.gather(*(ask(client, factual(rng)) for _ in range(20)))
        # Under the cascade every integral pays for the cheap attempt, then escalates.
        assert {(h["x-podium-deployment"], h["x-podium-attempts"]) for h in hard} == {
            ("sim-strong", "2")}
        assert {h["x-podium-deployment"] for h in easy} == {CHEAP}
        for h in hard[:3]:  # people liked the strong answers: feedback is a label too
            await session.post(base + "/v1/feedback", json={
                "request_id": h["x-request-id"], "score": 1.0},
                headers={"Authorization": f"Bearer {KEY}"})
        assert len((await admin(session, "GET", base + "/admin/audit?limit=100"))["data"]) \
            == 43                                      # flushed: 40 requests, 3 feedback

        (tmp_path / "heads").mkdir()
        summary = await asyncio.to_thread(train, tmp_path / "gateway.yaml",
                                          tmp_path / "heads" / "own.json")
        assert "40 labels from the audit trail (strong-only 20, weak-correct 20; feedback " \
               "used on 3)" in summary
        learned = {"name": "support", "strategy": "learned", "learned": {
            "head": "heads/own.json", "floor": 40, "ceiling": 90,
            "min_relative_quality": 0.95}}
        (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(
            config(sim_port, tmp_path, learned)))
        assert (await admin(session, "POST", base + "/admin/reload"))["status"] == "reloaded"

        fresh = random.Random(11)
        hard = await asyncio.gather(*(ask(client, integral(fresh)) for _ in range(10)))
        easy = await asyncio.gather(*(ask(client, factual(fresh)) for _ in range(10)))
    # The same kinds of prompt, routed by what the gateway learnt: no cheap attempt wasted.
    assert {(h["x-podium-deployment"], h["x-podium-attempts"]) for h in hard} == {
        ("sim-strong", "1")}
    assert {h["x-podium-deployment"] for h in easy} == {CHEAP}
    assert all("decision=escalate" in h["x-podium-route"] for h in hard)
    assert all("decision=floor" in h["x-podium-route"] for h in easy)
