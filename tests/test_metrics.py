"""/metrics in the Prometheus format, moving with traffic; the OTel GenAI client metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer
from opentelemetry.sdk.metrics._internal import instrument as sdk_instrument
from opentelemetry.sdk.metrics._internal.measurement_consumer import (
    SynchronousMeasurementConsumer,
)
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.app import build_app
from gateway.config import parse_config
from gateway.observability import telemetry
from gateway.observability.metrics import Metrics
from gateway.observability.metrics_pool import MetricsPool, retire
from tests.conftest import (
    APP_KEY,
    GatewayFactory,
    Upstream,
    base_config,
    deployment,
)
from tests.support.metrics import scrape, total
from tests.support.net import free_port

HI = [{"role": "user", "content": "hi"}]


async def test_metrics_move_with_traffic(upstream: Upstream,
                                         make_gateway: GatewayFactory) -> None:
    cfg = base_config(upstream.url)
    cfg["model_list"].insert(0, deployment("chat", "sim-dead",
                                           f"http://127.0.0.1:{free_port()}/v1",
                                           input_cost_per_token=0))
    cfg["routing"] = {"breaker": {"failures": 1, "cooldown_s": 60}}
    cfg["teams"] = [{"name": "support", "rpm": 4}]
    gw = await make_gateway(cfg)
    before = await scrape(gw.url)
    client = gw.client()
    await client.chat.completions.create(model="chat", messages=HI,   # miss, dead → cheap
                                         temperature=0)
    await client.chat.completions.create(model="chat", messages=HI, temperature=0)  # hit
    stream = await client.chat.completions.create(
        model="chat", stream=True, messages=[{"role": "user", "content": "stream me"}])
    [_ async for _ in stream]
    await client.embeddings.create(model="embed", input="x")
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="chat", messages=HI)
    # Refused before the governed part: a wrong key, a model outside the config.
    with pytest.raises(openai.AuthenticationError):
        await gw.client(key="sk-not-a-key-0000").models.list()
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="no-such-model", messages=HI)
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/nope") as resp:
        assert resp.status == 404
    after = await scrape(gw.url)

    def grew(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert grew("podium_requests_total", endpoint="chat", status="200") == 3
    assert grew("podium_requests_total", endpoint="embeddings", status="200") == 1
    assert grew("podium_requests_total", status="429", team="support") == 1
    assert grew("podium_cache_requests_total", result="hit") == 1
    assert grew("podium_rejections_total", code="rate_limit_exceeded") == 1
    assert grew("podium_rejections_total", code="invalid_api_key") == 1
    assert grew("podium_rejections_total", code="model_not_found") == 1
    assert grew("podium_rejections_total", code="not_found") == 1
    assert grew("podium_fallbacks_total", deployment="sim-dead", kind="connection") == 1
    assert total(after, "podium_breaker_state", deployment="sim-dead") == 2
    assert grew("podium_tokens_total", deployment="sim-cheap", direction="output") > 0
    assert grew("podium_cost_usd_total", deployment="sim-cheap", team="support") > 0
    # 3 answered, 1 rate-limited, 1 for an unknown model (refused once the caller was known).
    assert grew("podium_request_duration_seconds_count", endpoint="chat") == 5
    assert grew("podium_gateway_overhead_seconds_count", endpoint="chat") == 5
    assert grew("podium_time_to_first_token_seconds_count", deployment="sim-cheap") == 1
    # The cache hit never reached an upstream.
    assert grew("podium_upstream_duration_seconds_count", deployment="sim-cheap",
                outcome="ok") == 2
    labels = {k for (_, ls) in after for k, _ in ls}
    assert not labels & {"request_id", "user", "key"}, "no unbounded label values"


async def test_unknown_teams_are_bucketed(upstream: Upstream,
                                          make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(base_config(upstream.url))  # "support" is not in teams:
    await gw.client().chat.completions.create(model="chat", messages=HI)
    samples = await scrape(gw.url)
    assert total(samples, "podium_requests_total", team="other") == 1
    assert total(samples, "podium_requests_total", team="support") == 0


async def test_genai_client_metrics(upstream: Upstream) -> None:
    reader = InMemoryMetricReader()
    tel = telemetry.with_exporter(InMemorySpanExporter(), metrics=reader)
    app = build_app(parse_config({**base_config(upstream.url),
                                  "key_store": {"path": ":memory:"}}, env={}), tel)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{server.port}/v1",
                                    api_key=APP_KEY, max_retries=0)
        await client.chat.completions.create(model="chat", messages=HI)
        data = reader.get_metrics_data()
    finally:
        await server.close()
    metrics = {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics
               for m in sm.metrics}
    usage = metrics["gen_ai.client.token.usage"]
    assert usage.unit == "{token}"
    points = {p.attributes["gen_ai.token.type"]: p for p in usage.data.data_points}
    assert points["input"].sum > 0 and points["output"].sum > 0
    assert points["input"].attributes["gen_ai.request.model"] == "sim-cheap"
    assert points["input"].attributes["gen_ai.operation.name"] == "chat"
    duration = metrics["gen_ai.client.operation.duration"]
    assert duration.unit == "s" and duration.data.data_points[0].count == 1


async def test_genai_metrics_are_summed_on_the_loop_and_exact(
        upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    """N requests through the gateway: no SDK instrument is called on the request path (the
    attempts are summed in plain points), and the reader's one collection has exactly the
    client's token counts, N durations, and exemplars that name the requests' own traces."""
    sdk_calls: list[str] = []
    for cls, method in ((sdk_instrument._Histogram, "record"),
                        (SynchronousMeasurementConsumer, "consume_measurement")):
        original = getattr(cls, method)

        def counted(*args: Any, _original: Any = original, _name: str = method) -> Any:
            sdk_calls.append(_name)
            return _original(*args)
        monkeypatch.setattr(cls, method, counted)
    reader, spans = InMemoryMetricReader(), InMemorySpanExporter()
    app = build_app(parse_config({**base_config(upstream.url),
                                  "key_store": {"path": ":memory:"}}, env={}),
                    telemetry.with_exporter(spans, metrics=reader))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{server.port}/v1",
                                    api_key=APP_KEY, max_retries=0)
        answers = [await client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "word " * (i + 1)}])
            for i in range(5)]
        assert sdk_calls == []
        data = reader.get_metrics_data()
    finally:
        await server.close()
    assert sdk_calls == []
    metrics = {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics
               for m in sm.metrics}
    [duration] = metrics["gen_ai.client.operation.duration"].data.data_points
    assert duration.count == sum(duration.bucket_counts) == 5
    assert 0 < duration.min <= duration.max and duration.sum >= 5 * duration.min
    usage = {p.attributes["gen_ai.token.type"]: p
             for p in metrics["gen_ai.client.token.usage"].data.data_points}
    for kind, told in (("input", [a.usage.prompt_tokens for a in answers]),
                       ("output", [a.usage.completion_tokens for a in answers])):
        point = usage[kind]
        assert point.count == sum(point.bucket_counts) == 5
        assert (point.sum, point.min, point.max) == (sum(told), min(told), max(told))
    traces = {s.context.trace_id for s in spans.get_finished_spans()}
    assert duration.exemplars and {e.trace_id for e in duration.exemplars} <= traces


def test_genai_points_are_cumulative_or_delta_as_the_exporter_prefers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    attrs = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
             "gen_ai.request.model": "m"}

    def collected(preference: str) -> list[tuple[int, float]]:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", preference)
        reader = InMemoryMetricReader()
        genai = telemetry.with_exporter(InMemorySpanExporter(), metrics=reader).genai
        assert genai is not None
        seen = []
        for batch in ([0.5, 2.0], [7.0]):
            for seconds in batch:
                genai.record(attrs, seconds, 10, 20, None)
            genai.record(attrs, 1.0, 0, 0, "timeout")
            data = reader.get_metrics_data()
            [duration] = [m for rm in data.resource_metrics for sm in rm.scope_metrics
                          for m in sm.metrics if m.name == "gen_ai.client.operation.duration"]
            [ok] = [p for p in duration.data.data_points if "error.type" not in p.attributes]
            seen.append((ok.count, ok.sum))
        assert reader.get_metrics_data() is None or preference == "CUMULATIVE"
        return seen

    assert collected("CUMULATIVE") == [(2, 2.5), (3, 9.5)]
    assert collected("DELTA") == [(2, 2.5), (1, 7.0)]


def test_pool_snapshots_merge_by_kind_and_keep_a_dead_workers_counts(tmp_path: Path) -> None:
    """Three workers' snapshots in one directory, one of them dead: counters and histograms
    are summed over all three (nothing goes backwards), `max` gauges too, `livesum` gauges
    over the live ones only; whichever worker is scraped gives the same text."""
    workers = {pid: (Metrics(), MetricsPool(tmp_path, pid)) for pid in (101, 102, 103)}
    for n, (metrics, pool) in enumerate(workers.values(), start=1):
        metrics.rejected("rate_limit_exceeded")
        metrics.attempt("dep", 0.01 * n, "ok")
        metrics.breaker_state("dep", "open" if n == 1 else "closed")
        metrics.task.open.set(n)
        pool.share(metrics.samples)
    retire(tmp_path, 101)

    def scraped(pid: int) -> dict[Any, float]:
        metrics, pool = workers[pid]
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in metrics.samples.merged(pool.gathered(metrics.samples))
                for s in f.samples}

    merged = scraped(102)
    assert merged == scraped(103)
    assert total(merged, "podium_rejections_total", code="rate_limit_exceeded") == 3
    assert total(merged, "podium_upstream_duration_seconds_count") == 3
    assert total(merged, "podium_upstream_duration_seconds_sum") == pytest.approx(0.06)
    assert total(merged, "podium_upstream_duration_seconds_bucket", le="0.025") == 2
    assert total(merged, "podium_breaker_state", deployment="dep") == 2   # the dead one's open
    assert total(merged, "podium_tasks_open") == 2 + 3                   # live workers only
