"""Cross-references in a config: every name that points at another part of it, checked on the
raw (environment-expanded) data, so that `podium check` reports them in the same run as the
schema's problems instead of only once the schema is clean.

Working on raw data means taking nothing for granted: a value of the wrong type is skipped here
(the schema reports it) rather than trusted. Two verdicts:

- an **error** (with its path) for a name the config alone defines and gets wrong: a model
  group, a deployment id, a region no deployment is in, a team when `teams:` is declared and no
  JWT can bring others;
- a **warning** where the name may still come from outside the file (a key created through the
  admin API, a team from a JWT), or where the config is valid but surely not what was meant: a
  team or key that can reach no deployment, a key whose team is not under `teams:`, the
  published development admin key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.config_base import DATA_CLASSES, DEVELOPMENT_ADMIN_KEY, join_path
from gateway.config_reach import Catalogue, DeploymentFacts, unreachable
from plugins.settings import BUILTIN_ORDER, ENTRY_POINT_GROUP, third_party

RESERVED_MODEL_NAMES = frozenset({"auto"})


@dataclass
class Findings:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def assign_ids(entries: Iterable[tuple[str, str | None]]) -> list[str]:
    """Each deployment's id: its `model_info.id`, or model_name + its index within the group."""
    seen: dict[str, int] = {}
    ids = []
    for name, given in entries:
        index = seen.get(name, 0)
        seen[name] = index + 1
        ids.append(given or f"{name}-{index}")
    return ids


def review(raw: Mapping[str, Any]) -> Findings:
    """Every cross-reference problem of the config `raw`, as errors and warnings."""
    found = Findings()
    catalogue = _catalogue(raw, found)
    teams = _Teams.of(raw)
    _check_keys(raw, catalogue, teams, found)
    _check_teams(raw, catalogue, teams, found)
    _check_routing(raw, catalogue, teams, found)
    _check_approvals(raw, catalogue, teams, found)
    _check_sections(raw, catalogue, found)
    found.warnings += unreachable(raw, catalogue)
    return found


# ---- reading raw data without trusting it ---------------------------------------------------

def items(raw: Any, path: str) -> list[tuple[str, dict[str, Any]]]:
    """(path, entry) for each mapping in the list at `path` (``routing.rules``)."""
    section = dig(raw, *path.split("."))
    if not isinstance(section, list):
        return []
    return [(f"{path}[{i}]", e) for i, e in enumerate(section) if isinstance(e, dict)]


def dig(raw: Any, *keys: str) -> Any:
    for key in keys:
        raw = raw.get(key) if isinstance(raw, dict) else None
    return raw


def names(value: Any) -> list[tuple[int | None, str]]:
    """A name or a list of names (as rules write them), with each one's index in the list."""
    if isinstance(value, str):
        return [(None, value)]
    if isinstance(value, list):
        return [(i, v) for i, v in enumerate(value) if isinstance(v, str)]
    return []


def _at(path: str, index: int | None) -> str:
    return path if index is None else f"{path}[{index}]"


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# ---- the catalogue --------------------------------------------------------------------------

def _catalogue(raw: Mapping[str, Any], found: Findings) -> Catalogue:
    named: list[tuple[str, dict[str, Any], str]] = [
        (where, e, name) for where, e in items(raw, "model_list")
        if (name := _text(e.get("model_name"))) is not None]
    ids = assign_ids((name, _text(dig(e, "model_info", "id"))) for _, e, name in named)
    deployments: list[DeploymentFacts] = []
    modes: dict[str, str] = {}
    first: dict[str, str] = {}
    for (where, entry, name), dep_id in zip(named, ids, strict=True):
        info = entry.get("model_info")
        info = info if isinstance(info, dict) else {}
        mode, clearance = info.get("mode", "chat"), info.get("data_clearance", "public")
        if name in RESERVED_MODEL_NAMES:
            found.errors.append(f"{where}.model_name: {name!r} is reserved")
        if mode in ("chat", "embedding"):
            group_mode = modes.setdefault(name, mode)
            if group_mode != mode:
                found.errors.append(f"{where}.model_info.mode: group {name!r} mixes "
                                    f"{group_mode!r} and {mode!r} deployments")
        if dep_id in first:
            found.errors.append(f"{where}.model_info.id: duplicate deployment id {dep_id!r} "
                                f"(also {first[dep_id]})")
        first.setdefault(dep_id, where)
        deployments.append(DeploymentFacts(
            id=dep_id, group=name, mode=_text(mode),
            clearance=clearance if clearance in DATA_CLASSES else None,
            region=_text(info.get("region"))))
    return Catalogue(tuple(deployments), modes)


