"""A cached answer: what is stored (the answer and the deployment that produced it), the key
it is stored under, and the scope the semantic cache compares prompts within.

The key is a digest of the request in canonical form (JSON with sorted keys, minus fields that
do not change the answer) together with the routing result and the caller's scope (see
`cache.py`). A semantic scope is the same digest without the messages' text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.pipeline.messages import SPOKEN, rewrite_conversation

_NOT_SEMANTIC = frozenset({"stream", "stream_options", "user"})
_SAMPLING = frozenset({"temperature", "top_p", "frequency_penalty", "presence_penalty"})
# The layout of a stored entry (the answer and its deployment); part of the key, so an entry of
# another layout (written by another version of Podium into a shared Redis) is never read.
_ENTRY_FORMAT = 2


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    answer: dict[str, Any]
    deployment: str | None           # the deployment that produced it

    def entry(self) -> bytes:
        return orjson.dumps({"deployment": self.deployment, "answer": self.answer})

    @classmethod
    def from_entry(cls, raw: bytes) -> CachedAnswer | None:
        entry = orjson.loads(raw)
        if not isinstance(entry, dict) or not isinstance(entry.get("answer"), dict):
            return None
        deployment = entry.get("deployment")
        return cls(entry["answer"], deployment if isinstance(deployment, str) else None)



def cache_key(body: Mapping[str, Any], chain: tuple[str, ...], tenant: str, data_class: str,
              regions: frozenset[str] | None, min_quality: int) -> str:
    request = {k: _number(k, v) for k, v in body.items() if k not in _NOT_SEMANTIC}
    scoped = {"request": request, "chain": chain, "tenant": tenant, "class": data_class,
              "regions": sorted(regions) if regions is not None else None,
              "quality": min_quality, "entry": _ENTRY_FORMAT}
    return hashlib.sha256(orjson.dumps(scoped, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _number(name: str, value: Any) -> Any:
    """`temperature: 0` and `0.0` ask the same: one form in the key (a front door's
    translation writes floats where a chat client may have sent an integer)."""
    if name in _SAMPLING and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def scope_key(body: Mapping[str, Any], chain: tuple[str, ...], tenant: str, data_class: str,
              regions: frozenset[str] | None, min_quality: int,
              extra: Mapping[str, Any]) -> str:
    """Everything in `cache_key` except the messages' text (roles, images, tool calls and
    every parameter stay), plus `extra`: the semantic cache's scope, within which only the
    prompt text may differ."""
    untexted = {**body, "messages": rewrite_conversation(body.get("messages") or (), SPOKEN,
                                                         lambda _: None)}
    return cache_key({**untexted, "podium.semantic": dict(extra)}, chain, tenant, data_class,
                     regions, min_quality)
