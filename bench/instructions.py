"""The instruction-count bench: `python -m bench.instructions` (or `python -m bench.run
--instructions`); see bench/README.md.

Each server (the bare proxy, then Podium in each scenario, default config) runs under
valgrind's callgrind with instrumentation off; the load generator, the mock upstream and the
OTLP receiver run natively beside it. Per scenario: a probe request, `--warmup` requests, then
instrumentation on, exactly `--requests` requests, (tracing on: until the span exporter has
sent everything), instrumentation off and the counters dumped. Instructions / requests is the
cost of a request, every thread of the server included, and does not move with the load of
the machine. Then the per-hop split (bench/hops.py) on inputs captured from a real request."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

from bench import callgrind, hops
from bench.loadgen import LoadGen
from bench.procs import LOOPBACK, Procs, can_pin, free_port
from bench.scenarios import (
    BENCH_DIR,
    CACHE_SECTION,
    CONFIG,
    GATEWAY_CPU,
    LOADGEN_CPU,
    ROOT,
    Lab,
    Scenario,
    probe,
    write_config,
)

BEGIN, END = "<!-- bench:instructions:begin -->", "<!-- bench:instructions:end -->"
_STARTED = time.perf_counter()
# With tracing on, the measured block lasts until the receiver has seen no export for this
# long: the batch span processor sends every 5 s, so every span of the block is counted.
EXPORT_QUIET_S = 6.5
IDLE_S = 10.0  # at most: the idle window after each measured block


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass
class Case:
    key: str
    label: str
    on: str                       # what is on, in words
    podium: bool = True
    tracing: bool = False
    stream: bool = False
    cache: bool = False
    baseline: str = "bare"        # the bare-proxy case it is compared with
    result: dict[str, Any] = field(default_factory=dict)


CASES = [
    Case("bare", "bare aiohttp proxy", "orjson parse of request and answer, one ClientSession",
         podium=False),
    Case("bare-stream", "bare aiohttp proxy, streamed", "SSE relayed as it arrives",
         podium=False, stream=True),
    Case("podium", "Podium, default pipeline, tracing on",
         "auth, permissions + PII, routing, rate limits, budgets, cache lookup (bypassed: "
         "temperature 0.7), audit, access log, Prometheus, spans exported over OTLP",
         tracing=True),
    Case("podium-notrace", "Podium, default pipeline, tracing off",
         "the same, no spans", tracing=False),
    Case("podium-cache", "Podium, cache hit path, tracing on",
         "the same plus `cache: {enabled: true}`, one deterministic request repeated",
         tracing=True, cache=True),
    Case("podium-stream", "Podium, streamed, tracing on",
         "the default pipeline, `stream: true` with usage", tracing=True, stream=True,
         baseline="bare-stream"),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=200, help="measured requests per scenario")
    p.add_argument("--warmup", type=int, default=100, help="requests before measuring")
    p.add_argument("--connections", type=int, default=1,
                   help="concurrent connections (default 1: one request at a time, so how "
                        "requests share a loop iteration does not move the count)")
    p.add_argument("--only", help="comma-separated scenario keys: " +
                   ", ".join(c.key for c in CASES))
    p.add_argument("--hops", action=argparse.BooleanOptionalAction, default=True,
                   help="the per-hop split (bench/hops.py)")
    p.add_argument("--hop-calls", type=int, default=300, help="calls per hop in the split")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "out")
    p.add_argument("--results-md", action=argparse.BooleanOptionalAction, default=True,
                   help="write the bench:instructions block of bench/RESULTS.md")
    return p.parse_args(argv)


def _spans(lab: Lab) -> int:
    return int(lab.counters("otlp").get("spans", 0))


def _export_quiet(lab: Lab, limit_s: float = 120.0) -> None:
    """Wait until the OTLP receiver has had no new span for EXPORT_QUIET_S."""
    last, since, deadline = _spans(lab), time.monotonic(), time.monotonic() + limit_s
    while time.monotonic() < deadline:
        time.sleep(0.25)  # polling the receiver's count, not synchronisation
        now = _spans(lab)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= EXPORT_QUIET_S:
            return


def _start(lab: Lab, case: Case, procs: Procs, work: Path) -> tuple[Scenario, callgrind.Callgrind]:
    port = free_port()
    if case.podium:
        state = Path(tempfile.mkdtemp(prefix=f"{case.key}-", dir=work))
        config = write_config(work / "podium-cache.yaml", {"cache": CACHE_SECTION}) \
            if case.cache else CONFIG
        argv = callgrind.python_argv("bench.quiet_serve", "serve", "--config", str(config),
                                     "--host", LOOPBACK, "--port", str(port))
        env, ready = lab.podium_env(case.tracing, state), "/readyz"
    else:
        argv = callgrind.python_argv(
            "bench.bare_proxy", "--port", str(port), "--upstream",
            f"http://{LOOPBACK}:{lab.upstream_port}/v1", "--model", "mock-small")
        env, ready = None, "/health"
    # A fixed hash seed: the same dict and set layouts, so the same instructions, every run.
    env = {**(env or {}), "PYTHONHASHSEED": "0"}
    proc = procs.start(case.key, callgrind.wrap(argv, work, case.key), GATEWAY_CPU, env=env,
                       cwd=ROOT)
    proc.wait_ready(port, ready, timeout_s=600, interval_s=0.2)
    bodies = lab.bodies
    body = bodies["cache" if case.cache else "stream" if case.stream else "chat"]
    scenario = Scenario(case.key, case.label, port, proc, body, bodies["stream"],
                        podium=case.podium)
    return scenario, callgrind.Callgrind(proc.pid, work, case.key)


def measure(lab: Lab, case: Case, procs: Procs, gen: LoadGen, args: argparse.Namespace,
            work: Path) -> dict[str, Any]:
    log(f"{case.key}: starting under callgrind")
    started = time.monotonic()
    scenario, cg = _start(lab, case, procs, work)
    try:
        answer = probe(scenario)
        if answer.get("status") != "200":
            return {"skipped": f"the probe request got {answer}"}
        load = scenario.load(case.stream)
        log(f"{case.key}: ready after {time.monotonic() - started:.0f} s; "
            f"{args.warmup} warm-up requests")
        gen.count(load, args.connections, args.warmup)
        if case.tracing:
            _export_quiet(lab)
        upstream_before, spans_before = lab.counters("upstream"), _spans(lab)
        cg.on()
        t0 = time.monotonic()
        result = gen.count(load, args.connections, args.requests)
        if case.tracing:
            _export_quiet(lab)
        window_s = time.monotonic() - t0
        total = cg.off_and_dump()
        upstream = lab.counters("upstream")
        calls = sum(upstream.get(k, 0) - upstream_before.get(k, 0) for k in upstream
                    if k in ("chat", "stream"))
        idle_per_s = _idle(cg, min(window_s, IDLE_S))
        net = total - round(idle_per_s * window_s)
        done = result.requests
        log(f"{case.key}: {done} requests, {total:,} instructions in {window_s:.0f} s, of which "
            f"{idle_per_s * window_s:,.0f} idle: {net / max(done, 1):,.0f} per request")
        return {"requests": done, "errors": result.errors, "instructions": total,
                "window_s": round(window_s, 1), "idle_per_s": round(idle_per_s),
                "per_request": round(net / done) if done else None,
                "per_request_raw": round(total / done) if done else None,
                "upstream_calls_per_request": round(calls / done, 2) if done else None,
                "spans_per_request": round((_spans(lab) - spans_before) / done, 2)
                if done and case.tracing else None}
    finally:
        if scenario.proc is not None:
            procs.stop(scenario.proc)


def _idle(cg: callgrind.Callgrind, seconds: float) -> float:
    """Instructions per second of the server with no request: its timers (log flushing, the
    config-version follower, task ticks) run by the wall clock, and the measured block lasts
    ~50x longer under callgrind than natively, so their share is taken off it."""
    cg.on()
    t0 = time.monotonic()
    time.sleep(seconds)  # a measurement window, not synchronisation
    elapsed = time.monotonic() - t0
    return cg.off_and_dump() / elapsed


def run(args: argparse.Namespace) -> dict[str, Any]:
    callgrind.ensure_valgrind(log)
    pinned = can_pin()
    if pinned:
        os.sched_setaffinity(0, {int(LOADGEN_CPU)})
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="instructions-", dir=args.out))
    (work / "logs").mkdir()
    wanted = set(args.only.split(",")) if args.only else None
    cases = [c for c in CASES if wanted is None or c.key in wanted]
    gen = LoadGen("asyncio", LOADGEN_CPU if pinned else None, work)
    result: dict[str, Any] = {
        "command": " ".join(["python -m bench.instructions", *args.argv]),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _commit(), "code_commit": _commit("gateway", "routing", "plugins"),
        "dirty": bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--",
                                      "gateway", "routing", "plugins"], capture_output=True,
                                     text=True, check=False).stdout.strip()),
        "valgrind": callgrind.version(),
        "python": platform.python_version(), "connections": args.connections,
        "requests": args.requests, "warmup": args.warmup, "work_dir": str(work)}
    with Procs(work / "logs", pinned) as procs:
        lab = Lab(procs, work, litellm=False)
        lab.start_backends()
        for case in cases:
            try:
                case.result = measure(lab, case, procs, gen, args, work)
            except (RuntimeError, OSError, subprocess.SubprocessError) as err:
                case.result = {"skipped": f"failed: {str(err).splitlines()[0][:200]}"}
                log(f"{case.key}: {case.result['skipped']}")
    result["scenarios"] = [_row(c, cases) for c in cases]
    if args.hops:
        log(f"per-hop split: {args.hop_calls} calls per hop, natively and under callgrind")
        result["hops"] = hops.measure(work, args.hop_calls, log)
    return result


def _commit(*paths: str) -> str:
    """The checkout's commit, or the last one that changed `paths` (the measured code)."""
    out = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s", "--", *paths],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip()[:90]


