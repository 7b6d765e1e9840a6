"""What every config section is built on: the one frozen base model, environment expansion,
and the path-qualified way problems are named (``model_list[2].model_info.quality``).

Sections live beside the code they configure (`gateway/config.py`, `routing/rules.py`,
`plugins/settings.py`); each builds on this module, which imports none of them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict


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
