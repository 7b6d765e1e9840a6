"""What is measured, side by side: the upstream directly, the bare proxy, Podium (default
pipeline with and without tracing, the cache-hit path, two workers) and LiteLLM's proxy.

Each scenario is a server process on the gateway's CPU (the upstream-direct one is the mock
itself), and the request bodies it is sent. Scenarios that the installed code cannot run are
kept, with the reason, so the report shows them as skipped."""

from __future__ import annotations

import secrets
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import yaml

from bench.loadgen import Load
from bench.procs import LOOPBACK, Proc, Procs, free_port, http_get, venv_install

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
CONFIG = BENCH_DIR / "podium-bench.yaml"
KEY = "sk-bench"
CHAT_PATH = "/v1/chat/completions"
MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Write one sentence about load testing an AI gateway."}]
# The pipeline scenarios send a sampled request (temperature 0.7): never a cache candidate, so
# every request pays the upstream call, like the bare proxy's. The cache scenario sends the
# same deterministic request (temperature 0) again and again.
CHAT_BODY = {"model": "bench", "messages": MESSAGES, "temperature": 0.7, "max_tokens": 64}
CACHE_BODY = {**CHAT_BODY, "temperature": 0}
STREAM_BODY = {**CHAT_BODY, "stream": True, "stream_options": {"include_usage": True}}
CACHE_SECTION: dict[str, Any] = {"enabled": True}
GATEWAY_CPU, LOADGEN_CPU, ALL_CPUS = "1", "0", "0,1"


@dataclass
class Scenario:
    key: str
    label: str
    port: int = 0
    proc: Proc | None = None
    body: Path | None = None
    stream_body: Path | None = None
    skipped: str | None = None
    podium: bool = False
    workers: int = 1
    probe: dict[str, str] = field(default_factory=dict)
    api_key: str = KEY

    def load(self, stream: bool = False) -> Load:
        body = self.stream_body if stream else self.body
        assert body is not None
        return Load(f"http://{LOOPBACK}:{self.port}{CHAT_PATH}", body,
                    [("Authorization", f"Bearer {self.api_key}")])


def podium_command() -> list[str]:
    script = Path(sys.executable).parent / "podium"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]


def workers_supported() -> bool:
    out = subprocess.run([*podium_command(), "serve", "--help"], capture_output=True,
                         text=True, timeout=60, check=False)
    return "--workers" in out.stdout


def write_config(path: Path, extra: dict[str, Any] | None = None) -> Path:
    raw = yaml.safe_load(CONFIG.read_text())
    raw.update(extra or {})
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def config_accepted(path: Path, env: dict[str, str]) -> tuple[bool, str]:
    out = subprocess.run([*podium_command(), "check", "--config", str(path)],
                         capture_output=True, text=True, timeout=60, check=False,
                         env={**_base_env(), **env})
    return out.returncode == 0, (out.stderr or out.stdout).strip()


# LiteLLM proxy's own venv (`--install-litellm-proxy`): its `proxy` extra never enters Podium's.
LITELLM_VENV = BENCH_DIR / "out" / "litellm-proxy"


def litellm_python() -> str:
    """The interpreter LiteLLM proxy runs under: $BENCH_LITELLM_PYTHON, the bench's own
    LiteLLM venv when it exists, else this one."""
    import os

    venv = LITELLM_VENV / "bin" / "python"
    return os.environ.get("BENCH_LITELLM_PYTHON") or (str(venv) if venv.exists()
                                                      else sys.executable)


