"""What the Responses and Messages front doors add, against Chat Completions on the same
upstream: `.venv/bin/python -m bench.front_doors [--requests N] [--rounds R]`.

Starts the bench's mock upstream and one `podium serve` on bench/podium-bench.yaml (tracing
off, the default pipeline: PII scan, limits, budgets, audit), pinned as `bench.run` pins them.
Then, per round and in rotating order, N sequential requests on one keep-alive connection for
each API, plain and streamed, and for the upstream directly (the floor):

    chat          POST /v1/chat/completions   (temperature 0.7, max_completion_tokens 64)
    responses     POST /v1/responses          the same question; the response is stored
    responses, store: false                   the same, nothing stored
    messages      POST /v1/messages           the same question, max_tokens 64

Every body is sampled (temperature 0.7), so nothing is answered from the cache. Reported per
API: median and p99 latency, and for streams the time to the first byte; "added" is the
median minus the upstream's. Prints a Markdown table for bench/RESULTS.md and writes
bench/out/front-doors.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

from bench import httpload
from bench.procs import LOOPBACK, Procs, can_pin, free_port
from bench.scenarios import CONFIG, GATEWAY_CPU, KEY, LOADGEN_CPU, ROOT, podium_command

QUESTION = "Write one sentence about load testing an AI gateway."
SYSTEM = "You are a helpful assistant."
# (label, path, body, headers): one per API, each asking the same of the same upstream.
_BEARER = [("Authorization", f"Bearer {KEY}")]
APIS: list[tuple[str, str, dict[str, Any], list[tuple[str, str]]]] = [
    ("chat", "/v1/chat/completions",
     {"model": "bench", "messages": [{"role": "system", "content": SYSTEM},
                                     {"role": "user", "content": QUESTION}],
      "temperature": 0.7, "max_completion_tokens": 64}, _BEARER),
    ("responses", "/v1/responses",
     {"model": "bench", "instructions": SYSTEM, "input": QUESTION, "temperature": 0.7,
      "max_output_tokens": 64}, _BEARER),
    ("responses, store: false", "/v1/responses",
     {"model": "bench", "instructions": SYSTEM, "input": QUESTION, "temperature": 0.7,
      "max_output_tokens": 64, "store": False}, _BEARER),
    ("messages", "/v1/messages",
     {"model": "bench", "system": SYSTEM, "messages": [{"role": "user", "content": QUESTION}],
      "temperature": 0.7, "max_tokens": 64},
     [("x-api-key", KEY), ("anthropic-version", "2023-06-01")]),
]


def _streamed(body: dict[str, Any], path: str) -> dict[str, Any]:
    extra: dict[str, Any] = {"stream": True}
    if path == "/v1/chat/completions":
        extra["stream_options"] = {"include_usage": True}
    return {**body, **extra}


async def _sample(url: str, body: dict[str, Any], headers: list[tuple[str, str]],
                  requests: int) -> dict[str, Any]:
    result = await httpload.run(url, orjson.dumps(body), headers, 1, 600.0, requests)
    if result["errors"]:
        raise RuntimeError(f"{result['errors']} failed requests to {url}")
    return result


async def _round(gateway: str, upstream: str, requests: int, turn: int) -> dict[str, Any]:
    cases: list[tuple[str, str, dict[str, Any], list[tuple[str, str]]]] = [
        ("upstream directly", upstream + "/v1/chat/completions", APIS[0][2], [])]
    cases += [(label, gateway + path, body, headers) for label, path, body, headers in APIS]
    cases = cases[turn % len(cases):] + cases[:turn % len(cases)]  # rotate the order
    out: dict[str, Any] = {}
    for label, url, body, headers in cases:
        path = url.split(":", 2)[2].partition("/")[2]
        out[label] = {"plain": await _sample(url, body, headers, requests),
                      "stream": await _sample(url, _streamed(body, "/" + path), headers,
                                              requests)}
    return out


def summarize(rounds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per API, the median over rounds of each round's p50/p99 (latency and first byte)."""
    table: dict[str, dict[str, float]] = {}
    for label in rounds[0]:
        def med(kind: str, field: str, label: str = label) -> float:
            return round(statistics.median(r[label][kind][field] for r in rounds), 3)
        table[label] = {"p50_ms": med("plain", "p50_ms"), "p99_ms": med("plain", "p99_ms"),
                        "ttfb_p50_ms": med("stream", "ttfb_p50_ms"),
                        "ttfb_p99_ms": med("stream", "ttfb_p99_ms")}
    floor = table["upstream directly"]
    for row in table.values():
        row["added_ms"] = round(row["p50_ms"] - floor["p50_ms"], 3)
        row["ttfb_added_ms"] = round(row["ttfb_p50_ms"] - floor["ttfb_p50_ms"], 3)
    return table


def markdown(table: dict[str, dict[str, float]], requests: int, rounds: int) -> str:
    lines = [f"{requests} sequential requests per sample, one connection, {rounds} rounds "
             "(medians of the rounds' p50 and p99):", "",
             "| API | p50 ms | p99 ms | added p50 ms | stream TTFB p50 ms | TTFB p99 ms | "
             "added TTFB ms |", "|---|---|---|---|---|---|---|"]
    for label, r in table.items():
        added = "" if label == "upstream directly" else f"{r['added_ms']:.2f}"
        ttfb_added = "" if label == "upstream directly" else f"{r['ttfb_added_ms']:.2f}"
        lines.append(f"| {label} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {added} | "
                     f"{r['ttfb_p50_ms']:.2f} | {r['ttfb_p99_ms']:.2f} | {ttfb_added} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.front_doors", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500, help="per sample (default 500)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args(argv)
    pinned = can_pin()
    if pinned:  # the client stays on the load generator's CPU, the gateway has its own
        os.sched_setaffinity(0, {int(LOADGEN_CPU)})
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="front-doors-", dir=args.out))
    up_port, gw_port = free_port(), free_port()
    env = {"BENCH_UPSTREAM_PORT": str(up_port), "BENCH_STATE_DIR": str(work),
           "OTEL_TRACES_EXPORTER": "none"}
    with Procs(work, pinned) as procs:
        upstream = procs.start("upstream", [sys.executable, "-m", "bench.mock_upstream",
                                            "--port", str(up_port)], LOADGEN_CPU, cwd=ROOT)
        upstream.wait_ready(up_port, "/health")
        gateway = procs.start("podium", [*podium_command(), "serve", "--config", str(CONFIG),
                                         "--port", str(gw_port)], GATEWAY_CPU, env, ROOT)
        gateway.wait_ready(gw_port, "/readyz", timeout_s=120)
        base, floor = f"http://{LOOPBACK}:{gw_port}", f"http://{LOOPBACK}:{up_port}"
        asyncio.run(_round(base, floor, 50, 0))  # warm-up: every path once, connections made
        rounds = [asyncio.run(_round(base, floor, args.requests, turn))
                  for turn in range(args.rounds)]
    table = summarize(rounds)
    (args.out / "front-doors.json").write_bytes(orjson.dumps(
        {"pinned": pinned, "requests": args.requests, "rounds": rounds, "summary": table},
        option=orjson.OPT_INDENT_2))
    print(markdown(table, args.requests, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
