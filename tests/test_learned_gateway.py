"""The learned router inside the gateway: the route hop's span, the audit record's `router`
section and when it keeps a prompt's features, the calibration task following the traffic,
scoring off the event loop, head files checked at load and kept across a reload."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import yaml

from gateway.config import ConfigError, parse_config
from routing.learned.embedders import HashedNgrams, SparseVector
from routing.learned.features import PromptFeatures
from routing.learned.head import LinearHead
from routing.learned.live import LearnedRules
from routing.learned.runtime import Compiled, LearnedRule
from routing.learned.scorer import DifficultyScorer
from routing.rules import LearnedSettings
from tests.conftest import APP_KEY, Upstream, base_config, deployment
from tests.support.learned import (
    EASY,
    HARD,
    easy_prompt,
    hard_prompt,
    learned_rule,
    train_synthetic_head,
)
from tests.support.net import free_port
from tests.support.waiting import until

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_synthetic_head(tmp_path_factory.mktemp("head") / "router.json")


def learned_config(upstream: Upstream, head: Path, **section: Any) -> dict[str, Any]:
    """The shared test catalog; group `chat` is sim-cheap (quality 40) and sim-dear (80)."""
    cfg = base_config(upstream.url)
    cfg["routing"] = {"rules": [learned_rule(str(head), ceiling=80, **section)]}
    return cfg


async def chat(gw: Any, prompt: str, **headers: str) -> Any:
    async with gw.client() as client:
        return await client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": prompt}],
            extra_headers=headers or None)


async def audit_records(gw: Any) -> list[dict[str, Any]]:
    """The request records, newest first (the query flushes the batched writer)."""
    return [r for r in await gw.gateway.governance.audit.query({}, limit=100)
            if "event" not in r]


# ---- the route hop on the trace -------------------------------------------------------------

async def test_the_route_span_carries_the_score_threshold_and_decision(
        upstream: Upstream, make_gateway: Any, head: Path) -> None:
    gw = await make_gateway(learned_config(upstream, head))
    await chat(gw, HARD)
    [route] = [s for s in gw.spans.get_finished_spans()
               if s.name == "POST /v1/chat/completions"]
    attrs = dict(route.attributes or {})
    assert attrs["podium.route.strategy"] == "learned"
    assert attrs["podium.route.learned.decision"] == "escalate"
    assert attrs["podium.route.learned.score"] >= attrs["podium.route.learned.threshold"]
    assert attrs["podium.route.learned.threshold_source"] == "head prior"
    assert attrs["podium.route.min_quality"] == attrs["podium.route.learned.quality"] > 40


async def test_an_explanation_is_not_traffic(upstream: Upstream, make_gateway: Any,
                                             head: Path) -> None:
    """Explain decides exactly as live traffic does, but moves neither the calibration nor the
    realised share."""
    gw = await make_gateway(learned_config(upstream, head))
    rule = gw.gateway.runtime.learned.get("support-learned")
    assert rule is not None and rule.calibrator is not None
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            async with session.post(gw.url + "/route/explain", json={
                    "model": "chat", "messages": [{"role": "user", "content": HARD}]},
                    headers={"Authorization": f"Bearer {APP_KEY}"}) as resp:
                explained = await resp.json()
    assert explained["learned"]["decision"] == "escalate"
    assert (rule.calibrator.recent, rule.recent_share()) == (0, None)
    raw = await chat(gw, HARD)
    assert f"score={explained['learned']['score']:.4f}" in raw.headers["x-podium-route"]
    assert (rule.calibrator.recent, rule.recent_share()) == (1, 1.0)


# ---- the audit record -----------------------------------------------------------------------

async def test_a_learned_request_is_audited_with_its_decision_and_features(
        upstream: Upstream, make_gateway: Any, head: Path) -> None:
    gw = await make_gateway(learned_config(upstream, head))
    await chat(gw, EASY)
    [record] = await audit_records(gw)
    router = record["router"]
    assert (router["strategy"], router["first"], router["tier"]) == ("learned", "sim-cheap",
                                                                    "weak")
    assert router["learned"]["decision"] == "floor" and router["checks"] == []
    features = router["features"]
    assert router["embedder"] == features["embedder"] == "hashed"
    assert features["sizes"] == [len(EASY), len(EASY), 1]
    assert len(features["index"]) == len(features["value"]) > 0
    assert EASY not in str(record) and "Portugal" not in str(record)   # never the text


@pytest.mark.parametrize(("prompt", "headers", "audit", "kept"), [
    ("My email is jane.doe@example.com, what is 2 + 2?", {}, {}, False),   # PII found
    (EASY, {"x-podium-data-class": "confidential"}, {}, False),
    (EASY, {"x-podium-data-class": "internal"}, {}, True),
    (EASY, {}, {"router_features": False}, False),
    ("My email is jane.doe@example.com, what is 2 + 2?", {}, {"include_content": True}, True),
])
async def test_features_are_kept_only_where_the_data_allows(
        upstream: Upstream, make_gateway: Any, head: Path, prompt: str,
        headers: dict[str, str], audit: dict[str, Any], kept: bool) -> None:
    cfg = learned_config(upstream, head)
    cfg["audit"] = audit
    for entry in cfg["model_list"]:
        entry["model_info"]["data_clearance"] = "restricted"
    gw = await make_gateway(cfg)
    await chat(gw, prompt, **headers)
    [record] = await audit_records(gw)
    assert ("features" in record["router"]) is kept
    assert "decision" in record["router"]["learned"]    # the decision is always on record


async def test_a_cascade_records_each_checked_answer(upstream: Upstream,
                                                     make_gateway: Any) -> None:
    cfg = base_config(upstream.url)
    cfg["model_list"][0] = deployment("chat", "sim-cheap-fails-on-integral", upstream.url,
                                      quality=40, input_cost_per_token=1e-7,
                                      output_cost_per_token=2e-7)
    cfg["routing"] = {"rules": [{"name": "try-cheap", "strategy": "cascade"}]}
    gw = await make_gateway(cfg)
    await chat(gw, "Evaluate the integral of x squared from 0 to 3.")
    await chat(gw, EASY)
    easy, hard = await audit_records(gw)   # newest first
    assert hard["router"]["checks"] == [
        {"deployment": "sim-cheap-fails-on-integral", "passed": False},
        {"deployment": "sim-dear", "passed": True}]
    assert (hard["router"]["tier"], easy["router"]["tier"]) == ("strong", "weak")
    assert easy["router"]["checks"] == [{"deployment": "sim-cheap-fails-on-integral",
                                         "passed": True}]
    assert hard["router"]["features"]["embedder"] == "hashed" and "learned" not in hard["router"]


# ---- calibration from the gateway's own traffic ---------------------------------------------

async def test_the_target_share_follows_the_gateways_own_traffic(
        upstream: Upstream, make_gateway: Any, head: Path) -> None:
    """The head's prior threshold sits between easy and hard prompts. Traffic that is 80 %
    easy then escalates ~20 %; once the calibration task has recalibrated on that traffic, the
    threshold is its median and half of the same traffic escalates, as the target says."""
    gw = await make_gateway(learned_config(upstream, head, window=200,
                                           recalibrate_every_s=0.2))
    rng = random.Random(5)
    prompts = [hard_prompt(rng) if i % 5 == 0 else easy_prompt(rng) + f" ({i})"
               for i in range(400)]
    rule = gw.gateway.runtime.learned.get("support-learned")
    assert rule is not None
    async with gw.client() as client:
        for batch in (prompts[:100], prompts[100:200]):
            await asyncio.gather(*(_ask(client, p) for p in batch))
        before = rule.recent_share()
        assert before is not None and abs(before - 0.2) < 0.1
        await until(lambda: _source_is_recent(rule), "the calibration task to recalibrate")
        for batch in (prompts[200:300], prompts[300:]):
            await asyncio.gather(*(_ask(client, p) for p in batch))
    after = rule.recent_share()
    assert after is not None and abs(after - 0.5) < 0.1


async def _ask(client: Any, prompt: str) -> None:
    await client.chat.completions.create(model="chat",
                                         messages=[{"role": "user", "content": prompt}])


async def _source_is_recent(rule: LearnedRule) -> bool:
    return rule.calibration.source.startswith("recent ")


# ---- off the event loop ---------------------------------------------------------------------

class ThreadNoting(HashedNgrams):
    """The default embedder, noting which thread each embed runs on."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def embed(self, text: str) -> SparseVector:
        self.threads.append(threading.get_ident())
        return super().embed(text)


