"""Results: per-scenario medians over the rounds, the issue's targets with pass/fail, the
machine, and the output files (a table on stdout, JSON, the generated part of RESULTS.md)."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from statistics import median
from typing import Any

from bench.measure import Sample
from bench.scenarios import Scenario

BEGIN, END = "<!-- bench:generated:begin -->", "<!-- bench:generated:end -->"


def _med(values: list[float]) -> float | None:
    return round(median(values), 3) if values else None


def summarize(scenarios: list[Scenario], samples: list[Sample]) -> list[dict[str, Any]]:
    rows = []
    for s in scenarios:
        row: dict[str, Any] = {"scenario": s.key, "label": s.label, "skipped": s.skipped,
                               "probe": s.probe}
        mine = [x for x in samples if x.scenario == s.key]
        c1 = [x for x in mine if x.kind == "c1"]
        c32 = [x for x in mine if x.kind == "c32"]
        ttfb = [x for x in mine if x.kind == "ttfb"]
        row.update({
            "rps_c1": _med([x.load.rps for x in c1]),
            "rps_c32": _med([x.load.rps for x in c32]),
            "rps_c32_rounds": [x.load.rps for x in c32],
            "p50_c1_ms": _med([x.load.p50_ms for x in c1]),
            "p99_c1_ms": _med([x.load.p99_ms for x in c1]),
            "p50_c32_ms": _med([x.load.p50_ms for x in c32]),
            "p99_c32_ms": _med([x.load.p99_ms for x in c32]),
            "cpu_us_per_request": _med([x.cpu_us_per_request for x in c32]),
            "cpu_us_per_request_c1": _med([x.cpu_us_per_request for x in c1]),
            "server_sys_pct": _med([x.server_sys_pct for x in c32]),
            "rss_mb": max((x.rss_mb for x in mine), default=None),
            "ttfb_p50_ms": _med([x.load.ttfb_p50_ms or 0.0 for x in ttfb]),
            "ttfb_p99_ms": _med([x.load.ttfb_p99_ms or 0.0 for x in ttfb]),
            "upstream_calls_per_request": _med([x.upstream_calls_per_request for x in c32]),
            "spans_per_request": _med([x.spans_per_request for x in c32]),
            "errors": sum(x.load.errors for x in mine),
            "other_load_cores": _med([x.other_load_cores for x in mine]),
            "steal_pct": _med([x.steal_pct for x in mine]),
        })
        rows.append(row)
    return rows


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| scenario | req/s @32 | p50 @1 ms | p99 @1 ms | p50 @32 ms | p99 @32 ms | "
            "CPU µs/req @32 | RSS MB | stream TTFB p50 / p99 ms | upstream calls/req | errors |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        if r["skipped"]:
            lines.append(f"| {r['label']} | skipped: {r['skipped']} |" + " |" * 9)
            continue
        ttfb = (f"{_fmt(r['ttfb_p50_ms'], 3)} / {_fmt(r['ttfb_p99_ms'], 3)}"
                if r["ttfb_p50_ms"] else "-")
        lines.append(
            f"| {r['label']} | {_fmt(r['rps_c32'])} | {_fmt(r['p50_c1_ms'], 3)} | "
            f"{_fmt(r['p99_c1_ms'], 3)} | {_fmt(r['p50_c32_ms'])} | {_fmt(r['p99_c32_ms'])} | "
            f"{_fmt(r['cpu_us_per_request'], 0)} | {_fmt(r['rss_mb'], 1)} | {ttfb} | "
            f"{_fmt(r['upstream_calls_per_request'], 2)} | {r['errors']} |")
    return "\n".join(lines)


def _check(name: str, goal: str, value: float | None, ok: bool | None,
           detail: str) -> dict[str, Any]:
    status = "n/a" if ok is None else ("PASS" if ok else "FAIL")
    return {"target": name, "goal": goal, "measured": value, "status": status, "detail": detail}


def targets(rows: list[dict[str, Any]], soak: dict[str, Any] | None,
            start: dict[str, Any] | None,
            otel: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    by = {r["scenario"]: r for r in rows if not r["skipped"]}
    skipped = {r["scenario"]: r["skipped"] for r in rows if r["skipped"]}
    out = []

    def ratio(a: str, b: str) -> float | None:
        if a in by and b in by and by[b]["rps_c32"]:
            return round(float(by[a]["rps_c32"]) / float(by[b]["rps_c32"]), 3)
        return None

    # Issue 16's bars (the moonshot in brackets); a target is met at its bar.
    for key, goal, floor, moon in (("podium", "tracing on", 0.3, 0.5),
                                   ("podium-notrace", "tracing off", 0.4, 0.6)):
        r = ratio(key, "bare")
        out.append(_check(f"req/s @32, {goal} / bare proxy", f">= {floor} ({moon})", r,
                          None if r is None else r >= floor,
                          f"{_fmt(by.get(key, {}).get('rps_c32'))} vs "
                          f"{_fmt(by.get('bare', {}).get('rps_c32'))} req/s"))
    bare_cpu = by.get("bare", {}).get("cpu_us_per_request")
    if otel and bare_cpu:
        # At 0.3x the bare proxy's req/s on one core, a request may cost 1/0.3 of its CPU.
        budget = round(bare_cpu / 0.3, 1)
        out.append(_check("OpenTelemetry SDK floor per traced request (info)",
                          f"vs {budget:g} µs budget", otel["floor_us_per_request"], None,
                          f"{otel['spans_per_request']:g} spans x ("
                          f"{otel['create_us_per_span']} µs create + "
                          f"{otel['encode_us_per_span']} µs encode), in-process "
                          "(bench/otel_floor.py); the budget is the whole request's CPU at "
                          "0.3x the bare proxy's req/s"))
    r = ratio("podium", "litellm")
    out.append(_check("req/s @32, Podium / LiteLLM proxy (tracing on)", ">= 20 (40)", r,
                      None if r is None else r >= 20,
                      "LiteLLM proxy " + (skipped.get("litellm") or "measured")))
    for key, what, bar in (("podium", "tracing on", 0.7), ("podium-notrace", "tracing off", None)):
        if key in by and "upstream" in by:
            goal = f"<= {bar} ms (0.5)" if bar else "info"
            added = round(by[key]["p50_c1_ms"] - by["upstream"]["p50_c1_ms"], 3)
            out.append(_check(f"added p50 @1 connection ({what})", goal, added,
                              None if bar is None else added <= bar, f"{by[key]['p50_c1_ms']} - "
                              f"{by['upstream']['p50_c1_ms']} ms (upstream directly)"))
            added = round(by[key]["ttfb_p50_ms"] - by["upstream"]["ttfb_p50_ms"], 3)
            out.append(_check(f"added stream TTFB p50 ({what})", goal, added,
                              None if bar is None else added <= bar,
                              f"{by[key]['ttfb_p50_ms']} - "
                              f"{by['upstream']['ttfb_p50_ms']} ms (upstream directly)"))
    cache = by.get("podium-cache")
    r = ratio("podium-cache", "bare")
    if cache is None:
        out.append(_check("cache-hit req/s / bare proxy", ">= 0.6 (1.0)", None, None,
                          f"cache scenario {skipped.get('podium-cache')}"))
    else:
        served = (cache["upstream_calls_per_request"] or 0) < 0.05
        out.append(_check("cache-hit req/s / bare proxy", ">= 0.6 (1.0)", r,
                          bool(served and r is not None and r >= 0.6),
                          f"{cache['upstream_calls_per_request']} upstream calls per request"
                          + ("" if served else ": NOT served from the cache")))
    if soak:
        out.append(_check(f"RSS after {soak['requests']:,} requests", "<= 120 MB (90)",
                          soak["rss_end_mb"], soak["rss_end_mb"] <= 120,
                          " → ".join(f"{p['requests']:,}: {p['rss_mb']} MB"
                                     for p in soak["points"])))
        out.append(_check("RSS growth, second half of the soak", "< 5 %", soak["growth_pct"],
                          soak["growth_pct"] < 5, f"{soak['errors']} errors"))
    else:
        out.append(_check("RSS after 100,000 requests", "<= 120 MB", None, None,
                          "soak not run (--soak)"))
    if start:
        out.append(_check("podium serve ready (no litellm deployment)", "< 1.5 s",
                          start["median_s"], start["median_s"] < 1.5,
                          f"median of {start['runs']} s"))
    two = by.get("podium-2w")
    one = by.get("podium-notrace")
    if two and one and one["rps_c32"]:
        scale = round(two["rps_c32"] / one["rps_c32"], 2)
        out.append(_check("--workers 2 / 1 worker, req/s @32", ">= 1.7 (1.9)", scale,
                          scale >= 1.7, f"CPU/req {two['cpu_us_per_request']} vs "
                          f"{one['cpu_us_per_request']} µs; 2 cores shared with the load "
                          "generator and upstream"))
    else:
        out.append(_check("--workers 2 / 1 worker", ">= 1.7 (1.9)", None, None,
                          f"2-worker scenario {skipped.get('podium-2w')}"))
    return out


def targets_table(checks: list[dict[str, Any]]) -> str:
    lines = ["| target | goal | measured | result | detail |", "|---|---|---|---|---|"]
    lines += [f"| {c['target']} | {c['goal']} | {_fmt(c['measured'], 3)} | **{c['status']}** | "
              f"{c['detail']} |" for c in checks]
    return "\n".join(lines)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine(loadgen: str, pinned: bool) -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:"))
    wrk = ""
    if loadgen == "wrk":
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
        wrk = (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else ""
    return {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "nproc": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_kb / 1024 ** 2, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "packages": {d: _version(d) for d in ("aiohttp", "uvloop", "orjson",
                                                  "opentelemetry-sdk", "pydantic", "litellm")},
            "load_generator": loadgen + (f" ({wrk})" if wrk else ""),
            "pinning": ("load generator, mock upstream, OTLP receiver on CPU 0; gateway on "
                        "CPU 1 (taskset)") if pinned else "none (taskset missing or 1 CPU)",
            "loadavg_before": Path("/proc/loadavg").read_text().split()[:3]}


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    plan = result["plan"]
    facts = [f"- command: `{result.get('command', 'python -m bench.run')}`",
             f"- date: {m['date']}; {m['nproc']} CPUs: {m['cpu']}; {m['memory_gib']} GiB; "
             f"Linux {m['kernel']}; Python {m['python']}",
             "- " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()),
             f"- load generator: {m['load_generator']}; pinning: {m['pinning']}",
             f"- plan: {plan['rounds']} interleaved rounds x {plan['duration_s']} s per "
             f"measurement, {plan['ttfb_requests']} sequential stream requests for TTFB; "
             f"medians over the rounds",
             f"- load average before / after: {' '.join(m['loadavg_before'])} / "
             f"{' '.join(m.get('loadavg_after', []))}; other processes' CPU during the "
             f"measurements (median, cores): " + ", ".join(
                 f"{r['scenario']} {r['other_load_cores']}" for r in result["scenarios"]
                 if not r["skipped"])]
    spans = result.get("otlp_received") or {}
    traced = [r for r in result["scenarios"] if r.get("spans_per_request")]
    facts.append(f"- OTLP receiver: {spans.get('spans', 0):,} spans in {spans.get('exports', 0):,} "
                 "exports during the rounds; spans per request at 32 connections: "
                 + (", ".join(f"{r['scenario']} {r['spans_per_request']}" for r in traced)
                    or "-") + f"; waited for a quiet machine: {result.get('quiet_wait_s', 0)} s")
    parts = [BEGIN, "## Results (generated by `python -m bench.run`)", "", *facts, "",
             table(result["scenarios"]), "", "### Targets", "", targets_table(result["targets"])]
    parts += ["", "### Profile", "", *profile_md(result.get("profile") or {}), END]
    return "\n".join(parts)


def profile_md(profile: dict[str, Any], top: int = 15) -> list[str]:
    out: list[str] = []
    for name, spy in profile.items():
        if name.startswith("py-spy"):
            out += _py_spy_md(spy, top)
    return out + _cprofile_md(profile.get("cProfile"), top)


def _py_spy_md(spy: dict[str, Any], top: int) -> list[str]:
    if "top_self" not in spy:
        return [f"py-spy: {spy.get('error') or spy.get('skipped')}", ""]
    out = [f"py-spy, {spy['seconds']} s of `{spy['scenario']}` at 32 connections "
           f"({spy['load']['rps']:,.0f} req/s while sampled), {spy['samples']} samples.", "",
           "Threads: " + ", ".join(f"{k} {v} %" for k, v in spy["threads_pct"].items()), "",
           "Self time by package: " + ", ".join(
               f"{k} {v} %" for k, v in spy["self_by_package_pct"].items()), "",
           "µs/req: a thread's time while not idle (GIL waits and CPU contention included), "
           "per request served while sampled.", "",
           "| inclusive % | µs/req | function | | self % | µs/req | function |",
           "|---|---|---|---|---|---|---|"]
    for a, b in zip(spy["top_inclusive"][:top], spy["top_self"][:top], strict=False):
        out.append(f"| {a['pct']} | {a.get('us_per_request', '')} | `{a['function']}` | | "
                   f"{b['pct']} | {b.get('us_per_request', '')} | `{b['function']}` |")
    return [*out, ""]


def _cprofile_md(prof: dict[str, Any] | None, top: int) -> list[str]:
    out: list[str] = []
    if prof and "top_cumulative" in prof:
        out += [f"cProfile ({prof['note']}), {prof['load']['rps']:,.0f} req/s while profiled:",
                "", "| cumulative µs/req | self µs/req | calls/req | function |",
                "|---|---|---|---|"]
        out += [f"| {e['cum_us_per_request']} | {e['self_us_per_request']} | "
                f"{e['calls_per_request']} | `{e['function']}` |"
                for e in prof["top_cumulative"][:top + 10]]
    elif prof:
        out.append(f"cProfile: {prof.get('error') or prof.get('skipped')}")
    return out


def write_results_md(path: Path, generated: str) -> None:
    """Replace the generated block, keeping everything written by hand around it."""
    if path.exists() and BEGIN in (text := path.read_text()) and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        path.write_text(head + generated + tail)
        return
    path.write_text("# Benchmark results\n\nHow to run: see `bench/README.md`.\n\n" + generated
                    + "\n\n## Analysis\n\n(written by hand; kept when the block above is "
                    "regenerated)\n")
