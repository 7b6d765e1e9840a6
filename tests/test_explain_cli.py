"""`podium route --explain` when it matters most: nothing can serve the request (the table of
every candidate and why it was dropped, then the error), a fallback group the key may not use,
an unknown caller, and a reader that goes away (`| head`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import LIMITED_KEY, GatewayFactory, Upstream, base_config, deployment
from tests.support.asking import HI, explain

ROOT = Path(__file__).resolve().parents[1]
VISION = {"model": "chat", "messages": [{"role": "user", "content": [
    {"type": "text", "text": "what is this?"},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}


def catalog(url: str) -> dict[str, Any]:
    cfg = base_config(url)
    cfg["model_list"][:3] = [
        deployment("chat", "sim-cheap", url, quality=40, supports=["tools", "streaming"],
                   input_cost_per_token=1e-7, output_cost_per_token=2e-7),
        deployment("chat", "sim-dear", url, quality=80, supports=["tools", "streaming"],
                   input_cost_per_token=1e-6, output_cost_per_token=2e-6),
        deployment("premium", "sim-premium", url, quality=95, supports=["tools"],
                   input_cost_per_token=5e-6, output_cost_per_token=1e-5)]
    cfg["teams"] = [{"name": "support"}, {"name": "legal", "data_class": "restricted"}]
    cfg["routing"] = {"rules": [{"name": "with-premium", "match": {"model": "chat"},
                                 "fallbacks": ["premium"]}]}
    return cfg


def route(path: Path, body: dict[str, Any], *args: str,
          **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "route", "--explain", "--config",
                           str(path), *args], input=json.dumps(body), text=True, cwd=ROOT,
                          timeout=60, **(kw or {"capture_output": True}))


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(catalog("http://127.0.0.1:9/v1")))
    return path


def test_nothing_can_serve_prints_every_candidate_then_the_error(config_path: Path) -> None:
    result = route(config_path, VISION)
    assert result.returncode == 2
    table = result.stdout.splitlines()
    assert table[1] == "plan: none: nothing can serve this request"
    dropped = {line.split()[1]: line for line in table if line.startswith("  dropped")}
    assert set(dropped) == {"sim-cheap", "sim-dear", "sim-premium"}
    assert all("does not support vision" in line for line in dropped.values())
    assert result.stderr.startswith("error: No deployment of 'chat' can serve this request: "
                                    "sim-cheap: does not support vision")
    as_json = json.loads(route(config_path, VISION, "--json").stdout)
    assert as_json["chain"] == [] and len(as_json["candidates"]) == 3
    assert as_json["error"]["code"] == "unsupported_request"


def test_a_team_cleared_for_nothing_sees_the_table_and_the_403(config_path: Path) -> None:
    result = route(config_path, {"model": "chat", "messages": HI}, "--team", "legal")
    assert result.returncode == 2
    assert result.stdout.count("cleared for public, request is restricted") == 3
    assert result.stderr.startswith("error: No deployment of 'chat' is cleared for "
                                    "restricted data")


def test_a_fallback_group_the_key_may_not_use_is_listed_with_why(config_path: Path) -> None:
    result = route(config_path, {"model": "chat", "messages": HI}, "--key", "limited")
    assert result.returncode == 0, result.stderr
    [premium] = [line for line in result.stdout.splitlines() if "sim-premium" in line]
    assert premium.startswith("  dropped") and "[fallback:premium]" in premium
    assert premium.endswith("not in this key's models allow-list")
    assert "plan: sim-cheap -> sim-dear" in result.stdout


async def test_the_caller_does_not_see_groups_it_may_not_use(upstream: Upstream,
                                                             make_gateway: GatewayFactory,
                                                             ) -> None:
    gw = await make_gateway(catalog(upstream.url))
    decision = await explain(gw, {"model": "chat", "messages": HI}, key=LIMITED_KEY)
    assert {c["deployment"] for c in decision["candidates"]} == {"sim-cheap", "sim-dear"}
    full = await explain(gw, {"model": "chat", "messages": HI})
    assert "sim-premium" in full["chain"]


@pytest.mark.parametrize(("args", "message"), [
    (["--team", "suport"], "error: no team 'suport' in the config (teams: legal, support)"),
    (["--key", "limted"], "error: no key named 'limted' in the config (keys: app, limited)"),
])
def test_an_unknown_caller_is_an_error(config_path: Path, args: list[str],
                                       message: str) -> None:
    result = route(config_path, {"model": "chat", "messages": HI}, *args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == message


def test_a_reader_that_went_away_is_no_traceback(config_path: Path) -> None:
    # The read end is closed before podium writes a byte: every write gets EPIPE, as it does
    # when `| head` has exited, but deterministically.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = route(config_path, {"model": "chat", "messages": HI}, stdout=write_end,
                       stderr=subprocess.PIPE)
    finally:
        os.close(write_end)
    assert result.returncode == 1
    assert result.stderr == "", result.stderr
