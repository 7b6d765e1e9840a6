"""The simulator: a deterministic OpenAI-compatible upstream over real HTTP (see `server`).

Podium's offline default config points at it and the test suite uses it as its fake provider.
`start_from_config` is the one place that starts it for a gateway: in the process itself, or
once in the supervisor for a pool of workers.
"""

from __future__ import annotations

import logging

from aiohttp import web

from gateway.config import SimulatorConfig
from gateway.ports import SIMULATOR_PORT_MOVED_BY, CannotListen
from gateway.simulator.server import (
    RECORDED,
    RecordedRequest,
    SimModel,
    build_simulator_app,
    start_simulator,
)

__all__ = ["RECORDED", "RecordedRequest", "SimModel", "build_simulator_app", "start_from_config",
           "start_simulator"]
log = logging.getLogger("podium")


async def start_from_config(sim: SimulatorConfig) -> web.AppRunner | None:
    """Serve the simulator when the config asks for it; the caller cleans up the runner."""
    if not sim.enabled:
        return None
    models = {name: SimModel(latency_ms=m.latency_ms, fail_rate=m.fail_rate)
              for name, m in sim.models.items()}
    key = sim.api_key.get_secret_value() if sim.api_key else None
    try:
        runner, port = await start_simulator(sim.host, sim.port, models, api_key=key)
    except OSError as err:
        raise CannotListen("the simulator", sim.host, sim.port, err,
                           SIMULATOR_PORT_MOVED_BY) from None
    log.info("simulator (not a real model) listening on http://%s:%d/v1", sim.host, port)
    return runner
