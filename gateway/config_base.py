"""What every config section is built on: the one frozen base model, the data classes, reading
YAML (refusing duplicate keys), environment expansion, and the path-qualified way problems are
named (``model_list[2].model_info.quality``).

Sections live beside the code they configure (`gateway/config.py`, `routing/rules.py`,
`plugins/settings.py`); each builds on this module, which imports none of them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict

# Ordered: a deployment cleared for one class may receive every class before it.
DataClass = Literal["public", "internal", "confidential", "restricted"]
DATA_CLASSES: tuple[DataClass, ...] = ("public", "internal", "confidential", "restricted")
# Published in the README and the default config so that /admin and /dashboard work out of the
# box; anything configured with it is flagged (config warning, start-up log, dashboard banner).
DEVELOPMENT_ADMIN_KEY = "sk-podium-admin-dev"


class Frozen(BaseModel):
    """A config model: immutable once loaded, and an unknown field is an error, not a silently
    ignored setting (a typo must not pass)."""
    model_config = ConfigDict(extra="forbid", frozen=True)


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_LITELLM_ENV = "os.environ/"


def expand_env(raw: Any, env: Mapping[str, str], path: str = "") -> tuple[Any, list[str]]:
    """Replace ``${VAR}``, ``${VAR:-default}`` and ``os.environ/VAR`` in every string."""
    problems: list[str] = []
    if isinstance(raw, dict):
        out: Any = {}
        for k, v in raw.items():
            out[k], found = expand_env(v, env, join_path(path, str(k)))
            problems += found
        return out, problems
    if isinstance(raw, list):
        items = [expand_env(v, env, f"{path}[{i}]") for i, v in enumerate(raw)]
        return [v for v, _ in items], [p for _, found in items for p in found]
    if not isinstance(raw, str):
        return raw, problems
    if raw.startswith(_LITELLM_ENV):
        name = raw[len(_LITELLM_ENV):]
        if name not in env:
            return raw, [f"{path}: environment variable {name} is not set"]
        return env[name], problems

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        problems.append(f"{path}: environment variable {name} is not set")
        return ""

    return _ENV_REF.sub(sub, raw), problems


def join_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out = f"{out}[{part}]" if isinstance(part, int) else join_path(out, str(part))
    return out or "(root)"


# ---- YAML -----------------------------------------------------------------------------------

_MERGE_TAG = "tag:yaml.org,2002:merge"


def load_yaml(text: str) -> tuple[Any, list[str]]:
    """The document in `text`, and a problem for every duplicate mapping key (with its path and
    line). PyYAML keeps the last of two equal keys without a word: a config where the second
    `team:` silently replaces the first must not pass. Raises `yaml.YAMLError` on bad YAML."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, []
        return loader.construct_document(node), _duplicates(node, "", set())
    finally:
        loader.dispose()


def _duplicates(node: yaml.Node, path: str, seen_nodes: set[int]) -> list[str]:
    if id(node) in seen_nodes:  # an alias: its anchor was (or is being) checked already
        return []
    seen_nodes.add(id(node))
    problems: list[str] = []
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += _duplicates(item, f"{path}[{i}]", seen_nodes)
    elif isinstance(node, yaml.MappingNode):
        first_line: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key, line = (key_node.tag, str(key_node.value)), key_node.start_mark.line + 1
            where = join_path(path, key[1])
            if key in first_line:
                problems.append(f"{where}: duplicate key {key[1]!r} at line {line} (first at "
                                f"line {first_line[key]}); YAML would silently keep the last")
            first_line.setdefault(key, line)
            problems += _duplicates(value_node, where, seen_nodes)
    return problems
