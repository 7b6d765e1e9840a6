"""The aiohttp application: state under typed AppKeys, resources opened and closed in
`cleanup_ctx`, one edge middleware (request id, SERVER span, error rendering).

State is split in two. `Runtime` is everything compiled from one config (catalog, keys, router);
it is immutable and read once per request, so a future reload swaps it whole while in-flight
requests finish on the one they started with. `Gateway` holds what lives as long as the process
(telemetry, providers, the simulator).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from gateway.config import GatewayConfig
from gateway.errors import (
    InternalError,
    MethodNotAllowed,
    PayloadTooLarge,
    PodiumError,
    RouteNotFound,
    render,
)
from gateway.observability import telemetry as telemetry_mod
from gateway.observability.metrics import Metrics
from gateway.observability.telemetry import Telemetry
from gateway.pipeline.auth import Authenticator
from gateway.pipeline.egress import SENT
from gateway.simulator import SimModel, start_simulator
from gateway.storage.backends import open_state, open_stores
from gateway.storage.contracts import KeyStoreBackend, SharedState
from plugins.base import PluginChain, SpanFactory
from plugins.registry import Governance, build_chain
from routing.catalog import Catalog, Deployment
from routing.fallback import Caller
from routing.health import Health
from routing.providers.base import Provider, Usage
from routing.providers.litellm import LiteLLMProvider
from routing.providers.openai import OpenAICompatibleProvider, is_openai_compatible
from routing.router import Router

log = logging.getLogger("podium")


@dataclass(frozen=True)
class Runtime:
    """Everything compiled from one config; never mutated."""
    config: GatewayConfig
    catalog: Catalog
    auth: Authenticator
    router: Router
    chain: PluginChain
    loaded_at: int

    @classmethod
    def compile(cls, config: GatewayConfig, store: KeyStoreBackend, governance: Governance,
                span: SpanFactory) -> Runtime:
        catalog = Catalog.from_config(config)
        return cls(config=config, catalog=catalog, auth=Authenticator(config, store),
                   router=Router(catalog, config.routing),
                   chain=build_chain(config, governance, span), loaded_at=int(time.time()))


@dataclass
class Gateway:
    runtime: Runtime
    telemetry: Telemetry
    keystore: KeyStoreBackend
    governance: Governance
    state: SharedState
    litellm: LiteLLMProvider = field(default_factory=LiteLLMProvider)
    native: OpenAICompatibleProvider = field(default_factory=OpenAICompatibleProvider)
    health: Health = field(default_factory=Health)
    caller: Caller = field(init=False)
    preload: asyncio.Task[None] | None = None
    simulator: web.AppRunner | None = None

    metrics: Metrics = field(default_factory=Metrics)
    config_path: Path | None = None
    last_breaker_sync: float = 0.0
    reloading: asyncio.Task[Any] | None = None
    semantic_index: Any = None  # gateway.semantic_cache.SemanticIndex, made on first use

    def __post_init__(self) -> None:
        self.caller = Caller(self.provider_for, self.telemetry, self.health, self)

    def attempt_done(self, dep: Deployment, operation: str, seconds: float, outcome: str,
                     usage: Usage, response_model: str | None) -> None:
        self.metrics.attempt(dep.id, seconds, outcome)
        if self.telemetry.genai is not None:
            attrs = {"gen_ai.operation.name": operation, "gen_ai.provider.name": dep.provider,
                     "gen_ai.request.model": dep.upstream_model}
            if response_model:
                attrs["gen_ai.response.model"] = response_model
            self.telemetry.genai.record(attrs, seconds, usage.prompt_tokens,
                                        usage.completion_tokens,
                                        None if outcome == "ok" else outcome)

    async def breaker_changed(self, dep_id: str, state: str, open_until_wall: float) -> None:
        self.metrics.breaker_state(dep_id, state)
        await self.state.publish_breaker(dep_id, state, open_until_wall)

    async def sync_breakers(self) -> None:
        """Adopt breaker changes other processes published (at most every 250 ms)."""
        now = time.monotonic()
        if now - self.last_breaker_sync < BREAKER_SYNC_S:
            return
        self.last_breaker_sync = now
        dep_ids = [d.id for d in self.runtime.catalog.deployments]
        for dep_id, (state, until) in (await self.state.breaker_updates(dep_ids)).items():
            self.health.apply_remote(dep_id, state, until)
            self.metrics.breaker_state(dep_id, self.health.snapshot(dep_id).state)

    def provider_for(self, deployment: Deployment) -> Provider:
        # OpenAI-compatible upstreams need no translation: the native path costs ~0.15 ms of
        # CPU per call against litellm's ~4 ms. Every other provider goes through litellm.
        return self.native if is_openai_compatible(deployment) else self.litellm

    def needs_litellm(self) -> bool:
        return any(not is_openai_compatible(d) for d in self.runtime.catalog.deployments)

    def start_litellm_if_needed(self) -> None:
        """litellm's import takes seconds: only when a deployment needs it, in the background;
        /readyz reports when it is done."""
        if self.preload is None and self.needs_litellm():
            self.preload = asyncio.create_task(self.litellm.preload(),
                                               name="podium-litellm-preload")

    def ready(self) -> tuple[bool, dict[str, str]]:
        """Whether to take traffic, and each part's state (shared state, providers)."""
        serving, state = self.state.status()
        parts = {"state": state, "litellm": "not needed"}
        if self.preload is not None:
            if not self.preload.done():
                serving, parts["litellm"] = False, "loading"
            elif self.preload.exception() is not None:
                serving, parts["litellm"] = False, "failed to load"
            else:
                parts["litellm"] = "loaded"
        return serving, parts


GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)
BREAKER_SYNC_S = 0.25
REQUEST_ID: web.RequestKey[str] = web.RequestKey("podium.request_id", str)
# What the handler learnt about the request (principal, deployment, cost) for the access log.
ACCESS: web.RequestKey[dict[str, Any]] = web.RequestKey("podium.access", dict)
# Set once the request's outcome was counted in the metrics (see gateway/chat.py `observe`).
ACCOUNTED: web.RequestKey[bool] = web.RequestKey("podium.accounted", bool)
access_log = logging.getLogger("podium.access")


# A random per-process prefix and a counter: unique across processes and restarts, and far
# cheaper per request than uuid4 (os.urandom each time).
_ID_PREFIX = secrets.token_hex(8)
_ids = itertools.count(1)


def new_request_id() -> str:
    return f"req_{_ID_PREFIX}{next(_ids):016x}"


# Probes and scrapes arrive every few seconds: a trace each would drown the real ones.
_UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})


@web.middleware
async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    request_id = new_request_id()
    request[REQUEST_ID] = request_id
    if request.path in _UNTRACED:
        request[ACCESS] = {}
        return await _respond(request, handler, request_id)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else ""
    parent = gw.telemetry.propagator.extract(request.headers)
    with gw.telemetry.tracer.start_as_current_span(
        f"{request.method} {route}".strip(), context=parent, kind=SpanKind.SERVER,
        record_exception=False, set_status_on_exception=False,
    ) as span:
        started = time.monotonic()
        request[ACCESS] = {}
        if span.is_recording():
            span.set_attributes({"http.request.method": request.method, "http.route": route,
                                 "url.path": request.path, "podium.request_id": request_id})
        response = await _respond(request, handler, request_id)
        if span.is_recording():
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                span.set_status(Status(StatusCode.ERROR))
        if gw.runtime.config.logging.access_log:
            _log_access(request, response.status, started, span)
        return response


def _log_access(request: web.Request, status: int, started: float, span: trace.Span) -> None:
    context = span.get_span_context()
    fields: dict[str, Any] = request[ACCESS]
    access_log.info("%s %s %d", request.method, request.path, status, extra={
        "request_id": request[REQUEST_ID], "method": request.method, "path": request.path,
        "status": status, "latency_ms": round((time.monotonic() - started) * 1000, 3),
        "trace_id": format(context.trace_id, "032x") if context.is_valid else None,
        **fields})


async def _respond(request: web.Request, handler: Handler,
                   request_id: str) -> web.StreamResponse:
    try:
        response = await handler(request)
    except Exception as exc:
        sent = request.get(SENT)
        if sent is not None:  # the client has its answer: a later failure can only be logged
            log.exception("error after answering %s %s (request %s)",
                          request.method, request.path, request_id)
            return sent
        if isinstance(exc, PodiumError):
            return _refused(request, exc, request_id)
        if isinstance(exc, web.HTTPException):
            return _refused(request, _from_http(exc, request), request_id)
        log.exception("unhandled error in %s %s (request %s)",
                      request.method, request.path, request_id)
        return render(InternalError(f"Internal error; quote request id {request_id}."),
                      request_id)
    if not response.prepared:
        response.headers["x-request-id"] = request_id
    return response


