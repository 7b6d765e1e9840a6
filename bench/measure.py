"""The measurements: interleaved rounds of every scenario at 1 and 32 connections (with the
server's CPU per request and RSS), stream time to first byte, the memory soak, start-up time.

Everything the bench does not own also shows up: each sample records how much CPU the rest
of the machine used meanwhile ("other load", in cores), since a noisy neighbour on a 2-core
machine moves these numbers more than most code changes do."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

from bench.loadgen import LoadGen, LoadResult
from bench.procs import CLK_TCK, Procs, cpu_seconds, cpu_split, rss_mb
from bench.scenarios import Lab, Scenario


@dataclass
class Sample:
    scenario: str
    round: int
    kind: str                  # "c1", "c32" or "ttfb"
    load: LoadResult
    server_cpu_s: float
    server_sys_pct: float      # share of the server's CPU spent in the kernel
    cpu_us_per_request: float
    rss_mb: float
    upstream_calls_per_request: float
    spans_per_request: float   # received by the OTLP receiver (export is batched: approximate)
    other_load_cores: float    # CPU used by processes that are not the bench's, in cores
    steal_pct: float

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["load"] = self.load.as_dict()
        return out


def _system_cpu() -> tuple[float, float, float]:
    """(busy seconds, steal seconds, total seconds) summed over all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq
    return busy / CLK_TCK, steal / CLK_TCK, (busy + idle + iowait + steal) / CLK_TCK


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Meter:
    """Wraps one load run with /proc readings of the server and of the whole machine."""

    def __init__(self, lab: Lab, procs: Procs, quiet_wait_s: float = 0.0,
                 quiet_budget_s: float = 0.0, quiet_cores: float = 0.25) -> None:
        self.lab = lab
        self.procs = procs
        self.quiet_wait_s = quiet_wait_s      # the most one sample waits for a quiet machine
        self.quiet_budget_s = quiet_budget_s  # the most the whole run waits
        self.quiet_cores = quiet_cores
        self.waited_s = 0.0

    def other_load(self, window_s: float = 0.5) -> float:
        """Cores used by processes that are not the bench's, over `window_s`."""
        busy0, _, _ = _system_cpu()
        ours0 = self._ours()
        time.sleep(window_s)  # the measurement window itself
        busy1, _, _ = _system_cpu()
        return max(0.0, (busy1 - busy0) - (self._ours() - ours0)) / window_s

    def wait_quiet(self) -> None:
        """Before a sample: wait, within the per-sample and per-run bounds, while something
        else on the machine (a test suite, a build) uses more than `quiet_cores`."""
        waited = 0.0
        while waited < self.quiet_wait_s and self.waited_s < self.quiet_budget_s:
            if self.other_load() < self.quiet_cores:
                return
            waited += 0.5
            self.waited_s += 0.5

    def _ours(self) -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        return (sum(cpu_seconds(p.pid) for p in self.procs.running())
                + _children_cpu() + own.ru_utime + own.ru_stime)

    def sample(self, scenario: Scenario, round_no: int, kind: str,
               run: Callable[[], LoadResult]) -> Sample:
        assert scenario.proc is not None
        self.wait_quiet()
        pid = scenario.proc.pid
        calls_before = self.lab.counters("upstream")
        spans_before = self.lab.counters("otlp").get("spans", 0)
        busy0, steal0, total0 = _system_cpu()
        ours0, (user0, sys0) = self._ours(), cpu_split(pid)
        started = time.perf_counter()
        result = run()
        window = time.perf_counter() - started
        (user1, sys1), ours1 = cpu_split(pid), self._ours()
        cpu0, cpu1 = user0 + sys0, user1 + sys1
        busy1, steal1, total1 = _system_cpu()
        calls_after = self.lab.counters("upstream")
        spans = self.lab.counters("otlp").get("spans", 0) - spans_before
        calls = sum(calls_after.values()) - sum(calls_before.values())
        done = max(result.requests, 1)
        return Sample(
            scenario=scenario.key, round=round_no, kind=kind, load=result,
            server_cpu_s=round(cpu1 - cpu0, 3),
            server_sys_pct=round(100 * (sys1 - sys0) / max(cpu1 - cpu0, 1e-6), 1),
            cpu_us_per_request=round((cpu1 - cpu0) / done * 1e6, 1),
            rss_mb=rss_mb(pid),
            upstream_calls_per_request=round(calls / done, 3),
            spans_per_request=round(spans / done, 2),
            other_load_cores=round(max(0.0, (busy1 - busy0) - (ours1 - ours0)) / window, 2),
            steal_pct=round(100 * (steal1 - steal0) / max(total1 - total0, 1e-6), 1))


