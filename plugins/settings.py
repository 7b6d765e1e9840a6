"""Config sections of the governance chain (stage one: validated, frozen, unknown fields
rejected). Limits and budgets live on `keys[]` and `teams[]` (see `Limits`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from routing.rules import RuleMatch, valid_regex

if TYPE_CHECKING:
    from gateway.pipeline.identity import Principal

BudgetPeriod = Literal["day", "month", "total"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Frozen):
    """Mixed into keys and teams."""
    rpm: int | None = Field(default=None, ge=1)          # requests per minute
    tpm: int | None = Field(default=None, ge=1)          # tokens per minute
    budget_usd: float | None = Field(default=None, ge=0)
    budget_period: BudgetPeriod = "month"


def key_limits(principal: Principal, config_keys: Mapping[str, Limits]) -> Limits | None:
    """A key's own limits: from `keys:` for a config key, from the store for a stored one."""
    limits: Limits | None = principal.limits
    return limits if limits is not None else config_keys.get(principal.key_id)


class StorageConfig(_Frozen):
    # The durable stores: spend ledger, review queue, audit trail, and (postgres only) keys.
    # sqlite: one file, `path` (audit.path and key_store.path may split it); postgres: `dsn`.
    backend: Literal["sqlite", "postgres"] = "sqlite"
    path: str = "podium.sqlite3"
    dsn: SecretStr | None = None

    @model_validator(mode="after")
    def _postgres_needs_dsn(self) -> StorageConfig:
        if self.backend == "postgres" and self.dsn is None:
            raise ValueError("storage.backend postgres needs 'dsn'")
        return self


class AuditConfig(_Frozen):
    enabled: bool = True
    path: str | None = None                              # default: storage.path
    include_content: bool = False                        # prompts and answers in records


class ApprovalMatch(RuleMatch):
    data_class: str | list[str] | None = None


class ApprovalRule(_Frozen):
    name: str = Field(min_length=1)
    match: ApprovalMatch = ApprovalMatch()


class GuardrailConfig(_Frozen):
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


class PluginRef(_Frozen):
    name: str = Field(min_length=1)                      # built-in name or entry-point name
    options: dict[str, Any] = {}
