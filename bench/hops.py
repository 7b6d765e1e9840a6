"""The per-hop split of a request's cost: `bench/hop_cases.py` run twice, once natively (each
hop's loop timed with the thread's CPU clock) and once under callgrind (instrumentation
switched on around each hop's loop only), so every hop gets instructions per call and µs per
call. The empty loop's cost is taken off every hop; `instructions_per_us` (all hops'
instructions over all hops' µs) is how fast this machine runs this kind of code, which the
request table uses to read its counts as µs-equivalents.

Run on its own: `python -m bench.hops [--calls N]` (prints the table)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import orjson

from bench import callgrind
from bench.procs import can_pin
from bench.scenarios import BENCH_DIR, GATEWAY_CPU, ROOT

EMPTY = "(empty loop)"
IDLE = "(idle per second)"
IDLE_S = 5.0


def _idle(cg: callgrind.Callgrind) -> float:
    """Instructions per second of the child's own threads (the log flusher) while its loop
    does nothing: taken off each hop for as long as its loop ran (~50x longer than natively)."""
    cg.on()
    t0 = time.monotonic()
    time.sleep(IDLE_S)  # a measurement window, not synchronisation
    elapsed = time.monotonic() - t0
    return cg.off_and_dump() / elapsed


def _child(argv: list[str], log_file: IO[bytes]) -> subprocess.Popen[bytes]:
    if can_pin():
        argv = ["taskset", "-c", GATEWAY_CPU, *argv]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=log_file, cwd=ROOT, start_new_session=True,
                            env={**os.environ, "PYTHONHASHSEED": "0"})


def _read(proc: subprocess.Popen[bytes], timeout_s: float = 900.0) -> dict[str, Any]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the hop microbenchmark exited ({proc.wait()}) early")
        if line.startswith(b"{"):
            message: dict[str, Any] = orjson.loads(line)
            return message
    raise RuntimeError("the hop microbenchmark did not answer in time")


def _say(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    proc.stdin.flush()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)


def run_native(work: Path, calls: int) -> tuple[dict[str, float], dict[str, str], int]:
    """µs per call of each hop (empty loop included), the n/a reasons, spans replayed."""
    argv = callgrind.python_argv("bench.hop_cases", "--calls", str(calls), "--native",
                                 "--work", str(work))
    with open(work / "hops-native.log", "ab") as log_file:
        proc = _child(argv, log_file)
        try:
            names = _read(proc)
            us, na = {}, {}
            for _ in names["hops"]:
                m = _read(proc)
                if "na" in m:
                    na[m["na"]] = m["reason"]
                else:
                    us[m["done"]] = m["ns"] / 1000 / m["calls"]
            return us, na, int(names.get("spans", 0))
        finally:
            _stop(proc)


def run_counted(work: Path, calls: int, log: Callable[[str], None]) -> dict[str, float]:
    """Instructions per call of each hop (empty loop included), under callgrind."""
    argv = callgrind.wrap(callgrind.python_argv("bench.hop_cases", "--calls", str(calls),
                                                "--work", str(work)), work, "hops")
    with open(work / "hops-callgrind.log", "ab") as log_file:
        proc = _child(argv, log_file)
        try:
            names = _read(proc)
            cg = callgrind.Callgrind(proc.pid, work, "hops")
            out: dict[str, float] = {}
            idle_per_s: float | None = None
            for _ in names["hops"]:
                m = _read(proc)
                if "na" in m:
                    continue
                if idle_per_s is None:  # the child waits for its cue: only its threads run
                    idle_per_s = _idle(cg)
                    out[IDLE] = idle_per_s
                cg.on()
                t0 = time.monotonic()
                _say(proc)
                done = _read(proc)
                window_s = time.monotonic() - t0
                total = cg.off_and_dump() - idle_per_s * window_s
                _say(proc)
                out[done["done"]] = total / done["calls"]
                log(f"  {done['done']}: {out[done['done']]:,.0f} instructions per call")
            return out
        finally:
            _stop(proc)


def measure(work: Path, calls: int, log: Callable[[str], None]) -> dict[str, Any]:
    us, na, spans = run_native(work, max(calls, 1000))
    ir = run_counted(work, calls, log)
    empty_us, empty_ir = us.pop(EMPTY, 0.0), ir.pop(EMPTY, 0.0)
    idle_per_s = ir.pop(IDLE, 0.0)
    rows: list[dict[str, Any]] = []
    for name in [*us, *na]:
        if name in na:
            rows.append({"hop": name, "na": na[name]})
            continue
        row: dict[str, Any] = {"hop": name, "us": round(max(us[name] - empty_us, 0.0), 2)}
        if name in ir:
            row["instructions"] = round(max(ir[name] - empty_ir, 0.0))
        else:
            row["na"] = "not counted under callgrind"
        rows.append(row)
    both = [(int(r["instructions"]), float(r["us"])) for r in rows
            if "instructions" in r and r["us"] > 0 and not _part(r["hop"])]
    rate = round(sum(i for i, _ in both) / sum(u for _, u in both)) if both else None
    return {"calls": calls, "native_calls": max(calls, 1000), "spans": spans,
            "empty_loop": {"instructions": round(empty_ir), "us": round(empty_us, 3)},
            "idle_per_s": round(idle_per_s),
            "instructions_per_us": rate, "rows": rows}


def _part(name: str) -> bool:
    """A row that is part of the row above it, or not in the default request (indented): not
    in the sum."""
    return name.startswith(" ")


def markdown(h: dict[str, Any], request: int | None = None) -> str:
    lines = ["### Instructions per hop (generated: `bench/hops.py`)", "",
             f"Each hop called {h['calls']:,} times under callgrind ({h['native_calls']:,} times "
             "natively for µs) on the inputs of one real request through the default pipeline "
             "(bench config, tracing off in the hops themselves; the request's "
             f"{h['spans']} spans, recorded by a traced twin of the gateway, replayed through the "
             "SDK in the last two rows). The empty loop "
             f"({h['empty_loop']['instructions']:,} instructions per call) is taken off each, "
             f"and so is the child's idle work ({h.get('idle_per_s', 0):,} instructions per "
             "second: its log flusher thread) for as long as each loop ran under callgrind. "
             f"Instructions per µs over all hops: {h['instructions_per_us'] or '-':,}. Native µs "
             "are noisy on a shared machine (they are only there to convert); the counts are "
             "not. Indented rows (↳) are a part of the row above, or not in the default "
             "request, and stay out of the sum.", "",
             "| hop | instructions/call | µs/call (native) |", "|---|---|---|"]
    total = 0
    for row in h["rows"]:
        if "na" in row:
            lines.append(f"| {row['hop'].strip()} | n/a: {row['na']} | |")
            continue
        if not _part(row["hop"]):
            total += row["instructions"]
        name = f"↳ {row['hop'].strip()}" if _part(row["hop"]) else row["hop"]
        lines.append(f"| {name} | {row['instructions']:,} | {row['us']} |")
    lines.append(f"| **sum of the hops** | **{total:,}** | |")
    if request:
        lines.append(f"| rest of a traced request (aiohttp server and client, upstream call, "
                     f"glue: the tracing-on request minus the sum) | {request - total:,} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.hops", description=__doc__)
    p.add_argument("--calls", type=int, default=300)
    args = p.parse_args(argv)
    callgrind.ensure_valgrind(print)
    out = BENCH_DIR / "out"
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="hops-", dir=out))
    result = measure(work, args.calls, lambda m: print(m, file=sys.stderr))
    (work / "hops.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
