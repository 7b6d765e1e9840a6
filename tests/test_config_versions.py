"""Config versions: every config loaded is numbered and kept; every answer, audit record, span
and access-log line names the version that served it; three reloads and a rollback under
continuous load fail nothing; the history's diff masks every secret; a pool of workers follows
a reload or rollback made through one of them, and a worker restarted later keeps it."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
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
from tests.conftest import ADMIN, APP_KEY, UPSTREAM_KEY, Upstream, base_config, deployment
from tests.support.net import get_json
from tests.support.pool import running_pool
from tests.support.waiting import until

ROOT = Path(__file__).resolve().parents[1]
ENV_KEY = "PODIUM_TEST_ENV_KEY"          # a virtual key the config reads from the environment
ENV_VALUE = "sk-from-the-environment-0123456789"
LATER_SECRET = "sk-literal-in-version-three-42"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


def config(url: str, tmp: Path, step: int = 1) -> dict[str, Any]:
    """Version `step` of a config: 2 adds the model `fresh`, 3 also `later` (with a literal
    provider key)."""
    cfg = base_config(url)
    cfg["admin_keys"] = [{"key": ADMIN, "name": "ops"}]
    cfg["storage"] = {"path": str(tmp / "podium.sqlite3")}
    cfg["key_store"] = {"path": str(tmp / "keys.sqlite3")}
    cfg["cache"] = {"enabled": False}
    cfg["keys"].append({"key": f"${{{ENV_KEY}}}", "name": "from-env"})
    if step >= 2:
        cfg["model_list"].append(deployment("fresh", "sim-fresh", url))
    if step >= 3:
        later = deployment("later", "sim-later", url)
        later["litellm_params"]["api_key"] = LATER_SECRET
        cfg["model_list"].append(later)
    return cfg


def write(path: Path, cfg: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(cfg))


async def admin(method: str, url: str, **kw: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.request(
            method, url, headers=ADMIN_HEADERS, **kw) as resp:
        return resp.status, await resp.json()


@dataclass
class Served:
    base: str
    path: Path
    app: Any
    spans: InMemorySpanExporter

    @property
    def gateway(self) -> Gateway:
        return self.app[GATEWAY]  # type: ignore[no-any-return]


@pytest.fixture
async def served(upstream: Upstream, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    monkeypatch.setenv(ENV_KEY, ENV_VALUE)
    path = tmp_path / "gateway.yaml"
    write(path, config(upstream.url, tmp_path))
    spans = InMemorySpanExporter()
    app = build_app(load_config(path), telemetry.with_exporter(spans), config_path=path)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield Served(f"http://127.0.0.1:{server.port}", path, app, spans)
    await server.close()


@dataclass
class Load:
    """Clients asking continuously, each noting which version served each answer."""
    client: openai.AsyncOpenAI
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    served: list[tuple[int, str, int]] = field(default_factory=list)  # worker, request, version
    failures: list[Exception] = field(default_factory=list)

    async def run(self, worker: int) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            try:
                raw = await self.client.chat.completions.with_raw_response.create(
                    model="chat", messages=[{"role": "user", "content": f"w{worker} {i}"}])
                self.served.append((worker, raw.headers["x-request-id"],
                                    int(raw.headers["x-podium-config-version"])))
            except openai.APIError as err:
                self.failures.append(err)

    async def seen(self, version: int, more: int = 10) -> bool:
        return sum(1 for _, _, v in self.served if v == version) >= more


async def test_three_reloads_and_a_rollback_under_load(served: Served, upstream: Upstream,
                                                       tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="podium.access")
    load = Load(openai.AsyncOpenAI(base_url=served.base + "/v1", api_key=APP_KEY,
                                   max_retries=0))
    workers = [asyncio.create_task(load.run(w)) for w in range(6)]
    await until(lambda: load.seen(1), "traffic on version 1")
    for step in (2, 3):
        write(served.path, config(upstream.url, tmp_path, step))
        status, body = await admin("POST", served.base + "/admin/reload")
        assert status == 200 and body["version"]["number"] == step, body
        assert body["version"]["loaded_by"] == "admin ops"
        await until(lambda s=step: load.seen(s), f"traffic on version {step}")
    status, body = await admin("POST", served.base + "/admin/reload")  # the same file again
    assert status == 200 and body["version"]["number"] == 3           # is the same version
    monkeypatch.setenv(ENV_KEY, ENV_VALUE + "-rotated")  # a rollback expands ${VAR} anew
    status, body = await admin("POST", served.base + "/admin/config/rollback",
                               json={"version": 1})
    assert status == 200, body
    assert (body["version"]["number"], body["version"]["rollback_of"]) == (4, 1)
    await until(lambda: load.seen(4), "traffic on version 4")
    load.stop.set()
    await asyncio.gather(*workers)
    assert load.failures == []

    # Each worker saw the versions in order, and every one of them served.
    for w in range(6):
        mine = [v for worker, _, v in load.served if worker == w]
        assert mine == sorted(mine)
    assert {v for _, _, v in load.served} == {1, 2, 3, 4}
    # Version 4 is version 1's text: the models of 2 and 3 are gone again.
    client = openai.AsyncOpenAI(base_url=served.base + "/v1", api_key=APP_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="fresh", messages=[{"role": "user",
                                                                       "content": "x"}])
    await _every_record_names_its_version(served, load)
    await _history_and_diff_mask_secrets(served)
    await _env_references_are_kept_not_their_values(served, tmp_path)
    assert (await get_json(served.base + "/readyz"))["config_version"] == 4
    logged = {r.request_id: r.config_version for r in caplog.records  # type: ignore[attr-defined]
              if r.name == "podium.access" and hasattr(r, "request_id")}
    assert {rid: logged[rid] for _, rid, _ in load.served} == \
        {rid: v for _, rid, v in load.served}


async def _every_record_names_its_version(served: Served, load: Load) -> None:
    audit = served.gateway.governance.audit
    assert audit is not None
    records = {r["request_id"]: r for r in await audit.query({}, limit=100_000)}
    by_header = {rid: v for _, rid, v in load.served}
    assert {rid: records[rid]["config_version"] for rid in by_header} == by_header
    versions = {v.number: v for v in await served.gateway.versions.history()}  # type: ignore
    assert all(records[rid]["config_digest"] == versions[v].digest[:12]
               for rid, v in by_header.items())
    spans = {s.attributes["podium.request_id"]: s.attributes["podium.config.version"]
             for s in served.spans.get_finished_spans()
             if s.name == "POST /v1/chat/completions" and s.attributes}
    assert {rid: spans[rid] for rid in by_header} == by_header


async def _history_and_diff_mask_secrets(served: Served) -> None:
    status, listed = await admin("GET", served.base + "/admin/config/versions?from=1&to=3")
    assert status == 200
    assert [(v["number"], v["action"], v["current"]) for v in listed["data"]] == [
        (4, "rollback", True), (3, "reload", False), (2, "reload", False),
        (1, "start", False)]
    assert listed["data"][0]["digest"] == listed["data"][3]["digest"]
    assert listed["data"][3]["loaded_by"].startswith("podium serve (pid ")
    text = listed["diff"]["text"]
    assert "+  model_name: fresh" in text and "+  model_name: later" in text, text
    assert "+    api_key: '*** (fingerprint " in text
    _, shown = await admin("GET", served.base + "/admin/config/versions/3")
    everything = text + str(listed) + shown["yaml"]
    for secret in (LATER_SECRET, UPSTREAM_KEY, ADMIN, APP_KEY, ENV_VALUE):
        assert secret not in everything
    assert f"${{{ENV_KEY}}}" in shown["yaml"]   # the reference, never its value
    status, _ = await admin("GET", served.base + "/admin/config/versions?from=9")
    assert status == 404
    status, refused = await admin("POST", served.base + "/admin/config/rollback",
                                  json={"version": 99})
    assert status == 400 and refused["error"]["code"] == "invalid_config"
    status, _ = await admin("POST", served.base + "/admin/config/rollback",
                            json={"version": "1"})
    assert status == 400


async def _env_references_are_kept_not_their_values(served: Served, tmp: Path) -> None:
    db = sqlite3.connect(tmp / "podium.sqlite3")
    stored = " ".join(row[0] for row in db.execute("SELECT content FROM config_versions"))
    db.close()
    assert f"${{{ENV_KEY}}}" in stored and ENV_VALUE not in stored
    client = openai.AsyncOpenAI(base_url=served.base + "/v1", api_key=ENV_VALUE + "-rotated",
                                max_retries=0)
    assert (await client.models.list()).data   # version 4 expanded the rotated value
    with pytest.raises(openai.AuthenticationError):
        await openai.AsyncOpenAI(base_url=served.base + "/v1", api_key=ENV_VALUE,
                                 max_retries=0).models.list()


async def test_a_version_built_in_memory_is_listed_but_not_restorable(
        upstream: Upstream, make_gateway: Any) -> None:
    cfg = base_config(upstream.url)
    cfg["admin_keys"] = [{"key": ADMIN, "name": "ops"}]
    gw = await make_gateway(cfg)
    base = gw.url.removesuffix("/v1")
    status, listed = await admin("GET", base + "/admin/config/versions")
    assert status == 200 and [v["restorable"] for v in listed["data"]] == [False]
    _, shown = await admin("GET", base + "/admin/config/versions/1")
    assert UPSTREAM_KEY not in shown["yaml"] and ADMIN not in shown["yaml"]
    status, refused = await admin("POST", base + "/admin/config/rollback", json={"version": 1})
    assert status == 400 and "built in memory" in refused["error"]["message"]
    async with aiohttp.ClientSession() as session, session.get(base + "/healthz") as resp:
        assert resp.headers["x-podium-config-version"] == "1"   # every response names it


# ---- a pool of workers ----------------------------------------------------------------------

def _redis_up() -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


async def _versions_by_pid(base: str, tries: int = 40) -> dict[int, tuple[int, str]]:
    seen: dict[int, tuple[int, str]] = {}
    for _ in range(tries):  # a fresh connection each time: the kernel picks a worker
        ready = await get_json(base + "/readyz")
        if ready:
            seen[ready["pid"]] = (ready["config_version"], ready["config_digest"])
    return seen


async def _podium(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


@pytest.mark.skipif(not _redis_up(), reason="Redis is not running on 127.0.0.1:6379")
async def test_a_pool_follows_reloads_and_rollbacks(upstream: Upstream, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_KEY, ENV_VALUE)
    cfg = config(upstream.url, tmp_path)
    cfg["state"] = {"backend": "redis", "url": "redis://127.0.0.1:6379/0",
                    "key_prefix": f"podium-test:{tmp_path.name}:"}
    async with running_pool(cfg, tmp_path) as (_, base):
        async def all_at(number: int) -> dict[int, tuple[int, str]] | None:
            seen = await _versions_by_pid(base)
            return seen if len(seen) == 2 and {v for v, _ in seen.values()} == {number} \
                else None

        first = await until(lambda: all_at(1), "both workers on version 1")
        v1_digest = next(iter(first.values()))[1]
        changed = {**cfg, "model_list": config(upstream.url, tmp_path, 2)["model_list"]}
        write(tmp_path / "gateway.yaml", changed)
        status, body = await admin("POST", base + "/admin/reload")  # reaches one worker
        assert status == 200 and body["version"]["number"] == 2
        await until(lambda: all_at(2), "both workers to follow version 2")

        code, out = await _podium("config", "rollback", "1", "--url", base,
                                  "--admin-key", ADMIN)
        assert code == 0 and "version 1 restored as version 3" in out, out
        rolled = await until(lambda: all_at(3), "both workers to follow the rollback")
        assert {d for _, d in rolled.values()} == {v1_digest}

        # A worker that dies and is restarted joins the pool's version, not the file's.
        victim = min(rolled)
        import os
        import signal
        os.kill(victim, signal.SIGKILL)

        async def replaced() -> dict[int, tuple[int, str]] | None:
            seen = await _versions_by_pid(base)
            return seen if len(seen) == 2 and victim not in seen else None

        after = await until(replaced, "the worker to be restarted")
        assert {v for v, _ in after.values()} == {3}
        assert {d for _, d in after.values()} == {v1_digest}
        code, out = await _podium("config", "versions", "--url", base, "--admin-key", ADMIN)
        assert code == 0 and "(rollback to 1)" in out and out.splitlines()[0].startswith("*")
