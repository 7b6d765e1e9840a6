"""The dashboard: its login and session, its data, and the page in a real headless Chromium.

The browser is Debian's `chromium`, driven directly over the Chrome DevTools Protocol
(tests/support/cdp.py): no Selenium, no webdriver. Traffic comes from the official `openai`
SDK against a real gateway in front of the simulator.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.app import build_app
from gateway.config import parse_config
from gateway.http import dashboard
from gateway.http.dashboard_window import History
from gateway.observability import telemetry
from gateway.runtime import GATEWAY, Gateway
from tests.conftest import ADMIN, APP_KEY, Upstream, base_config, deployment
from tests.support.cdp import Page, browser, open_page
from tests.support.metrics import scrape, total

RESEARCH_KEY = "sk-test-research-0123456789"
HI = [{"role": "user", "content": "hi"}]


# ---- a gateway with the dashboard -----------------------------------------------------------

def dashboard_config(url: str) -> dict[str, Any]:
    cfg = base_config(url)
    # The cheapest chat deployment always fails (HTTP 500): its breaker opens at once.
    cfg["model_list"].insert(0, deployment("chat", "sim-error500", url, input_cost_per_token=0,
                                           output_cost_per_token=0))
    cfg["model_list"] += [
        deployment("careful", "sim-refuse", url, quality=40, input_cost_per_token=1e-7,
                   output_cost_per_token=1e-7),
        deployment("careful", "sim-strong", url, quality=90, input_cost_per_token=1e-6,
                   output_cost_per_token=2e-6)]
    cfg["keys"].append({"key": RESEARCH_KEY, "name": "research-app", "team": "research"})
    cfg["teams"] = [{"name": "support"}, {"name": "research"}]
    cfg["admin_keys"] = [{"key": ADMIN, "name": "ops"}]
    cfg["routing"] = {"breaker": {"failures": 1, "cooldown_s": 300}, "rules": [
        {"name": "careful-cascade", "match": {"model": "careful"}, "strategy": "cascade"},
        {"name": "research-quality", "match": {"team": "research"}, "min_quality": 70}]}
    cfg["approvals"] = [{"name": "legal-review", "match": {"last_user_message": "contract"}}]
    return cfg


@dataclass
class DashGateway:
    base: str                         # http://127.0.0.1:port
    server: TestServer

    @property
    def gateway(self) -> Gateway:
        return self.server.app[GATEWAY]

    def client(self, key: str = APP_KEY) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base + "/v1", api_key=key, max_retries=0)


@pytest.fixture
async def dash(upstream: Upstream, tmp_path: Path) -> AsyncIterator[DashGateway]:
    cfg = {"key_store": {"path": ":memory:"},
           "storage": {"path": str(tmp_path / "podium.sqlite3")}, **dashboard_config(upstream.url)}
    app = build_app(parse_config(cfg, env={}), telemetry.with_exporter(InMemorySpanExporter()))
    # History sampled often, so a test of a few seconds has some to reload (default: 5 s).
    app[dashboard.HISTORY] = History(os.getpid(), every_s=0.25)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield DashGateway(base=f"http://127.0.0.1:{server.port}", server=server)
    await server.close()


async def fetch(method: str, url: str, **kw: Any) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as session, session.request(
            method, url, allow_redirects=False, **kw) as resp:
        return resp.status, dict(resp.headers), await resp.text()


async def generate_traffic(dash: DashGateway, wave: int) -> None:
    support, research = dash.client(APP_KEY), dash.client(RESEARCH_KEY)
    await support.chat.completions.create(model="chat", messages=HI,   # error500 → breaker
                                          temperature=0)
    await support.chat.completions.create(model="chat", messages=HI,   # a cache hit
                                          temperature=0)
    cheap = await support.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": f"wave {wave}: status?"}])
    await research.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": f"wave {wave}: research"}])
    careful = await support.chat.completions.with_raw_response.create(        # escalates
        model="careful", messages=[{"role": "user", "content": f"wave {wave}: careful"}])
    if wave == 0:
        await research.chat.completions.create(model="premium", messages=HI)
        with pytest.raises(openai.PermissionDeniedError):
            await support.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "check this contract"}])
    for raw, score in ((cheap, 0.75 + 0.25 * (wave % 2)), (careful, 0.5)):
        status, _, _ = await fetch("POST", dash.base + "/v1/feedback", headers={
            "Authorization": f"Bearer {APP_KEY}"}, json={
                "request_id": raw.headers["x-request-id"], "score": score})
        assert status == 201


# ---- without a browser ----------------------------------------------------------------------

async def test_login_cookie_and_data_without_a_browser(dash: DashGateway,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    status, headers, text = await fetch("GET", dash.base + "/dashboard")
    assert status == 200 and 'id="login"' in text and 'id="dashboard"' not in text
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    status, _, text = await fetch("POST", dash.base + "/dashboard/login", data={"key": "nope"})
    assert status == 401 and "not a valid admin key" in text
    status, _, text = await fetch("POST", dash.base + "/dashboard/login", data={"key": APP_KEY})
    assert status == 403 and "not an admin key" in text
    status, _, _ = await fetch("POST", dash.base + "/dashboard/login", data={"key": ADMIN},
                               headers={"Origin": "http://evil.example"})
    assert status == 403
    status, headers, _ = await fetch("POST", dash.base + "/dashboard/login", data={"key": ADMIN})
    assert status == 303 and headers["Location"] == "/dashboard"
    cookie = headers["Set-Cookie"]
    assert cookie.startswith(f"{dashboard.SESSION_COOKIE}=") and ADMIN not in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http here; https requests get Secure
    value = cookie.split(";")[0].split("=", 1)[1]
    jar = {dashboard.SESSION_COOKIE: value}
    status, _, text = await fetch("GET", dash.base + "/dashboard", cookies=jar)
    assert status == 200 and 'id="dashboard"' in text and ADMIN not in text
    status, _, text = await fetch("GET", dash.base + "/admin/dashboard/data", cookies=jar)
    assert status == 200 and json.loads(text)["object"] == "dashboard.snapshot"
    tampered = {dashboard.SESSION_COOKIE: value[:-1] + ("0" if value[-1] != "0" else "1")}
    status, _, _ = await fetch("GET", dash.base + "/admin/dashboard/data", cookies=tampered)
    assert status == 401
    status, headers, _ = await fetch("POST", dash.base + "/dashboard/logout", cookies=jar)
    assert status == 303 and "Max-Age=0" in headers["Set-Cookie"]
    assert ADMIN not in caplog.text


async def test_data_after_traffic(dash: DashGateway) -> None:
    await generate_traffic(dash, 0)
    bearer = {"Authorization": f"Bearer {ADMIN}"}
    status, headers, text = await fetch("GET", dash.base + "/admin/dashboard/data",
                                        headers=bearer)
    assert status == 200 and headers["Cache-Control"] == "no-store"
    snap = json.loads(text)
    assert snap["requests"]["by_route"]["careful-cascade"] == 1
    assert snap["requests"]["by_route"]["research-quality"] == 2
    assert snap["requests"]["by_deployment"]["sim-strong"] == 1
    assert snap["escalations"] == {"careful-cascade": 1}
    assert snap["cache"]["hit"] == 1 and snap["cache"]["miss"] >= 1  # others are sampled
    assert snap["rejections"]["review_pending"] == 1
    assert set(snap["spend"]["by_team"]) == {"support", "research"}
    assert snap["spend"]["by_model"]["premium"] > 0
    assert 0 < snap["latency"]["p50_s"] <= snap["latency"]["p95_s"]
    health = {d["id"]: d for d in snap["deployments"]}
    assert health["sim-error500"]["breaker"] == "open"
    assert health["sim-error500"]["retry_in_s"] > 0
    assert health["sim-cheap"]["breaker"] == "closed" and health["sim-cheap"]["latency_s"] > 0
    assert snap["reviews"]["pending"] == 1
    [review] = snap["reviews"]["oldest"]
    assert review["rule"] == "legal-review" and review["team"] == "support"
    assert "contract" not in text  # no prompt text
    assert snap["feedback"]["by_deployment"]["sim-cheap"] == {"count": 1, "mean": 0.75}
    assert snap["feedback"]["by_route"]["careful-cascade"] == {"count": 1, "mean": 0.5}


async def test_refused_without_an_admin_credential(dash: DashGateway) -> None:
    url = dash.base + "/admin/dashboard/data"
    status, _, text = await fetch("GET", url)
    assert status == 401 and json.loads(text)["error"]["type"] == "authentication_error"
    status, _, text = await fetch("GET", url, headers={"Authorization": f"Bearer {APP_KEY}"})
    assert status == 403 and json.loads(text)["error"]["code"] == "admin_required"
    status, headers, body = await fetch("GET", dash.base + "/dashboard/static/dashboard.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert "http://" not in body and "https://" not in body.replace("http://www.w3.org", "")
    for name in ("..%2Fdashboard.py", "dashboard.html", "nope.js"):
        status, _, _ = await fetch("GET", dash.base + "/dashboard/static/" + name)
        assert status == 404


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from browser(tmp_path_factory)


@pytest.fixture
async def page(chromium: str) -> AsyncIterator[Page]:
    async with open_page(chromium) as tab:
        yield tab


async def log_in(page: Page, base: str, key: str) -> None:
    await page.navigate(base + "/dashboard")
    await page.wait_for("location.pathname === '/dashboard' && document.readyState === 'complete'"
                        " && !!document.getElementById('key')", "the login form")
    await page.evaluate(f"document.getElementById('key').value = {json.dumps(key)};"
                        "document.querySelector('#login button').click(); true")


# Needs Chromium (installed on first use, in the background, outside the test's timeout).
BROWSER_TIMEOUT = pytest.mark.timeout(300, func_only=True)
DATA_STATUS = "fetch('/admin/dashboard/data').then(r => r.status)"


@BROWSER_TIMEOUT
@pytest.mark.provisioned("chromium")
async def test_browser_without_a_session_sees_the_login(dash: DashGateway, page: Page,
                                                        tmp_path: Path) -> None:
    await page.navigate(dash.base + "/dashboard")
    await page.wait_for("!!document.getElementById('login')", "the login form")
    assert await page.evaluate("!document.getElementById('dashboard')")
    assert await page.evaluate(DATA_STATUS) == 401
    error = ("location.pathname === '/dashboard/login' && "
             "(document.querySelector('.error') || {}).textContent")
    await log_in(page, dash.base, "sk-wrong-key-0000000000")
    assert "not a valid admin key" in await page.wait_for(error, "the error")
    await log_in(page, dash.base, APP_KEY)
    assert "not an admin key" in await page.wait_for(error, "the error")
    await page.screenshot(tmp_path / "login.png")
    assert await page.cookies() == []
    assert await page.evaluate(DATA_STATUS) == 401


@BROWSER_TIMEOUT
@pytest.mark.provisioned("chromium")
async def test_browser_dashboard_shows_live_data(dash: DashGateway, page: Page,
                                                 tmp_path: Path) -> None:
    await log_in(page, dash.base, ADMIN)
    await page.wait_for("location.pathname === '/dashboard' && "
                        "Number(document.body.dataset.polls) >= 1", "the dashboard's first poll")
    await page.screenshot(tmp_path / "dashboard-before-traffic.png")
    for wave in range(3):  # traffic spread over several polls, so rates are a time series
        polls = await page.evaluate("Number(document.body.dataset.polls)")
        await generate_traffic(dash, wave)
        # The poll after next surely started after this wave had been answered.
        more = 2 if wave == 2 else 1
        await page.wait_for(f"Number(document.body.dataset.polls) >= {polls + more}", "a poll")

    rate = await page.wait_for(
        "(e => Number(e.dataset.points) >= 3 && Number(e.dataset.max) > 0 && e.dataset.points)"
        "(document.getElementById('chart-rate'))", "request-rate points")
    assert int(rate) >= 3
    health = await page.wait_for(
        "(rows => rows.length === 7 && Object.fromEntries(rows.map("
        "r => [r.dataset.deployment, r.dataset.breaker])))"
        "([...document.querySelectorAll('#health .health-row[data-deployment]')])",
        "the health panel")
    assert health["sim-error500"] == "open" and health["sim-cheap"] == "closed"
    legend = await page.wait_for(
        "(e => Number(e.dataset.series) >= 2 && e.innerText)"
        "(document.getElementById('chart-spend-team'))", "spend by team")
    assert "support" in legend and "research" in legend and "$" in legend
    assert await page.evaluate("Number(document.getElementById('chart-latency').dataset.points)")
    assert await page.evaluate("Number(document.getElementById('chart-spend-model')"
                               ".dataset.series)") >= 2
    assert "careful-cascade" in await page.evaluate(
        "document.getElementById('bars-escalations').innerText")
    assert "sim-strong" in await page.evaluate(
        "document.getElementById('bars-deployments').innerText")
    assert await page.evaluate("document.getElementById('reviews-count').textContent") == "1"
    assert "sim-cheap" in await page.evaluate(
        "document.getElementById('bars-feedback-deployment').innerText")
    assert ADMIN not in await page.evaluate("document.documentElement.outerHTML")
    assert page.errors() == [], "no script errors, no CSP violations"

    # Hovering a chart shows every series' value at that moment.
    box = await page.evaluate("(r => [r.x + r.width * 0.97, r.y + r.height * 0.4])"
                              "(document.querySelector('#chart-rate svg').getBoundingClientRect())")
    await page.cdp.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": box[0],
                                                     "y": box[1]}, page.session)
    tip = await page.wait_for("(t => t && !t.hidden && t.innerText)"
                              "(document.querySelector('#chart-rate .tip'))", "the tooltip")
    assert "all requests" in tip
    path = tmp_path / "dashboard.png"
    png = await page.screenshot(path)
    print(f"dashboard screenshot: {path}")
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 50_000


async def refusals(dash: DashGateway) -> None:
    """Requests Podium refuses itself: an unknown model, a field out of range."""
    client = dash.client(APP_KEY)
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="no-such-model", messages=HI)
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="chat", messages=HI, temperature=5)


# What the page shows: each tile's raw value and note, the since-start totals, the escalations.
PAGE_NUMBERS = """(() => {
  const tile = (id) => { const e = document.getElementById(id);
    return { value: e.dataset.value === "" ? null : Number(e.dataset.value),
             note: e.querySelector("small").textContent }; };
  const ids = ["kpi-rate", "kpi-p95", "kpi-spend", "kpi-cache", "kpi-errors"];
  return { tiles: Object.fromEntries(ids.map((id) => [id, tile(id)])),
           totals: Object.fromEntries([...document.querySelectorAll("#totals [data-total]")]
             .map((e) => [e.dataset.total, Number(e.dataset.value)])),
           escalations: document.getElementById("bars-escalations").innerText,
           pid: document.body.dataset.pid,
           status: document.getElementById("status-text").textContent };
})()"""


@BROWSER_TIMEOUT
@pytest.mark.provisioned("chromium")
async def test_browser_numbers_equal_the_data_and_metrics(dash: DashGateway, page: Page) -> None:
    """After a mix of traffic (cache hits and misses, escalations, refusals), every number on
    the page is the one /admin/dashboard/data and /metrics give; a reload keeps the charts."""
    await log_in(page, dash.base, ADMIN)
    await page.wait_for("Number(document.body.dataset.polls) >= 1", "the dashboard")
    for wave in range(3):
        await generate_traffic(dash, wave)
    await refusals(dash)
    polls = await page.evaluate("Number(document.body.dataset.polls)")
    await page.wait_for(f"Number(document.body.dataset.polls) >= {polls + 2}", "a later poll")
    shown = await page.evaluate(PAGE_NUMBERS)
    _, _, text = await fetch("GET", dash.base + "/admin/dashboard/data?window=300",
                             headers={"Authorization": f"Bearer {ADMIN}"})
    snap, metrics = json.loads(text), await scrape(dash.base + "/v1")
    w, tiles, totals = snap["window"], shown["tiles"], shown["totals"]

    # The tiles: the gateway's window, as it computed it (all of it: younger than 5 minutes).
    assert w["from_start"] and all(t["note"].endswith("· since start") for t in tiles.values())
    assert tiles["kpi-rate"]["note"].startswith(f"{int(w['requests'])} requests")
    assert tiles["kpi-p95"]["value"] == w["p95_s"] and w["p95_s"] is not None
    assert tiles["kpi-spend"]["value"] == w["spend_usd"] > 0
    assert tiles["kpi-cache"]["value"] == w["cache_hit_rate"]
    assert tiles["kpi-cache"]["note"].startswith(
        f"{int(w['cache_hits'])} hits of {int(w['cache_lookups'])} lookups")
    assert tiles["kpi-errors"]["value"] == w["error_share"]
    assert f"{int(w['rejected'])} refused" in tiles["kpi-errors"]["note"]
    # The totals: /metrics' counters since start, and here the window holds them all.
    assert totals["requests"] == w["requests"] == total(metrics, "podium_requests_total")
    # Refused: every 4xx Podium answered, the 400 refused before routing included.
    assert totals["refused"] == w["rejected"] == total(metrics, "podium_rejections_total") == 3
    assert totals["hits"] == w["cache_hits"] == total(
        metrics, "podium_cache_requests_total", result="hit") == 5  # 1 + 2 + 2: HI, once cached
    assert totals["escalated"] == w["escalated"] == total(
        metrics, "podium_cascade_escalations_total") == 3
    assert totals["spend"] == pytest.approx(total(metrics, "podium_cost_usd_total"))
    assert totals["spend"] == pytest.approx(w["spend_usd"])
    # Escalated requests of the rule's requests: never more escalations than requests.
    routed = total(metrics, "podium_requests_total", route="careful-cascade")
    assert f"3 of {int(routed)} requests" in shown["escalations"] and routed == 3
    assert shown["pid"] == str(os.getpid()) and f"pid {os.getpid()}" in shown["status"]

    # A reload keeps the charts: the first poll brings the gateway's history.
    await page.navigate(dash.base + "/dashboard")
    await page.wait_for("Number(document.body.dataset.polls) === 1", "the reloaded page's poll")
    assert await page.evaluate(
        "Number(document.getElementById('chart-rate').dataset.points)") >= 3
    assert await page.evaluate(
        "Number(document.getElementById('chart-latency').dataset.points)") >= 3
    # Another window: the tiles are computed for it, by the gateway.
    await page.evaluate("document.querySelector('.range button[data-window=\"3600\"]')"
                        ".click(); true")
    await page.wait_for("document.body.dataset.window === '3600'", "the 1 h window")
    assert (await page.evaluate(PAGE_NUMBERS))["tiles"]["kpi-p95"]["value"] == w["p95_s"]
    assert page.errors() == [], "no script errors, no CSP violations"


@BROWSER_TIMEOUT
@pytest.mark.provisioned("chromium")
async def test_browser_session_cookie_is_httponly(dash: DashGateway, page: Page) -> None:
    await log_in(page, dash.base, ADMIN)
    await page.wait_for("Number(document.body.dataset.polls) >= 1", "the dashboard")
    assert dashboard.SESSION_COOKIE not in await page.evaluate("document.cookie")
    [cookie] = [c for c in await page.cookies() if c["name"] == dashboard.SESSION_COOKIE]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert ADMIN not in cookie["value"] and len(cookie["value"]) >= 43  # 32 random bytes
    # Signing out ends the session: the data endpoint refuses, the page is the login again.
    await page.evaluate("document.querySelector('form[action=\"/dashboard/logout\"] button')"
                        ".click(); true")
    await page.wait_for("!!document.getElementById('login')", "the login page")
    assert not [c for c in await page.cookies() if c["name"] == dashboard.SESSION_COOKIE]
    assert await page.evaluate(DATA_STATUS) == 401