@pytest.mark.parametrize("off_loop_ms", [0.0, 1000.0])
async def test_a_costly_score_runs_on_a_worker_thread(head: Path, off_loop_ms: float) -> None:
    embedder = ThreadNoting()
    settings = LearnedSettings(head=str(head), floor=40, ceiling=90, target_strong_share=0.5)
    scorer = DifficultyScorer(LinearHead.load(head), embedder, off_loop_ms=off_loop_ms)
    scorer.warm()                                  # measures a cost above 0 ms, below 1 s
    rule = LearnedRule(settings, scorer=scorer)
    rules = LearnedRules(Compiled({"r": rule}, {}, None))
    assessed = await rules.assess("r", [{"role": "user", "content": HARD}], record=True)
    assert assessed is not None and assessed.difficulty is not None
    assert assessed.features is not None and assessed.features.embedder == "hashed"
    on_loop = embedder.threads[-1] == threading.get_ident()
    assert on_loop is (off_loop_ms > 0)


# ---- head files at load and on reload -------------------------------------------------------

def test_heads_are_loaded_once_and_kept_across_a_reload_until_they_change(
        tmp_path: Path, head: Path) -> None:
    (tmp_path / "heads").mkdir()
    copy = tmp_path / "heads" / "h.json"
    copy.write_bytes(head.read_bytes())
    cfg = parse_config({"model_list": [{"model_name": "chat",
                                        "litellm_params": {"model": "openai/x"}}],
                        "routing": {"rules": [learned_rule("heads/h.json"),
                                              {**learned_rule("heads/h.json"), "name": "b"}]}},
                       env={})
    first = LearnedRules.compile(cfg.routing, tmp_path)
    a, b = first.get("support-learned"), first.get("b")
    assert a is not None and b is not None and a.scorer.head is b.scorer.head  # read once
    again = LearnedRules.compile(cfg.routing, tmp_path, previous=first)
    assert again.get("support-learned") is a              # calibration and cache kept
    data = json.loads(copy.read_text())
    data["intercept"] += 1.0
    copy.write_text(json.dumps(data))
    changed = LearnedRules.compile(cfg.routing, tmp_path, previous=again)
    assert changed.get("support-learned") is not a
    copy.unlink()
    with pytest.raises(ConfigError) as caught:
        LearnedRules.compile(cfg.routing, tmp_path, previous=changed)
    assert caught.value.problems == [
        f"routing.rules[0].learned.head: {copy}: cannot read: No such file or directory",
        f"routing.rules[1].learned.head: {copy}: cannot read: No such file or directory"]


