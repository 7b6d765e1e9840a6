"""The benchmark, in one invocation: `.venv/bin/python -m bench.run` (see bench/README.md).

Starts the mock upstream, the OTLP receiver, the bare proxy and Podium in its configurations,
measures them side by side in interleaved rounds, soaks Podium for memory, times its start-up,
profiles it, and writes bench/out/results.json and the generated part of bench/RESULTS.md."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

from bench import measure, otel_floor, profiling, report
from bench.loadgen import LoadGen
from bench.procs import Procs, can_pin
from bench.scenarios import (
    BENCH_DIR,
    LOADGEN_CPU,
    Lab,
    Scenario,
    install_litellm_proxy,
    litellm_proxy_problem,
    litellm_python,
    probe,
)

_STARTED = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--instructions", action="store_true",
                   help="instead of the wall-clock bench: instructions per request under "
                        "valgrind's callgrind (bench/instructions.py; `python -m "
                        "bench.instructions --help` for its options, which follow this one)")
    p.add_argument("--quick", action="store_true",
                   help="1 round of 3 s, short TTFB and profile runs, no soak; RESULTS.md is "
                        "left alone (for trying the harness out)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3; quick 1)")
    p.add_argument("--duration", type=float, help="seconds per measurement (default 10; quick 3)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up per scenario (default 3)")
    p.add_argument("--ttfb-requests", type=int,
                   help="sequential stream requests per TTFB sample (default 1000; quick 300)")
    p.add_argument("--soak", action=argparse.BooleanOptionalAction, default=None,
                   help="the memory soak (default: on, off with --quick)")
    p.add_argument("--soak-requests", type=int, default=100_000)
    p.add_argument("--startup-runs", type=int, help="launches timed (default 3; quick 1)")
    p.add_argument("--loadgen", choices=("auto", "wrk", "asyncio"), default="auto",
                   help="auto: wrk when installed, else the asyncio generator")
    p.add_argument("--profile", choices=("auto", "py-spy", "cprofile", "none"), default="auto",
                   help="auto: py-spy when found, and cProfile")
    p.add_argument("--profile-seconds", type=int, help="default 10; quick 3")
    p.add_argument("--profile-scenario", action="append", metavar="KEY",
                   help="scenario(s) py-spy attaches to (default podium; repeatable, e.g. "
                        "also whatif:requestid,gc)")
    p.add_argument("--py-spy", help="path to py-spy (else $BENCH_PY_SPY, PATH, bench/out/tools)")
    p.add_argument("--install-py-spy", action="store_true",
                   help="pip-install py-spy into bench/out/tools (a separate venv) if missing")
    p.add_argument("--install-litellm-proxy", action="store_true",
                   help="pip-install litellm[proxy] (the pinned version) into "
                        "bench/out/litellm-proxy (a separate venv) if it does not import")
    p.add_argument("--workers", action=argparse.BooleanOptionalAction, default=True,
                   help="the 2-worker scenario, when `podium serve` has --workers")
    p.add_argument("--litellm", action=argparse.BooleanOptionalAction, default=True,
                   help="the LiteLLM proxy scenario, when litellm.proxy is importable")
    p.add_argument("--quiet-wait", type=float,
                   help="before each sample, wait up to this many seconds while other "
                        "processes use > 0.25 cores (default 10, total <= 300; quick 0)")
    p.add_argument("--whatif", action="append", default=[], metavar="PATCHES",
                   help="also measure Podium (tracing on) with these bench.whatif patches, e.g. "
                        "requestid,gc (repeatable; one scenario each)")
    p.add_argument("--only", help="comma-separated scenario keys to measure (upstream, bare, "
                   "podium, podium-notrace, podium-cache, podium-2w, litellm); for development")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "out")
    p.add_argument("--results-md", action=argparse.BooleanOptionalAction, default=None,
                   help="refresh bench/RESULTS.md (default: on, off with --quick)")
    args = p.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds or (1 if quick else 3)
    args.duration = args.duration or (3.0 if quick else 10.0)
    args.warmup = args.warmup or (1.0 if quick else 3.0)
    args.ttfb_requests = args.ttfb_requests or (300 if quick else 1000)
    args.soak = (not quick) if args.soak is None else args.soak
    args.startup_runs = args.startup_runs or (1 if quick else 3)
    args.profile_seconds = args.profile_seconds or (3 if quick else 10)
    args.quiet_wait = (0.0 if quick else 10.0) if args.quiet_wait is None else args.quiet_wait
    args.results_md = (not quick) if args.results_md is None else args.results_md
    return args


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(f"stopped by signal {signum}")  # unwinds through `with Procs`: cleanup


def _probe_all(scenarios: list[Scenario]) -> None:
    for s in scenarios:
        if s.skipped is not None:
            continue
        s.probe = probe(s)
        log(f"probe {s.key}: {s.probe}")
        if s.probe.get("status") != "200":
            s.skipped = f"failed: the probe request got {s.probe}"


def _profile(args: argparse.Namespace, lab: Lab, scenarios: list[Scenario], gen: LoadGen,
             work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.profile == "none":
        return out
    keys = args.profile_scenario or ["podium"]
    targets = [s for s in scenarios if s.key in keys and s.skipped is None]
    if args.profile in ("auto", "py-spy") and targets:
        spy = profiling.find_py_spy(args.py_spy)
        if spy is None and args.install_py_spy:
            spy = profiling.install_py_spy(log)
        if spy is None:
            out["py-spy"] = {"skipped": "py-spy not found (--py-spy, $BENCH_PY_SPY, PATH; or "
                                        "--install-py-spy)"}
        else:
            for target in targets:
                log(f"profiling {target.key} with py-spy for {args.profile_seconds} s")
                name = "py-spy" if target.key == "podium" else f"py-spy {target.key}"
                out[name] = profiling.py_spy(spy, target, gen, args.profile_seconds, work)
    if args.profile in ("auto", "cprofile"):
        log(f"profiling with cProfile for {args.profile_seconds} s")
        out["cProfile"] = profiling.cprofile(lab, gen, args.profile_seconds, work)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    pinned = can_pin()
    if pinned:  # the harness itself stays on the load generator's CPU
        os.sched_setaffinity(0, {int(LOADGEN_CPU)})
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=args.out))
    (work / "logs").mkdir()
    gen = LoadGen(args.loadgen, LOADGEN_CPU if pinned else None, work)
    log(f"load generator: {gen.tool}; work dir {work}")
    plan = measure.Plan(args.rounds, args.duration, args.warmup, args.ttfb_requests)
    result: dict[str, Any] = {"command": " ".join(["python -m bench.run", *sys.argv[1:]]),
                              "machine": report.machine(gen.tool, pinned),
                              "plan": vars(plan) | {"concurrency": list(plan.concurrency)}}
    if args.litellm and args.install_litellm_proxy \
            and litellm_proxy_problem(litellm_python()) is not None:
        install_litellm_proxy(log)
    with Procs(work / "logs", pinned) as procs:
        lab = Lab(procs, work, args.litellm)
        lab.start_backends()
        scenarios = lab.scenarios(args.workers, args.whatif)
        wanted = set(args.only.split(",")) | {f"whatif:{w}" for w in args.whatif} \
            if args.only else None
        for s in scenarios:
            if wanted is not None and s.key not in wanted and s.skipped is None:
                s.skipped = "not run (--only)"
            if s.skipped:
                log(f"{s.key}: skipped: {s.skipped}")
        _probe_all(scenarios)
        spans_before = lab.counters("otlp")
        meter = measure.Meter(lab, procs, args.quiet_wait, 300.0 if args.quiet_wait else 0.0)
        samples = measure.run_rounds(scenarios, gen, meter, plan, log)
        result["quiet_wait_s"] = meter.waited_s
        spans_after = lab.counters("otlp")
        result["otlp_received"] = {k: spans_after.get(k, 0) - spans_before.get(k, 0)
                                   for k in spans_after}
        result["profile"] = _profile(args, lab, scenarios, gen, work)
        result["soak"] = measure.soak(lab, gen, args.soak_requests, log) if args.soak else None
        result["startup"] = measure.startup(lab, args.startup_runs, log)
    log("measuring the OpenTelemetry SDK's cost per span")
    result["otel_floor"] = otel_floor.measure()
    result["machine"]["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    result["scenarios"] = report.summarize(scenarios, samples)
    result["samples"] = [x.as_dict() for x in samples]
    result["targets"] = report.targets(result["scenarios"], result["soak"], result["startup"],
                                       result["otel_floor"])
    result["work_dir"] = str(work)
    return result


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    if "--instructions" in raw:
        from bench import instructions

        return instructions.main([a for a in raw if a != "--instructions"])
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    result = run(args)
    json_path = args.out / ("results-quick.json" if args.quick else "results.json")
    json_path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(report.table(result["scenarios"]))
    print()
    print(report.targets_table(result["targets"]))
    print(f"\nspans received by the OTLP receiver: {result['otlp_received']}")
    print(f"JSON: {json_path}")
    if args.results_md:
        report.write_results_md(BENCH_DIR / "RESULTS.md", report.markdown(result))
        print(f"updated {BENCH_DIR / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
