"""litellm's bundled price and context-window map, read without importing litellm.

`import litellm` costs seconds; the map is one JSON file inside the installed package, so reading
it directly keeps `podium serve` start-up fast while litellm stays the source of truth for prices.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

_MAP_FILE = "model_prices_and_context_window_backup.json"


def litellm_package_dir() -> Path | None:
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=1)
def price_map() -> dict[str, dict[str, Any]]:
    """The whole map, loaded once per process (it is immutable data shipped with litellm)."""
    pkg = litellm_package_dir()
    if pkg is None or not (pkg / _MAP_FILE).is_file():
        return {}
    data: dict[str, dict[str, Any]] = orjson.loads((pkg / _MAP_FILE).read_bytes())
    data.pop("sample_spec", None)
    return data


def lookup(litellm_model: str) -> dict[str, Any]:
    """Entry for `provider/model` or bare `model`; empty when litellm does not know it."""
    table = price_map()
    if litellm_model in table:
        return table[litellm_model]
    _, _, bare = litellm_model.partition("/")
    return table.get(bare, {}) if bare else {}
