"""The hops of one request, as loops the per-hop microbenchmark (bench/hops.py) can time or
count: the child process it runs, natively and under callgrind.

Set-up, in this process: the bench's mock upstream and Podium itself (`build_app` on
bench/podium-bench.yaml, the default pipeline) on loopback sockets. One real request goes
through Podium; what its hops were given is captured on the way (the pipeline's arguments:
runtime, context, parsed body, headers) and so is everything a traced twin of the gateway
recorded for the same request (its spans). Each hop then runs `--calls` times on those inputs.

Hops are looked up by module path when the loop starts, never at import: a hop whose function
another change renamed or reshaped is reported `n/a` with the reason, and the others still run.
The gateway that runs the hops has tracing off, so a hop's count is its own work; the span work
of a traced request is its own two rows (on the loop; encoding in the export thread).

Protocol (stdout, one JSON object a line; stdin, one line a command): `{"hops": [names]}` once
set up; then per hop `{"ready": name}`, wait for a line, run, `{"done": name, ...}`."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from bench.hop_lab import HOOKS, Lab, get, restore

Hop = Callable[[], Awaitable[object]]


def hops(lab: Lab) -> dict[str, Callable[[], Hop]]:
    """Each hop: a factory (run once, outside the count) of the call that is counted."""
    c = lab.captured

    def ingress() -> Hop:
        validate = get("gateway.pipeline.ingress:validate_call")
        model = get("gateway.pipeline.ingress:ChatCompletionRequest")
        raw = lab.raw_body

        async def call() -> object:
            return validate(model, orjson.loads(raw))
        return call

    def identity() -> Hop:
        token_of = get("gateway.pipeline.identity:presented_token")
        auth, headers = c["rt"].auth, c["headers"]

        async def call() -> object:
            return await auth.authenticate_token(token_of(headers, api_key_header=False))
        return call

    def context() -> Hop:
        cls, ctx, rt = get("gateway.pipeline.context:RequestContext"), c["ctx"], c["rt"]

        async def call() -> object:
            return cls(request_id=ctx.request_id, endpoint="chat", principal=ctx.principal,
                       model=ctx.model, body=ctx.body, stream=False, timeout_s=ctx.timeout_s,
                       config=rt.version, task=None)
        return call

    def planner() -> Any:
        return c["gw"].planner(c["rt"])

    def permissions() -> Hop:
        p, ctx = planner(), c["ctx"]

        async def call() -> object:
            return await p.permit_chat(ctx.principal, c["parsed"], c["headers"])
        return call

    def pii_scan() -> Hop:
        detect = get("gateway.pipeline.pii:detect")
        texts = [m["content"] for m in c["ctx"].body["messages"]
                 if isinstance(m.get("content"), str)]

        async def call() -> object:
            return [detect(t) for t in texts]
        return call

    def route() -> Hop:
        p, ctx = planner(), c["ctx"]

        async def call() -> object:
            return await p.route_chat(ctx.principal, c["parsed"], c["headers"], ctx.scope)
        return call

    def cache_lookup() -> Hop:
        gw, rt, ctx, headers = c["gw"], c["rt"], c["ctx"], c["headers"]

        async def call() -> object:
            return await gw.cache.look_up(ctx, headers, rt.config, rt.router)
        return call

    def cache_key() -> Hop:
        key, ctx = get("gateway.pipeline.cache:cache_key"), c["ctx"]
        tenant = get("gateway.pipeline.cache:_tenant")(ctx)
        candidates = tuple(x.deployment.id for x in ctx.plan.candidates)
        body = {**ctx.body, "temperature": 0}

        async def call() -> object:
            return key(body, candidates, tenant, ctx.scope.data_class, ctx.scope.regions,
                       ctx.plan.min_quality)
        return call

    def plugin(index: int, hook: str) -> Callable[[], Hop]:
        def make() -> Hop:
            found = c["rt"].chain.plugins[index]
            if hook not in lab.states:
                raise LookupError(f"the captured request never reached the chain's {hook}")
            ctx = c["ctx"]
            ctx_state, outcome_state = lab.states[hook]
            restore(ctx, ctx_state)
            restore(ctx.outcome, outcome_state)
            method = getattr(found, hook)
            args = (ctx,) if hook == "on_request" else (ctx, ctx.outcome)
            # What a call changes is put back after it, so every call starts alike.
            changed: list[tuple[Any, str, Any]] = []

            async def call() -> object:
                out = await method(*args)
                for obj, name, value in changed:
                    setattr(obj, name, value)
                return out
            return _watching(call, ctx, ctx_state, outcome_state, changed)
        return make

    def egress_body() -> Hop:
        ctx = c["ctx"]

        async def call() -> object:
            return orjson.dumps(ctx.upstream_body())
        return call

    def translate() -> Hop:
        loads = get("routing.providers.openai:_loads_object")
        clean = get("routing.providers.openai:_clean_completion")
        raw = lab.raw_answer

        async def call() -> object:
            return clean(loads(raw))
        return call

    def respond() -> Hop:
        headers_of = get("gateway.pipeline.egress:podium_headers")
        json_response = get("gateway.pipeline.egress:json_response")
        ctx = c["ctx"]

        async def call() -> object:
            return json_response(ctx.outcome.answer, headers_of(ctx))
        return call

    def access_log() -> Hop:
        access = get("gateway.observability.logs:access")
        ctx = c["ctx"]
        fields = {"config_version": 1, "key_id": ctx.principal.key_id, "team": "bench",
                  "model": ctx.model, "route": ctx.plan.rule, "deployment": "mock-small",
                  "attempts": 1, "cost_usd": 8.5e-6, "cache": "bypass", "error_code": None}
        path = "/v1/chat/completions"

        async def call() -> object:
            # the same call as gateway/http/middleware.py's _log_access
            access(f"POST {path} 200", {
                "request_id": ctx.request_id, "method": "POST", "path": path, "status": 200,
                "latency_ms": round(0.001234 * 1000, 3), "trace_id": None, **fields})
            return None
        return call

    def prometheus() -> Hop:
        metrics, ctx = c["gw"].metrics, c["ctx"]

        async def call() -> object:
            metrics.attempt("mock-small", 0.0012, "ok")
            return metrics.answered(ctx)
        return call

    def genai() -> Hop:
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.resources import Resource

        metrics = get("gateway.observability.genai_metrics:GenAIMetrics").create(
            InMemoryMetricReader(), Resource.create({"service.name": "podium-bench"}))
        attrs = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                 "gen_ai.request.model": "mock-small", "gen_ai.response.model": "mock-small"}

        async def call() -> object:
            return metrics.record(attrs, 0.0012, 27, 16, None)
        return call

    def dashboard_sample() -> Hop:
        point, gw = get("gateway.http.dashboard:_point"), c["gw"]

        async def call() -> object:
            return point(gw)
        return call

    return {"(empty loop)": lambda: _nothing, "ingress: parse + validate": ingress,
            "identity: bearer key": identity, "request context": context,
            "permissions + PII": permissions, "  of which PII detect": pii_scan,
            "route plan": route, "cache lookup (cache off)": cache_lookup,
            "  cache key, when the cache is on": cache_key,
            **{f"plugin {p.name}: {h}": plugin(i, h) for h in HOOKS
               for i, p in enumerate(c["rt"].chain.plugins) if _overrides(p, h)},
            "egress body (JSON for upstream)": egress_body,
            "response translate (upstream JSON)": translate,
            "headers + JSON response": respond, "access log line": access_log,
            "Prometheus observe": prometheus, "GenAI histograms (tracing on)": genai,
            "  dashboard history sample (background: once per 5 s, not per request)":
                dashboard_sample,
            **span_hops(lab)}


def span_hops(lab: Lab) -> dict[str, Callable[[], Hop]]:
    """The spans the traced gateway recorded for the request, replayed through the SDK."""
    def on_loop() -> Hop:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        class Dropped(InMemorySpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Dropped()))
        tracer = provider.get_tracer("podium")
        spans = lab.spans
        if not spans:
            raise LookupError("the traced request recorded no span")
        children: dict[int | None, list[Any]] = {}
        for s in spans:
            children.setdefault(s.parent.span_id if s.parent else None, []).append(s)

        def replay(span: Any) -> None:
            with tracer.start_as_current_span(span.name, kind=span.kind,
                                              attributes=dict(span.attributes or {})) as live:
                for event in span.events:
                    live.add_event(event.name, dict(event.attributes or {}))
                for child in children.get(span.context.span_id, []):
                    replay(child)

        async def call() -> object:
            for root in children.get(None, []):
                replay(root)
            return None
        return call

    def encode() -> Hop:
        """Podium's exporter's encoder (gateway/observability/otlp_wire.py)."""
        encode = get("gateway.observability.otlp_wire:SpanEncoder")().encode
        spans = lab.spans

        async def call() -> object:
            return encode(spans)
        return call

    def sdk_encode() -> Hop:
        """The SDK's own OTLP encoder on the same spans, for comparison."""
        encode_spans = get("opentelemetry.exporter.otlp.proto.common.trace_encoder:"
                            "encode_spans")
        spans = lab.spans

        async def call() -> object:
            return encode_spans(spans).SerializeToString()
        return call

    return {f"spans on the loop ({len(lab.spans)}, replayed)": on_loop,
            "span export: OTLP encode (export thread)": encode,
            "  SDK's OTLP encoder on the same spans, for comparison": sdk_encode}


