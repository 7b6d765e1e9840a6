"""The dashboard's window and history (gateway/http/dashboard_window.py), without a browser:
the numbers every tile shows, the last hour kept by the gateway, which process answered, and
the development admin key's banner."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from gateway.app import build_app
from gateway.config import parse_config
from gateway.config_base import DEVELOPMENT_ADMIN_KEY
from gateway.http import dashboard
from gateway.http.dashboard_window import History, Point, window
from tests.conftest import ADMIN, Upstream, base_config
from tests.support.metrics import scrape, total
from tests.support.waiting import until
from tests.test_dashboard import DashGateway, dashboard_config, fetch, generate_traffic

BEARER = {"Authorization": f"Bearer {ADMIN}"}


async def start(cfg: dict[str, Any], tmp_path: Path, every_s: float = 0.2) -> TestServer:
    cfg = {"key_store": {"path": ":memory:"}, "storage": {"path": str(tmp_path / "p.sqlite3")},
           **cfg}
    app = build_app(parse_config(cfg, env={}))
    app[dashboard.HISTORY] = History(os.getpid(), every_s=every_s)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.fixture
async def dash(upstream: Upstream, tmp_path: Path) -> AsyncIterator[DashGateway]:
    server = await start(dashboard_config(upstream.url), tmp_path)
    yield DashGateway(base=f"http://127.0.0.1:{server.port}", server=server)
    await server.close()


async def data(dash: DashGateway, query: str = "") -> dict[str, Any]:
    status, _, text = await fetch("GET", f"{dash.base}/admin/dashboard/data{query}",
                                  headers=BEARER)
    assert status == 200, text
    body: dict[str, Any] = json.loads(text)
    return body


async def test_the_window_agrees_with_the_counters_and_metrics(dash: DashGateway) -> None:
    await generate_traffic(dash, 0)
    snap = await data(dash)
    w, metrics = snap["window"], await scrape(dash.base + "/v1")
    # The gateway is younger than 5 minutes: the window is everything since it started.
    assert w["seconds"] == 300 and w["from_start"]
    assert w["requests"] == snap["requests"]["total"] == total(metrics, "podium_requests_total")
    assert w["rejected"] == snap["requests"]["rejected"] == total(
        metrics, "podium_rejections_total") > 0
    assert w["cache_hits"] == total(metrics, "podium_cache_requests_total", result="hit") == 1
    assert w["cache_lookups"] == w["cache_hits"] + total(metrics, "podium_cache_requests_total",
                                                         result="miss")
    assert w["cache_hit_rate"] == round(w["cache_hits"] / w["cache_lookups"], 6)
    assert w["escalated"] == total(metrics, "podium_cascade_escalations_total") == 1
    assert w["spend_usd"] == pytest.approx(total(metrics, "podium_cost_usd_total"))
    assert w["p95_s"] == snap["latency"]["p95_s"] and w["p50_s"] == snap["latency"]["p50_s"]
    assert snap["worker"] == {"pid": os.getpid(), "index": None}
    assert snap["point"]["requests"] == w["requests"]
    assert "history" not in snap


async def test_the_gateway_keeps_the_history(dash: DashGateway) -> None:
    await generate_traffic(dash, 0)
    requests = (await data(dash))["requests"]["total"]

    async def sampled_after_traffic() -> list[dict[str, Any]]:
        history = (await data(dash, "?history=1"))["history"]
        return history if history[-1]["requests"] == requests else []
    history = await until(sampled_after_traffic, "a point sampled after the traffic")
    assert history[0]["requests"] == 0 and len(history) >= 2
    times = [p["t"] for p in history]
    assert times == sorted(times)
    # Every point has what the page's charts are drawn from.
    assert set(history[-1]) == {"t", "requests", "errors", "rejected", "latency", "overhead",
                                "cache_hits", "cache_lookups", "escalated", "tokens",
                                "spend_by_team", "spend_by_model"}
    assert history[-1]["spend_by_team"].keys() == {"support", "research"}


async def test_the_window_is_one_the_page_offers(dash: DashGateway) -> None:
    assert (await data(dash, "?window=3600"))["window"]["seconds"] == 3600
    for bad in ("60", "abc", "-300"):
        status, _, text = await fetch("GET", f"{dash.base}/admin/dashboard/data?window={bad}",
                                      headers=BEARER)
        assert status == 400 and json.loads(text)["error"]["param"] == "window"


def test_a_window_older_than_the_process_covers_what_there_is() -> None:
    def point(t: float, requests: float) -> Point:
        return Point(t=t, requests=requests, errors=0, rejected=0, latency=((1.0, requests),
                     (float("inf"), requests)), overhead=(), cache_hits=0, cache_lookups=0,
                     escalated=0, tokens=0)
    history = History(pid=1)
    for t, n in ((1000.0, 0), (1100.0, 5), (1400.0, 12)):
        history.add(point(t, n))
    now = point(1450.0, 20)
    last_5_min = window(now, history, 300)
    assert (last_5_min["since"], last_5_min["requests"], last_5_min["from_start"]) == \
        (1100.0, 15, False)
    hour = window(now, history, 3600)
    assert (hour["since"], hour["requests"], hour["from_start"]) == (1000.0, 20, True)
    assert window(point(1000.0, 0), History(pid=1), 300)["p95_s"] is None


async def test_the_development_admin_key_is_flagged_on_the_page(upstream: Upstream,
                                                               tmp_path: Path) -> None:
    cfg = base_config(upstream.url)
    cfg["admin_keys"] = [{"key": DEVELOPMENT_ADMIN_KEY, "name": "dev-admin"}]
    server = await start(cfg, tmp_path)
    base = f"http://127.0.0.1:{server.port}"
    try:
        status, headers, _ = await fetch("POST", base + "/dashboard/login",
                                         data={"key": DEVELOPMENT_ADMIN_KEY})
        assert status == 303
        jar = {dashboard.SESSION_COOKIE: headers["Set-Cookie"].split(";")[0].split("=", 1)[1]}
        status, _, page = await fetch("GET", base + "/dashboard", cookies=jar)
        assert status == 200 and 'id="dev-banner"' in page
        assert "Development admin key" in page and DEVELOPMENT_ADMIN_KEY not in page
    finally:
        await server.close()


async def test_no_banner_with_a_real_admin_key(dash: DashGateway) -> None:
    status, headers, _ = await fetch("POST", dash.base + "/dashboard/login", data={"key": ADMIN})
    jar = {dashboard.SESSION_COOKIE: headers["Set-Cookie"].split(";")[0].split("=", 1)[1]}
    status, _, page = await fetch("GET", dash.base + "/dashboard", cookies=jar)
    assert status == 200 and "dev-banner" not in page and "<!--banner-->" not in page
    assert (await data(dash))["development_admin_key"] is False