def litellm_proxy_problem(python: str) -> str | None:
    """None when `litellm.proxy` imports with its dependencies under `python`, else why not."""
    out = subprocess.run([python, "-c", "import litellm.proxy.proxy_server"],
                         capture_output=True, text=True, timeout=180, check=False,
                         env={**_base_env(), "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    if out.returncode == 0:
        return None
    last = (out.stderr.strip().splitlines() or ["import failed"])[-1]
    return f"not installed (litellm.proxy does not import: {last})"


def install_litellm_proxy(log: Callable[[str], None]) -> bool:
    """`litellm[proxy]`, at the version Podium pins, into a venv under bench/out."""
    from importlib.metadata import version

    pinned = version("litellm")
    log(f"installing litellm[proxy]=={pinned} into {LITELLM_VENV}")
    problem = venv_install(LITELLM_VENV, f"litellm[proxy]=={pinned}", sys.executable)
    if problem is not None:
        log(f"  could not install LiteLLM proxy: {problem}")
    return problem is None


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}


class Lab:
    """Starts and owns every server of a run (all stopped by the `Procs` it was given)."""

    def __init__(self, procs: Procs, work: Path, litellm: bool) -> None:
        self.procs = procs
        self.work = work
        self.want_litellm = litellm
        self.upstream_port = free_port()
        self.otlp_port = free_port()
        self.upstream: Proc | None = None
        self.otlp: Proc | None = None
        self.bodies = {name: self._body(name, body) for name, body in
                       (("chat", CHAT_BODY), ("cache", CACHE_BODY), ("stream", STREAM_BODY))}

    def _body(self, name: str, body: dict[str, Any]) -> Path:
        path = self.work / f"body-{name}.json"
        path.write_bytes(orjson.dumps(body))
        return path

    def _py(self, module: str, *args: str) -> list[str]:
        return [sys.executable, "-m", module, *args]

    def start_backends(self) -> None:
        self.upstream = self.procs.start("mock-upstream", self._py(
            "bench.mock_upstream", "--port", str(self.upstream_port)), LOADGEN_CPU, cwd=ROOT)
        self.otlp = self.procs.start("otlp-receiver", self._py(
            "bench.otlp_receiver", "--port", str(self.otlp_port)), LOADGEN_CPU, cwd=ROOT)
        self.upstream.wait_ready(self.upstream_port, "/health")
        self.otlp.wait_ready(self.otlp_port, "/health")

    def counters(self, which: str) -> dict[str, int]:
        port = self.upstream_port if which == "upstream" else self.otlp_port
        status, raw = http_get(LOOPBACK, port, "/stats")
        return orjson.loads(raw) if status == 200 else {}

    def podium_env(self, tracing: bool, state: Path) -> dict[str, str]:
        env = {**_base_env(), "BENCH_UPSTREAM_PORT": str(self.upstream_port),
               "BENCH_STATE_DIR": str(state), "BENCH_KEY": KEY}
        if tracing:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://{LOOPBACK}:{self.otlp_port}"
            env["OTEL_SERVICE_NAME"] = "podium-bench"
        return env

    def launch_podium(self, name: str, tracing: bool, config: Path | None = None,
                      workers: int = 1, cpus: str = GATEWAY_CPU,
                      wrapper: list[str] | None = None) -> tuple[Proc, int, float]:
        """Start `podium serve`; (process, port, seconds until /readyz answered 200)."""
        port = free_port()
        state = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.work))
        argv = [*(wrapper or podium_command()), "serve", "--config", str(config or CONFIG),
                "--host", LOOPBACK, "--port", str(port)]
        if workers > 1:
            argv += ["--workers", str(workers)]
        proc = self.procs.start(name, argv, cpus, env=self.podium_env(tracing, state), cwd=ROOT)
        ready_s = proc.wait_ready(port, "/readyz", timeout_s=60, interval_s=0.005)
        return proc, port, ready_s

    def scenarios(self, with_workers: bool, whatifs: list[str]) -> list[Scenario]:
        chat, stream = self.bodies["chat"], self.bodies["stream"]
        out = [Scenario("upstream", "upstream directly (mock)", self.upstream_port,
                        self.upstream, chat, stream)]
        port = free_port()
        proxy = self.procs.start("bare-proxy", self._py(
            "bench.bare_proxy", "--port", str(port), "--upstream",
            f"http://{LOOPBACK}:{self.upstream_port}/v1", "--model", "mock-small"),
            GATEWAY_CPU, cwd=ROOT)
        proxy.wait_ready(port, "/health")
        out.append(Scenario("bare", "bare aiohttp proxy", port, proxy, chat, stream))
        for key, label, tracing in (("podium", "Podium, default pipeline, tracing on", True),
                                    ("podium-notrace", "Podium, default pipeline, tracing off",
                                     False)):
            scenario = Scenario(key, label, body=chat, stream_body=stream, podium=True)
            out.append(self._guarded(scenario, partial(self._launched, scenario, tracing)))
        for make in (self._cache_scenario, lambda: self._workers_scenario(with_workers),
                     self._litellm_scenario):
            out.append(make())
        out += [self._whatif_scenario(patches) for patches in whatifs]
        return out

    def _whatif_scenario(self, patches: str) -> Scenario:
        """Podium (tracing on) with `bench.whatif` patches: what a product change would buy."""
        scenario = Scenario(f"whatif:{patches}", f"what-if: Podium, tracing on, + {patches}",
                            body=self.bodies["chat"], stream_body=self.bodies["stream"],
                            podium=True)
        wrapper = [sys.executable, "-m", "bench.whatif", "--patch", patches]

        def start() -> Scenario:
            scenario.proc, scenario.port, _ = self.launch_podium(
                f"whatif-{patches.replace(',', '-')}", True, wrapper=wrapper)
            return scenario
        return self._guarded(scenario, start)

    @staticmethod
    def _guarded(scenario: Scenario, start: Callable[[], Scenario]) -> Scenario:
        """A gateway that does not start is reported as failed; the others still run."""
        try:
            return start()
        except (RuntimeError, OSError, subprocess.SubprocessError) as err:
            scenario.skipped = f"failed to start: {str(err).splitlines()[0][:200]}"
            return scenario

    def _cache_scenario(self) -> Scenario:
        scenario = Scenario("podium-cache", "Podium, cache hit path, tracing on", podium=True,
                            body=self.bodies["cache"])
        config = write_config(self.work / "podium-cache.yaml", {"cache": CACHE_SECTION})
        ok, why = config_accepted(config, self.podium_env(False, self.work))
        if not ok:
            scenario.skipped = "not available (the config rejects a cache: section: " \
                               f"{why.splitlines()[-1].strip() if why else '?'})"
            return scenario
        return self._guarded(scenario, lambda: self._launched(scenario, True, config))

    def _launched(self, scenario: Scenario, tracing: bool, config: Path | None = None,
                  workers: int = 1, cpus: str = GATEWAY_CPU) -> Scenario:
        scenario.proc, scenario.port, _ = self.launch_podium(scenario.key, tracing, config,
                                                             workers, cpus)
        return scenario

    def _workers_scenario(self, wanted: bool) -> Scenario:
        scenario = Scenario("podium-2w", "Podium, 2 workers, tracing off", podium=True,
                            body=self.bodies["chat"], workers=2)
        if not wanted:
            scenario.skipped = "not run (--no-workers)"
        elif not workers_supported():
            scenario.skipped = "not available (`podium serve --help` has no --workers)"
        else:
            return self._guarded(scenario, lambda: self._launched(
                scenario, False, workers=2, cpus=ALL_CPUS))
        return scenario

    def _litellm_scenario(self) -> Scenario:
        scenario = Scenario("litellm", "LiteLLM proxy", body=self.bodies["chat"],
                            stream_body=self.bodies["stream"])
        python = litellm_python()
        problem = (litellm_proxy_problem(python) if self.want_litellm
                   else "not run (--no-litellm)")
        if problem is not None:
            scenario.skipped = problem
            return scenario
        config = self.work / "litellm.yaml"
        # LiteLLM proxy refuses to start without a strong master key; clients present it.
        scenario.api_key = f"sk-{secrets.token_hex(32)}"
        config.write_text(yaml.safe_dump({
            "model_list": [{"model_name": "bench", "litellm_params": {
                "model": "openai/mock-small", "api_key": "mock",
                "api_base": f"http://{LOOPBACK}:{self.upstream_port}/v1"}}],
            "general_settings": {"master_key": scenario.api_key}}))
        port = free_port()
        script = Path(python).parent / "litellm"
        argv = [str(script)] if script.exists() else [python, "-m", "litellm"]
        scenario.proc = self.procs.start("litellm", [
            *argv, "--config", str(config), "--host", LOOPBACK, "--port", str(port),
            "--num_workers", "1"], GATEWAY_CPU,
            env={**_base_env(), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}, cwd=self.work)
        scenario.proc.wait_ready(port, "/health/liveliness", timeout_s=120)
        scenario.port = port
        return scenario


def probe(scenario: Scenario) -> dict[str, str]:
    """One request before any load: the status and Podium's headers, as a sanity check."""
    import http.client

    conn = http.client.HTTPConnection(LOOPBACK, scenario.port, timeout=30)
    try:
        assert scenario.body is not None
        conn.request("POST", CHAT_PATH, scenario.body.read_bytes(),
                     {"Content-Type": "application/json",
                      "Authorization": f"Bearer {scenario.api_key}"})
        resp = conn.getresponse()
        body = resp.read()
        out = {"status": str(resp.status)}
        out.update({k: v for k, v in resp.getheaders() if k.lower().startswith("x-podium")})
        if resp.status != 200:
            out["body"] = body[:300].decode(errors="replace")
        return out
    finally:
        conn.close()
