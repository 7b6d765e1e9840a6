"""The learned rules of one config version, as the route hop uses them.

Pure Python at import: numpy comes in (through `runtime`) only when a config has a learned rule,
or a cascade rule whose features the audit trail keeps. A cached score is read on the loop; an
uncached one runs inline unless the scorer expects it to cost more than ~1 ms (a heavy
embedder, a long prompt), which then runs on a worker thread (scorer.py says why the line is
there; bench/learned_hop.py measures the loop's share).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.config import ConfigError
from routing.learned.features import PromptFeatures, RecordedFeatures
from routing.rules import RoutingConfig, learned_sections

if TYPE_CHECKING:
    from routing.learned.runtime import Assessment, Compiled, LearnedRule


class LearnedRules:
    """Rule name → `LearnedRule`, plus the recorder of cascade rules' features."""

    def __init__(self, compiled: Compiled | None = None) -> None:
        self._compiled = compiled

    @classmethod
    def compile(cls, routing: RoutingConfig, base_dir: Path | None = None,
                record_cascades: bool = False,
                previous: LearnedRules | None = None) -> LearnedRules:
        """Load every learned rule's head (each file once) and check it; a missing or broken
        head is a `ConfigError` naming the config path and the file. Heads and calibrations
        that did not change since `previous` are kept."""
        cascades = record_cascades and any(
            s.strategy == "cascade" for s in (routing.default, *routing.rules))
        if not learned_sections(routing) and not cascades:
            return cls()
        from routing.learned.runtime import compile_rules

        compiled, problems = compile_rules(routing, base_dir, record_cascades,
                                           previous._compiled if previous else None)
        if problems:
            raise ConfigError(problems)
        return cls(compiled)

    def __iter__(self) -> Iterator[tuple[str, LearnedRule]]:
        return iter(self._compiled.rules.items() if self._compiled else ())

    def get(self, name: str) -> LearnedRule | None:
        return self._compiled.rules.get(name) if self._compiled else None

    async def assess(self, name: str, messages: Sequence[Mapping[str, Any]], record: bool,
                     live: bool = True) -> Assessment | None:
        """Score a request under learned rule `name` (and keep its features when `record`);
        None when the rule has no scorer, which the router plans at the rule's ceiling. An
        explanation (`live` false) is scored alike but does not count as traffic."""
        rule = self.get(name)
        if rule is None:
            return None
        features = PromptFeatures.of_messages(messages)
        hit = None if record else rule.cached(features, live)  # recording needs the vector
        if hit is not None:
            return hit
        if rule.scorer.off_loop_for(features):
            return await asyncio.to_thread(rule.assess, features, record, live)
        return rule.assess(features, record, live)

    def record(self, messages: Sequence[Mapping[str, Any]]) -> RecordedFeatures | None:
        """A cascade request's features for the audit trail (inline: the default embedder
        costs about as little as the thread hop would)."""
        if self._compiled is None:
            return None
        return self._compiled.record(PromptFeatures.of_messages(messages))

    async def recalibrate(self) -> None:
        """Recalibrate every target share that is due, each on a worker thread (a quantile
        over thousands of scores is a sort)."""
        for _, rule in self:
            if rule.due():
                await asyncio.to_thread(rule.tick)
