"""Configuration, stage one: YAML → environment expansion → frozen, validated pydantic models.

Every model forbids unknown fields (a typo is an error, not a silently ignored setting), and every
problem is reported with its path, e.g. ``model_list[2].model_info.quality: ...``. Stage two,
compiling these models into runtime objects, lives in ``routing/catalog.py`` and
``gateway/runtime.py``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from gateway.config_base import Frozen, expand_env, format_loc
from plugins.settings import (
    ApprovalRule,
    AuditConfig,
    GuardrailConfig,
    Limits,
    PluginRef,
    StorageConfig,
    unknown_plugins,
)
from routing.rules import RouteSettings, RoutingConfig

DataClass = Literal["public", "internal", "confidential", "restricted"]
# `responses`: the deployment also speaks the OpenAI Responses API at `{api_base}/responses`,
# so Responses requests are passed to it as they are (never assumed: declare it).
Capability = Literal["tools", "json_schema", "vision", "streaming", "responses"]
Mode = Literal["chat", "embedding"]
RESERVED_MODEL_NAMES = frozenset({"auto"})


class ConfigError(Exception):
    """The config is unusable; `problems` holds every path-qualified message."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class LiteLLMParams(BaseModel):
    # litellm's own parameters are open-ended (provider specific), so extra fields are allowed
    # here, and only here; they are passed to litellm untouched.
    model_config = ConfigDict(extra="allow", frozen=True)

    model: str = Field(min_length=1)
    api_base: str | None = None
    api_key: SecretStr | None = None
    timeout: float | None = Field(default=None, gt=0)


class ModelInfo(Frozen):
    id: str | None = Field(default=None, min_length=1)
    quality: int = Field(default=50, ge=0, le=100)
    input_cost_per_token: float | None = Field(default=None, ge=0)
    output_cost_per_token: float | None = Field(default=None, ge=0)
    max_input_tokens: int | None = Field(default=None, gt=0)
    max_output_tokens: int | None = Field(default=None, gt=0)
    supports: tuple[Capability, ...] | None = None
    data_clearance: DataClass = "public"
    region: str | None = None
    mode: Mode = "chat"


class ModelEntry(Frozen):
    model_name: str = Field(min_length=1)
    litellm_params: LiteLLMParams
    model_info: ModelInfo = ModelInfo()


class KeyCredential(Frozen):
    """A key given in the config, as itself or only as its sha256 (so the file holds no
    secret). Exactly one of the two (`check_references` names a `keys:` entry that breaks it)."""
    key: SecretStr | None = None
    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    name: str = Field(min_length=1)

    def digest(self) -> str:
        if self.key is not None:
            return hashlib.sha256(self.key.get_secret_value().encode()).hexdigest()
        if self.key_sha256 is None:
            raise ValueError(f"key {self.name!r} has neither 'key' nor 'key_sha256'")
        return self.key_sha256.lower()


class KeyEntry(Limits, KeyCredential):
    team: str | None = None
    user: str | None = None
    models: tuple[str, ...] | None = None


class TeamConfig(Limits):
    name: str = Field(min_length=1)
    data_class: DataClass = "public"              # the default class of the team's requests
    models: tuple[str, ...] | None = None         # allow-list of model names (None: all)
    tools: tuple[str, ...] | None = None          # allow-list of tool names (None: all)
    regions: tuple[str, ...] | None = None        # deployments' allowed regions (None: all)


class AdminKeyEntry(KeyCredential):
    """A key for `/admin/...` and the dashboard."""


class JWTConfig(Frozen):
    issuer: str = Field(min_length=1)
    audience: str | tuple[str, ...]
    jwks_file: str | None = None
    jwks_url: str | None = None
    team_claim: str = "team"
    user_claim: str = "sub"
    roles_claim: str = "roles"
    algorithms: tuple[Literal["RS256", "RS384", "RS512", "ES256", "ES384", "ES512"], ...] = (
        "RS256", "ES256")
    leeway_s: float = Field(default=0.0, ge=0)


class AuthConfig(Frozen):
    jwt: JWTConfig | None = None


class KeyStoreConfig(Frozen):
    # SQLite file for keys created through the admin API (":memory:" for a throwaway store).
    path: str = "podium-keys.sqlite3"


class PIIConfig(Frozen):
    enabled: bool = True
    # pseudonymize: mask for deployments not cleared for `data_class`, restore in the answer;
    # route: raise the request's class to `data_class`; block: reject with 400.
    action: Literal["pseudonymize", "route", "block"] = "pseudonymize"
    data_class: DataClass = "confidential"
    kinds: tuple[Literal["email", "phone", "card", "iban", "ssn", "ip", "secret"], ...] = (
        "email", "phone", "card", "iban", "ssn", "ip", "secret")