def podium(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize(("content", "problem"), [
    (None, "cannot read: No such file or directory"),
    ("{not json", "not JSON"),
    ('{"format": "something-else"}', "format is 'something-else'"),
])
def test_a_missing_or_broken_head_stops_check_and_serve(tmp_path: Path, content: str | None,
                                                        problem: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({
        "model_list": [{"model_name": "chat", "litellm_params": {"model": "openai/x"}}],
        "keys": [{"key": APP_KEY, "name": "app"}],
        "storage": {"path": str(tmp_path / "p.sqlite3")},
        "key_store": {"path": str(tmp_path / "k.sqlite3")},
        "routing": {"rules": [learned_rule("heads/router.json")]}}))
    if content is not None:
        (tmp_path / "heads").mkdir()
        (tmp_path / "heads" / "router.json").write_text(content)
    expected = (f"routing.rules[0].learned.head: {tmp_path / 'heads' / 'router.json'}: "
                f"{problem}")
    check = podium("check", "--config", str(path))
    assert check.returncode == 1 and expected in check.stderr, check.stderr
    serve = podium("serve", "--config", str(path), "--port", str(free_port()))
    assert serve.returncode == 1 and "cannot serve, 1 problem(s)" in serve.stderr
    assert expected in serve.stderr


def test_scores_are_the_same_inline_and_recorded(head: Path) -> None:
    scorer = DifficultyScorer(LinearHead.load(head))
    features = PromptFeatures.of_prompt(HARD)
    score, kept = scorer.score_and_record(features)
    assert score == scorer.score(features)
    rebuilt = scorer.head.score_embedded(kept.features(), np.asarray(kept.index),
                                         np.asarray(kept.value, np.float32))
    assert rebuilt == pytest.approx(score, abs=1e-3)   # values kept to 5 decimals
