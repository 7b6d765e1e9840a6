"""The simulator: a deterministic OpenAI-compatible upstream over real HTTP (see `server`)."""

from gateway.simulator.server import (
    RECORDED,
    RecordedRequest,
    SimModel,
    build_simulator_app,
    start_simulator,
)

__all__ = ["RECORDED", "RecordedRequest", "SimModel", "build_simulator_app", "start_simulator"]
