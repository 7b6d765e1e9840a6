"""Plugins by name: the built-ins, and third-party ones from the `podium.plugins` entry points.

The chain is built once per config. Order: the names listed in `plugins:` first, in that order,
then the built-ins not listed, in their default order (guardrails, rate_limit, budget, approval,
audit). A third-party entry point names a class or function called with the plugin's `options`
as keyword arguments and returning an object with the hooks of `plugins.base.Plugin`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config import GatewayConfig
from gateway.observability.hops import SpanFactory
from gateway.pipeline.identity import key_id_for
from gateway.storage.contracts import AuditStore, ReviewStore, SharedState, SpendStore, Stores
from gateway.storage.journal import ROTATE_S, Journal, recover
from plugins.approval import ApprovalPlugin
from plugins.audit import AuditPlugin
from plugins.base import Plugin
from plugins.budget import BudgetPlugin
from plugins.chain import PluginChain
from plugins.guardrails import GuardrailPlugin
from plugins.ratelimit import RateLimitPlugin
from plugins.settings import BUILTIN_ORDER, Limits, plugin_ref, third_party


@dataclass
class Governance:
    """The stores the built-in plugins share; they live as long as the process."""
    ledger: SpendStore
    reviews: ReviewStore
    audit: AuditStore | None
    state: SharedState
    journal_dir: Path | None = None    # None: no answer journal (an in-memory test store)
    journal: Journal | None = field(default=None, init=False)
    _rotating: asyncio.Task[None] | None = field(default=None, init=False)

    @classmethod
    def from_stores(cls, stores: Stores, state: SharedState,
                    journal_dir: Path | None = None) -> Governance:
        return cls(ledger=stores.spend, reviews=stores.reviews, audit=stores.audit, state=state,
                   journal_dir=journal_dir)

    async def start(self) -> None:
        await self.ledger.start()
        await self.reviews.start()
        if self.audit is not None:
            await self.audit.start()
        if self.journal_dir is not None:
            await recover(self.journal_dir, self.audit, self.ledger)
            self.journal = Journal(self.journal_dir)
            self.journal.open()
            self._rotating = asyncio.create_task(self._rotate(), name="podium-journal")

    async def _rotate(self) -> None:
        while self.journal is not None:
            await asyncio.sleep(ROTATE_S)
            await self.journal.rotate(self.audit, self.ledger)

    async def close(self) -> None:
        if self._rotating is not None:
            self._rotating.cancel()
            await asyncio.gather(self._rotating, return_exceptions=True)
        if self.audit is not None:
            await self.audit.close()
        await self.reviews.close()
        await self.ledger.close()
        if self.journal is not None:
            await self.journal.close(self.audit, self.ledger)


def _limits(cfg: GatewayConfig) -> tuple[dict[str, Limits], dict[str, Limits]]:
    keys: dict[str, Limits] = {key_id_for(k.digest()): k for k in cfg.keys}
    teams: dict[str, Limits] = {t.name: t for t in cfg.teams}
    return keys, teams


Builtin = Callable[[GatewayConfig, Governance], Plugin | None]
BUILTINS: dict[str, Builtin] = {
    "guardrails": lambda cfg, gov: GuardrailPlugin(cfg.guardrails) if cfg.guardrails else None,
    "rate_limit": lambda cfg, gov: RateLimitPlugin(*_limits(cfg), gov.state),
    "budget": lambda cfg, gov: BudgetPlugin(*_limits(cfg), gov.state, gov.ledger,
                                            cfg.routing.max_output_tokens),
    "approval": lambda cfg, gov: ApprovalPlugin(cfg.approvals, gov.reviews)
    if cfg.approvals else None,
    "audit": lambda cfg, gov: AuditPlugin(gov.audit, cfg.audit.include_content)
    if gov.audit is not None else None,
}


def build_chain(cfg: GatewayConfig, gov: Governance, span: SpanFactory) -> PluginChain:
    refs = {r.name: r for r in map(plugin_ref, cfg.plugins)}
    order = [*refs, *(b for b in BUILTIN_ORDER if b not in refs)]
    installed = third_party() if any(n not in BUILTINS for n in refs) else {}
    plugins: list[Plugin] = []
    for name in order:
        if name in BUILTINS:
            plugin = BUILTINS[name](cfg, gov)
        else:
            plugin = installed[name].load()(**refs[name].options)
            if not getattr(plugin, "name", None):
                plugin.name = name
        if plugin is not None:
            plugins.append(plugin)
    return PluginChain(plugins, span)
