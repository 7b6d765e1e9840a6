"""`GET /v1/models` and `GET /v1/models/{id}` (the models this caller may use), and the
endpoints for probes and scrapers: `/healthz`, `/readyz`, `/metrics`."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.errors import ModelNotFound
from gateway.http.governed import identify
from gateway.observability.metrics import CONTENT_TYPE
from gateway.pipeline.egress import json_response, model_list
from gateway.pipeline.identity import Principal
from gateway.runtime import GATEWAY, Runtime
from routing.router import AUTO


async def list_models(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    rt = gw.runtime
    return json_response(model_list(_visible(rt, await identify(request, gw, rt)),
                                    rt.loaded_at))


async def get_model(request: web.Request) -> web.Response:
    """One model of the list; a model this caller may not use is as absent as an unknown one
    (404, not 403), exactly as the list leaves it out."""
    gw = request.app[GATEWAY]
    rt = gw.runtime
    model_id = request.match_info["model_id"]
    if model_id not in _visible(rt, await identify(request, gw, rt)):
        raise ModelNotFound(f"The model {model_id!r} does not exist.", param="model")
    return json_response(model_list([model_id], rt.loaded_at)["data"][0])


def _visible(rt: Runtime, principal: Principal) -> list[str]:
    ids = rt.router.visible_groups(principal)
    if any(d.mode == "chat" and principal.may_use(d.group) for d in rt.catalog.deployments):
        ids.append(AUTO)
    return ids


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "pid": os.getpid()})


async def readyz(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    ready, parts = gw.ready()
    version = gw.runtime.version
    return json_response({"status": "ready" if ready else "not_ready", **parts,
                          "config_version": version.number, "config_digest": version.short,
                          "pid": os.getpid()},
                         status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format; open like /healthz (put it behind your network policy)."""
    return web.Response(body=request.app[GATEWAY].metrics.exposition(),
                        headers={"Content-Type": CONTENT_TYPE})


async def metrics_pool_ctx(app: web.Application) -> AsyncIterator[None]:
    """Under `--workers`: share this worker's samples with the pool once a second, and a last
    time at shutdown (see `observability.metrics_pool`)."""
    metrics = app[GATEWAY].metrics
    pool = metrics.pool
    if pool is None:
        yield
        return
    sharing = asyncio.create_task(pool.share_forever(metrics.samples), name="podium-metrics")
    yield
    sharing.cancel()
    await asyncio.gather(sharing, return_exceptions=True)
    pool.share(metrics.samples)