class SemanticCacheConfig(Frozen):
    # Reuse an answer for a near-identical prompt (pipeline/semantic_cache.py); off by default.
    enabled: bool = False
    embedding_model: str | None = None            # a model group of mode `embedding`
    threshold: float = Field(default=0.95, ge=0, le=1)  # cosine similarity for a hit
    max_entries: int = Field(default=2000, ge=1)  # per process
    dimensions: int | None = Field(default=None, gt=0)  # sent as `dimensions` when set
    timeout_s: float = Field(default=2.0, gt=0)   # the embedding call's whole budget
    # Whose answers a near-identical prompt may reuse: the same key's, or the whole team's.
    scope: Literal["key", "team"] = "key"

    @model_validator(mode="after")
    def _needs_model(self) -> SemanticCacheConfig:
        if self.enabled and not self.embedding_model:
            raise ValueError("'enabled: true' needs 'embedding_model' (an embedding model group)")
        return self


class CacheConfig(Frozen):
    enabled: bool = True
    ttl_s: float = Field(default=300.0, ge=0)
    max_entries: int = Field(default=10_000, ge=1)
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    semantic: SemanticCacheConfig = SemanticCacheConfig()


class StateConfig(Frozen):
    # Where workers and machines share limits, budgets, the cache and breakers.
    backend: Literal["memory", "redis"] = "memory"
    url: SecretStr | None = None                  # redis://host:6379/0
    # Redis Cluster (or clustered Valkey): `url` names any one node; the client finds the rest.
    cluster: bool = False
    # No braces: Podium puts its own hash tags after it (gateway/storage/redis_state.py).
    key_prefix: str = Field(default="podium:", pattern=r"^[^{}]*$")
    # When Redis is unreachable: the cache always fails open (a miss); limits and budgets
    # fail "open" (serve, unenforced) or "closed" (503 state_unavailable).
    fail_mode: Literal["open", "closed"] = "open"
    timeout_s: float = Field(default=0.25, gt=0)  # per Redis call: a dead Redis must not stall

    @model_validator(mode="after")
    def _redis_needs_url(self) -> StateConfig:
        if self.backend == "redis" and self.url is None:
            raise ValueError("state.backend redis needs 'url'")
        if self.cluster and self.backend != "redis":
            raise ValueError("'cluster: true' needs state.backend redis")
        return self


class LoggingConfig(Frozen):
    format: Literal["json", "text"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True                       # one line per HTTP request


class ServerConfig(Frozen):
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    request_timeout_s: float = Field(default=600.0, gt=0)
    attempt_timeout_s: float = Field(default=120.0, gt=0)
    # On SIGTERM: stop accepting, then give in-flight requests and streams this long.
    shutdown_timeout_s: float = Field(default=30.0, ge=0)


class SimModelConfig(Frozen):
    latency_ms: float = Field(default=0.0, ge=0)
    fail_rate: float = Field(default=0.0, ge=0, le=1)


class SimulatorConfig(Frozen):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=4010, ge=0, le=65535)
    api_key: SecretStr | None = None
    models: dict[str, SimModelConfig] = {}


class ResponsesConfig(Frozen):
    # What `POST /v1/responses` keeps (per key) for `previous_response_id` and GET/DELETE.
    retention_s: float = Field(default=30 * 86400.0, gt=0)   # OpenAI's own default: 30 days
    sweep_interval_s: float = Field(default=60.0, gt=0)      # how often expired rows go


class TelemetryConfig(Frozen):
    # Standard OTEL_* environment variables take precedence; this only names the service when
    # OTEL_SERVICE_NAME is not set.
    service_name: str = "podium"


class GatewayConfig(Frozen):
    model_list: tuple[ModelEntry, ...] = Field(min_length=1)
    keys: tuple[KeyEntry, ...] = ()
    teams: tuple[TeamConfig, ...] = ()
    admin_keys: tuple[AdminKeyEntry, ...] = ()
    auth: AuthConfig = AuthConfig()
    key_store: KeyStoreConfig = KeyStoreConfig()
    pii: PIIConfig = PIIConfig()
    storage: StorageConfig = StorageConfig()
    cache: CacheConfig = CacheConfig()
    state: StateConfig = StateConfig()
    logging: LoggingConfig = LoggingConfig()
    audit: AuditConfig = AuditConfig()
    approvals: tuple[ApprovalRule, ...] = ()
    guardrails: tuple[GuardrailConfig, ...] = ()
    plugins: tuple[PluginRef | str, ...] = ()
    routing: RoutingConfig = RoutingConfig()
    server: ServerConfig = ServerConfig()
    simulator: SimulatorConfig = SimulatorConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    responses: ResponsesConfig = ResponsesConfig()


# ---- cross references -----------------------------------------------------------------------

def deployment_ids(cfg: GatewayConfig) -> list[str]:
    """Each entry's id: `model_info.id`, or model_name + its index within the group."""
    seen: dict[str, int] = {}
    ids = []
    for entry in cfg.model_list:
        index = seen.get(entry.model_name, 0)
        seen[entry.model_name] = index + 1
        ids.append(entry.model_info.id or f"{entry.model_name}-{index}")
    return ids