@dataclass
class Plan:
    rounds: int
    duration_s: float
    warmup_s: float
    ttfb_requests: int
    concurrency: tuple[int, ...] = (1, 32)


def run_rounds(scenarios: list[Scenario], gen: LoadGen, meter: Meter, plan: Plan,
               log: Callable[[str], None]) -> list[Sample]:
    live = [s for s in scenarios if s.skipped is None]
    for s in live:
        log(f"warm-up {s.key}")
        gen.run(s.load(), 32, plan.warmup_s)
        if s.stream_body is not None:
            gen.first_bytes(s.load(stream=True), max(50, plan.ttfb_requests // 10))
    samples: list[Sample] = []
    for r in range(plan.rounds):
        # Interleaved, and the order rotates each round: a slow minute on the machine is
        # spread over every scenario instead of landing on one.
        order = live[r % len(live):] + live[:r % len(live)]
        for s in order:
            for c in plan.concurrency:
                run = partial(gen.run, s.load(), c, plan.duration_s)
                samples.append(meter.sample(s, r, f"c{c}", run))
                log(_line(samples[-1]))
            if s.stream_body is not None:
                run = partial(gen.first_bytes, s.load(stream=True), plan.ttfb_requests)
                samples.append(meter.sample(s, r, "ttfb", run))
                log(_line(samples[-1]))
    return samples


def _line(s: Sample) -> str:
    r = s.load
    extra = (f"ttfb p50 {r.ttfb_p50_ms:.3f} ms" if s.kind == "ttfb"
             else f"{r.rps:8.0f} req/s")
    return (f"  round {s.round} {s.scenario:15s} {s.kind:4s} {extra}  p50 {r.p50_ms:.3f} "
            f"p99 {r.p99_ms:.3f} ms  cpu {s.cpu_us_per_request:.0f} us/req "
            f"({s.server_sys_pct:.0f}% sys)  "
            f"rss {s.rss_mb} MB  errors {r.errors}  other {s.other_load_cores}")


def soak(lab: Lab, gen: LoadGen, total: int, log: Callable[[str], None]) -> dict[str, Any]:
    """A fresh Podium (default pipeline, tracing on): RSS at start, and after total/2 and
    total requests at 32 connections."""
    proc, port, _ = lab.launch_podium("podium-soak", True)
    try:
        scenario = Scenario("podium-soak", "soak", port, proc, lab.bodies["chat"])
        points = [{"requests": 0, "rss_mb": rss_mb(proc.pid)}]
        done, errors, started = 0, 0, time.perf_counter()
        for _ in range(2):
            result = gen.count(scenario.load(), 32, total // 2)
            done += result.requests
            errors += result.errors
            points.append({"requests": done, "rss_mb": rss_mb(proc.pid), "rps": result.rps})
            log(f"  soak: {done} requests, RSS {points[-1]['rss_mb']} MB")
        mid, end = points[1]["rss_mb"], points[2]["rss_mb"]
        return {"requests": done, "errors": errors, "points": points,
                "rss_end_mb": end, "growth_pct": round(100 * (end - mid) / mid, 2),
                "seconds": round(time.perf_counter() - started, 1)}
    finally:
        lab.procs.stop(proc)


def startup(lab: Lab, times: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Seconds from launching `podium serve` (bench config: no deployment needs litellm) to
    the first 200 from /readyz; the process is stopped after each launch."""
    seconds = []
    for i in range(times):
        proc, _, ready_s = lab.launch_podium(f"podium-startup-{i}", True)
        lab.procs.stop(proc)
        seconds.append(round(ready_s, 3))
        log(f"  start-up {i}: {ready_s:.3f} s")
    ordered = sorted(seconds)
    return {"runs": seconds, "median_s": ordered[len(ordered) // 2], "max_s": ordered[-1]}
