"""The hot path's shortcuts (issue 16) decide exactly as the slow paths they skip: the usual
message's text and token count without the general walker, the nesting check, rules matched
once per request, the rate-limit and budget windows' bookkeeping, and the dashboard's samples
read from the collectors instead of a rendered and re-parsed exposition."""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import BadRequest
from gateway.http.dashboard_window import collected, parse_exposition
from gateway.pipeline import ingress
from gateway.pipeline.identity import Principal
from gateway.pipeline.messages import SPOKEN, Kind, strings, text_of
from gateway.runtime import GATEWAY
from gateway.storage.buckets import IdleMap, SlidingWindow
from gateway.storage.contracts import WindowCheck
from gateway.storage.memory_state import MemoryState
from routing.health import Health
from routing.router import RouteRequest
from routing.tokens import TokenGauge, count_text
from tests.conftest import Upstream
from tests.test_dashboard import generate_traffic
from tests.test_dashboard_window import start
from tests.test_router_plans import router

ANYONE = Principal(key_id="k", name="k", team=None, user=None, allowed_models=None)

text = st.text(max_size=12)
part = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": text}),
    st.fixed_dictionaries({"type": st.just("image_url"),
                           "image_url": st.fixed_dictionaries({"url": text})}),
    st.fixed_dictionaries({"type": st.just("refusal"), "refusal": text}),
    st.integers())
call = st.fixed_dictionaries({"function": st.fixed_dictionaries(
    {}, optional={"name": text, "arguments": text})})
message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool"])},
                          optional={"content": st.one_of(st.none(), text, st.lists(part)),
                                    "tool_calls": st.one_of(st.none(), st.lists(call)),
                                    "refusal": text,
                                    "function_call": st.fixed_dictionaries(
                                        {"name": text, "arguments": text})}),
    st.none(), st.integers(), text)


@settings(max_examples=400, deadline=None)
@given(message)
def test_a_messages_text_is_what_the_walker_finds(m: Any) -> None:
    assert text_of(m) == " ".join(t.value for t in strings(m, SPOKEN))
    assert text_of(m, "\n") == "\n".join(t.value for t in strings(m, SPOKEN))


def _walked_size(messages: list[Any], gauge: TokenGauge, headroom: int) -> tuple[int, bool]:
    """The token count as the general walker counts it (every message through `strings`)."""
    kinds: frozenset[Kind] = frozenset({"content", "text", "tool_name", "tool_arguments",
                                        "image"})
    texts, fixed = [], 3
    for m in messages:
        fixed += 3
        for t in strings(m, kinds):
            if t.kind == "image":
                fixed += 85
            else:
                texts.append(t.value)
    sizes = [len(t.encode("utf-8", "surrogatepass")) for t in texts]
    limit, bound = gauge.exact_from, fixed + sum(sizes)
    if limit is None or bound + headroom < limit:
        return fixed + sum(-(-n // 4) for n in sizes), False
    return fixed + sum(count_text(t) for t in texts), True


@settings(max_examples=400, deadline=None)
@given(st.lists(message, max_size=5), st.sampled_from([None, 5, 40, 100_000]),
       st.integers(0, 50))
def test_a_prompts_size_is_what_the_walker_counts(messages: list[Any], exact_from: int | None,
                                                  headroom: int) -> None:
    gauge = TokenGauge(exact_from)
    assert tuple(gauge.messages(messages, headroom)) == _walked_size(messages, gauge, headroom)


def _walked_depth_ok(value: Any, depth: int = 1) -> bool:
    if depth > ingress.MAX_DEPTH:
        return False
    children = value.values() if isinstance(value, dict) else value \
        if isinstance(value, list) else []
    return all(_walked_depth_ok(v, depth + 1) for v in children
               if isinstance(v, dict | list))


def _nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for i in range(depth - 1):
        value = [value] if i % 2 else {"k": value, "n": 1}
    return value


json_values = st.recursive(st.none() | st.integers() | text,
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(text, inner, max_size=3), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, ingress.MAX_DEPTH + 3), json_values)
def test_the_nesting_check_refuses_exactly_what_is_too_deep(depth: int, leaf: Any) -> None:
    body = _nested(depth, leaf)
    if _walked_depth_ok(body):
        ingress.refuse_deep_nesting(body)
    else:
        with pytest.raises(BadRequest, match="nested more than"):
            ingress.refuse_deep_nesting(body)


tiers = st.sampled_from([None, "gold", "fast", "euro", "other"])


@settings(max_examples=200, deadline=None)
@given(tiers, st.integers(1, 20_000), st.one_of(st.none(), st.integers(1, 4000)))
def test_a_plan_from_the_matched_rule_is_the_plan_matched_again(
        tier: str | None, tokens: int, max_out: int | None) -> None:
    from tests.test_router_plans import request

    r, req = router(), request(tier, tokens=tokens, max_out=max_out)
    matched = r.match(req)
    assert (matched[1].name if matched[1] is not None else None) == (
        None if tier in (None, "other") else tier)
    try:
        fresh = r.plan(req, ANYONE, Health(), strict=False)
    except Exception as err:  # the pool itself refused: the shortcut must refuse alike
        with pytest.raises(type(err)):
            router().plan(req, ANYONE, Health(), strict=False, matched=matched)
        return
    # A fresh router (no plan kept) given the match plans alike, and learns the same rule.
    again = router().plan(req, ANYONE, Health(), strict=False, matched=matched)
    assert (again.rule, again.chain, again.candidates) == (fresh.rule, fresh.chain,
                                                           fresh.candidates)
    assert r.learned_rule(req, matched) == r.learned_rule(req)


def test_the_match_is_of_the_facts_so_another_request_matches_anew() -> None:
    from tests.test_router_plans import request

    r = router()
    gold, euro = request("gold"), request("euro")
    assert r.plan(gold, ANYONE, Health(), matched=r.match(gold)).rule == "gold"
    assert r.plan(euro, ANYONE, Health(), matched=r.match(euro)).rule == "euro"
    assert r.match(request(None)) == (-1, None) and r.learned_rule(request(None)) is None
    # A request without facts (embeddings) matches no rule.
    bare = RouteRequest(model="g", mode="chat", needs=frozenset(), prompt_tokens=1,
                        max_output_tokens=None)
    assert r.match(bare) == (-1, None)


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


async def _reference_admit(windows: dict[str, SlidingWindow], checks: list[WindowCheck],
                           now: float) -> tuple[float, str | None, int | None]:
    """Admission as it was computed before the shortcut: every wait, max over (wait, key)."""
    ws = [windows.setdefault(c.key, SlidingWindow(60, 1.0)) for c in checks]
    head = max((w.advance(now) for w in ws), default=None)
    wait, full = max(((w.wait(c.amount, c.limit, now), c.key)
                      for w, c in zip(ws, checks, strict=True)), default=(0.0, None))
    if wait > 0:
        return wait, full, None
    for w, c in zip(ws, checks, strict=True):
        w.add(c.amount)
    return 0.0, None, head


steps = st.lists(st.tuples(
    st.floats(0, 30, allow_nan=False),
    st.lists(st.tuples(st.sampled_from(["a:rpm", "a:tpm", "b:rpm", "b:tpm"]),
                       st.integers(1, 6), st.integers(0, 4)),
             max_size=4, unique_by=lambda t: t[0])),
    min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_admission_is_what_every_window_would_say(
        sequence: list[tuple[float, list[tuple[str, int, int]]]]) -> None:
    asyncio.run(_admit_alike(sequence))


async def _admit_alike(sequence: list[tuple[float, list[tuple[str, int, int]]]]) -> None:
    clock = _Clock()
    state = MemoryState.with_cache(10, 10_000)
    state.clock = clock
    windows: dict[str, SlidingWindow] = {}
    for dt, spec in sequence:
        clock.now += dt
        checks = [WindowCheck(k, float(limit), float(amount)) for k, limit, amount in spec]
        got = await state.admit("h", checks)
        assert (got.wait_s, got.full, got.bucket) == await _reference_admit(
            windows, checks, clock.now)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcde"), st.floats(0, 15, allow_nan=False)),
                max_size=40))
