"""`podium shadow report [--rule R]`: what shadow trials found, per candidate, read from the
store the config names (SQLite or PostgreSQL); and the pairs `podium router train
--from-shadow` learns from.

The numbers are the store's report (gateway/storage/shadow_pairs.py says what each one means),
the same the dashboard's shadow panel shows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.storage.contracts import ShadowStore

T = TypeVar("T")
Resolve = Callable[[str | None], Path]   # --config (or None) → the config file


def add_shadow_commands(sub: Any, resolve: Resolve) -> None:
    shadow = sub.add_parser("shadow", help="shadow trials of candidate models")
    commands = shadow.add_subparsers(dest="shadow_command", required=True)
    report = commands.add_parser("report", help="agreement, checks, cost and latency of each "
                                                "candidate against the primary")
    report.add_argument("--rule", help="only this routing rule's trials")
    report.add_argument("--config", help="the gateway config naming the store")
    report.add_argument("--since", type=float, help="only trials since (unix seconds)")
    report.add_argument("--json", action="store_true", help="print JSON instead of text")
    report.set_defaults(func=lambda args: cmd_report(args, resolve))


def cmd_report(args: argparse.Namespace, resolve: Resolve) -> int:
    try:
        cfg = _config(resolve, args.config)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows = _with_store(cfg, lambda store: store.report(args.rule, args.since))
    if args.json:
        print(json.dumps({"object": "shadow.report", "data": rows}, indent=2))
        return 0
    if not rows:
        print("no shadow trials recorded" + (f" for rule {args.rule!r}" if args.rule else ""))
    for row in rows:
        print(render(row))
    return 0


def render(row: dict[str, Any]) -> str:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.1%}"

    def usd(v: float | None) -> str:
        return "-" if v is None else f"${v:.6f}"

    def secs(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f} s"

    def times(v: float | None) -> str:
        return "" if v is None else f" ({v:.2f}x)"
    return "\n".join([
        f"rule {row['rule']}, candidate {row['candidate']}: {row['trials']} trials, "
        f"{row['errors']} errors ({pct(row['error_rate'])})",
        f"  agreement {pct(row['agreement_rate'])}; checks passed: primary "
        f"{pct(row['primary_pass_rate'])}, candidate {pct(row['candidate_pass_rate'])}"
        + (f"; judged {row['judged']}, mean score {row['mean_judge_score']}"
           if row["judged"] else ""),
        f"  cost per trial: candidate {usd(row['candidate_cost_usd'])} vs primary "
        f"{usd(row['primary_cost_usd'])}{times(row['cost_ratio'])}",
        f"  latency: candidate {secs(row['candidate_latency_s'])} vs primary "
        f"{secs(row['primary_latency_s'])}{times(row['latency_ratio'])}"])


def shadow_reader(resolve: Resolve) -> Callable[[str | None, str | None, float | None, int],
                                               list[dict[str, Any]]]:
    """What `router train --from-shadow` reads: stored pairs, as mappings."""
    def read(config: str | None, rule: str | None, since: float | None,
             limit: int) -> list[dict[str, Any]]:
        cfg = _config(resolve, config)
        pairs = _with_store(cfg, lambda store: store.pairs(rule, since, limit))
        return [p.public() for p in pairs]
    return read


def _config(resolve: Resolve, given: str | None) -> GatewayConfig:
    path = resolve(given)
    try:
        return load_config(path)
    except ConfigError as err:
        raise ValueError(f"{path}: {len(err.problems)} problem(s); run 'podium check'") \
            from None


def _with_store(cfg: GatewayConfig,
                use: Callable[[ShadowStore], Coroutine[Any, Any, T]]) -> T:
    from gateway.storage.backends import open_shadow_store

    async def run() -> T:
        store = open_shadow_store(cfg)
        await store.start()
        try:
            return await use(store)
        finally:
            await store.close()
    return asyncio.run(run())
