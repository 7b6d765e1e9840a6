"""Config mistakes that used to pass silently (gateway/config_refs.py, config_reach.py): each
is an error with its path or a warning, reported by `podium check` in the same run as schema
problems, logged by `podium serve` at start (which refuses errors)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import (
    Checked,
    ConfigError,
    GatewayConfig,
    ModelInfo,
    check_config,
    load_checked,
)
from gateway.config_refs import review

ROOT = Path(__file__).resolve().parents[1]


def model(name: str, dep_id: str, **info: Any) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {"model": f"openai/{dep_id}",
                                                   "api_base": "http://127.0.0.1:9/v1"},
            "model_info": {"id": dep_id, **info}}


BASE: dict[str, Any] = {
    "model_list": [model("chat", "small", region="us"),
                   model("chat", "big", region="eu", data_clearance="internal")],
    "teams": [{"name": "support", "data_class": "internal"}, {"name": "ops"}],
    "keys": [{"key": "sk-support-0000000000", "name": "support-bot", "team": "support"},
             {"key": "sk-ops-000000000000000", "name": "ops-bot", "team": "ops"}],
}


def config(**sections: Any) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    raw.update(copy.deepcopy(sections))
    return raw


def outcome(raw: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(errors, warnings) of `raw`."""
    try:
        checked = check_config(raw, env={})
    except ConfigError as err:
        return err.problems, err.warnings
    return [], list(checked.warnings)


def test_the_base_config_is_clean() -> None:
    assert outcome(config()) == ([], [])


def test_approval_rule_typos() -> None:
    errors, warnings = outcome(config(approvals=[{"name": "refunds", "match": {
        "team": "suport", "key": "support-bto", "model": "chta", "data_class": "confidental"}}]))
    assert "approvals[0].match.team: unknown team 'suport' (teams: ops, support)" in errors
    assert "approvals[0].match.model: unknown model 'chta'" in errors
    assert any(e.startswith("approvals[0].match.data_class[0]: Input should be 'public'")
               for e in errors), errors
    # A key name may belong to a key created later through the admin API: a warning.
    assert any(w.startswith("approvals[0].match.key: no key named 'support-bto'")
               for w in warnings), warnings
    # Lists of names are checked item by item.
    errors, _ = outcome(config(approvals=[{"name": "r", "match": {
        "team": ["ops", "suport"], "data_class": ["internal", "secret"]}}]))
    assert "approvals[0].match.team[1]: unknown team 'suport' (teams: ops, support)" in errors
    assert any(e.startswith("approvals[0].match.data_class[1]:") for e in errors), errors


def test_routing_rule_typos() -> None:
    errors, warnings = outcome(config(routing={"rules": [
        {"name": "r", "match": {"team": "opps", "key": "ops-bto"}, "min_quality": 70}]}))
    assert errors == ["routing.rules[0].match.team: unknown team 'opps' (teams: ops, support)"]
    assert [w.split(":")[0] for w in warnings] == ["routing.rules[0].match.key"]


def test_shadow_trials_and_workflows_name_what_exists() -> None:
    errors, _ = outcome(config(routing={"rules": [
        {"name": "r", "shadow": {"group": "chta", "share": 0.1,
                                 "judge": {"deployment": "bgi", "rubric": "same facts"}}},
        {"name": "s", "shadow": {"deployment": "small", "share": 0.5}}]},
        workflows=[{"name": "triage"}, {"name": "triage"}, {"name": "other"}]))
    assert errors == [
        "routing.rules[0].shadow.group: unknown chat model group 'chta'",
        "routing.rules[0].shadow.judge.deployment: unknown chat deployment id 'bgi'",
        "workflows[1].name: 'triage' is declared twice",
        "workflows[2].name: 'other' is reserved (the metrics' label for undeclared and "
        "missing workflows)"]
    errors, _ = outcome(config(routing={"rules": [
        {"name": "r", "shadow": {"group": "chat", "share": 2}},
        {"name": "s", "shadow": {"group": "chat", "deployment": "small", "share": 0.1}}]},
        workflows=[{"name": "bad name!"}]))
    assert any(e.startswith("routing.rules[0].shadow.share: Input should be less than or "
                            "equal to 1") for e in errors), errors
    assert any(e.startswith("routing.rules[1].shadow: Value error, give exactly one of")
               for e in errors), errors
    assert any(e.startswith("workflows[0].name: String should match pattern") for e in errors)
    assert outcome(config(routing={"rules": [{"name": "r", "shadow": {
        "group": "chat", "share": 0.05, "judge": {"group": "chat", "rubric": "r"}}}]},
        workflows=[{"name": "triage"}], shadow={"rpm": 10, "budget_usd": 1.5},
        tasks={"idle_s": 60, "max_open": 100})) == ([], [])


def test_a_team_that_may_come_from_elsewhere_is_a_warning() -> None:
    # No `teams:`: a key created through the admin API may carry any team name.
    raw = config(routing={"rules": [{"name": "r", "match": {"team": "opps"}}]})
    del raw["teams"]
    errors, warnings = outcome(raw)
    assert errors == []
    assert any(w.startswith("routing.rules[0].match.team: no team 'opps'") for w in warnings)
    # A JWT's caller is always in a declared team (issue 12): a JWT issuer brings no others.
    raw = config(routing={"rules": [{"name": "r", "match": {"team": "opps"}}]},
                 auth={"jwt": {"issuer": "https://idp", "audience": "podium",
                               "jwks_url": "https://idp/jwks"}})
    errors, _ = outcome(raw)
    assert errors == ["routing.rules[0].match.team: unknown team 'opps' (teams: ops, support)"]


