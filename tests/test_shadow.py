"""Shadow trials: the client's answers and latency are those it gets with shadowing off (a
slow candidate would show any leak); the candidate receives about the configured share; the
report's numbers are those of the stored pairs; the pairs train a learned router's head."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml
from aiohttp.test_utils import TestServer
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.app import build_app
from gateway.config import load_config
from gateway.observability import telemetry
from gateway.runtime import GATEWAY, Gateway
from gateway.simulator import RECORDED, SimModel, start_simulator
from routing.learned.head import LinearHead
from tests.conftest import ADMIN, APP_KEY, UPSTREAM_KEY, GatewayFactory, base_config, deployment
from tests.support.cdp import Page, browser, open_page
from tests.support.waiting import until

ROOT = Path(__file__).resolve().parents[1]
SLOW_S = 1.5


@pytest.fixture
async def sim() -> AsyncIterator[tuple[str, Any]]:
    runner, port = await start_simulator("127.0.0.1", 0, {"sim-cand-slow": SimModel(SLOW_S * 1e3)},
                                         api_key=UPSTREAM_KEY)
    yield f"http://127.0.0.1:{port}/v1", runner
    await runner.cleanup()


def trial_config(url: str, candidate: str, share: float, **shadow: Any) -> dict[str, Any]:
    """`chat` is answered by sim-dear (the rule requires quality 70); the candidate is a
    cheaper, weaker deployment in its own group, `trial`."""
    cfg = base_config(url)
    cfg["model_list"].append(deployment("trial", candidate, url, quality=30,
                                        input_cost_per_token=5e-8, output_cost_per_token=1e-7))
    cfg["model_list"].append(deployment("grader", "sim-judge", url, quality=90,
                                        input_cost_per_token=2e-6, output_cost_per_token=4e-6))
    cfg["routing"] = {"rules": [{"name": "support", "match": {"model": "chat"},
                                 "min_quality": 70,
                                 "shadow": {"group": "trial", "share": share, **shadow}}]}
    cfg["shadow"] = {"rpm": 100_000, "max_concurrent": 256}
    cfg["cache"] = {"enabled": False}
    cfg["admin_keys"] = [{"key": ADMIN, "name": "ops"}]
    return cfg


def gateway_of(running: Any) -> Gateway:
    return running.server.app[GATEWAY]  # type: ignore[no-any-return]


async def settled(gw: Gateway) -> bool:
    return gw.shadow.running == 0


def candidate_calls(runner: Any, model: str) -> int:
    return sum(1 for r in runner.app[RECORDED]
               if isinstance(r.body, dict) and r.body.get("model") == model)


async def test_the_client_never_sees_or_waits_for_the_candidate(
        sim: tuple[str, Any], make_gateway: GatewayFactory) -> None:
    url, runner = sim
    off = await make_gateway(base_config(url) | {"routing": trial_config(
        url, "sim-cand-slow", 1.0)["routing"] | {"rules": [{"name": "support", "match": {
            "model": "chat"}, "min_quality": 70}]}, "cache": {"enabled": False}})
    on = await make_gateway(trial_config(url, "sim-cand-slow", 1.0))
    timings: dict[str, list[float]] = {"off": [], "on": []}
    answers: dict[str, list[tuple[Any, ...]]] = {"off": [], "on": []}
    for i in range(20):
        for name, gw in (("off", off), ("on", on)):  # interleaved: the same machine load
            started = time.perf_counter()
            raw = await gw.client().chat.completions.with_raw_response.create(
                model="chat", messages=[{"role": "user", "content": f"question {i}"}])
            timings[name].append(time.perf_counter() - started)
            answer = raw.parse()
            podium = {k: v for k, v in raw.headers.items()
                      if k.startswith("x-podium-") and k != "x-podium-config-version"}
            answers[name].append((answer.choices[0].message.content, answer.usage, podium))
    assert answers["on"] == answers["off"]
    assert answers["on"][0][0] == "Simulated answer from sim-dear: question 0"
    # A leak of the candidate's 1.5 s would show in every answer; none waited for it.
    assert max(timings["on"]) < SLOW_S
    assert statistics.median(timings["on"]) < statistics.median(timings["off"]) + 0.25
    # The trials did run, each after its answer, each waiting the candidate's 1.5 s.
    gw = gateway_of(on)
    await until(lambda: settled(gw), "the trials to finish")
    assert gw.shadow.store is not None
    pairs = await gw.shadow.store.pairs(None, None)
    assert len(pairs) == 20 and {p.candidate for p in pairs} == {"sim-cand-slow"}
    assert min(p.candidate_latency_s for p in pairs) >= SLOW_S
    assert candidate_calls(runner, "sim-cand-slow") == 20


async def test_the_candidate_gets_about_its_share(sim: tuple[str, Any],
                                                  make_gateway: GatewayFactory) -> None:
    url, runner = sim
    running = await make_gateway(trial_config(url, "sim-cand", 0.25))
    client, n = running.client(), 400

    async def ask(worker: int) -> None:
        for i in range(worker, n, 8):
            await client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": f"q{i}"}])
    await asyncio.gather(*(ask(w) for w in range(8)))
    gw = gateway_of(running)
    await until(lambda: settled(gw), "the trials to finish")
    assert gw.shadow.store is not None
    tried = len(await gw.shadow.store.pairs(None, None))
    # Binomial(400, 0.25): mean 100, sd 8.7; 4.6 sd either way fails once in ~200,000 runs.
    assert abs(tried - 100) <= 40, tried
    assert candidate_calls(runner, "sim-cand") == tried


# ---- the report, the ledger and training, on a gateway served from a config file ------------

PROMPTS = ([f"plain question {i}" for i in range(6)]
           + [f"solve the integral {i}" for i in range(6)]            # the candidate refuses
           + [f'[[say:{{"score": 0.2}}]] graded {i}' for i in range(4)]   # the judge says 0.2
           + [f'[[say:{{"score": 0.9}}]] graded {i}' for i in range(4)])  # ... and 0.9


@pytest.fixture
async def served(sim: tuple[str, Any], tmp_path: Path) -> AsyncIterator[tuple[str, Path, Any]]:
    url, _ = sim
    cfg = trial_config(url, "sim-cand-fails-on-integral", 1.0,
                       judge={"group": "grader", "rubric": "Same facts, same format."})
    cfg["storage"] = {"path": str(tmp_path / "podium.sqlite3")}
    cfg["key_store"] = {"path": ":memory:"}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    app = build_app(load_config(path), telemetry.with_exporter(InMemorySpanExporter()),
                    config_path=path)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}", path, app
    await server.close()


async def _podium(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


def _by_hand(pairs: list[Any]) -> dict[str, Any]:
    answered = [p for p in pairs if p.status == "ok"]
    mean = statistics.fmean
    return {
        "trials": len(pairs), "answered": len(answered),
        "agreement_rate": sum(bool(p.agreed) for p in answered) / len(answered),
        "primary_pass_rate": sum(p.primary_passed for p in answered) / len(answered),
        "candidate_pass_rate": sum(bool(p.candidate_passed) for p in answered) / len(answered),
        "primary_cost_usd": mean(p.primary_cost for p in answered),
        "candidate_cost_usd": mean(p.candidate_cost for p in answered),
        "primary_latency_s": mean(p.primary_latency_s for p in answered),
        "candidate_latency_s": mean(p.candidate_latency_s for p in answered),
        "error_rate": (len(pairs) - len(answered)) / len(pairs),
        "judge_cost_usd": sum(p.judge_cost for p in pairs)}


async def test_report_ledger_and_training_agree_with_the_pairs(
        served: tuple[str, Path, Any], tmp_path: Path) -> None:
    base, path, app = served
    gw: Gateway = app[GATEWAY]
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=APP_KEY, max_retries=0)
    for prompt in PROMPTS:
        await client.chat.completions.create(model="chat",
                                             messages=[{"role": "user", "content": prompt}])
    await until(lambda: settled(gw), "the trials to finish")
    assert gw.shadow.store is not None
    pairs = await gw.shadow.store.pairs(None, None)
    assert len(pairs) == len(PROMPTS)
    by_prompt = {p.request_id: p for p in pairs}
    assert len(by_prompt) == len(PROMPTS)
    refused = [p for p in pairs if p.candidate_check == "the model refused"]
    assert len(refused) == 6 and not any(p.agreed for p in refused)
    scores = sorted(p.judge_score for p in pairs if p.judge_score is not None)
    assert scores.count(0.2) == 4 and scores.count(0.9) == 4  # the judge decided those
    assert all(p.judge_cost > 0 for p in pairs) and all(p.candidate_cheaper for p in pairs)

    code, out = await _podium("shadow", "report", "--config", str(path), "--json")
    assert code == 0, out
    [row] = json.loads(out)["data"]
    expected = _by_hand(pairs)
    assert (row["rule"], row["candidate"]) == ("support", "sim-cand-fails-on-integral")
    for name, value in expected.items():
        assert row[name] == pytest.approx(value, rel=1e-4, abs=1e-9), name
    assert row["agreement_rate"] == pytest.approx(10 / 20)  # 6 plain + 4 graded 0.9
    code, text = await _podium("shadow", "report", "--config", str(path), "--rule", "support")
    assert code == 0 and "agreement 50.0%" in text and "candidate 70.0%" in text, text

    # Shadow spend is its own ledger category: the team paid the primaries only.
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN}"}) as s:
        async with s.get(base + "/admin/spend?group_by=key") as resp:
            by_key = {r["key"]: r["cost_usd"] for r in (await resp.json())["data"]}
        async with s.get(base + "/admin/spend?group_by=team") as resp:
            by_team = {r["team"]: r["cost_usd"] for r in (await resp.json())["data"]}
        async with s.get(base + "/admin/dashboard/data") as resp:
            shown = (await resp.json())["shadow"]
    assert by_key["shadow"] == pytest.approx(sum(p.candidate_cost + p.judge_cost
                                                 for p in pairs))
    assert by_team["support"] == pytest.approx(sum(p.primary_cost for p in pairs))
    assert shown == [row]   # the dashboard's panel shows the report

    head = tmp_path / "shadow-head.json"
    code, out = await _podium("router", "train", "--from-shadow", "--config", str(path),
                              "--out", str(head))
    assert code == 0, out
    assert "20 labels from shadow trials" in out and "strong-only 10" in out, out
    trained = LinearHead.from_json(json.loads(head.read_text()), str(head))
    assert trained.provenance["shadow"]["labels"] == {"weak-correct": 10, "strong-only": 10}


async def test_a_streamed_answer_is_trialled_too(sim: tuple[str, Any],
                                                 make_gateway: GatewayFactory) -> None:
    url, _ = sim
    running = await make_gateway(trial_config(url, "sim-cand", 1.0))
    stream = await running.client().chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "stream me an answer"}],
        stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Simulated answer from sim-dear: stream me an answer"
    gw = gateway_of(running)
    await until(lambda: settled(gw), "the trial to finish")
    assert gw.shadow.store is not None
    [pair] = await gw.shadow.store.pairs(None, None)
    assert (pair.primary, pair.candidate, pair.primary_passed) == ("sim-dear", "sim-cand", True)
    assert pair.similarity is not None and pair.similarity > 0.6 and pair.agreed


# ---- the dashboard's panel, in Chromium -----------------------------------------------------

@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from browser(tmp_path_factory)


@pytest.fixture
async def page(chromium: str) -> AsyncIterator[Page]:
    async with open_page(chromium) as tab:
        yield tab


SHADOW_PANEL = """(() => [...document.querySelectorAll('#shadow .shadow-row[data-candidate]')]
  .map((row) => ({rule: row.dataset.rule, candidate: row.dataset.candidate,
    ...Object.fromEntries([...row.querySelectorAll('[data-kpi]')].map(
      (c) => [c.dataset.kpi, c.dataset.value === '' ? null : Number(c.dataset.value)]))})))()"""


@pytest.mark.timeout(300, func_only=True)
@pytest.mark.provisioned("chromium")
async def test_the_dashboard_panel_shows_the_report(served: tuple[str, Path, Any],
                                                    page: Page) -> None:
    base, _, app = served
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=APP_KEY, max_retries=0)
    for prompt in PROMPTS[4:10]:
        await client.chat.completions.create(model="chat",
                                             messages=[{"role": "user", "content": prompt}])
    await until(lambda: settled(app[GATEWAY]), "the trials to finish")
    await page.navigate(base + "/dashboard")
    await page.wait_for("!!document.getElementById('key')", "the login form")
    await page.evaluate(f"document.getElementById('key').value = {json.dumps(ADMIN)};"
                        "document.querySelector('#login button').click(); true")
    [shown] = await page.wait_for(f"(rows => rows.length === 1 && rows[0].trials === 6 && rows)"
                                  f"({SHADOW_PANEL})", "the shadow panel")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN}"}) as s, \
            s.get(base + "/admin/dashboard/data") as resp:
        [row] = (await resp.json())["shadow"]
    assert (shown["rule"], shown["candidate"]) == (row["rule"], row["candidate"])
    for kpi in ("agreement_rate", "primary_pass_rate", "candidate_pass_rate", "cost_ratio",
                "latency_ratio", "error_rate"):
        assert shown[kpi] == pytest.approx(row[kpi]), kpi
    assert shown["agreement_rate"] == pytest.approx(2 / 6)   # 2 plain, 4 refused integrals
    assert page.errors() == [], "no script errors, no CSP violations"
