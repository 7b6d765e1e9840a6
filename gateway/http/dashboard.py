"""`/dashboard`: a live operations page, served by the gateway itself, behind an admin key.

Routes:
    GET  /dashboard                the page, or a login form without a valid session
    POST /dashboard/login          form field `key`: an admin key → session cookie, 303 back
    POST /dashboard/logout         ends the session and clears the cookie
    GET  /dashboard/static/{name}  the page's own CSS/JS (no CDN, nothing from the internet)
    GET  /admin/dashboard/data     the JSON snapshot the page polls (cookie or admin bearer)

Browsers cannot send a bearer header when navigating, so a correct admin key typed into the
form is exchanged for a session cookie (`gateway/http/sessions.py`: random, kept server side,
ended by logout). The key itself is never in a cookie, a URL, a log or the page.

The snapshot is cumulative (counters since the process started, summed over workers: the
samples `Metrics.exposition()` renders, read from its registry directly), plus the window every
tile shows and, on request, the last hour of history (`dashboard_window.py`), so a reload of
the page keeps its charts.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from gateway.config import GatewayConfig
from gateway.config_base import DEVELOPMENT_ADMIN_KEY
from gateway.errors import AuthenticationFailed, BadRequest, PermissionDenied, RouteNotFound
from gateway.http.dashboard_window import (
    KEEP_S,
    WINDOWS_S,
    History,
    Point,
    Samples,
    buckets,
    collected,
    quantile,
    sample_forever,
    sum_by,
    window,
)
from gateway.http.sessions import SESSION_COOKIE as SESSION_COOKIE  # the tests name it here
from gateway.http.sessions import end_session, open_session, session_admin
from gateway.observability.learned_metrics import learned_report
from gateway.pipeline.egress import json_response
from gateway.runtime import GATEWAY, Gateway

REVIEWS_SHOWN = 5
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
_PAGE_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                 "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin",
                 "Cache-Control": "no-store"}
_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript",
          ".svg": "image/svg+xml"}
_BREAKER_NAMES = {0: "closed", 1: "half_open", 2: "open"}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


ASSETS: web.AppKey[dict[str, Asset]] = web.AppKey("podium.dashboard_assets", dict)
HISTORY: web.AppKey[History] = web.AppKey("podium.dashboard_history", History)
DEV_BANNER = ('<p class="banner" id="dev-banner" role="alert"><b>Development admin key.</b> '
              "This gateway accepts the admin key published in the README: anyone who has read "
              "it can sign in here. Set PODIUM_ADMIN_KEY (or replace admin_keys) before others "
              "can reach this gateway.</p>")


def load_assets() -> dict[str, Asset]:
    """Every file of `gateway/http/static/`, read once."""
    assets = {}
    for entry in (resources.files("gateway.http") / "static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in _TYPES:
            body = entry.read_bytes()
            assets[entry.name] = Asset(body, _TYPES[suffix],
                                       '"' + hashlib.sha256(body).hexdigest()[:16] + '"')
    return assets



# ---- sessions -------------------------------------------------------------------------------

async def dashboard_admin(request: web.Request) -> str:
    """The admin behind a request: `Authorization: Bearer` first, else the session cookie."""
    authorization = request.headers.get("Authorization")
    if authorization:
        return await request.app[GATEWAY].runtime.auth.admin(authorization)
    name = await session_admin(request)
    if name is None:
        raise AuthenticationFailed("No dashboard session: log in at /dashboard, or send "
                                   "'Authorization: Bearer <admin key>'.")
    return name


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    return origin is None or urlsplit(origin).netloc == request.host


# ---- pages ----------------------------------------------------------------------------------

def _html(request: web.Request, name: str, status: int = 200, error: str = "",
          banner: str = "") -> web.Response:
    body = request.app[ASSETS][name].body.replace(b"<!--banner-->", banner.encode())
    if error:
        body = body.replace(b"<!--error-->", f'<p class="error" role="alert">'
                            f"{html.escape(error)}</p>".encode())
    return web.Response(body=body, status=status, content_type="text/html", charset="utf-8",
                        headers={**_PAGE_HEADERS})


async def page(request: web.Request) -> web.Response:
    if await session_admin(request) is None:
        return _html(request, "login.html")
    development = uses_development_key(request.app[GATEWAY].runtime.config)
    return _html(request, "dashboard.html", banner=DEV_BANNER if development else "")


def uses_development_key(config: GatewayConfig) -> bool:
    """Whether an admin key is the development one from the README (see config_base)."""
    return any(e.key is not None and e.key.get_secret_value() == DEVELOPMENT_ADMIN_KEY
               for e in config.admin_keys)


def _see_dashboard(request: web.Request) -> web.Response:
    return web.Response(status=303, headers={**_PAGE_HEADERS, "Location": "/dashboard"})


async def login(request: web.Request) -> web.Response:
    if not _same_origin(request):
        return _html(request, "login.html", 403, "Log in from this gateway's own page.")
    form = await request.post()
    key = form.get("key")
    if not isinstance(key, str) or not key.strip():
        return _html(request, "login.html", 401, "Enter an admin key.")
    rt = request.app[GATEWAY].runtime
    try:
        name = await rt.auth.admin(f"Bearer {key.strip()}")
    except AuthenticationFailed:
        return _html(request, "login.html", 401, "That is not a valid admin key.")
    except PermissionDenied:
        return _html(request, "login.html", 403, "That key is valid, but it is not an admin "
                     "key (admin keys are listed under admin_keys: in the config).")
    response = _see_dashboard(request)
    if not await open_session(request, name, key.strip(), response):
        return _html(request, "login.html", 401, "That is not a valid admin key.")
    return response


async def logout(request: web.Request) -> web.Response:
    if not _same_origin(request):
        return _html(request, "login.html", 403, "Log out from this gateway's own page.")
    response = _see_dashboard(request)
    await end_session(request, response)
    return response


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    found = request.app[ASSETS].get(name)
    if found is None or name.endswith(".html"):  # pages go through /dashboard only
        raise RouteNotFound(f"Unknown endpoint GET {request.path}.")
    headers = {"ETag": found.etag, "Cache-Control": "no-cache",
               "X-Content-Type-Options": "nosniff", "Content-Security-Policy": CSP}
    if request.headers.get("If-None-Match") == found.etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=found.body, content_type=found.content_type, charset="utf-8",
                        headers=headers)


# ---- data -----------------------------------------------------------------------------------

async def data(request: web.Request) -> web.Response:
    """The snapshot; `?window=300|900|3600` (seconds, default 300) for the tiles, and
    `?history=1` for the last hour of points as well (the page asks once, when it loads)."""
    await dashboard_admin(request)
    raw = request.query.get("window", str(WINDOWS_S[0]))
    if not raw.isdigit() or int(raw) not in WINDOWS_S:
        raise BadRequest(f"window must be one of {', '.join(map(str, WINDOWS_S))} (seconds).",
                         param="window")
    gw, history = request.app[GATEWAY], request.app[HISTORY]
    body = await snapshot(gw, history, int(raw), request.query.get("history") == "1")
    return json_response(body, {"Cache-Control": "no-store"})


def _point(gw: Gateway, samples: Samples | None = None) -> Point:
    samples = samples if samples is not None else collected(gw.metrics.registry)
    return Point.of(samples, time.time(), {d.id: d.group for d in gw.runtime.catalog.deployments})


async def history_ctx(app: web.Application) -> AsyncIterator[None]:
    """Sample this process's view of the metrics for as long as it serves."""
    gw = app[GATEWAY]
    sampler = asyncio.create_task(sample_forever(app[HISTORY], lambda: _point(gw)),
                                  name="podium-dashboard-history")
    yield
    sampler.cancel()
    await asyncio.gather(sampler, return_exceptions=True)


