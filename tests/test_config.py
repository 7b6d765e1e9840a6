"""Config loading: env expansion, unknown fields, path-qualified errors, `podium check`."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.config import ConfigError, parse_config
from routing.catalog import Catalog

ROOT = Path(__file__).resolve().parents[1]

GOOD = {
    "model_list": [
        {"model_name": "chat", "litellm_params": {
            "model": "openai/gpt-4o-mini", "api_key": "os.environ/OPENAI_KEY",
            "api_base": "http://${UP_HOST}:9000/v1", "timeout": 7, "temperature": 0.2}},
        {"model_name": "chat", "litellm_params": {"model": "openai/gpt-4o"},
         "model_info": {"id": "big", "quality": 90, "supports": ["tools", "vision"],
                        "data_clearance": "confidential", "region": "eu"}},
        {"model_name": "vectors", "litellm_params": {"model": "openai/text-embedding-3-small"},
         "model_info": {"mode": "embedding"}},
    ],
    "keys": [
        {"key": "${APP_KEY}", "name": "app", "team": "support", "models": ["chat"]},
        {"key_sha256": hashlib.sha256(b"other").hexdigest(), "name": "other"},
    ],
}
ENV = {"OPENAI_KEY": "sk-provider", "UP_HOST": "10.0.0.5", "APP_KEY": "sk-app"}


def problems(raw: dict, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env=ENV if env is None else env)
    return info.value.problems


def test_good_config_expands_env_and_compiles() -> None:
    cfg = parse_config(GOOD, env=ENV)
    catalog = Catalog.from_config(cfg)
    small, big = catalog.groups["chat"]
    assert small.id == "chat-0" and big.id == "big"
    assert small.api_key == "sk-provider"
    assert small.api_base == "http://10.0.0.5:9000/v1"
    assert small.timeout_s == 7
    assert small.extra_params == {"temperature": 0.2}
    # Prices and windows default to litellm's map; explicit model_info wins.
    assert small.input_cost_per_token == pytest.approx(1.5e-7)
    assert small.max_input_tokens == 128000
    assert "tools" in small.supports
    assert big.supports == frozenset({"tools", "vision"})
    assert big.data_clearance == "confidential" and big.region == "eu"
    assert catalog.by_id["vectors-0"].mode == "embedding"
    assert "sk-provider" not in repr(cfg) and "sk-provider" not in repr(small)


def test_every_problem_is_reported_with_its_path() -> None:
    raw = yaml.safe_load(yaml.safe_dump(GOOD))
    raw["model_list"][1]["model_info"]["quality"] = 140
    raw["model_list"][2]["model_info"]["colour"] = "blue"
    raw["keys"][0]["models"] = ["chat", "ghost"]
    raw["routing"] = {"default": {"min_quality": "high"}}
    found = problems(raw)
    assert "model_list[1].model_info.quality: Input should be less than or equal to 100" in found
    assert "model_list[2].model_info.colour: Extra inputs are not permitted" in found
    assert "routing.default.min_quality: Input should be a valid integer, unable to parse " \
           "string as an integer" in found


def test_cross_references_are_checked() -> None:
    raw = yaml.safe_load(yaml.safe_dump(GOOD))
    raw["keys"][0]["models"] = ["chat", "ghost"]
    raw["keys"][1]["name"] = "app"
    raw["model_list"][2]["model_info"]["id"] = "big"
    found = problems(raw)
    assert "keys[0].models[1]: unknown model 'ghost'" in found
    assert "keys[1].name: duplicate key name 'app'" in found
    assert "model_list[2].model_info.id: duplicate deployment id 'big' (also model_list[1])" \
        in found


def test_missing_env_and_key_shape() -> None:
    found = problems(GOOD, env={"UP_HOST": "h"})
    assert "model_list[0].litellm_params.api_key: environment variable OPENAI_KEY is not set" \
        in found
    assert "keys[0].key: environment variable APP_KEY is not set" in found
    raw = yaml.safe_load(yaml.safe_dump(GOOD))
    raw["keys"][1]["key"] = "also"
    assert "keys[1]: give exactly one of 'key' or 'key_sha256'" in problems(raw)


def test_default_with_fallback_syntax() -> None:
    raw = yaml.safe_load(yaml.safe_dump(GOOD))
    raw["keys"][0]["key"] = "${NOT_SET:-sk-fallback}"
    cfg = parse_config(raw, env=ENV)
    assert cfg.keys[0].key is not None and cfg.keys[0].key.get_secret_value() == "sk-fallback"


def test_group_mixing_modes_and_reserved_name() -> None:
    raw = yaml.safe_load(yaml.safe_dump(GOOD))
    raw["model_list"][2]["model_name"] = "chat"
    raw["model_list"].append({"model_name": "auto", "litellm_params": {"model": "openai/x"}})
    found = problems(raw)
    assert "model_list[2].model_info.mode: group 'chat' mixes 'chat' and 'embedding' " \
           "deployments" in found
    assert "model_list[3].model_name: 'auto' is reserved" in found


def run_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "check", "--config", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "APP_KEY": "sk", "OPENAI_KEY": "k",
                               "UP_HOST": "h"})


def test_podium_check_accepts_the_shipped_and_a_good_config(tmp_path: Path) -> None:
    shipped = run_check(ROOT / "config" / "gateway.yaml")
    assert shipped.returncode == 0, shipped.stderr
    assert "OK (5 deployments in 3 groups, 1 keys)" in shipped.stdout
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(GOOD))
    assert run_check(good).returncode == 0


def test_podium_check_prints_every_problem_and_exits_1(tmp_path: Path) -> None:
    raw = yaml.safe_load(yaml.safe_dump(GOOD))
    raw["model_list"][0]["model_info"] = {"quality": -1}
    raw["keys"][0]["models"] = ["ghost"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    result = run_check(bad)
    assert result.returncode == 1
    assert "model_list[0].model_info.quality: Input should be greater than or equal to 0" \
        in result.stderr
    # Cross-references are checked in the same run, not only once the schema is clean.
    assert "2 problem(s)" in result.stderr and "keys[0].models[0]: unknown model 'ghost'" \
        in result.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("model_list: [unclosed")
    result = run_check(broken)
    assert result.returncode == 1 and "not valid YAML" in result.stderr
    assert run_check(tmp_path / "missing.yaml").returncode == 1


def test_state_cluster_needs_redis_and_the_prefix_no_braces() -> None:
    found = problems({**GOOD, "state": {"backend": "memory", "cluster": True}})
    assert any(p.startswith("state") and "'cluster: true' needs state.backend redis" in p
               for p in found), found
    found = problems({**GOOD, "state": {"backend": "redis", "url": "redis://h:6379/0",
                                        "key_prefix": "app{1}:"}})
    assert any(p.startswith("state.key_prefix") for p in found), found
    cfg = parse_config({**GOOD, "state": {"backend": "redis", "url": "redis://h:6379/0",
                                          "cluster": True}}, env=ENV)
    assert cfg.state.cluster
