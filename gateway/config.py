"""Configuration, stage one: YAML → environment expansion → frozen, validated pydantic models.

Every model forbids unknown fields (a typo is an error, not a silently ignored setting), and every
problem is reported with its path, e.g. ``model_list[2].model_info.quality: ...``. Stage two,
compiling these models into runtime objects, lives in ``routing/catalog.py`` and
``gateway/runtime.py``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from gateway.config_base import DataClass, Frozen, expand_env, format_loc, load_yaml
from gateway.config_refs import assign_ids, review
from gateway.config_server import DashboardConfig, LoggingConfig, ServerConfig, TelemetryConfig
from plugins.settings import (
    ApprovalRule,
    AuditConfig,
    GuardrailConfig,
    Limits,
    PluginRef,
    StorageConfig,
)
from routing.rules import RoutingConfig

# `responses`: the deployment also speaks the OpenAI Responses API at `{api_base}/responses`,
# so Responses requests are passed to it as they are (never assumed: declare it).
Capability = Literal["tools", "json_schema", "vision", "streaming", "responses"]
Mode = Literal["chat", "embedding"]


class ConfigError(Exception):
    """The config is unusable; `problems` holds every path-qualified message, `warnings` what
    would be reported even if it were fixed."""

    def __init__(self, problems: list[str], warnings: Iterable[str] = ()) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.warnings = list(warnings)


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
    # Unset stays public: data above public goes only where the config says it may. A team
    # whose data_class no deployment is cleared for is reported (gateway/config_reach.py).
    data_clearance: DataClass = "public"
    region: str | None = None
    mode: Mode = "chat"


class ModelEntry(Frozen):
    model_name: str = Field(min_length=1)
    litellm_params: LiteLLMParams
    model_info: ModelInfo = ModelInfo()


class KeyCredential(Frozen):
    """A key given in the config, as itself or only as its sha256 (so the file holds no
    secret). Exactly one of the two (`config_refs.review` names a `keys:` entry that breaks it)."""
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
    # A caller is always in a configured team: a token whose team claim is missing or names no
    # team in `teams:` is refused (403), or placed in this team when it is set.
    default_team: str | None = None
    # How the subject (`sub`, often an e-mail address) is named in audit records, spans, logs
    # and the ledger: `hash` (default) a stable pseudonym `jwt_<12 hex>`, `claim` as it is.
    identity: Literal["hash", "claim"] = "hash"


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


class ShadowConfig(Frozen):
    """Bounds on every rule's shadow trials (a rule's own `shadow:` says what to trial)."""
    max_concurrent: int = Field(default=4, ge=1)   # trials in flight per process; more: skipped
    rpm: int = Field(default=60, ge=1)            # trials started per minute (shared state)
    # The shadow category's own budget (its spend is ledgered under key "shadow", never a
    # team's); None: bounded by rpm alone.
    budget_usd: float | None = Field(default=None, ge=0)
    budget_period: Literal["day", "month", "total"] = "day"
    timeout_s: float = Field(default=60.0, gt=0)  # a candidate's (and a judge's) whole call


class WorkflowEntry(Frozen):
    """A workflow a request may name (`x-podium-workflow`); its name is a metrics label."""
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str | None = None


class TasksConfig(Frozen):
    # A task with no call in flight and none for `idle_s` is finished: its totals go to the
    # per-task metrics. At most `max_open` tasks are tracked per process; past that the one
    # idle longest is finished early (memory: about 0.5 KB a task).
    idle_s: float = Field(default=300.0, gt=0)
    max_open: int = Field(default=10_000, ge=1)


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
    dashboard: DashboardConfig = DashboardConfig()
    responses: ResponsesConfig = ResponsesConfig()
    shadow: ShadowConfig = ShadowConfig()
    workflows: tuple[WorkflowEntry, ...] = ()
    tasks: TasksConfig = TasksConfig()


# ---- loading --------------------------------------------------------------------------------

def deployment_ids(cfg: GatewayConfig) -> list[str]:
    """Each entry's id: `model_info.id`, or model_name + its index within the group."""
    return assign_ids((e.model_name, e.model_info.id) for e in cfg.model_list)


@dataclass(frozen=True)
class Checked:
    """A valid config, and what is valid but surely not meant (see `gateway/config_refs.py`)."""
    config: GatewayConfig
    warnings: tuple[str, ...] = ()


def check_config(raw: Any, env: Mapping[str, str] | None = None,
                 found: Iterable[str] = ()) -> Checked:
    """Validate `raw`: the schema and the cross-references in one run, every problem with its
    path (`found`: problems already met while reading it, such as duplicate YAML keys)."""
    if not isinstance(raw, dict):
        raise ConfigError(["(root): the config must be a mapping"])
    expanded, env_problems = expand_env(raw, os.environ if env is None else env)
    problems = [*found, *env_problems]
    findings = review(expanded)
    cfg = None
    try:
        cfg = GatewayConfig.model_validate(expanded)
    except ValidationError as exc:
        problems += _schema_problems(exc)
    problems += findings.errors
    if problems or cfg is None:
        raise ConfigError(problems, findings.warnings)
    return Checked(cfg, tuple(findings.warnings))


def _schema_problems(exc: ValidationError) -> list[str]:
    found = [f"{format_loc(e['loc'])}: {e['msg']}" for e in exc.errors()]
    # An invalid entry also fails the list's length check; the entry's own problem says it all.
    return [p for p in found
            if not (p.startswith("model_list: Tuple should have at least 1 item")
                    and any(q.startswith("model_list[") for q in found))]


def parse_config(raw: Any, env: Mapping[str, str] | None = None) -> GatewayConfig:
    return check_config(raw, env).config


def load_checked(path: str | Path, env: Mapping[str, str] | None = None) -> Checked:
    return check_text(read_text(path), path, env)


def read_text(path: str | Path) -> str:
    """The config file's text, as it is (a config version keeps exactly this)."""
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ConfigError([f"(file): cannot read {path}: {exc.strerror}"]) from None


def check_text(text: str, where: str | Path, env: Mapping[str, str] | None = None) -> Checked:
    """A config's YAML text, checked (`where` names it in problems)."""
    try:
        raw, duplicates = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"(file): {where} is not valid YAML: {exc}"]) from None
    return check_config(raw, env, duplicates)


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    return load_checked(path, env).config
