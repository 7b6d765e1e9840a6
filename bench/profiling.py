"""Where Podium's time goes under load: py-spy (sampling, every thread, attached to the running
gateway) when it can be found, and cProfile (deterministic, the event-loop thread, a separate
gateway started under `bench.profiled_serve`)."""

from __future__ import annotations

import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.loadgen import LoadGen
from bench.procs import LOOPBACK, can_pin, http_get, venv_install
from bench.scenarios import LOADGEN_CPU, ROOT, Lab, Scenario

_RATE = 250  # py-spy samples per second
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*):(?P<line>\d+)\)$")
# First match wins: site-packages before the standard library that contains them.
_PACKAGES = (("opentelemetry", "/opentelemetry/"), ("aiohttp", "/aiohttp/"),
             ("yarl/multidict", "/yarl/"), ("yarl/multidict", "/multidict/"),
             ("pydantic", "/pydantic"), ("tiktoken", "/tiktoken"), ("uvloop", "/uvloop/"),
             ("cachetools", "/cachetools/"), ("protobuf", "/google/protobuf/"),
             ("requests/urllib3", "/urllib3/"), ("requests/urllib3", "/requests/"),
             ("asyncio", "/asyncio/"), ("logging", "/logging/"), ("sqlite3", "/sqlite3/"),
             ("threading/queue", "/threading.py"), ("threading/queue", "/queue.py"),
             ("concurrent", "/concurrent/"))


_DRIVERS = ("run_app", "run_until_complete", "run_forever", "cmd_serve", "main (", "<module>",
            "_run_module_as_main", "_run_code", "_run_once", "_contextvars.Context",
            "Thread._bootstrap", "Thread.run (")