def _overrides(plugin: object, hook: str) -> bool:
    method = getattr(type(plugin), hook, None)
    return method is not None and method is not getattr(get("plugins.base:BasePlugin"), hook)


def _watching(call: Hop, ctx: Any, ctx_state: dict[str, Any], outcome_state: dict[str, Any],
              changed: list[tuple[Any, str, Any]]) -> Hop:
    """`call`, learning on its first run which attributes it changes (put back after each)."""
    async def first() -> object:
        out = await call()
        for obj, saved in ((ctx, ctx_state), (ctx.outcome, outcome_state)):
            changed.extend((obj, k, v) for k, v in saved.items() if getattr(obj, k) is not v)
        for obj, name, value in changed:
            setattr(obj, name, value)
        return out
    learned: list[bool] = []

    async def once_then_call() -> object:
        if learned:
            return await call()
        learned.append(True)
        return await first()
    return once_then_call


async def _nothing() -> object:
    return None


async def _loop(call: Hop, n: int) -> None:
    for _ in range(n):
        await call()


async def main(calls: int, native: bool, work: str | None) -> None:
    lab = Lab(work)
    await lab.start()
    try:
        table = hops(lab)
        _emit({"hops": list(table), "spans": len(lab.spans)})
        for name, make in table.items():
            try:
                call = make()
                await _loop(call, 3)  # warm: first-call caches, lazy imports
            except Exception as err:  # any failure is this hop's n/a
                _emit({"na": name, "reason": f"{type(err).__name__}: {err}"[:200]})
                continue
            if native:
                started = time.thread_time_ns()
                await _loop(call, calls)
                _emit({"done": name, "ns": time.thread_time_ns() - started, "calls": calls})
                continue
            _emit({"ready": name})
            sys.stdin.readline()
            await _loop(call, calls)
            _emit({"done": name, "calls": calls})
            sys.stdin.readline()
    finally:
        await lab.stop()


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(message).decode() + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="per-hop loops (run by bench/hops.py)")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--native", action="store_true", help="time each loop (thread CPU)")
    parser.add_argument("--work", help="where the gateway's state goes (default: a temp dir)")
    args = parser.parse_args()
    import uvloop

    uvloop.run(main(args.calls, args.native, args.work))
