"""The set-up of the per-hop microbenchmark (bench/hop_cases.py): the bench's mock upstream and
Podium itself (`build_app` on bench/podium-bench.yaml) on loopback sockets in this process, one
real request through it with what its hops were given captured on the way, and the spans a
traced twin of the gateway recorded for the same request."""

from __future__ import annotations

import dataclasses
import importlib
import os
import tempfile
from typing import Any

import orjson

KEY = "sk-bench"
HOOKS = ("on_request", "on_response", "on_complete")


def state(obj: Any) -> dict[str, Any]:
    """An object's attributes (a dataclass's fields), by reference."""
    if dataclasses.is_dataclass(obj):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    return dict(vars(obj))


def restore(obj: Any, saved: dict[str, Any]) -> None:
    for name, value in saved.items():
        setattr(obj, name, value)


def get(path: str) -> Any:
    """`module:attr.attr`, imported now."""
    module, _, attrs = path.partition(":")
    obj: Any = importlib.import_module(module)
    for attr in attrs.split("."):
        obj = getattr(obj, attr)
    return obj


async def _serve(app: Any, port: int) -> Any:
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


class Lab:
    """The gateway, its mock upstream, and one captured request."""

    def __init__(self, work: str | None) -> None:
        self.work = work
        self.captured: dict[str, Any] = {}
        self.states: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        self.watched: Any = None
        self.spans: list[Any] = []
        self.runners: list[Any] = []
        self.raw_body = b""
        self.raw_answer = b""

    async def start(self) -> None:
        from bench import mock_upstream
        from bench.procs import free_port
        from bench.scenarios import CHAT_BODY, CONFIG

        upstream = free_port()
        os.environ.update(BENCH_UPSTREAM_PORT=str(upstream), BENCH_KEY=KEY)
        for name in [k for k in os.environ if k.startswith("OTEL_")]:
            del os.environ[name]
        self.runners.append(await _serve(mock_upstream.build_app(), upstream))
        self.raw_body = orjson.dumps(CHAT_BODY)
        config = get("gateway.config:load_config")
        telemetry = importlib.import_module("gateway.observability.telemetry")
        cfg = config(CONFIG)
        get("gateway.observability.logs:setup")(cfg.logging.format, cfg.logging.level)
        self.gateway_port = await self._gateway(cfg, telemetry.disabled(), capture=True)
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        exporter = InMemorySpanExporter()
        traced = await self._gateway(cfg, telemetry.with_exporter(exporter), capture=False)
        await self._request(traced)
        self.spans = list(exporter.get_finished_spans())
        await self._request(self.gateway_port)  # the captured one
        for hook in HOOKS:
            if self.watched is not None and hook in vars(self.watched):
                delattr(self.watched, hook)
        if "ctx" not in self.captured:
            raise RuntimeError("the request went through without the pipeline's arguments "
                               "being captured (gateway.http.chat.run_chat)")
        import aiohttp

        async with aiohttp.ClientSession() as s, s.post(
                f"http://127.0.0.1:{upstream}/v1/chat/completions", data=self.raw_body) as r:
            self.raw_answer = await r.read()

    async def _gateway(self, cfg: Any, tel: Any, capture: bool) -> int:
        from bench.procs import free_port

        os.environ["BENCH_STATE_DIR"] = tempfile.mkdtemp(prefix="podium-hops-", dir=self.work)
        config = get("gateway.config:load_config")(get("bench.scenarios:CONFIG"))
        app = get("gateway.app:build_app")(config, tel)
        if capture:
            chat = importlib.import_module("gateway.http.chat")
            original = chat.run_chat

            async def capturing(gw: Any, rt: Any, ctx: Any, parsed: Any, headers: Any,
                                *rest: Any, **kw: Any) -> Any:
                self._watch(rt.chain)
                served = await original(gw, rt, ctx, parsed, headers, *rest, **kw)
                self.captured.update(gw=gw, rt=rt, ctx=ctx, parsed=parsed, headers=headers)
                return served
            setattr(chat, "run_chat", capturing)  # noqa: B010 - a module's global, on purpose
        port = free_port()
        self.runners.append(await _serve(app, port))
        return port

    def _watch(self, chain: Any) -> None:
        """The context's state as each plugin hook of the captured request found it, so a
        hook's loop starts every call from it (a budget reserves once per request)."""
        for hook in HOOKS:
            bound = getattr(chain, hook)

            def seen(ctx: Any, *rest: Any, _bound: Any = bound, _hook: str = hook) -> Any:
                self.states.setdefault(_hook, (state(ctx), state(ctx.outcome)))
                return _bound(ctx, *rest)
            setattr(chain, hook, seen)
        self.watched = chain

    async def _request(self, port: int) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as s, s.post(
                f"http://127.0.0.1:{port}/v1/chat/completions", data=self.raw_body,
                headers={"Authorization": f"Bearer {KEY}",
                         "Content-Type": "application/json"}) as r:
            if r.status != 200:
                raise RuntimeError(f"the captured request got {r.status}: {await r.text()}")
            await r.read()

    async def stop(self) -> None:
        for runner in reversed(self.runners):
            await runner.cleanup()