def find_py_spy(explicit: str | None) -> str | None:
    for candidate in (explicit, os.environ.get("BENCH_PY_SPY"), shutil.which("py-spy"),
                      str(ROOT / "bench" / "out" / "tools" / "bin" / "py-spy")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def install_py_spy(log: Callable[[str], None]) -> str | None:
    """py-spy into a throwaway venv under bench/out/tools (never the project's venv)."""
    tools = ROOT / "bench" / "out" / "tools"
    log(f"installing py-spy into {tools}")
    if venv_install(tools, "py-spy", shutil.which("python3") or sys.executable) is not None:
        log("  py-spy could not be installed; cProfile only")
        return None
    return find_py_spy(None)


def classify(path: str) -> str:
    if path.startswith(str(ROOT)) and "/site-packages/" not in path:
        rel = Path(path).relative_to(ROOT).parts
        return f"podium {rel[0]}" if len(rel) > 1 else "podium"
    for name, marker in _PACKAGES:
        if marker in path:
            return name
    return "python stdlib" if "/lib/python3" in path else "other"


def short(path: str) -> str:
    if path.startswith(str(ROOT)) and "/site-packages/" not in path:
        return str(Path(path).relative_to(ROOT))
    for marker in ("/site-packages/", "/lib/python3.11/", "/lib/python3.12/", "/lib/python3."):
        if marker in path:
            return path.split(marker, 1)[1]
    return Path(path).name


def summarize_collapsed(text: str, per_request_us: float, top: int = 25) -> dict[str, Any]:
    """py-spy's raw (collapsed) stacks → shares of samples by thread, package and function;
    `per_request_us` converts one sample into µs of (non-idle) thread time per request."""
    self_counts: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        if frames and frames[0].startswith("thread ("):
            threads[frames[0].split(": ", 1)[-1]] += count
            frames = frames[1:]
        parsed = [m for m in map(_FRAME.match, frames) if m]
        if not parsed:
            continue
        names = [f"{m['func']} ({short(m['file'])})" for m in parsed]
        self_counts[names[-1]] += count
        packages[classify(parsed[-1]["file"])] += count
        for name in set(names):
            incl[name] += count

    def pct(counter: Counter[str], n: int | None = None) -> list[dict[str, Any]]:
        return [{"function": k, "pct": round(100 * v / total, 1),
                 "us_per_request": round(v * per_request_us, 1)}
                for k, v in counter.most_common(n)] if total else []

    for name in [k for k in incl if any(d in k for d in _DRIVERS)]:
        del incl[name]  # the loop's drivers and the process entry point: 100 % of the loop

    return {"samples": total, "threads_pct": {d["function"]: d["pct"] for d in pct(threads)},
            "self_by_package_pct": {d["function"]: d["pct"] for d in pct(packages)},
            "top_self": pct(self_counts, top), "top_inclusive": pct(incl, top)}


def py_spy(py_spy_bin: str, scenario: Scenario, gen: LoadGen, seconds: int,
           work: Path) -> dict[str, Any]:
    assert scenario.proc is not None
    out = work / f"py-spy-{scenario.key.replace(':', '-').replace(',', '-')}.txt"
    argv = [py_spy_bin, "record", "--pid", str(scenario.proc.pid), "--duration", str(seconds),
            "--rate", str(_RATE), "--format", "raw", "--function", "--nonblocking", "--threads",
            "--full-filenames", "--output", str(out)]
    if can_pin():
        argv = ["taskset", "-c", LOADGEN_CPU, *argv]
    with open(work / "py-spy.log", "wb") as log:
        spy = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            load = gen.run(scenario.load(), 32, seconds + 1)
            spy.wait(timeout=seconds + 60)
        finally:
            if spy.poll() is None:
                spy.kill()
                spy.wait()
    if not out.exists():
        return {"tool": "py-spy", "error": (work / "py-spy.log").read_text()[-500:]}
    requests = max(load.rps * seconds, 1.0)  # served while py-spy sampled
    return {"tool": "py-spy", "seconds": seconds, "rate_hz": _RATE, "scenario": scenario.key,
            "load": load.as_dict(),
            **summarize_collapsed(out.read_text(), 1e6 / _RATE / requests)}


def cprofile(lab: Lab, gen: LoadGen, seconds: int, work: Path,
             top: int = 30) -> dict[str, Any]:
    """A separate gateway (default pipeline, tracing on) under cProfile, 32 connections; only
    the measured run is profiled (SIGUSR1/SIGUSR2 to `bench.profiled_serve`)."""
    out = work / "podium.prof"
    wrapper = [sys.executable, "-m", "bench.profiled_serve", "--out", str(out)]
    proc, port, _ = lab.launch_podium("podium-cprofile", True, wrapper=wrapper)
    try:
        scenario = Scenario("podium-cprofile", "cProfile", port, proc, lab.bodies["chat"])
        gen.run(scenario.load(), 32, 2)  # warm-up, not profiled
        os.kill(proc.pid, signal.SIGUSR1)
        load = gen.run(scenario.load(), 32, seconds)
        os.kill(proc.pid, signal.SIGUSR2)
        for _ in range(100):  # the handler runs when the loop thread next runs Python code
            if out.exists():
                break
            http_get(LOOPBACK, port, "/healthz")
            time.sleep(0.05)
    finally:
        lab.procs.stop(proc)
    if not out.exists():
        return {"tool": "cProfile", "error": "no profile written"}
    stats = pstats.Stats(str(out))
    rows = stats.stats  # type: ignore[attr-defined]
    requests = max(load.requests, 1)
    entries = []
    for (file, line, func), (_cc, ncalls, tottime, cumtime, _callers) in rows.items():
        where = f"{func} ({short(file)}:{line})" if file != "~" else func
        entries.append({"function": where, "calls_per_request": round(ncalls / requests, 2),
                        "self_us_per_request": round(tottime / requests * 1e6, 1),
                        "cum_us_per_request": round(cumtime / requests * 1e6, 1)})
    # The loop's drivers (run_forever, Context.run, ...) hold the idle time too: left out.
    busy = [e for e in entries if not any(d in e["function"] for d in _DRIVERS)]
    by_cum = sorted(busy, key=lambda e: -e["cum_us_per_request"])[:top]
    by_self = sorted(entries, key=lambda e: -e["self_us_per_request"])[:top]
    return {"tool": "cProfile", "seconds": seconds, "load": load.as_dict(),
            "note": "event-loop thread only; times are per request served in the profiled run "
                    "(cProfile itself slows the gateway down)",
            "top_cumulative": by_cum, "top_self": by_self, "stats_file": str(out)}