def _refused(request: web.Request, err: PodiumError, request_id: str) -> web.Response:
    if err.status < 500 and ACCOUNTED not in request:
        # Refused before the governed part (bad key, body, endpoint): counted here, once.
        request.app[GATEWAY].metrics.rejected(err.code or err.type)
    return render(err, request_id)


def _from_http(exc: web.HTTPException, request: web.Request) -> PodiumError:
    if exc.status == 404:
        return RouteNotFound(f"Unknown endpoint {request.method} {request.path}.")
    if exc.status == 405:
        return MethodNotAllowed(f"Method {request.method} is not allowed on {request.path}.")
    if exc.status == 413:
        return PayloadTooLarge("The request body is too large.")
    err = PodiumError(exc.reason or "HTTP error")
    err.status, err.type = exc.status, "invalid_request_error"
    return err


def build_app(config: GatewayConfig, telemetry: Telemetry | None = None,
              *, start_simulator: bool = True, config_path: Path | None = None,
              ) -> web.Application:
    # Handlers import this module's keys: import them here to avoid a cycle.
    from gateway.http import admin, dashboard, feedback, reload, reviews
    from gateway.http import models as pipeline

    app = web.Application(middlewares=[edge_middleware],
                          client_max_size=config.server.max_body_bytes)
    stores = open_stores(config)
    state = open_state(config)
    governance = Governance.from_stores(stores, state)
    telemetry = telemetry or telemetry_mod.from_env(config.telemetry.service_name)
    gw = Gateway(runtime=Runtime.compile(config, stores.keys, governance, telemetry.span),
                 keystore=stores.keys, governance=governance, telemetry=telemetry,
                 state=state, metrics=Metrics(t.name for t in config.teams),
                 config_path=config_path)
    app[GATEWAY] = gw
    app.cleanup_ctx.append(_keystore_ctx)
    app.cleanup_ctx.append(_governance_ctx)
    if start_simulator:
        app.cleanup_ctx.append(_simulator_ctx)
    else:  # a worker in a pool: it must not outlive its supervisor
        app.cleanup_ctx.append(_orphan_ctx)
    app.cleanup_ctx.append(_sighup_ctx)
    app.cleanup_ctx.append(_providers_ctx)
    pipeline.add_routes(app)
    admin.add_routes(app)
    reviews.add_routes(app)
    reload.add_routes(app)
    feedback.add_routes(app)
    dashboard.add_routes(app)
    return app


async def _keystore_ctx(app: web.Application) -> AsyncIterator[None]:
    store = app[GATEWAY].keystore
    await store.start()
    yield
    await store.close()


async def _governance_ctx(app: web.Application) -> AsyncIterator[None]:
    governance = app[GATEWAY].governance
    await governance.start()
    yield
    await governance.close()  # flushes batched audit and spend writes
    await app[GATEWAY].state.close()


async def _orphan_ctx(app: web.Application) -> AsyncIterator[None]:
    from gateway.workers import watch_supervisor

    watcher = asyncio.create_task(watch_supervisor(os.getppid()), name="podium-watch-parent")
    yield
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)


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
    from gateway.http.reload import reload

    if gw.config_path is not None and (gw.reloading is None or gw.reloading.done()):
        gw.reloading = asyncio.create_task(reload(gw, gw.config_path), name="podium-reload")


async def _simulator_ctx(app: web.Application) -> AsyncIterator[None]:
    gw = app[GATEWAY]
    sim = gw.runtime.config.simulator
    if sim.enabled:
        models = {name: SimModel(latency_ms=m.latency_ms, fail_rate=m.fail_rate)
                  for name, m in sim.models.items()}
        key = sim.api_key.get_secret_value() if sim.api_key else None
        gw.simulator, port = await start_simulator(sim.host, sim.port, models, api_key=key)
        log.info("simulator (not a real model) listening on http://%s:%d/v1", sim.host, port)
    yield
    if gw.simulator is not None:
        await gw.simulator.cleanup()


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
