"""The `routing:` config section (stage one, validated) and its rules compiled for matching.

A rule is checked in order against facts about the request that are cheap to know before any
model is called; the first match decides the required quality, the strategy, and any extra
fallback groups. Regexes are compiled once, at load, and a bad one is a config error with a path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator, model_validator

# The one config base, under the local name the sections here were written with.
from gateway.config_base import Frozen as _Frozen

Strategy = Literal["cheapest", "cascade", "latency", "weighted", "learned"]


def valid_regex(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
    return value


class RuleMatch(_Frozen):
    team: str | list[str] | None = None
    key: str | list[str] | None = None            # key name
    model: str | list[str] | None = None          # the model the client asked for
    has_tools: bool | None = None
    min_prompt_tokens: int | None = Field(default=None, ge=0)
    max_prompt_tokens: int | None = Field(default=None, ge=0)
    headers: dict[str, str] = {}                  # exact values; names are case-insensitive
    last_user_message: str | None = None          # regex, searched in the last user message

    _check_regex = field_validator("last_user_message")(valid_regex)


class CascadeChecks(_Frozen):
    must_match: str | None = None                 # regex the answer must contain
    must_not_match: str | None = None             # regex the answer must not contain
    allow_length_finish: bool = False             # accept a finish_reason of "length"

    _check_regex = field_validator("must_match", "must_not_match")(valid_regex)


class LearnedSettings(_Frozen):
    """`strategy: learned`: a difficulty score per request sets its required quality between
    `floor` (easy prompts) and `ceiling` (the hardest). Give exactly one of
    `target_strong_share` (no labels needed) or `min_relative_quality` (uses the head's labels)."""
    head: str = Field(min_length=1)               # the head file written by `podium router train`
    floor: int = Field(ge=0, le=100)              # quality for prompts below the threshold
    ceiling: int = Field(ge=0, le=100)            # quality for the hardest prompts
    target_strong_share: float | None = Field(default=None, gt=0, lt=1)
    min_relative_quality: float | None = Field(default=None, gt=0, le=1)
    window: int = Field(default=3000, ge=200)     # recent scores the share is calibrated on
    recalibrate_every_s: float = Field(default=60.0, gt=0)
    cache_size: int = Field(default=4096, ge=0)   # scores kept by prompt digest

    @model_validator(mode="after")
    def _consistent(self) -> LearnedSettings:
        if self.floor >= self.ceiling:
            raise ValueError(f"floor ({self.floor}) must be below ceiling ({self.ceiling})")
        if (self.target_strong_share is None) == (self.min_relative_quality is None):
            raise ValueError("give exactly one of 'target_strong_share' or "
                             "'min_relative_quality'")
        return self


class ShadowJudge(_Frozen):
    """A model that grades the candidate's answer against the primary's, by a rubric."""
    deployment: str | None = Field(default=None, min_length=1)   # a deployment id, or
    group: str | None = Field(default=None, min_length=1)        # a model group
    rubric: str = Field(min_length=1, max_length=4000)

    @model_validator(mode="after")
    def _one_target(self) -> ShadowJudge:
        if (self.deployment is None) == (self.group is None):
            raise ValueError("give exactly one of 'deployment' or 'group'")
        return self


class ShadowTrial(_Frozen):
    """`shadow:` on a rule: for `share` of its requests, once the client has its answer, the
    same request also goes to the candidate, and the two answers are compared (see
    gateway/pipeline/shadow.py). The client never sees the candidate's answer or waits for it."""
    deployment: str | None = Field(default=None, min_length=1)   # a deployment id, or
    group: str | None = Field(default=None, min_length=1)        # a model group
    share: float = Field(gt=0, le=1)
    # Answers at least this similar (0-1, word overlap) agree, when no judge is configured.
    agree_at: float = Field(default=0.6, ge=0, le=1)
    judge: ShadowJudge | None = None

    @model_validator(mode="after")
    def _one_target(self) -> ShadowTrial:
        if (self.deployment is None) == (self.group is None):
            raise ValueError("give exactly one of 'deployment' or 'group'")
        return self


class RouteSettings(_Frozen):
    min_quality: int | None = Field(default=None, ge=0, le=100)
    strategy: Strategy | None = None
    fallbacks: tuple[str, ...] = ()               # extra groups, tried after the group's own
    weights: dict[str, float] = {}                # deployment id → weight, for `weighted`
    regions: tuple[str, ...] | None = None        # deployments' allowed regions (None: all)
    cache_ttl_s: float | None = Field(default=None, ge=0)   # overrides cache.ttl_s
    cache_any_temperature: bool | None = None     # also cache requests with temperature > 0
    cascade: CascadeChecks = CascadeChecks()
    learned: LearnedSettings | None = None        # with strategy: learned only
    shadow: ShadowTrial | None = None             # trial a candidate on a share of requests

    @model_validator(mode="after")
    def _learned_needs_settings(self) -> RouteSettings:
        if self.strategy == "learned" and self.learned is None:
            raise ValueError("strategy 'learned' needs a 'learned:' section (head, floor, "
                             "ceiling, and target_strong_share or min_relative_quality)")
        if self.learned is not None and self.strategy != "learned":
            raise ValueError("a 'learned:' section needs 'strategy: learned'")
        return self


class RoutingDefault(RouteSettings):
    min_quality: int | None = Field(default=0, ge=0, le=100)
    strategy: Strategy | None = "cheapest"


class RoutingRule(RouteSettings):
    name: str = Field(min_length=1)
    match: RuleMatch = RuleMatch()


class BreakerConfig(_Frozen):
    failures: int = Field(default=5, ge=1)        # consecutive failures that open the breaker
    cooldown_s: float = Field(default=30.0, gt=0)  # how long it stays open before one probe


class RetryConfig(_Frozen):
    # Retries apply only where a plan has a single deployment: elsewhere the next one is tried.
    attempts: int = Field(default=2, ge=0, le=10)
    backoff_s: float = Field(default=0.25, ge=0)


class RoutingConfig(_Frozen):
    default: RoutingDefault = RoutingDefault()
    rules: tuple[RoutingRule, ...] = ()
    breaker: BreakerConfig = BreakerConfig()
    retries: RetryConfig = RetryConfig()
    on_content_policy: Literal["fail", "next"] = "fail"
    expected_output_tokens: int = Field(default=256, ge=1)
    # The most output a request without `max_tokens` may produce when a budget applies to it:
    # Podium sends this (or less, what the remaining budget can pay) as `max_tokens`, so that
    # the budget's reservation is a true upper bound.
    max_output_tokens: int = Field(default=4096, ge=1)


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What rules may look at: known before any model is called."""
    team: str | None
    key: str
    model: str
    has_tools: bool
    prompt_tokens: int
    headers: Mapping[str, str]                    # lower-cased names
    last_user_message: str


def _one_of(expected: str | Sequence[str] | None, actual: str | None) -> bool:
    if expected is None:
        return True
    return actual in ([expected] if isinstance(expected, str) else expected)


@dataclass(frozen=True)
class RuleMatcher:
    """A `match:` compiled once (regexes compiled, header names lower-cased): the one
    implementation every kind of rule matches with, routing rules and approval rules alike."""
    match: RuleMatch
    message_re: re.Pattern[str] | None
    headers: Mapping[str, str]

    @classmethod
    def compile(cls, m: RuleMatch) -> RuleMatcher:
        return cls(match=m,
                   message_re=re.compile(m.last_user_message) if m.last_user_message else None,
                   headers={k.lower(): v for k, v in m.headers.items()})

    def matches(self, facts: RequestFacts) -> bool:
        m = self.match
        return (_one_of(m.team, facts.team) and _one_of(m.key, facts.key)
                and _one_of(m.model, facts.model)
                and (m.has_tools is None or m.has_tools == facts.has_tools)
                and (m.min_prompt_tokens is None or facts.prompt_tokens >= m.min_prompt_tokens)
                and (m.max_prompt_tokens is None or facts.prompt_tokens <= m.max_prompt_tokens)
                and all(facts.headers.get(k) == v for k, v in self.headers.items())
                and (self.message_re is None
                     or self.message_re.search(facts.last_user_message) is not None))


@dataclass(frozen=True)
class CompiledRule:
    name: str
    settings: RouteSettings
    matcher: RuleMatcher

    @classmethod
    def compile(cls, rule: RoutingRule) -> CompiledRule:
        return cls(name=rule.name, settings=rule, matcher=RuleMatcher.compile(rule.match))

    def matches(self, facts: RequestFacts) -> bool:
        return self.matcher.matches(facts)


def learned_sections(routing: RoutingConfig) -> list[tuple[str, str, LearnedSettings]]:
    """(rule name, config path of its section, section) for every rule whose strategy is
    learned: its own section, or the default's when it inherits the strategy or the section."""
    default = routing.default
    found = []
    if default.strategy == "learned" and default.learned is not None:
        found.append(("default", "routing.default.learned", default.learned))
    for i, rule in enumerate(routing.rules):
        section = rule.learned or default.learned
        if (rule.strategy or default.strategy) == "learned" and section is not None:
            where = (f"routing.rules[{i}].learned" if rule.learned is not None
                     else "routing.default.learned")
            found.append((rule.name, where, section))
    return found
