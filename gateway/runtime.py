"""What a running gateway holds, and the typed keys it hangs on the app and the request.

State is split in two. `Runtime` is everything compiled from one config (catalog, keys, router,
plugin chain); it is immutable and read once per request, so a reload swaps it whole while
in-flight requests finish on the one they started with. `Gateway` holds what lives as long as
the process (telemetry, providers, health, shared state, stores, the simulator).

Hot reload: `SIGHUP` or `POST /admin/reload` re-reads and re-validates the config. A valid
config is compiled into a new `Runtime` and swapped in with one assignment, so nothing is
dropped. An invalid config changes nothing; the problems are logged, counted in
`podium_config_reloads_total{result="invalid"}` and returned to the caller. Sections that live
as long as the process (storage, state, key store, simulator, telemetry, cache bounds, body
limit) are reported as needing a restart rather than half-applied.

Versions: every config swapped in is first recorded in the version store (its YAML as written,
numbered; `ConfigVersionStore`), and the runtime carries its `VersionTag`. A rollback applies an
earlier version's text the same way (recorded as a new version). Every process follows the
store's latest version (`follow`, once a second), so a reload or rollback made through one
worker reaches every worker of the pool and every machine on the same store.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.config import Checked, ConfigError, GatewayConfig, check_text, read_text
from gateway.config_versions import VersionTag, digest_of
from gateway.errors import PodiumError
from gateway.followup.shadow import ShadowTrials
from gateway.observability.hops import SpanFactory
from gateway.observability.metrics import Metrics
from gateway.observability.task_tally import OpenTasks
from gateway.observability.telemetry import Telemetry
from gateway.pipeline.auth import Authenticator
from gateway.pipeline.cache import Cache
from gateway.pipeline.route import FeaturePolicy, Planner
from gateway.pipeline.semantic_cache import SemanticCache
from gateway.storage.contracts import (
    ConfigVersionStore,
    KeyStoreBackend,
    ResponseStore,
    SessionStore,
    ShadowStore,
    SharedState,
)
from gateway.storage.records import ConfigVersion
from plugins.chain import PluginChain
from plugins.registry import Governance, build_chain
from routing.catalog import Catalog, Deployment
from routing.fallback import Caller
from routing.health import Health
from routing.learned.live import LearnedRules
from routing.providers.base import Provider, Usage
from routing.providers.litellm import LiteLLMProvider
from routing.providers.openai import OpenAICompatibleProvider, is_openai_compatible
from routing.router import Router

log = logging.getLogger("podium")
BREAKER_SYNC_S = 0.25
_PROCESS_LIFETIME = ("storage", "state", "key_store", "simulator", "telemetry")


@dataclass(frozen=True)
class Runtime:
    """Everything compiled from one config; never mutated."""
    config: GatewayConfig
    catalog: Catalog
    auth: Authenticator
    router: Router
    chain: PluginChain
    loaded_at: int
    learned: LearnedRules = field(default_factory=LearnedRules)
    version: VersionTag = field(default_factory=VersionTag)
    workflows: frozenset[str] = frozenset()   # the declared workflows' names

    @classmethod
    def compile(cls, config: GatewayConfig, store: KeyStoreBackend, governance: Governance,
                span: SpanFactory, learned: LearnedRules | None = None) -> Runtime:
        """`learned`: the config's learned rules, compiled (`compile_learned`); a config with
        learned rules and none given is compiled here (heads relative to the working dir)."""
        catalog = Catalog.from_config(config)
        return cls(config=config, catalog=catalog, auth=Authenticator(config, store),
                   router=Router(catalog, config.routing),
                   chain=build_chain(config, governance, span), loaded_at=int(time.time()),
                   learned=learned if learned is not None
                   else compile_learned(config, None),
                   workflows=frozenset(w.name for w in config.workflows))


def compile_learned(config: GatewayConfig, base_dir: Path | None,
                    previous: LearnedRules | None = None) -> LearnedRules:
    """The config's learned rules, heads read from files (relative to `base_dir`, the config
    file's folder); `ConfigError` naming the path when a head is missing or broken."""
    return LearnedRules.compile(config.routing, base_dir, _records_features(config), previous)


def _records_features(config: GatewayConfig) -> bool:
    return config.audit.enabled and config.audit.router_features


def feature_policy(config: GatewayConfig) -> FeaturePolicy:
    return FeaturePolicy(_records_features(config), config.audit.include_content)


@dataclass(frozen=True)
class ReloadResult:
    ok: bool
    problems: list[str]
    restart_required: list[str]
    warnings: tuple[str, ...] = ()
    version: ConfigVersion | None = None


