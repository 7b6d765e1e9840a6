"""Config sections of the governance chain (stage one: validated, frozen, unknown fields
rejected). Limits and budgets live on `keys[]` and `teams[]` (see `Limits`).

Which plugin names exist is also known here, so that the config can be checked without
building a chain (`registry.py` builds it, from the same names).
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from gateway.config_base import DataClass, Frozen
from routing.rules import RuleMatch, valid_regex

BudgetPeriod = Literal["day", "month", "total"]
ENTRY_POINT_GROUP = "podium.plugins"
# The built-in plugins, in their default order in the chain.
BUILTIN_ORDER = ("guardrails", "rate_limit", "budget", "approval", "audit")


class Limits(Frozen):
    """Mixed into keys and teams."""
    rpm: int | None = Field(default=None, ge=1)          # requests per minute
    tpm: int | None = Field(default=None, ge=1)          # tokens per minute
    budget_usd: float | None = Field(default=None, ge=0)
    budget_period: BudgetPeriod = "month"


class StorageConfig(Frozen):
    # The durable stores: spend ledger, review queue, audit trail, and (postgres only) keys.
    # sqlite: one file, `path` (audit.path and key_store.path may split it); postgres: `dsn`.
    backend: Literal["sqlite", "postgres"] = "sqlite"
    path: str = "podium.sqlite3"
    dsn: SecretStr | None = None
    # Answered requests are journaled here until their records are written, so a `kill -9`
    # loses none (default: `<path>.answers` beside the database, or ./podium-answers).
    journal_dir: str | None = None

    @model_validator(mode="after")
    def _postgres_needs_dsn(self) -> StorageConfig:
        if self.backend == "postgres" and self.dsn is None:
            raise ValueError("storage.backend postgres needs 'dsn'")
        return self


class AuditConfig(Frozen):
    enabled: bool = True
    path: str | None = None                              # default: storage.path
    include_content: bool = False                        # prompts and answers in records
    # The key the chain is MACed with; normally ${PODIUM_AUDIT_KEY}, which is also read when
    # this is unset. Without either, the embedded store generates one beside its database.
    hmac_key: SecretStr | None = None
    # For requests under a cascade or learned rule: the prompt's hashed features (not its
    # text) for `podium router train --from-audit`; never for requests in which PII was found
    # or whose data is confidential or restricted (docs/learned-router.md, "Privacy").
    router_features: bool = True


class ApprovalMatch(RuleMatch):
    # One class or a list of them; a typo here would hold nothing, silently, so each must be
    # one of the four (a single value is read as a list of one, for path-qualified errors).
    data_class: tuple[DataClass, ...] | None = None

    @field_validator("data_class", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class ApprovalRule(Frozen):
    name: str = Field(min_length=1)
    match: ApprovalMatch = ApprovalMatch()


class GuardrailConfig(Frozen):
    name: str = Field(min_length=1)
    on: Literal["input", "output"] = "input"
    type: Literal["regex", "blocklist", "prompt_injection"]
    pattern: str | None = None
    words: tuple[str, ...] = ()
    action: Literal["block", "flag"] = "block"

    @model_validator(mode="before")
    @classmethod
    def _yaml_on_key(cls, data: Any) -> Any:
        # YAML 1.1 reads a bare `on:` key as the boolean true; take it back as "on".
        if isinstance(data, dict) and True in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data

    _check_regex = field_validator("pattern")(valid_regex)

    @model_validator(mode="after")
    def _needs_its_parameter(self) -> GuardrailConfig:
        if self.type == "regex" and not self.pattern:
            raise ValueError("a regex guardrail needs 'pattern'")
        if self.type == "blocklist" and not self.words:
            raise ValueError("a blocklist guardrail needs 'words'")
        return self


class PluginRef(Frozen):
    name: str = Field(min_length=1)                      # built-in name or entry-point name
    options: dict[str, Any] = {}


def third_party() -> dict[str, EntryPoint]:
    """Installed plugins: the `podium.plugins` entry points, by name."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def plugin_ref(ref: PluginRef | str) -> PluginRef:
    return PluginRef(name=ref) if isinstance(ref, str) else ref
