"""Hot reload: `SIGHUP` or `POST /admin/reload` re-reads and re-validates the config.

A valid config is compiled into a new `Runtime` and swapped in with one assignment: requests
that started before keep the runtime they read, new ones get the new one, so nothing is dropped.
An invalid config changes nothing; the problems are logged, counted in
`podium_config_reloads_total{result="invalid"}` and returned to the caller. Sections that live
as long as the process (storage, state, key store, simulator, telemetry, cache bounds, body
limit) are reported as needing a restart rather than half-applied.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from gateway.app import GATEWAY, REQUEST_ID, Gateway, Runtime
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.errors import BadRequest, PodiumError
from gateway.pipeline.egress import json_response

log = logging.getLogger("podium.reload")
_PROCESS_LIFETIME = ("storage", "state", "key_store", "simulator", "telemetry")


@dataclass(frozen=True)
class ReloadResult:
    ok: bool
    problems: list[str]
    restart_required: list[str]


async def reload(gw: Gateway, path: Path) -> ReloadResult:
    try:
        cfg = await asyncio.to_thread(load_config, path)
        runtime = Runtime.compile(cfg, gw.keystore, gw.governance, gw.telemetry.span)
    except ConfigError as err:
        return _rejected(gw, path, err.problems)
    except (OSError, ValueError, PodiumError) as err:  # e.g. a JWKS file that cannot be read
        return _rejected(gw, path, [f"(compile): {err}"])
    restart = _needs_restart(gw.runtime.config, cfg)
    gw.runtime = runtime
    gw.metrics.teams = frozenset(t.name for t in cfg.teams)
    gw.start_litellm_if_needed()
    gw.metrics.reloads.labels("ok").inc()
    log.info("config reloaded from %s", path, extra={"restart_required": restart})
    return ReloadResult(True, [], restart)


def _rejected(gw: Gateway, path: Path, problems: list[str]) -> ReloadResult:
    gw.metrics.reloads.labels("invalid").inc()
    log.error("config reload from %s rejected; the old config stays", path,
              extra={"problems": problems})
    return ReloadResult(False, problems, [])


def _needs_restart(old: GatewayConfig, new: GatewayConfig) -> list[str]:
    changed = [name for name in _PROCESS_LIFETIME if getattr(old, name) != getattr(new, name)]
    if old.server.max_body_bytes != new.server.max_body_bytes:
        changed.append("server.max_body_bytes")
    # The cache's bounds size the store made at start; its TTLs and the semantic settings are
    # read per request and apply at once.
    for bound in ("max_entries", "max_bytes"):
        if getattr(old.cache, bound) != getattr(new.cache, bound):
            changed.append(f"cache.{bound}")
    return changed


async def admin_reload(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    await gw.runtime.auth.admin(request.headers.get("Authorization"))
    if gw.config_path is None:
        raise BadRequest("This gateway was not started from a config file; nothing to reload.")
    result = await reload(gw, gw.config_path)
    if not result.ok:
        err = BadRequest("The new config is invalid; the current one stays: "
                         + "; ".join(result.problems[:10]), code="invalid_config")
        err.headers["x-request-id"] = request[REQUEST_ID]
        raise err
    return json_response({"status": "reloaded", "loaded_at": gw.runtime.loaded_at,
                          "restart_required": result.restart_required},
                         {"x-request-id": request[REQUEST_ID]})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/admin/reload", admin_reload)