@dataclass(frozen=True)
class _Teams:
    declared: frozenset[str]        # under `teams:`
    known: frozenset[str]           # declared; without `teams:`, those the config keys name
    outside: bool                   # names may also come from admin-created keys

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> _Teams:
        declared = frozenset(n for _, t in items(raw, "teams")
                             if (n := _text(t.get("name"))) is not None)
        by_keys = frozenset(n for _, k in items(raw, "keys")
                            if (n := _text(k.get("team"))) is not None)
        # Admin-created keys may name any team only while `teams:` is not declared (with it, a
        # key's team must be declared: an error of its own, so not a known name here). A JWT's
        # caller is always in a declared team (gateway/pipeline/auth.py).
        return cls(declared, declared or by_keys, not declared)


def _team_reference(path: str, team: str, teams: _Teams, found: Findings) -> None:
    if team in teams.known:
        return
    listed = ", ".join(sorted(teams.known)) or "none"
    if teams.outside:
        found.warnings.append(f"{path}: no team {team!r} under teams: or on a key (known: "
                              f"{listed}); only a JWT or an admin-created key can match it")
    else:
        found.errors.append(f"{path}: unknown team {team!r} (teams: {listed})")


def _key_names(raw: Mapping[str, Any]) -> set[str]:
    return {n for _, k in items(raw, "keys") if (n := _text(k.get("name"))) is not None}


def _match_references(where: str, match: Any, raw: Mapping[str, Any], catalogue: Catalogue,
                      teams: _Teams, found: Findings) -> None:
    """The names in a rule's `match:` (routing rules and approvals share them)."""
    if not isinstance(match, dict):
        return
    for i, team in names(match.get("team")):
        _team_reference(_at(f"{where}.match.team", i), team, teams, found)
    keys = _key_names(raw)
    for i, key in names(match.get("key")):
        if key not in keys:
            found.warnings.append(
                f"{_at(f'{where}.match.key', i)}: no key named {key!r} under keys: (known: "
                f"{', '.join(sorted(keys)) or 'none'}); only an admin-created key can match it")
    for i, model in names(match.get("model")):
        if model not in catalogue.models | RESERVED_MODEL_NAMES:
            found.errors.append(f"{_at(f'{where}.match.model', i)}: unknown model {model!r}")


def _region_references(where: str, regions: Any, catalogue: Catalogue,
                       found: Findings) -> None:
    known = catalogue.regions
    for i, region in names(regions):
        if region not in known:
            found.errors.append(
                f"{where}[{i}]: no deployment is in region {region!r} (regions in model_list: "
                f"{', '.join(sorted(known)) or 'none; set model_info.region'})")


# ---- the sections ---------------------------------------------------------------------------

def _check_keys(raw: Mapping[str, Any], catalogue: Catalogue, teams: _Teams,
                found: Findings) -> None:
    seen_names: set[str] = set()
    digests: set[str] = set()
    for where, key in items(raw, "keys"):
        plain, hashed = key.get("key"), key.get("key_sha256")
        if (plain is None) == (hashed is None):
            found.errors.append(f"{where}: give exactly one of 'key' or 'key_sha256'")
            continue
        if plain == "":
            found.errors.append(f"{where}.key: is empty")
        name = _text(key.get("name"))
        if name is not None and name in seen_names:
            found.errors.append(f"{where}.name: duplicate key name {name!r}")
        digest = (hashlib.sha256(plain.encode()).hexdigest() if isinstance(plain, str)
                  else hashed.lower() if isinstance(hashed, str) else None)
        if digest is not None and digest in digests:
            found.errors.append(f"{where}: the same key is configured twice")
        seen_names |= {name} if name else set()
        digests |= {digest} if digest else set()
        for i, model in names(key.get("models")):
            if model not in catalogue.models:
                found.errors.append(f"{where}.models[{i}]: unknown model {model!r}")
        team = _text(key.get("team"))
        if team is not None and team not in teams.declared:
            if teams.declared:
                found.errors.append(f"{where}.team: unknown team {team!r}")
            else:
                found.warnings.append(
                    f"{where}.team: team {team!r} is not under teams:, so no team policy "
                    f"applies and metrics count it as team=\"other\"; declare it under teams:")


def _check_teams(raw: Mapping[str, Any], catalogue: Catalogue, teams: _Teams,
                 found: Findings) -> None:
    entries = items(raw, "teams")
    if len(teams.declared) != len([t for _, t in entries if _text(t.get("name"))]):
        found.errors.append("teams: team names must be unique")
    for where, team in entries:
        for i, model in names(team.get("models")):
            if model not in catalogue.models:
                found.errors.append(f"{where}.models[{i}]: unknown model {model!r}")
        _region_references(f"{where}.regions", team.get("regions"), catalogue, found)
    jwt = dig(raw, "auth", "jwt")
    if isinstance(jwt, dict):
        _check_jwt(jwt, teams, found)