def _feedback(samples: Samples, label: str) -> dict[str, dict[str, float]]:
    """Count and mean of the `podium_feedback_score` histogram (scores 0 bad … 1 good)."""
    counts = sum_by(samples, "podium_feedback_score_count", label)
    scores = sum_by(samples, "podium_feedback_score_sum", label)
    return {k: {"count": n, "mean": round(scores.get(k, 0.0) / n, 4)}
            for k, n in counts.items() if n > 0}


async def snapshot(gw: Gateway, history: History, window_s: int = WINDOWS_S[0],
                   with_history: bool = False) -> dict[str, Any]:
    """Everything the page shows: cumulative counters, the window every tile shows, current
    state; with the last hour of points when asked."""
    await gw.sync_breakers()
    samples = collected(gw.metrics.registry)
    point = _point(gw, samples)
    catalog = gw.runtime.catalog.deployments
    requests = "podium_requests_total"
    spend_dep = sum_by(samples, "podium_cost_usd_total", "deployment")
    by_model: dict[str, float] = {}
    groups = {d.id: d.group for d in catalog}
    for dep_id, usd in spend_dep.items():
        group = groups.get(dep_id, dep_id)
        by_model[group] = by_model.get(group, 0.0) + usd
    latency = buckets(samples, "podium_request_duration_seconds")
    overhead = buckets(samples, "podium_gateway_overhead_seconds")
    breaker_metric = {labels["deployment"]: value
                      for labels, value in samples.get("podium_breaker_state", ())}
    answering = sum_by(samples, requests, "deployment", skip=("none",))
    upstream_sum = sum_by(samples, "podium_upstream_duration_seconds_sum", "deployment")
    upstream_n = sum_by(samples, "podium_upstream_duration_seconds_count", "deployment")
    failures = sum_by(samples, "podium_fallbacks_total", "deployment")
    feedback_dep = _feedback(samples, "deployment")
    now, deployments = time.time(), []
    for dep in catalog:
        health = gw.health.snapshot(dep.id)
        state = max(health.state, _BREAKER_NAMES.get(int(breaker_metric.get(dep.id, 0)),
                                                      "closed"), key=_severity)
        opens_in = gw.health.wall_open_until(dep.id) - now if state == "open" else 0.0
        n = upstream_n.get(dep.id, 0.0)
        deployments.append({
            "id": dep.id, "group": dep.group, "mode": dep.mode, "breaker": state,
            "consecutive_failures": health.consecutive_failures,
            "retry_in_s": round(max(0.0, opens_in), 1),
            "latency_s": health.latency_s,
            "mean_upstream_s": round(upstream_sum.get(dep.id, 0.0) / n, 6) if n else None,
            "requests": answering.get(dep.id, 0.0), "failed_attempts": failures.get(dep.id, 0.0),
            "spend_usd": spend_dep.get(dep.id, 0.0), "feedback": feedback_dep.get(dep.id)})
    pending = await gw.governance.reviews.list("pending")
    statuses = sum_by(samples, requests, "status")
    return {
        "object": "dashboard.snapshot", "server_time": point.t,
        "config_loaded_at": gw.runtime.loaded_at,
        "worker": {"pid": history.pid, "index": history.worker},
        "development_admin_key": uses_development_key(gw.runtime.config),
        "window": window(point, history, window_s), "point": point.as_json(),
        **({"history": history.since(point.t - KEEP_S)} if with_history else {}),
        "requests": {
            "total": sum(statuses.values()),
            "errors": sum(v for k, v in statuses.items() if k.startswith("5")),
            # Every 4xx Podium answered, also those refused before a request was governed
            # (a bad key or body): podium_rejections_total, as the refusals panel counts them.
            "rejected": point.rejected,
            "by_status": statuses,
            "by_endpoint": sum_by(samples, requests, "endpoint"),
            "by_route": sum_by(samples, requests, "route", skip=("none",)),
            "by_deployment": answering,
            "by_team": sum_by(samples, requests, "team"),
        },
        "latency": {"buckets": latency, "p50_s": quantile(0.5, latency),
                    "p95_s": quantile(0.95, latency),
                    "overhead_buckets": overhead, "overhead_p50_s": quantile(0.5, overhead),
                    "overhead_p95_s": quantile(0.95, overhead)},
        "cache": sum_by(samples, "podium_cache_requests_total", "result"),
        "escalations": sum_by(samples, "podium_cascade_escalations_total", "route"),
        "fallbacks": failures,
        "rejections": sum_by(samples, "podium_rejections_total", "code"),
        "spend": {"by_team": sum_by(samples, "podium_cost_usd_total", "team"),
                  "by_deployment": spend_dep,
                  "by_model": dict(sorted(by_model.items(), key=lambda kv: -kv[1]))},
        "tokens": sum_by(samples, "podium_tokens_total", "direction"),
        "deployments": deployments,
        "reviews": {"pending": len(pending), "oldest": [
            {"id": r.id, "rule": r.rule, "team": r.team, "model": r.model,
             "created_at": int(r.created_at)} for r in pending[:REVIEWS_SHOWN]]},
        "feedback": {"by_deployment": feedback_dep, "by_route": _feedback(samples, "route")},
        "learned": learned_report(samples),
        "shadow": await gw.shadow.report(),
        "config_version": gw.runtime.version.number,
    }


def _severity(state: str) -> int:
    return {"closed": 0, "half_open": 1, "open": 2}.get(state, 0)