def check_references(cfg: GatewayConfig) -> list[str]:
    problems: list[str] = []
    groups: dict[str, str] = {}
    for i, entry in enumerate(cfg.model_list):
        where = f"model_list[{i}]"
        if entry.model_name in RESERVED_MODEL_NAMES:
            problems.append(f"{where}.model_name: {entry.model_name!r} is reserved")
        mode = groups.setdefault(entry.model_name, entry.model_info.mode)
        if mode != entry.model_info.mode:
            problems.append(f"{where}.model_info.mode: group {entry.model_name!r} mixes "
                            f"{mode!r} and {entry.model_info.mode!r} deployments")
    first_seen: dict[str, int] = {}
    for i, dep_id in enumerate(deployment_ids(cfg)):
        if dep_id in first_seen:
            problems.append(f"model_list[{i}].model_info.id: duplicate deployment id {dep_id!r} "
                            f"(also model_list[{first_seen[dep_id]}])")
        first_seen.setdefault(dep_id, i)
    problems += _check_keys(cfg, set(groups) | set(first_seen))
    problems += _check_routing(cfg, set(groups), set(first_seen))
    problems += _check_teams(cfg, set(groups) | set(first_seen))
    model = cfg.cache.semantic.embedding_model
    if model is not None and groups.get(model) != "embedding":
        problems.append(f"cache.semantic.embedding_model: unknown embedding model {model!r}"
                        + (f" (a {groups[model]} model group)" if model in groups else ""))
    problems += unknown_plugins(cfg.plugins)
    return problems


def _check_teams(cfg: GatewayConfig, model_names: set[str]) -> list[str]:
    problems: list[str] = []
    teams = {t.name for t in cfg.teams}
    if len(teams) != len(cfg.teams):
        problems.append("teams: team names must be unique")
    for i, team in enumerate(cfg.teams):
        problems += [f"teams[{i}].models[{j}]: unknown model {m!r}"
                     for j, m in enumerate(team.models or ()) if m not in model_names]
    if cfg.teams:
        problems += [f"keys[{i}].team: unknown team {k.team!r}"
                     for i, k in enumerate(cfg.keys) if k.team is not None and k.team not in teams]
    jwt = cfg.auth.jwt
    if jwt is not None and (jwt.jwks_file is None) == (jwt.jwks_url is None):
        problems.append("auth.jwt: give exactly one of 'jwks_file' or 'jwks_url'")
    return problems


def _check_routing(cfg: GatewayConfig, groups: set[str], ids: set[str]) -> list[str]:
    problems = _check_route_settings("routing.default", cfg.routing.default, groups, ids)
    names: set[str] = set()
    for i, rule in enumerate(cfg.routing.rules):
        where = f"routing.rules[{i}]"
        if rule.name in names:
            problems.append(f"{where}.name: duplicate rule name {rule.name!r}")
        names.add(rule.name)
        problems += _check_route_settings(where, rule, groups, ids)
        models = rule.match.model
        for model in [models] if isinstance(models, str) else models or []:
            if model not in groups | ids | RESERVED_MODEL_NAMES:
                problems.append(f"{where}.match.model: unknown model {model!r}")
    return problems


def _check_route_settings(where: str, settings: RouteSettings, groups: set[str],
                          ids: set[str]) -> list[str]:
    problems = [f"{where}.fallbacks[{j}]: unknown model group {g!r}"
                for j, g in enumerate(settings.fallbacks) if g not in groups]
    problems += [f"{where}.weights.{d}: unknown deployment id {d!r}"
                 for d in settings.weights if d not in ids]
    return problems


def _check_keys(cfg: GatewayConfig, model_names: set[str]) -> list[str]:
    problems: list[str] = []
    names: set[str] = set()
    digests: set[str] = set()
    for i, key in enumerate(cfg.keys):
        where = f"keys[{i}]"
        if (key.key is None) == (key.key_sha256 is None):
            problems.append(f"{where}: give exactly one of 'key' or 'key_sha256'")
            continue
        if key.key is not None and not key.key.get_secret_value():
            problems.append(f"{where}.key: is empty")
        if key.name in names:
            problems.append(f"{where}.name: duplicate key name {key.name!r}")
        if key.digest() in digests:
            problems.append(f"{where}: the same key is configured twice")
        names.add(key.name)
        digests.add(key.digest())
        for j, model in enumerate(key.models or ()):
            if model not in model_names:
                problems.append(f"{where}.models[{j}]: unknown model {model!r}")
    return problems


# ---- loading --------------------------------------------------------------------------------

def parse_config(raw: Any, env: Mapping[str, str] | None = None) -> GatewayConfig:
    if not isinstance(raw, dict):
        raise ConfigError(["(root): the config must be a mapping"])
    expanded, problems = expand_env(raw, os.environ if env is None else env)
    try:
        cfg = GatewayConfig.model_validate(expanded)
    except ValidationError as exc:
        problems += [f"{format_loc(e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(problems) from None
    problems += check_references(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError([f"(file): cannot read {path}: {exc.strerror}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"(file): {path} is not valid YAML: {exc}"]) from None
    return parse_config(raw, env)