def _row(case: Case, cases: list[Case]) -> dict[str, Any]:
    row = {"scenario": case.key, "label": case.label, "on": case.on, **case.result}
    base = next((c for c in cases if c.key == case.baseline), None)
    per, base_per = row.get("per_request"), base.result.get("per_request") if base else None
    row["vs_bare"] = round(per / base_per, 2) if per and base_per else None
    row["baseline"] = case.baseline
    return row


def _n(value: Any) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def _idle_share(row: dict[str, Any]) -> str:
    total, rate, window = row.get("instructions"), row.get("idle_per_s"), row.get("window_s")
    if not total or rate is None or window is None:
        return "-"
    return f"{100 * rate * window / total:.1f} %"


def markdown(result: dict[str, Any]) -> str:
    rate = (result.get("hops") or {}).get("instructions_per_us")
    lines = [BEGIN, "## Instructions per request (generated by `python -m bench.instructions`)",
             "",
             f"- date: {result['date']}; checkout `{result['commit']}`; the gateway's code "
             f"(gateway/, routing/, plugins/) as of `{result['code_commit']}`"
             f"{' with uncommitted changes' if result.get('dirty') else ''}; "
             f"{result['valgrind']}, Python {result['python']}",
             f"- each server under callgrind (every thread counted), {result['warmup']} warm-up "
             f"requests, then {result['requests']} measured at {result['connections']} "
             "connections (asyncio load generator, mock upstream and OTLP receiver outside "
             "valgrind); with tracing on the block ends once every span is exported",
             "- the server's idle instructions per second (timers, measured right after the "
             "block, for up to 10 s with no request) times the block's length are taken off: "
             "under callgrind the block lasts ~50x longer than natively; the dashboard's 5-s "
             "history sampler does not run (`bench/quiet_serve.py`; its cost per sample is in "
             "the hop table) and the hash seed is fixed (PYTHONHASHSEED=0)",
             "- µs-equiv. = instructions / the instructions per µs this machine ran the hop "
             f"microbenchmark at natively ({_n(rate)} per µs): a rough reading of user-space "
             "CPU only (the kernel's side of the sockets is no instruction of the process)",
             "- x bare proxy: instructions per request over the bare proxy's (the streamed "
             "scenario over the streamed bare proxy); its inverse is the req/s ratio one core "
             "would give if instructions were all that counted",
             "",
             "| scenario | what is on | instructions/request | x bare proxy | µs-equiv. | "
             "upstream calls/req | spans/req | idle taken off |",
             "|---|---|---|---|---|---|---|---|"]
    for row in result["scenarios"]:
        if row.get("skipped"):
            lines.append(f"| {row['label']} | {row['on']} | skipped: {row['skipped']} "
                         "| | | | | |")
            continue
        per = row.get("per_request")
        us = round(per / rate) if per and rate else None
        ratio = f"{row['vs_bare']}x (1/x = {1 / row['vs_bare']:.2f})" \
            if row.get("vs_bare") else "-"
        errors = f" ({row['errors']} errors!)" if row.get("errors") else ""
        lines.append(f"| {row['label']} | {row['on']} | {_n(per)}{errors} | {ratio} | {_n(us)} | "
                     f"{_n(row.get('upstream_calls_per_request'))} | "
                     f"{_n(row.get('spans_per_request'))} | {_idle_share(row)} |")
    if result.get("hops"):
        traced = next((r.get("per_request") for r in result["scenarios"]
                       if r["scenario"] == "podium"), None)
        lines += ["", hops.markdown(result["hops"], traced)]
    lines.append(END)
    return "\n".join(lines)


def write_results_md(path: Path, block: str) -> None:
    """Replace the bench:instructions block, or add it after the wall-clock block."""
    text = path.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        path.write_text(head + block + rest.split(END, 1)[1])
        return
    marker = "<!-- bench:generated:end -->"
    if marker in text:
        head, tail = text.split(marker, 1)
        path.write_text(head + marker + "\n\n" + block + tail)
    else:
        path.write_text(text.rstrip("\n") + "\n\n" + block + "\n")


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(f"stopped by signal {signum}")  # unwinds through `with Procs`: cleanup


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _on_signal)
    args = parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    result = run(args)
    path = args.out / "instructions.json"
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    block = markdown(result)
    print(block)
    print(f"JSON: {path}")
    if args.results_md:
        write_results_md(BENCH_DIR / "RESULTS.md", block)
        print(f"updated {BENCH_DIR / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
