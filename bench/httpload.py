"""The asyncio load generator: closed-loop HTTP/1.1 keep-alive clients on uvloop, written on
raw streams (no HTTP client library) so the generator itself stays cheap.

Each of `--connections` clients sends the same request, waits for the whole response, and
sends the next, until `--duration` seconds have passed or `--requests` responses have come
back in total. Prints one JSON object: requests, errors (non-200 or broken connections),
elapsed seconds, requests/s, latency percentiles, and the time to the first body byte (for
streams, the first SSE event). Used when wrk is not installed, and always for stream TTFB and
for exact-count runs.

Run: python -m bench.httpload --url http://127.0.0.1:4000/v1/chat/completions \
        --body-file body.json --header "Authorization: Bearer k" -c 32 -d 10
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import orjson

from bench.serving import loopback_host

REQUEST_TIMEOUT_S = 30.0


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    first_bytes: list[float] = field(default_factory=list)
    errors: int = 0
    left: int | None = None            # responses still wanted, in count mode

    def take(self) -> bool:
        if self.left is None:
            return True
        if self.left <= 0:
            return False
        self.left -= 1
        return True


def build_request(url: str, body: bytes, headers: list[tuple[str, str]]) -> bytes:
    parts = urlsplit(url)
    lines = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}",
             "Content-Type: application/json", f"Content-Length: {len(body)}",
             *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, float, bool]:
    """One response: (status, time its first body byte arrived, server closes)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, chunked, close = 0, False, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"connection" and b"close" in value.lower():
            close = True
    first = 0.0
    if not chunked:
        await reader.readexactly(length)
        return status, time.perf_counter(), close
    for _ in range(1_000_000):  # bounded: no stream of ours has this many chunks
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # the empty trailer
            break
        if not first:
            first = time.perf_counter()
        await reader.readexactly(size + 2)
    return status, first or time.perf_counter(), close


async def _client(host: str, port: int, request: bytes, stop_at: float, tally: Tally) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop_at and tally.take():
            started = time.perf_counter()
            try:
                writer.write(request)
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    status, first, close = await read_response(reader)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                tally.errors += 1
                close, status = True, 0
            else:
                now = time.perf_counter()
                tally.latencies.append(now - started)
                tally.first_bytes.append(first - started)
                if status != 200:
                    tally.errors += 1
            if close:
                writer.close()
                try:
                    reader, writer = await asyncio.open_connection(host, port)
                except OSError:
                    tally.errors += 1
                    return
    finally:
        writer.close()


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of `values` (seconds in, milliseconds out); 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank] * 1000


async def run(url: str, body: bytes, headers: list[tuple[str, str]], connections: int,
              duration_s: float, requests: int | None) -> dict[str, object]:
    parts = urlsplit(url)
    host, port = loopback_host(parts.hostname or ""), parts.port or 80
    request = build_request(url, body, headers)
    tally = Tally(left=requests)
    # In count mode the duration is only an upper bound that keeps the run finite.
    started = time.perf_counter()
    stop_at = started + duration_s
    await asyncio.gather(*(_client(host, port, request, stop_at, tally)
                           for _ in range(connections)))
    elapsed = time.perf_counter() - started
    done = len(tally.latencies)
    return {"tool": "asyncio", "connections": connections, "requests": done,
            "errors": tally.errors, "elapsed_s": round(elapsed, 3),
            "rps": round(done / elapsed, 1) if elapsed else 0.0,
            "p50_ms": round(percentile(tally.latencies, 50), 3),
            "p90_ms": round(percentile(tally.latencies, 90), 3),
            "p99_ms": round(percentile(tally.latencies, 99), 3),
            "ttfb_p50_ms": round(percentile(tally.first_bytes, 50), 3),
            "ttfb_p99_ms": round(percentile(tally.first_bytes, 99), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description="asyncio HTTP/1.1 load generator")
    parser.add_argument("--url", required=True)
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--header", action="append", default=[], help='"Name: value"')
    parser.add_argument("-c", "--connections", type=int, default=1)
    parser.add_argument("-d", "--duration", type=float, default=10.0, help="seconds (a bound "
                        "in count mode)")
    parser.add_argument("-n", "--requests", type=int, help="stop after this many responses")
    args = parser.parse_args()
    headers = [(k, v) for k, _, v in (h.partition(": ") for h in args.header)]
    with open(args.body_file, "rb") as f:
        body = f.read()
    import uvloop

    result = uvloop.run(run(args.url, body, headers, args.connections, args.duration,
                            args.requests))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
