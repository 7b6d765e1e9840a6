"""Event-loop lag while hostile prompts are in flight.

A gateway is only as responsive as its event loop: a request that holds the loop for a second
stalls every other connection for that second, health checks included. This measures it from
the outside, the way a load balancer sees it: a prober sends `GET /healthz` back to back on
its own connection while one hostile prompt at a time goes through `POST /v1/chat/completions`
(the default pipeline of bench/podium-bench.yaml: PII detection, guardrail-free, routing,
rate limits, budget, audit). Lag = a probe's latency minus the idle probe's median.

    .venv/bin/python -m bench.loop_lag                  # 4,000,000-character prompts
    .venv/bin/python -m bench.loop_lag --size 400000    # quicker

The deployments' context windows are raised so that the prompts go the whole way (upstream
call included) instead of being refused by routing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from bench.procs import LOOPBACK, Procs, can_pin
from bench.scenarios import CHAT_PATH, CONFIG, KEY, Lab

# Runs that almost match a detector, again and again (each broke the old detectors), and two
# realistic large inputs: a log dump full of addresses, and normalised non-ASCII prose.
HOSTILE: dict[str, str] = {
    "dots": ".a", "email-ish": "a@a.", "digits": "1 ", "iban-ish": "AB12 ", "key-ish": "sk-",
    "zero-width": "a\u200b", "log dump": "2026-11-30 10:00:01 GET /x from 10.0.0.7 by "
    "jane.doe@example.com status=200 card=4111 1111 1111 1111\n", "cjk prose": "東京の天気は晴れ。",
}


def _config(work: Path) -> Path:
    raw = yaml.safe_load(CONFIG.read_text())
    for entry in raw["model_list"]:
        entry["model_info"]["max_input_tokens"] = 50_000_000
    path = work / "loop-lag.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


async def _probe(session: aiohttp.ClientSession, url: str, stop: asyncio.Event,
                 out: list[float]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        async with session.get(url) as resp:
            await resp.read()
        out.append(time.perf_counter() - started)


async def _hostile(session: aiohttp.ClientSession, url: str, text: str) -> tuple[int, float]:
    body = {"model": "bench", "temperature": 0.7, "max_tokens": 16,
            "messages": [{"role": "user", "content": text}]}
    started = time.perf_counter()
    async with session.post(url, data=orjson.dumps(body),
                            headers={"Authorization": f"Bearer {KEY}",
                                     "Content-Type": "application/json"}) as resp:
        await resp.read()
        return resp.status, time.perf_counter() - started


async def _measure(port: int, size: int) -> list[dict[str, Any]]:
    base = f"http://{LOOPBACK}:{port}"
    rows: list[dict[str, Any]] = []
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as probe_s, \
            aiohttp.ClientSession(timeout=timeout) as post_s:
        idle: list[float] = []
        stop = asyncio.Event()
        task = asyncio.create_task(_probe(probe_s, base + "/healthz", stop, idle))
        await asyncio.sleep(2.0)  # a fixed sampling window, not synchronisation
        stop.set()
        await task
        floor = statistics.median(idle)
        rows.append({"input": "(idle)", "probes": len(idle), "p99_ms": _ms(_pct(idle, 99)),
                     "max_ms": _ms(max(idle)), "status": "", "request_s": 0.0})
        for name, unit in HOSTILE.items():
            text = unit * (size // len(unit.encode()))  # `size` bytes of UTF-8
            seen: list[float] = []
            stop = asyncio.Event()
            task = asyncio.create_task(_probe(probe_s, base + "/healthz", stop, seen))
            status, took = await _hostile(post_s, base + CHAT_PATH, text)
            stop.set()
            await task
            lags = [max(0.0, s - floor) for s in seen] or [0.0]
            rows.append({"input": name, "probes": len(seen), "p99_ms": _ms(_pct(lags, 99)),
                         "max_ms": _ms(max(lags)), "status": status, "request_s": took})
    return rows


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def report(rows: list[dict[str, Any]], size: int) -> str:
    lines = [f"Event-loop lag, {size:,}-byte prompts (lag = /healthz latency minus the "
             "idle median; the idle row is the raw latency)", "",
             "| input | probes | lag p99 ms | lag max ms | hostile request s | status |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['input']} | {r['probes']} | {r['p99_ms']} | {r['max_ms']} | "
                     f"{r['request_s']:.2f} | {r['status']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4_000_000, help="UTF-8 bytes per prompt")
    args = parser.parse_args(argv)
    out_dir = Path(__file__).resolve().parent / "out"
    out_dir.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="loop-lag-", dir=out_dir))
    with Procs(work, can_pin()) as procs:
        lab = Lab(procs, work, litellm=False)
        lab.start_backends()
        _, port, _ = lab.launch_podium("podium-loop-lag", tracing=False, config=_config(work))
        rows = asyncio.run(_measure(port, args.size))
    text = report(rows, args.size)
    (out_dir / "loop-lag.json").write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