def _check_jwt(jwt: Mapping[str, Any], teams: _Teams, found: Findings) -> None:
    if (jwt.get("jwks_file") is None) == (jwt.get("jwks_url") is None):
        found.errors.append("auth.jwt: give exactly one of 'jwks_file' or 'jwks_url'")
    default = _text(jwt.get("default_team"))
    if not teams.declared:
        found.errors.append("auth.jwt: a JWT caller is always placed in a team from 'teams:' "
                            "(its claim, or auth.jwt.default_team); define at least one team")
    elif default is not None and default not in teams.declared:
        found.errors.append(f"auth.jwt.default_team: unknown team {default!r}")


def _check_routing(raw: Mapping[str, Any], catalogue: Catalogue, teams: _Teams,
                   found: Findings) -> None:
    default = dig(raw, "routing", "default")
    if isinstance(default, dict):
        _route_settings("routing.default", default, catalogue, found)
    rule_names: set[str] = set()
    for where, rule in items(raw, "routing.rules"):
        name = _text(rule.get("name"))
        if name is not None and name in rule_names:
            found.errors.append(f"{where}.name: duplicate rule name {name!r}")
        rule_names |= {name} if name else set()
        _route_settings(where, rule, catalogue, found)
        _match_references(where, rule.get("match"), raw, catalogue, teams, found)


def _route_settings(where: str, settings: dict[str, Any], catalogue: Catalogue,
                    found: Findings) -> None:
    groups = set(catalogue.modes)
    for i, group in names(settings.get("fallbacks")):
        if group not in groups:
            found.errors.append(f"{where}.fallbacks[{i}]: unknown model group {group!r}")
    weights = settings.get("weights")
    for dep_id in weights if isinstance(weights, dict) else ():
        if dep_id not in catalogue.ids:
            found.errors.append(f"{where}.weights.{dep_id}: unknown deployment id {dep_id!r}")
    _region_references(f"{where}.regions", settings.get("regions"), catalogue, found)
    shadow = settings.get("shadow")
    if isinstance(shadow, dict):
        _shadow_target(f"{where}.shadow", shadow, catalogue, found)
        judge = shadow.get("judge")
        if isinstance(judge, dict):
            _shadow_target(f"{where}.shadow.judge", judge, catalogue, found)


def _shadow_target(where: str, target: dict[str, Any], catalogue: Catalogue,
                   found: Findings) -> None:
    """A shadow candidate or judge: a chat model group, or a chat deployment's id."""
    group, dep_id = _text(target.get("group")), _text(target.get("deployment"))
    if group is not None and catalogue.modes.get(group) != "chat":
        found.errors.append(f"{where}.group: unknown chat model group {group!r}")
    modes = {d.id: d.mode for d in catalogue.deployments}
    if dep_id is not None and modes.get(dep_id, "missing") != "chat":
        found.errors.append(f"{where}.deployment: unknown chat deployment id {dep_id!r}")


def _check_approvals(raw: Mapping[str, Any], catalogue: Catalogue, teams: _Teams,
                     found: Findings) -> None:
    for where, rule in items(raw, "approvals"):
        _match_references(where, rule.get("match"), raw, catalogue, teams, found)


def _check_sections(raw: Mapping[str, Any], catalogue: Catalogue, found: Findings) -> None:
    model = dig(raw, "cache", "semantic", "embedding_model")
    if isinstance(model, str) and catalogue.modes.get(model) != "embedding":
        kind = catalogue.modes.get(model)
        found.errors.append(f"cache.semantic.embedding_model: unknown embedding model {model!r}"
                            + (f" (a {kind} model group)" if kind else ""))
    plugins = dig(raw, "plugins")
    installed = third_party() if isinstance(plugins, list) and plugins else {}
    for i, ref in enumerate(plugins if isinstance(plugins, list) else ()):
        name = _text(ref) or _text(dig(ref, "name"))
        if name is not None and name not in BUILTIN_ORDER and name not in installed:
            found.errors.append(f"plugins[{i}].name: unknown plugin {name!r} (not built in, "
                                f"and no {ENTRY_POINT_GROUP!r} entry point of that name is "
                                f"installed)")
    workflows: set[str] = set()
    for where, workflow in items(raw, "workflows"):
        name = _text(workflow.get("name"))
        if name in ("other", "none") or (name is not None and name in workflows):
            found.errors.append(f"{where}.name: {name!r} is " + (
                "reserved (the metrics' label for undeclared and missing workflows)"
                if name in ("other", "none") else "declared twice"))
        workflows |= {name} if name else set()
    for where, admin in items(raw, "admin_keys"):
        if admin.get("key") == DEVELOPMENT_ADMIN_KEY:
            found.warnings.append(
                f"{join_path(where, 'key')}: this is the development admin key published in "
                f"the README: anyone can use /admin and /dashboard with it. Set "
                f"PODIUM_ADMIN_KEY (the default config reads it) or replace admin_keys "
                f"before this gateway is reachable by others")
