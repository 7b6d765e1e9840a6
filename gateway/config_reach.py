"""Who can reach what: a team or key whose policy leaves it no deployment at all.

Such a config is valid, and every request of that team then fails with 403
`no_cleared_deployment` (or `model_not_allowed`). That is almost never what was meant, so it is
reported as a warning by `podium check`, at `podium serve`'s start and on every reload.

An unset `data_clearance` stays `public` (a deployment receives internal, confidential or
restricted data only where the config says it may): data that must not leave is refused by
default, and this check is what makes the refusal visible before the first request instead of
after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.config_base import DATA_CLASSES

_RANK: dict[str, int] = {name: i for i, name in enumerate(DATA_CLASSES)}


@dataclass(frozen=True)
class DeploymentFacts:
    """What the raw config says about one deployment (None: missing or of the wrong type)."""
    id: str
    group: str
    mode: str | None
    clearance: str | None
    region: str | None


@dataclass(frozen=True)
class Catalogue:
    deployments: tuple[DeploymentFacts, ...]
    modes: Mapping[str, str]                      # group → chat | embedding

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(d.id for d in self.deployments)

    @property
    def models(self) -> frozenset[str]:
        """What a request's `model` (or an allow-list) may name: groups and deployment ids."""
        return frozenset(d.group for d in self.deployments) | self.ids

    @property
    def regions(self) -> frozenset[str]:
        return frozenset(d.region for d in self.deployments if d.region is not None)


@dataclass(frozen=True)
class _Policy:
    models: frozenset[str] | None
    data_class: str
    regions: frozenset[str] | None


def unreachable(raw: Mapping[str, Any], catalogue: Catalogue) -> list[str]:
    """A warning for each team, and each key of a team that can reach something, that can
    reach no deployment."""
    warnings: list[str] = []
    policies: dict[str, _Policy] = {}
    teams = raw.get("teams")
    for i, team in enumerate(teams if isinstance(teams, list) else ()):
        policy = _policy(team)
        if policy is None or not isinstance(team.get("name"), str):
            continue
        policies[team["name"]] = policy
        why = _why_nothing(policy, catalogue)
        if why:
            warnings.append(f"teams[{i}]: team {team['name']!r} can reach no deployment: {why}")
    keys = raw.get("keys")
    for i, key in enumerate(keys if isinstance(keys, list) else ()):
        if not isinstance(key, dict):
            continue
        team_name = key.get("team")
        team = policies.get(team_name) if isinstance(team_name, str) else None
        if team is not None and _why_nothing(team, catalogue):
            continue  # said once, for the team
        policy = _narrowed(team or _Policy(None, "public", None), key.get("models"))
        why = _why_nothing(policy, catalogue) if policy is not None else None
        if why:
            warnings.append(f"keys[{i}]: key {key.get('name')!r} can reach no deployment: {why}")
    return warnings


class _Malformed(Exception):
    """A part of a policy the schema refuses (and reports): nothing to say about reach."""


def _policy(team: Any) -> _Policy | None:
    """A team's policy, or None when a part of it is malformed."""
    data_class = team.get("data_class", "public") if isinstance(team, dict) else None
    if not isinstance(data_class, str) or data_class not in _RANK:
        return None
    try:
        return _Policy(_strings(team.get("models")), data_class, _strings(team.get("regions")))
    except _Malformed:
        return None


def _narrowed(team: _Policy, key_models: Any) -> _Policy | None:
    try:
        models = _strings(key_models)
    except _Malformed:
        return None
    if models is None:
        return team
    return _Policy(models if team.models is None else team.models & models, team.data_class,
                   team.regions)


def _strings(value: Any) -> frozenset[str] | None:
    """The names of a list (None when there is no list)."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Malformed
    return frozenset(value)


def _why_nothing(policy: _Policy, catalogue: Catalogue) -> str | None:
    """Why no deployment passes `policy`'s filters (the first filter that leaves none), or None
    if one does."""
    if policy.models is not None and not policy.models <= catalogue.models:
        return None  # it names a model that does not exist: an error, reported as such
    usable = [d for d in catalogue.deployments
              if policy.models is None or d.group in policy.models or d.id in policy.models]
    if not usable:
        return f"its models allow-list {sorted(policy.models or ())} leaves no deployment"
    cleared = [d for d in usable
               if d.clearance is not None and _RANK[d.clearance] >= _RANK[policy.data_class]]
    if not cleared:
        return (f"its data_class is {policy.data_class!r} and no deployment it may use has "
                f"data_clearance {policy.data_class} or higher (an unset data_clearance is "
                f"public); set model_info.data_clearance on the deployments that may receive "
                f"{policy.data_class} data")
    if policy.regions is not None and not any(d.region in policy.regions for d in cleared):
        return (f"no deployment cleared for {policy.data_class} data is in its regions "
                f"{sorted(policy.regions)}")
    return None
