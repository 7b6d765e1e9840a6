"""The aiohttp application: the one route table, and the resources opened and closed in
`cleanup_ctx` around it.

This module sits at the top: it imports the handlers (`gateway/http/`) and what they run on
(`gateway/runtime.py`); nothing imports it but the CLI and the tests.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.config import GatewayConfig, read_text
from gateway.config_versions import text_of
from gateway.followup.requests import finish_idle_tasks
from gateway.http import (
    admin,
    chat,
    config_versions,
    dashboard,
    embeddings,
    explain,
    feedback,
    messages,
    models,
    reload,
    responses,
    reviews,
)
from gateway.http.dashboard_window import History
from gateway.http.middleware import add_request_id, edge_middleware
from gateway.observability import telemetry as telemetry_mod
from gateway.observability.metrics import Metrics
from gateway.observability.telemetry import Telemetry
from gateway.runtime import GATEWAY, ConfigOrigin, Gateway, Runtime, compile_learned
from gateway.simulator import start_from_config
from gateway.storage.backends import (
    journal_dir,
    open_shadow_store,
    open_state,
    open_stores,
    open_versions,
)
from gateway.storage.responses import sweep
from gateway.workers import WORKER_ENV, watch_supervisor
from plugins.registry import Governance

# How often each process looks for a newer config version (a reload or rollback made through
# another worker or machine): one indexed read of the version store.
FOLLOW_S = 1.0
ORIGIN: web.AppKey[ConfigOrigin] = web.AppKey("podium.config_origin", ConfigOrigin)
# How often idle tasks are looked for (each task's `tasks.idle_s` decides when it is done).
TASK_TICK_S = 1.0
# How often the calibration task looks for a learned rule due to recalibrate (each rule's own
# `recalibrate_every_s` decides when it is); waking costs nothing measurable.
CALIBRATION_TICK_S = 1.0


def build_app(config: GatewayConfig, telemetry: Telemetry | None = None,
              *, start_simulator: bool = True, config_path: Path | None = None,
              config_text: str | None = None) -> web.Application:
    """The gateway for `config`; `config_text` is the YAML it was read from (read again from
    `config_path` when not given): what its version keeps, and a rollback restores."""
    app = web.Application(middlewares=[edge_middleware],
                          client_max_size=config.server.max_body_bytes)
    app.on_response_prepare.append(add_request_id)
    stores = open_stores(config)
    state = open_state(config)
    governance = Governance.from_stores(stores, state, journal_dir(config))
    telemetry = replace(telemetry or telemetry_mod.from_env(config.telemetry.service_name),
                        hop_spans=config.telemetry.hop_spans)
    learned = compile_learned(config, config_path.parent if config_path else None)
    app[GATEWAY] = Gateway(
        runtime=Runtime.compile(config, stores.keys, governance, telemetry.span, learned),
        keystore=stores.keys, governance=governance, telemetry=telemetry, state=state,
        sessions=stores.sessions,
        responses=stores.responses,
        metrics=Metrics(t.name for t in config.teams), config_path=config_path,
        versions=open_versions(config), shadow_store=open_shadow_store(config))
    app[ORIGIN] = _origin(config, config_path, config_text)
    app[dashboard.ASSETS] = dashboard.load_assets()
    app[dashboard.HISTORY] = History(os.getpid(), os.environ.get(WORKER_ENV))
    _add_routes(app.router)
    app.cleanup_ctx.append(_keystore_ctx)
    app.cleanup_ctx.append(_governance_ctx)
    app.cleanup_ctx.append(_versions_ctx)
    app.cleanup_ctx.append(_responses_ctx)
    if start_simulator:
        app.cleanup_ctx.append(_simulator_ctx)
    else:  # a worker in a pool: it must not outlive its supervisor
        app.cleanup_ctx.append(_orphan_ctx)
    app.cleanup_ctx.append(_sighup_ctx)
    app.cleanup_ctx.append(_providers_ctx)
    app.cleanup_ctx.append(dashboard.history_ctx)
    app.cleanup_ctx.append(_calibration_ctx)
    app.cleanup_ctx.append(_tasks_ctx)
    app.cleanup_ctx.append(models.metrics_pool_ctx)
    app.cleanup_ctx.append(_shadow_ctx)   # last: its trials end before what they use closes
    return app


def _add_routes(r: web.UrlDispatcher) -> None:
    # The model endpoints, each through the whole pipeline.
    r.add_post("/v1/chat/completions", chat.chat_completions)
    r.add_post("/v1/embeddings", embeddings.embeddings)
    r.add_post("/v1/route/explain", explain.route_explain)
    r.add_post("/v1/responses", responses.create_response)
    r.add_get("/v1/responses/{response_id}", responses.get_response)
    r.add_delete("/v1/responses/{response_id}", responses.delete_response)
    r.add_post("/v1/messages", messages.create_message)
    r.add_post("/v1/messages/count_tokens", messages.count_tokens)
    r.add_get("/v1/models", models.list_models)
    r.add_get("/v1/models/{model_id:.+}", models.get_model)
    r.add_get("/v1/reviews/{review_id}", reviews.review_outcome)
    r.add_post("/v1/feedback", feedback.feedback)
    # Probes and scrapes.
    r.add_get("/healthz", models.healthz)
    r.add_get("/readyz", models.readyz)
    r.add_get("/metrics", models.metrics)
    # Operators (admin key).
    r.add_post("/admin/keys", admin.create_key)
    r.add_get("/admin/keys", admin.list_keys)
    r.add_delete("/admin/keys/{key_id}", admin.revoke_key)
    r.add_get("/admin/spend", admin.spend)
    r.add_get("/admin/spend/budgets", admin.budgets)
    r.add_get("/admin/audit", admin.audit)
    r.add_get("/admin/reviews", reviews.list_reviews)
    r.add_get("/admin/reviews/{review_id}", reviews.show_review)
    r.add_post("/admin/reviews/{review_id}/approve", reviews.approve)
    r.add_post("/admin/reviews/{review_id}/reject", reviews.reject)
    r.add_post("/admin/reload", reload.admin_reload)
    r.add_get("/admin/config/versions", config_versions.list_versions)
    r.add_get("/admin/config/versions/{number}", config_versions.show_version)
    r.add_post("/admin/config/rollback", config_versions.rollback)
    r.add_get("/admin/dashboard/data", dashboard.data)
    # The dashboard page (a session cookie instead of a bearer key).
    r.add_get("/dashboard", dashboard.page)
    r.add_post("/dashboard/login", dashboard.login)
    r.add_post("/dashboard/logout", dashboard.logout)
    r.add_get("/dashboard/static/{name}", dashboard.asset)


async def _keystore_ctx(app: web.Application) -> AsyncIterator[None]:
    gw = app[GATEWAY]
    await gw.keystore.start()
    await gw.sessions.start()
    yield
    await gw.sessions.close()
    await gw.keystore.close()


async def _governance_ctx(app: web.Application) -> AsyncIterator[None]:
    governance = app[GATEWAY].governance
    await governance.start()
    yield
    await governance.close()  # flushes batched audit and spend writes
    await app[GATEWAY].state.close()


def _origin(config: GatewayConfig, path: Path | None, text: str | None) -> ConfigOrigin:
    if text is None and path is not None:
        text = read_text(path)
    if text is None:
        return ConfigOrigin(text_of(config), "(in memory)", restorable=False)
    return ConfigOrigin(text, str(path) if path is not None else "(text)")


@asynccontextmanager
async def _running(work: Coroutine[Any, Any, None], name: str) -> AsyncIterator[None]:
    """A background task for as long as the block runs; cancelled and awaited after it."""
    task = asyncio.create_task(work, name=name)
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _versions_ctx(app: web.Application) -> AsyncIterator[None]:
    """Record (or, in a pool's worker, join) the config version at start, then follow the
    store's latest version for as long as the process serves."""
    gw = app[GATEWAY]
    if gw.versions is None:
        yield
        return
    await gw.versions.start()
    await gw.start_version(app[ORIGIN], in_pool=WORKER_ENV in os.environ)
    async with _running(_follow_forever(gw), "podium-config-follow"):
        yield
    await gw.versions.close()


async def _follow_forever(gw: Gateway) -> None:
    logged = -math.inf
    while True:
        await asyncio.sleep(FOLLOW_S)
        try:
            await gw.follow()
        except Exception as err:  # a store outage must not end the follower: it retries
            if time.monotonic() - logged >= 60:   # and says so once a minute, not a second
                logged = time.monotonic()
                logging.getLogger("podium").warning(
                    "cannot read the config version store (%s); retrying", type(err).__name__)


async def _tasks_ctx(app: web.Application) -> AsyncIterator[None]:
    """Finish idle tasks into the per-task metrics, once a second."""
    async with _running(_finish_tasks_forever(app[GATEWAY]), "podium-tasks"):
        yield


async def _finish_tasks_forever(gw: Gateway) -> None:
    while True:
        await asyncio.sleep(TASK_TICK_S)
        finish_idle_tasks(gw)


async def _shadow_ctx(app: web.Application) -> AsyncIterator[None]:
    """The shadow trials' store; at shutdown the running trials are cancelled and awaited
    before the providers, the ledger and the store they use are closed."""
    gw = app[GATEWAY]
    store = gw.shadow.store
    if store is not None:
        await store.start()
    yield
    await gw.shadow.close()
    if store is not None:
        await store.close()
async def _responses_ctx(app: web.Application) -> AsyncIterator[None]:
    gw = app[GATEWAY]
    await gw.responses.start()
    async with _running(sweep(gw.responses, gw.runtime.config.responses.sweep_interval_s),
                        "podium-responses-sweep"):
        yield
    await gw.responses.close()


async def _orphan_ctx(app: web.Application) -> AsyncIterator[None]:
    async with _running(watch_supervisor(os.getppid()), "podium-watch-parent"):
        yield


async def _sighup_ctx(app: web.Application) -> AsyncIterator[None]:
    """SIGHUP reloads the config (only where signals can be handled: the main thread)."""
    gw = app[GATEWAY]
    loop = asyncio.get_running_loop()
    handled = gw.config_path is not None and threading.current_thread() is threading.main_thread()
    if handled:
        loop.add_signal_handler(signal.SIGHUP, _reload_on_signal, gw)
    yield
    if handled:
        loop.remove_signal_handler(signal.SIGHUP)
    if gw.reloading is not None:
        await asyncio.gather(gw.reloading, return_exceptions=True)


def _reload_on_signal(gw: Gateway) -> None:
    if gw.config_path is not None and (gw.reloading is None or gw.reloading.done()):
        gw.reloading = asyncio.create_task(
            gw.reload(gw.config_path, f"SIGHUP (pid {os.getpid()})"), name="podium-reload")


async def _simulator_ctx(app: web.Application) -> AsyncIterator[None]:
    gw = app[GATEWAY]
    gw.simulator = await start_from_config(gw.runtime.config.simulator)
    yield
    if gw.simulator is not None:
        await gw.simulator.cleanup()


async def _calibration_ctx(app: web.Application) -> AsyncIterator[None]:
    """Learned rules with a target share recalibrate on their schedule from this process's
    own recent scores (each worker from its share of the traffic: see docs/learned-router.md
    for why that is not shared through Redis)."""
    async with _running(_recalibrate_forever(app[GATEWAY]), "podium-calibration"):
        yield


async def _recalibrate_forever(gw: Gateway) -> None:
    while True:
        await asyncio.sleep(CALIBRATION_TICK_S)
        await gw.recalibrate()


async def _providers_ctx(app: web.Application) -> AsyncIterator[None]:
    gw = app[GATEWAY]
    gw.start_litellm_if_needed()
    yield
    if gw.preload is not None:
        gw.preload.cancel()
        await asyncio.gather(gw.preload, return_exceptions=True)
    await gw.native.close()
    await gw.litellm.close()
    gw.telemetry.shutdown()