def test_an_idle_map_keeps_and_forgets_as_a_pop_and_reinsert_would(
        touches: list[tuple[str, float]]) -> None:
    made = iter(range(10_000))
    idle = IdleMap(10.0, lambda: next(made))
    model: OrderedDict[str, tuple[float, int]] = OrderedDict()
    count, now = 0, 0.0
    for key, dt in touches:
        now += dt
        while model and next(iter(model.values()))[0] <= now - 10.0:
            model.popitem(last=False)
        item = model.pop(key, None)
        if item is None:
            value, count = count, count + 1
        else:
            value = item[1]
        model[key] = (now, value)
        assert idle.touch(key, now) == value
        assert list(idle) == list(model)


async def test_a_budget_reservation_lands_in_the_newest_bucket_or_the_clocks() -> None:
    from gateway.storage.contracts import BudgetClaim, BudgetReservation

    async def nothing_spent() -> float:
        return 0.0

    clock = _Clock()
    state = MemoryState.with_cache(10, 10_000)
    state.clock = clock
    claim = BudgetClaim(scope="key:k:month", budget_usd=1.0, period_start=0.0,
                        period_end=math.inf, load_spent=nothing_spent)
    held = await state.reserve("h", [claim], 0.25)
    none_claimed = await state.reserve("h", [], 0.25)
    assert isinstance(held, BudgetReservation) and isinstance(none_claimed, BudgetReservation)
    assert held.bucket == none_claimed.bucket == state._bucket(clock.now)
    assert await state.standing("h", claim) == (0.0, 0.25)


async def test_the_dashboard_reads_the_samples_the_exposition_shows(
        upstream: Upstream, tmp_path: Path) -> None:
    from tests.test_dashboard import DashGateway, dashboard_config

    server = await start(dashboard_config(upstream.url), tmp_path)
    try:
        dash = DashGateway(base=f"http://127.0.0.1:{server.port}", server=server)
        await generate_traffic(dash, 0)
        metrics = server.app[GATEWAY].metrics
        direct = collected(metrics.registry)
        assert direct["podium_requests_total"]
        assert direct == parse_exposition(metrics.exposition().decode())
    finally:
        await server.close()
