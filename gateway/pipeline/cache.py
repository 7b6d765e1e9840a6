"""Hop 6, cache: an exact response cache, scoped so that no answer crosses a permission line.

The key is a digest of the request in canonical form (JSON with sorted keys, minus fields that
do not change the answer: `stream`, `stream_options`, `user`) together with the routing result
(every deployment the caller may be routed to) and the caller's scope: the tenant (team, or
key when there is no team), the data class, and the allowed regions. A caller with another
tenant, a narrower allow-list (other candidates) or a lower clearance computes a different
key, so it can never read an answer it could not have received fresh.

Only complete, successful answers are stored. By default only deterministic requests
(`temperature` absent or 0) are cached; a routing rule may allow others. Request controls:
`Cache-Control: no-cache` (do not read), `no-store` (do not write), `x-podium-cache-ttl: <s>`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import BadRequest

_NOT_SEMANTIC = frozenset({"stream", "stream_options", "user"})
TTL_HEADER = "x-podium-cache-ttl"


@dataclass(frozen=True, slots=True)
class CachePolicy:
    read: bool
    write: bool
    ttl_s: float
    reason: str          # why it is bypassed, or "" when it is used


def policy(headers: Mapping[str, str], body: Mapping[str, Any], *, enabled: bool,
           default_ttl_s: float, nondeterministic_ok: bool, held: bool) -> CachePolicy:
    control = {d.strip().lower() for d in headers.get("Cache-Control", "").split(",")}
    ttl = _ttl(headers.get(TTL_HEADER), default_ttl_s)
    temperature = body.get("temperature")
    if not enabled:
        return CachePolicy(False, False, ttl, "cache disabled")
    if held:
        return CachePolicy(False, False, ttl, "answer held for review")
    if temperature not in (None, 0) and not nondeterministic_ok:
        return CachePolicy(False, False, ttl, "temperature > 0")
    read, write = "no-cache" not in control, "no-store" not in control and ttl > 0
    return CachePolicy(read, write, ttl, "" if read or write else "Cache-Control")


def _ttl(value: str | None, default: float) -> float:
    if value is None:
        return default
    try:
        ttl = float(value)
    except ValueError:
        ttl = -1.0
    if ttl < 0:
        raise BadRequest(f"Header {TTL_HEADER} must be a number of seconds >= 0.",
                         param=TTL_HEADER)
    return ttl


def cache_key(body: Mapping[str, Any], chain: tuple[str, ...], tenant: str, data_class: str,
              regions: frozenset[str] | None) -> str:
    request = {k: v for k, v in body.items() if k not in _NOT_SEMANTIC}
    scoped = {"request": request, "chain": chain, "tenant": tenant, "class": data_class,
              "regions": sorted(regions) if regions is not None else None}
    return hashlib.sha256(orjson.dumps(scoped, option=orjson.OPT_SORT_KEYS)).hexdigest()


def scope_key(body: Mapping[str, Any], chain: tuple[str, ...], tenant: str, data_class: str,
              regions: frozenset[str] | None, extra: Mapping[str, Any]) -> str:
    """Everything in `cache_key` except the messages' text (roles, images, tool calls and
    every parameter stay), plus `extra`: the semantic cache's scope, within which only the
    prompt text may differ."""
    untexted = {**body, "messages": [_untexted(m) for m in body.get("messages") or ()]}
    return cache_key({**untexted, "podium.semantic": dict(extra)}, chain, tenant, data_class,
                     regions)


def _untexted(message: Any) -> Any:
    if not isinstance(message, Mapping):
        return message
    content = message.get("content")
    if isinstance(content, str):
        content = None
    elif isinstance(content, list):
        content = [{k: v for k, v in p.items() if k != "text"} if isinstance(p, Mapping) else p
                   for p in content]
    return {**message, "content": content}


def assemble(chunks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A streamed answer put back together as a `chat.completion`, to be stored; None if the
    stream did not finish every choice."""
    if not chunks:
        return None
    choices: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for c in chunk.get("choices") or ():
            _merge(choices.setdefault(c.get("index", 0), _empty(c.get("index", 0))), c)
    if not choices or any(c["finish_reason"] is None for c in choices.values()):
        return None
    first, usage = chunks[0], next((c["usage"] for c in chunks if c.get("usage")), None)
    out: dict[str, Any] = {k: first[k] for k in ("id", "created", "model", "system_fingerprint")
                           if k in first}
    out.update(object="chat.completion", choices=[_finish(choices[i]) for i in sorted(choices)])
    if usage:
        out["usage"] = usage
    return out


def _empty(index: int) -> dict[str, Any]:
    return {"index": index, "content": None, "tool_calls": {}, "finish_reason": None}


def _merge(acc: dict[str, Any], choice: Mapping[str, Any]) -> None:
    delta = choice.get("delta") or {}
    if delta.get("content"):
        acc["content"] = (acc["content"] or "") + delta["content"]
    for call in delta.get("tool_calls") or ():
        slot = acc["tool_calls"].setdefault(call.get("index", 0), {
            "id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        slot["id"] = call.get("id") or slot["id"]
        fn = call.get("function") or {}
        slot["function"]["name"] += fn.get("name") or ""
        slot["function"]["arguments"] += fn.get("arguments") or ""
    acc["finish_reason"] = choice.get("finish_reason") or acc["finish_reason"]


def _finish(acc: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": acc["content"], "refusal": None}
    if acc["tool_calls"]:
        message["tool_calls"] = [acc["tool_calls"][i] for i in sorted(acc["tool_calls"])]
    return {"index": acc["index"], "message": message, "logprobs": None,
            "finish_reason": acc["finish_reason"]}
