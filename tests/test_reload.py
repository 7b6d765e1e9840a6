"""Hot reload: under continuous load nothing fails and the new config takes effect at once;
an invalid config is refused and the old one keeps serving; SIGHUP works on a real process."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
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
from tests.conftest import ADMIN, APP_KEY, Upstream, base_config, deployment
from tests.support.metrics import total
from tests.support.net import free_port, get_json
from tests.support.waiting import until

ROOT = Path(__file__).resolve().parents[1]


def write(path: Path, cfg: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(cfg))


def config(url: str, tmp: Path, *, extra_group: bool = False) -> dict[str, Any]:
    cfg = base_config(url)
    cfg["admin_keys"] = [{"key": ADMIN, "name": "ops"}]
    cfg["storage"] = {"path": str(tmp / "podium.sqlite3")}
    cfg["key_store"] = {"path": str(tmp / "keys.sqlite3")}
    cfg["cache"] = {"enabled": False}
    if extra_group:
        cfg["model_list"].append(deployment("fresh", "sim-fresh", url))
    return cfg


async def admin_reload(base: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(
            base + "/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
        return resp.status, await resp.json()


@pytest.fixture
async def served(upstream: Upstream, tmp_path: Path) -> Any:
    path = tmp_path / "gateway.yaml"
    write(path, config(upstream.url, tmp_path))
    app = build_app(load_config(path, env={}), telemetry.with_exporter(InMemorySpanExporter()),
                    config_path=path)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield path, f"http://127.0.0.1:{server.port}"
    await server.close()


async def test_reload_under_load_drops_nothing(served: Any, upstream: Upstream,
                                               tmp_path: Path) -> None:
    path, base = served
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=APP_KEY, max_retries=0)
    stop, failures, done = asyncio.Event(), [], []

    async def load(worker: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                await client.chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": f"w{worker} {i}"}])
                done.append(1)
            except openai.APIError as err:
                failures.append(err)

    workers = [asyncio.create_task(load(w)) for w in range(6)]
    await until(lambda: _at_least(done, 20), "traffic to flow")
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="fresh", messages=[{"role": "user",
                                                                       "content": "x"}])
    write(path, config(upstream.url, tmp_path, extra_group=True))
    status, body = await admin_reload(base)
    assert status == 200 and body["status"] == "reloaded" and body["restart_required"] == []
    fresh = await client.chat.completions.create(model="fresh", messages=[
        {"role": "user", "content": "new model"}])
    assert fresh.choices[0].message.content == "Simulated answer from sim-fresh: new model"
    settled = len(done)
    await until(lambda: _at_least(done, settled + 20), "traffic to go on after the reload")
    stop.set()
    await asyncio.gather(*workers)
    assert failures == []


async def _at_least(items: list[int], n: int) -> bool:
    return len(items) >= n


async def test_invalid_reload_keeps_the_old_config(served: Any, upstream: Upstream,
                                                   tmp_path: Path) -> None:
    path, base = served
    broken = config(upstream.url, tmp_path, extra_group=True)
    broken["model_list"][0]["model_info"]["quality"] = 500
    write(path, broken)
    status, body = await admin_reload(base)
    assert status == 400 and body["error"]["code"] == "invalid_config"
    assert "model_list[0].model_info.quality" in body["error"]["message"]
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=APP_KEY, max_retries=0)
    ok = await client.chat.completions.create(model="chat", messages=[{"role": "user",
                                                                       "content": "still"}])
    assert ok.choices[0].message.content.endswith("still")
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="fresh", messages=[{"role": "user",
                                                                       "content": "x"}])
    async with aiohttp.ClientSession() as session, session.get(base + "/metrics") as resp:
        from prometheus_client.parser import text_string_to_metric_families

        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in text_string_to_metric_families(await resp.text())
                   for s in f.samples}
    assert total(samples, "podium_config_reloads_total", result="invalid") == 1
    status, _ = await admin_reload(base)  # nobody fixed it: still refused
    assert status == 400


async def test_reload_needs_an_admin_key(served: Any) -> None:
    _, base = served
    async with aiohttp.ClientSession() as session, session.post(
            base + "/admin/reload", headers={"Authorization": f"Bearer {APP_KEY}"}) as resp:
        assert resp.status == 403


async def test_sighup_reloads_a_running_gateway(upstream: Upstream, tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    write(path, config(upstream.url, tmp_path))
    port = free_port()
    proc = subprocess.Popen(  # noqa: ASYNC220 - Popen returns at once
        [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", str(port)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        await until(lambda: get_json(base + "/readyz"), "the gateway to be ready")
        write(path, config(upstream.url, tmp_path, extra_group=True))
        proc.send_signal(signal.SIGHUP)
        client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=APP_KEY, max_retries=0)

        async def has_fresh() -> bool:
            return "fresh" in {m.id for m in (await client.models.list()).data}

        await until(has_fresh, "the reloaded config to list the new model")
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)


async def test_a_reload_reports_its_warnings(served: Any, upstream: Upstream, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    path, base = served
    cfg = config(upstream.url, tmp_path)
    cfg["teams"] = [{"name": "support", "data_class": "restricted"}]  # reaches nothing
    write(path, cfg)
    caplog.set_level("WARNING", logger="podium")
    status, body = await admin_reload(base)
    assert status == 200, body
    [warning] = body["warnings"]
    assert warning.startswith("teams[0]: team 'support' can reach no deployment")
    assert f"config: {warning}" in caplog.messages