@dataclass(frozen=True)
class ConfigOrigin:
    """Where this process's config came from: its text (what a version keeps), and whether it
    can be restored from that text (not when built in memory: its secrets are masked)."""
    text: str
    source: str
    restorable: bool = True

    def draft(self, loaded_by: str, action: str,
              rollback_of: int | None = None) -> ConfigVersion:
        return ConfigVersion(number=0, digest=digest_of(self.text), loaded_at=time.time(),
                             loaded_by=loaded_by, action=action, source=self.source,
                             content=self.text, restorable=self.restorable,
                             rollback_of=rollback_of)


@dataclass
class Gateway:
    runtime: Runtime
    telemetry: Telemetry
    keystore: KeyStoreBackend
    governance: Governance
    state: SharedState
    sessions: SessionStore             # dashboard sessions (http/sessions.py)
    responses: ResponseStore           # stored Responses API answers (conversation state)
    litellm: LiteLLMProvider = field(default_factory=LiteLLMProvider)
    native: OpenAICompatibleProvider = field(default_factory=OpenAICompatibleProvider)
    health: Health = field(default_factory=Health)
    caller: Caller = field(init=False)
    cache: Cache = field(init=False)
    preload: asyncio.Task[None] | None = None
    simulator: web.AppRunner | None = None

    metrics: Metrics = field(default_factory=Metrics)
    config_path: Path | None = None
    last_breaker_sync: float = 0.0
    in_flight: int = 0                 # requests being handled now (http/middleware.py)
    reloading: asyncio.Task[Any] | None = None
    versions: ConfigVersionStore | None = None
    changing: asyncio.Lock = field(default_factory=asyncio.Lock)   # one config change at a time
    unusable: set[int] = field(default_factory=set)   # versions this process failed to follow
    shadow_store: ShadowStore | None = None
    shadow: ShadowTrials = field(init=False)
    tasks: OpenTasks = field(default_factory=OpenTasks)   # tasks in progress, this process

    def __post_init__(self) -> None:
        self.caller = Caller(self.provider_for, self.telemetry, self.health, self)
        semantic = SemanticCache(self.caller, self.health, self.telemetry.span)
        self.cache = Cache(self.state.cache, semantic, self.telemetry.span)
        self.shadow = ShadowTrials(self.caller, self.state, self.governance.ledger,
                                   self.shadow_store, self.metrics, self.telemetry)

    def planner(self, rt: Runtime) -> Planner:
        """The permissions and route hops, on one config's router and this process's health."""
        return Planner(rt.router, rt.config.pii, self.health, self.telemetry.span, rt.learned,
                       feature_policy(rt.config))

    async def recalibrate(self) -> None:
        """Recalibrate the learned rules' target shares that are due, and report them."""
        learned = self.runtime.learned
        await learned.recalibrate()
        for name, rule in learned:
            self.metrics.learned_calibration(name, rule)

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

    async def reload(self, path: Path, loaded_by: str = "SIGHUP") -> ReloadResult:
        """Re-read the config at `path` and swap in its runtime, or keep the current one."""
        try:
            text = await asyncio.to_thread(read_text, path)
        except ConfigError as err:
            return self._rejected(str(path), err.problems)
        origin = ConfigOrigin(text, str(path))
        return await self.apply(origin, origin.draft(loaded_by, "reload"), path.parent)

    async def rollback(self, number: int, loaded_by: str) -> ReloadResult:
        """Apply an earlier version's text again, as a new version; its `${VAR}` references
        are expanded from this process's environment now."""
        if self.versions is None:
            raise RuntimeError("the config version store is not open")
        old = await self.versions.get(number)
        if old is None or not old.restorable:
            why = "no such version" if old is None else "it was built in memory, not read " \
                "from a file, and its secrets were not kept"
            return self._rejected(f"version {number}", [f"(version {number}): {why}"])
        origin = ConfigOrigin(old.content, old.source)
        return await self.apply(origin, origin.draft(loaded_by, "rollback", number),
                                self._base_dir(old.source))

    async def apply(self, origin: ConfigOrigin, draft: ConfigVersion,
                    base_dir: Path | None) -> ReloadResult:
        """Check and compile `origin`'s text, record it as a version (`draft`; one already
        numbered is a version another process recorded, adopted as it is), then swap it in."""
        async with self.changing:
            if 0 < draft.number <= self.runtime.version.number:  # passed while it waited
                return ReloadResult(True, [], [], (), draft)
            try:
                checked, runtime = await self._compiled(origin, base_dir)
                version = draft if draft.number > 0 else await self._recorded(draft)
            except ConfigError as err:
                return self._rejected(origin.source, err.problems)
            except (OSError, ValueError, PodiumError) as err:  # e.g. an unreadable JWKS file
                return self._rejected(origin.source, [f"(compile): {err}"])
            restart = _needs_restart(self.runtime.config, checked.config)
            self.runtime = replace(runtime, version=VersionTag(version.number, version.digest))
        self.metrics.teams = frozenset(t.name for t in checked.config.teams)
        self.start_litellm_if_needed()
        self.metrics.reloads.labels("ok").inc()
        log.info("config version %d (%s) in force, from %s", version.number,
                 version.digest[:12], origin.source,
                 extra={"restart_required": restart, "config_version": version.number,
                        "loaded_by": version.loaded_by, "action": version.action})
        for warning in checked.warnings:
            log.warning("config: %s", warning)
        return ReloadResult(True, [], restart, checked.warnings, version)

    async def follow(self) -> None:
        """Adopt the store's latest version if another process recorded a newer one (a reload
        or rollback through another worker or machine)."""
        if self.versions is None:
            return
        latest = await self.versions.latest()
        current = self.runtime.version
        if latest is None or latest.number <= current.number or latest.number in self.unusable:
            return
        if latest.digest == current.digest:  # the same text again (a rollback to it)
            self.runtime = replace(self.runtime, version=VersionTag(latest.number, latest.digest))
            return
        result = await self.apply(ConfigOrigin(latest.content, latest.source), latest,
                                  self._base_dir(latest.source))
        if not result.ok:
            self.unusable.add(latest.number)  # logged once; the next newer version is tried

    async def start_version(self, origin: ConfigOrigin, in_pool: bool) -> None:
        """At start-up: record this process's config as a version, or, in a worker of a pool,
        join the pool's latest version (the supervisor recorded the file at the pool's start;
        a worker restarted later must not bring back a config a rollback replaced)."""
        if self.versions is None:
            return
        latest = await self.versions.latest()
        if in_pool and latest is not None and latest.restorable:
            if latest.digest != digest_of(origin.text):
                await self.follow()
            if self.runtime.version.number == latest.number:
                return
        version = await self._recorded(origin.draft(f"podium serve (pid {os.getpid()})",
                                                    "start"))
        self.runtime = replace(self.runtime, version=VersionTag(version.number, version.digest))

    async def _compiled(self, origin: ConfigOrigin,
                        base_dir: Path | None) -> tuple[Checked, Runtime]:
        checked = await asyncio.to_thread(check_text, origin.text, origin.source)
        learned = await asyncio.to_thread(compile_learned, checked.config, base_dir,
                                          self.runtime.learned)
        return checked, Runtime.compile(checked.config, self.keystore, self.governance,
                                        self.telemetry.span, learned)

    async def _recorded(self, draft: ConfigVersion) -> ConfigVersion:
        if self.versions is None:
            return draft.numbered(self.runtime.version.number + 1)
        try:
            return await self.versions.record(draft)
        except Exception as err:  # the store's own errors (sqlite3, asyncpg) vary
            raise ConfigError([f"(version store): cannot record the version: "
                               f"{type(err).__name__}"]) from err

    def _base_dir(self, source: str) -> Path | None:
        """Where a version's relative paths (learned heads) are resolved: its file's folder."""
        if self.config_path is not None:
            return self.config_path.parent
        return Path(source).parent if source.startswith("/") else None

    def _rejected(self, source: str, problems: list[str]) -> ReloadResult:
        self.metrics.reloads.labels("invalid").inc()
        log.error("config from %s rejected; the current one (version %d) stays", source,
                  self.runtime.version.number, extra={"problems": problems})
        return ReloadResult(False, problems, [])