def test_a_region_no_deployment_is_in() -> None:
    errors, _ = outcome(config(
        teams=[{"name": "support", "regions": ["usa"]}, {"name": "ops"}],
        routing={"default": {"regions": ["us", "mars"]}}))
    assert errors == [
        "teams[0].regions[0]: no deployment is in region 'usa' (regions in model_list: eu, us)",
        "routing.default.regions[1]: no deployment is in region 'mars' (regions in model_list: "
        "eu, us)"]


def test_data_clearance_defaults_to_public_and_unreachable_teams_are_reported() -> None:
    # The decision: an unset clearance stays public (fail closed: data above public goes only
    # where the config says), and a team that can therefore reach nothing is reported.
    assert ModelInfo().data_clearance == "public"
    raw = config(teams=[{"name": "support", "data_class": "confidential"}, {"name": "ops"}])
    errors, warnings = outcome(raw)
    assert errors == []
    assert warnings == [
        "teams[0]: team 'support' can reach no deployment: its data_class is 'confidential' "
        "and no deployment it may use has data_clearance confidential or higher (an unset "
        "data_clearance is public); set model_info.data_clearance on the deployments that may "
        "receive confidential data"]
    # Regions and allow-lists can leave nothing too; a key is reported when its team is not.
    raw = config(teams=[{"name": "support", "data_class": "internal", "regions": ["us"]},
                        {"name": "ops", "models": ["chat"]}])
    raw["keys"][1]["models"] = []
    errors, warnings = outcome(raw)
    assert errors == []
    assert warnings == [
        "teams[0]: team 'support' can reach no deployment: no deployment cleared for internal "
        "data is in its regions ['us']",
        "keys[1]: key 'ops-bot' can reach no deployment: its models allow-list [] leaves no "
        "deployment"]


def test_a_key_whose_team_is_not_declared() -> None:
    raw = config()
    raw["keys"][1]["team"] = "opps"
    assert outcome(raw)[0] == ["keys[1].team: unknown team 'opps'"]
    del raw["teams"]
    errors, warnings = outcome(raw)
    assert errors == []
    assert 'keys[1].team: team \'opps\' is not under teams:, so no team policy applies and ' \
           'metrics count it as team="other"; declare it under teams:' in warnings


def test_duplicate_yaml_keys_are_errors_with_path_and_line(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config()) + "routing:\n  rules:\n    - name: r\n"
                    "      match: {team: ops}\n      min_quality: 50\n      min_quality: 90\n"
                    "teams: []\n")
    with pytest.raises(ConfigError) as info:
        load_checked(path, env={})
    lines = path.read_text().splitlines()
    first = next(i for i, line in enumerate(lines, 1) if line.startswith("teams:"))
    assert info.value.problems[:2] == [
        f"routing.rules[0].min_quality: duplicate key 'min_quality' at line {len(lines) - 1} "
        f"(first at line {len(lines) - 2}); YAML would silently keep the last",
        f"teams: duplicate key 'teams' at line {len(lines)} (first at line {first}); YAML "
        f"would silently keep the last"]


def test_schema_and_reference_problems_in_the_same_run() -> None:
    raw = config(approvals=[{"name": "r", "match": {"model": "chta"}}])
    raw["model_list"][0]["model_info"]["quality"] = 140
    raw["keys"][0]["models"] = ["ghost"]
    errors, _ = outcome(raw)
    assert errors == ["model_list[0].model_info.quality: Input should be less than or equal "
                      "to 100",
                      "keys[0].models[0]: unknown model 'ghost'",
                      "approvals[0].match.model: unknown model 'chta'"]


def test_the_readme_team_example_reaches_its_cleared_deployment() -> None:
    readme = (ROOT / "README.md").read_text()
    example = readme.split("<!-- readme-test: config -->\n```yaml\n", 1)[1].split("```")[0]
    env = {"OPENAI_API_KEY": "sk-o", "APP_KEY": "sk-app", "ADMIN_KEY": "sk-admin"}
    checked = check_config(yaml.safe_load(example), env=env)
    assert isinstance(checked, Checked) and isinstance(checked.config, GatewayConfig)
    assert not [w for w in checked.warnings if "can reach no deployment" in w]


# Anything a YAML file can hold, in any section: the review must never raise on it (the schema
# reports what is malformed; the review skips it).
_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["name", "team", "key", "models", "model", "regions", "match",
                         "data_class", "model_info", "model_name", "rules", "default",
                         "fallbacks", "weights", "id", "region", "data_clearance", "jwt"]),
        inner, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["model_list", "keys", "teams", "routing", "approvals",
                                        "admin_keys", "auth", "cache", "plugins"]),
                       _JSONISH, max_size=5))
def test_review_never_raises_on_malformed_data(raw: dict[str, Any]) -> None:
    found = review(raw)
    assert all(isinstance(p, str) for p in found.errors + found.warnings)


# ---- the commands ---------------------------------------------------------------------------

def run(*args: str, cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env={"PATH": "/usr/bin:/bin"})


def test_podium_check_prints_warnings_and_strict_fails_on_them(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config(
        teams=[{"name": "support", "data_class": "restricted"}, {"name": "ops"}])))
    result = run("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "OK (2 deployments in 1 groups, 2 keys), 1 warning(s)" in result.stdout
    assert "  teams[0]: team 'support' can reach no deployment" in result.stderr
    assert run("check", "--strict", "--config", str(path)).returncode == 1


def test_podium_serve_refuses_errors_and_lists_warnings_too(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config(
        teams=[{"name": "support", "data_class": "restricted", "regions": ["usa"]},
               {"name": "ops"}])))
    result = run("serve", "--config", str(path), "--port", "9")
    assert result.returncode == 1
    assert "cannot serve, 1 problem(s):\n  teams[0].regions[0]: no deployment is in region " \
           "'usa'" in result.stderr
    assert "serving" not in result.stderr + result.stdout
