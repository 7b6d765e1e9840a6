"""Driving load: wrk where installed (with a Lua script for the POST body and a `done` hook
that prints its numbers as JSON), the asyncio generator (`bench.httpload`) otherwise. Both run
as their own process, pinned to the load generator's CPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

# wrk prints this line from the script's `done` hook; the harness reads it back.
_WRK_SCRIPT = """\
local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
%(headers)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%%d,"duration_us":%%d,"connect":%%d,"read":%%d,"write":%%d,' ..
    '"status":%%d,"timeout":%%d,"p50_us":%%d,"p90_us":%%d,"p99_us":%%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


@dataclass
class Load:
    url: str
    body_file: Path
    headers: list[tuple[str, str]]


@dataclass
class LoadResult:
    tool: str
    connections: int
    requests: int
    errors: int
    elapsed_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    ttfb_p50_ms: float | None = None
    ttfb_p99_ms: float | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def wrk_path() -> str | None:
    return shutil.which("wrk")


def _pinned(argv: list[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *argv] if cpus else argv


def _script(load: Load, work_dir: Path) -> Path:
    lines = []
    for name, value in load.headers:
        if not (name.isascii() and value.isascii()):
            raise ValueError("wrk headers must be ASCII")
        lines.append(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}")
    path = work_dir / "wrk-post.lua"
    path.write_text(_WRK_SCRIPT % {"headers": "\n".join(lines)})
    return path


def run_wrk(load: Load, connections: int, duration_s: float, cpus: str | None,
            work_dir: Path) -> LoadResult:
    """One wrk run, with one thread: the load generator has one core."""
    wrk = wrk_path()
    assert wrk is not None
    seconds = max(1, round(duration_s))
    argv = _pinned([wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
                    "-s", str(_script(load, work_dir)), load.url], cpus)
    env = {**os.environ, "BENCH_BODY_FILE": str(load.body_file)}
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=seconds + 60,
                         check=False)
    line = next((x for x in out.stdout.splitlines() if x.startswith("BENCHJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-500:]}"
                           f"{out.stderr[-500:]}")
    raw = json.loads(line.removeprefix("BENCHJSON "))
    elapsed = raw["duration_us"] / 1e6
    errors = sum(raw[k] for k in ("connect", "read", "write", "status", "timeout"))
    return LoadResult(tool="wrk", connections=connections, requests=raw["requests"],
                      errors=errors, elapsed_s=round(elapsed, 3),
                      rps=round(raw["requests"] / elapsed, 1) if elapsed else 0.0,
                      p50_ms=raw["p50_us"] / 1000, p90_ms=raw["p90_us"] / 1000,
                      p99_ms=raw["p99_us"] / 1000)


def run_asyncio(load: Load, connections: int, duration_s: float, cpus: str | None,
                limit: int | None = None) -> LoadResult:
    argv = [sys.executable, "-m", "bench.httpload", "--url", load.url,
            "--body-file", str(load.body_file), "-c", str(connections),
            "-d", str(duration_s)]
    for name, value in load.headers:
        argv += ["--header", f"{name}: {value}"]
    if limit:
        argv += ["-n", str(limit)]
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(_pinned(argv, cpus), capture_output=True, text=True, cwd=root,
                         timeout=duration_s + 120, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed ({out.returncode}): {out.stderr[-800:]}")
    raw = json.loads(out.stdout.strip().splitlines()[-1])
    raw.pop("tool", None)
    return LoadResult(tool="asyncio", **raw)


class LoadGen:
    """Picks the tool once: wrk if installed (unless told otherwise), else asyncio."""

    def __init__(self, choice: str, cpus: str | None, work_dir: Path) -> None:
        if choice == "wrk" and wrk_path() is None:
            raise SystemExit("--loadgen wrk: wrk is not installed (apt-get install wrk)")
        self.tool = "wrk" if choice == "wrk" or (choice == "auto" and wrk_path()) else "asyncio"
        self.cpus = cpus
        self.work_dir = work_dir

    def run(self, load: Load, connections: int, duration_s: float) -> LoadResult:
        if self.tool == "wrk":
            return run_wrk(load, connections, duration_s, self.cpus, self.work_dir)
        return run_asyncio(load, connections, duration_s, self.cpus)

    def count(self, load: Load, connections: int, requests: int) -> LoadResult:
        """Exactly `requests` responses (asyncio: wrk runs for a duration, not a count)."""
        return run_asyncio(load, connections, 900.0, self.cpus, limit=requests)

    def first_bytes(self, load: Load, requests: int) -> LoadResult:
        """Sequential requests on one connection, timing the first body byte (asyncio only:
        wrk cannot see inside a response)."""
        return run_asyncio(load, 1, 120.0, self.cpus, limit=requests)