def _needs_restart(old: GatewayConfig, new: GatewayConfig) -> list[str]:
    changed = [name for name in _PROCESS_LIFETIME if getattr(old, name) != getattr(new, name)]
    # The server's limits are read per request, except those fixed when it started.
    for bound in ("max_body_bytes", "header_timeout_s", "keepalive_timeout_s",
                  "shutdown_timeout_s"):
        if getattr(old.server, bound) != getattr(new.server, bound):
            changed.append(f"server.{bound}")
    if old.server.max_body_bytes != new.server.max_body_bytes:
        changed.append("server.max_body_bytes")
    if old.responses.sweep_interval_s != new.responses.sweep_interval_s:
        changed.append("responses.sweep_interval_s")  # retention_s applies at once
    # The cache's bounds size the store made at start; its TTLs and the semantic settings are
    # read per request and apply at once.
    for bound in ("max_entries", "max_bytes"):
        if getattr(old.cache, bound) != getattr(new.cache, bound):
            changed.append(f"cache.{bound}")
    return changed


GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("podium.request_id", str)
# What the handler learnt about the request (principal, deployment, cost) for the access log.
ACCESS: web.RequestKey[dict[str, Any]] = web.RequestKey("podium.access", dict)
# Set once the request's outcome was counted in the metrics (see gateway/http/chat.py).
ACCOUNTED: web.RequestKey[bool] = web.RequestKey("podium.accounted", bool)
