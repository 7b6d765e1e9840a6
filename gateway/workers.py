"""`podium serve --workers N`: N worker processes on one port, and a supervisor.

Each worker is an independent process with its own event loop, bound to the same address with
SO_REUSEPORT, so the kernel spreads connections across them with no proxy in between. The
supervisor starts them, restarts one that dies (with a short backoff, so a worker that cannot
start does not spin), runs the simulator once for all of them when the config asks for it,
and on SIGTERM or SIGINT asks every worker to stop: a worker stops accepting, finishes its
in-flight requests and streams (up to `server.shutdown_timeout_s`), then exits.

State a worker keeps in memory (rate-limit windows, budget reservations, cache, breakers) is
per process; `state.backend: redis` shares it across workers and machines.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from gateway.config import GatewayConfig, read_text
from gateway.observability import metrics_pool
from gateway.runtime import ConfigOrigin
from gateway.simulator import start_from_config
from gateway.storage.backends import open_versions

log = logging.getLogger("podium.workers")
WORKER_ENV = "PODIUM_WORKER_INDEX"     # set in workers; the simulator runs in the supervisor
_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
_STABLE_S = 10.0                        # a worker alive this long resets its backoff
_PARENT_CHECK_S = 0.5                   # how often a worker checks its supervisor is alive


async def supervise(config_path: Path, cfg: GatewayConfig, host: str, port: int,
                    workers: int) -> int:
    stop = asyncio.Event()
    procs: dict[int, asyncio.subprocess.Process] = {}
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # A reload is each worker's own business: pass SIGHUP on to every one of them.
    loop.add_signal_handler(signal.SIGHUP, _forward, procs, signal.SIGHUP)
    warning = unshared_state_warning(cfg, workers)
    if warning:
        log.warning("%s", warning)
    await record_start(config_path, cfg, workers)
    simulator = await start_from_config(cfg.simulator)
    # Every worker writes its Prometheus samples here; any worker's /metrics merges them all.
    metrics_dir = tempfile.TemporaryDirectory(prefix="podium-metrics-")
    os.environ[metrics_pool.POOL_ENV] = metrics_dir.name
    try:
        slots = [asyncio.create_task(_keep_alive(i, config_path, host, port, stop, procs,
                                                 Path(metrics_dir.name)))
                 for i in range(workers)]
        log.info("supervisor %d: %d workers on http://%s:%d", os.getpid(), workers, host, port)
        await stop.wait()
        log.info("supervisor: stopping workers (draining in-flight requests)")
        codes = await asyncio.gather(*slots)
    finally:
        if simulator is not None:
            await simulator.cleanup()
        os.environ.pop(metrics_pool.POOL_ENV, None)
        metrics_dir.cleanup()
    return 0 if all(c in (0, -signal.SIGTERM) for c in codes) else 1


async def record_start(config_path: Path, cfg: GatewayConfig, workers: int) -> None:
    """The pool's config version, recorded once, before any worker starts: each worker joins
    the store's latest version (so one restarted after a rollback keeps the rolled-back
    config, rather than bring the file's back)."""
    store = open_versions(cfg)
    await store.start()
    try:
        origin = ConfigOrigin(read_text(config_path), str(config_path))
        version = await store.record(origin.draft(
            f"podium serve --workers {workers} (pid {os.getpid()})", "start"))
        log.info("supervisor: config version %d (%s)", version.number, version.digest[:12])
    finally:
        await store.close()


def unshared_state_warning(cfg: GatewayConfig, workers: int) -> str | None:
    """What goes wrong when N workers each keep their own limits and budgets in memory."""
    if workers < 2 or cfg.state.backend != "memory":
        return None
    return (f"state.backend is memory with {workers} workers: each worker keeps its own rate "
            f"limits and budgets, so every rpm, tpm and budget is effectively multiplied by "
            f"{workers} (and each worker has its own cache). Set state.backend: redis to "
            f"share them across workers.")


def _forward(procs: dict[int, asyncio.subprocess.Process], sig: signal.Signals) -> None:
    for proc in procs.values():
        if proc.returncode is None:
            proc.send_signal(sig)


async def _keep_alive(index: int, config_path: Path, host: str, port: int,
                      stop: asyncio.Event, procs: dict[int, asyncio.subprocess.Process],
                      metrics_dir: Path) -> int:
    """Run worker `index`; restart it whenever it dies before `stop` is set."""
    failures = 0
    while True:
        started = time.monotonic()
        proc = procs[index] = await _spawn(index, config_path, host, port)
        waiting = asyncio.create_task(proc.wait())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            code = await waiting
            log.info("worker %d (pid %d) exited with %s", index, proc.pid, code)
            return code
        stopping.cancel()
        # Its counts stay in the pool's totals; its live gauges no longer count.
        metrics_pool.retire(metrics_dir, proc.pid)
        failures = 0 if time.monotonic() - started > _STABLE_S else failures + 1
        delay = _BACKOFF_S[min(failures, len(_BACKOFF_S) - 1)]
        log.warning("worker %d (pid %d) died with %s; restarting in %.1fs",
                    index, proc.pid, proc.returncode, delay)
        try:
            await asyncio.wait_for(stop.wait(), delay)
            return proc.returncode or 0
        except TimeoutError:
            continue


async def _spawn(index: int, config_path: Path, host: str,
                 port: int) -> asyncio.subprocess.Process:
    env = {**os.environ, WORKER_ENV: str(index)}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--config", str(config_path),
        "--host", host, "--port", str(port), "--reuse-port", env=env)


async def watch_supervisor(parent: int) -> None:
    """In a worker: if the supervisor dies (even by SIGKILL, which it cannot pass on), the
    worker is re-parented; it then stops itself gracefully rather than serve as an orphan."""
    while os.getppid() == parent:  # noqa: ASYNC110 - a parent's death raises no event to await
        await asyncio.sleep(_PARENT_CHECK_S)
    log.warning("worker %d: supervisor %d is gone; shutting down", os.getpid(), parent)
    os.kill(os.getpid(), signal.SIGTERM)
