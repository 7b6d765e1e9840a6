"""Restoring pseudonymized values in answers: whole completions and streams of chunks.

In a stream, each choice's content and each tool call's arguments get their own
`StreamUnmasker`, so a placeholder split across chunks is held back and restored whole; whatever
is held when a choice finishes is released in that finishing chunk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from gateway.pipeline.messages import rewrite
from gateway.pipeline.permissions import SCANNED
from gateway.pipeline.pii import Pseudonymizer, StreamUnmasker


def unmask_completion(body: dict[str, Any], p: Pseudonymizer) -> dict[str, Any]:
    """Every string the masked request could have led to, in every choice, restored."""
    choices = [{**choice, "message": rewrite(choice.get("message") or {}, SCANNED,
                                             lambda text: p.unmask(text.value))}
               for choice in body.get("choices") or ()]
    return {**body, "choices": choices}


async def unmask_stream(chunks: AsyncIterator[dict[str, Any]],
                        p: Pseudonymizer) -> AsyncIterator[dict[str, Any]]:
    streams: dict[tuple[int, int | None], StreamUnmasker] = {}

    def unmasker(key: tuple[int, int | None]) -> StreamUnmasker:
        return streams.setdefault(key, StreamUnmasker(p))

    async for chunk in chunks:
        for choice in chunk.get("choices") or ():
            _restore_delta(choice, unmasker, streams)
        yield chunk


def _restore_delta(choice: dict[str, Any], unmasker: Any,
                   streams: dict[tuple[int, int | None], StreamUnmasker]) -> None:
    index, delta = choice.get("index", 0), choice.get("delta") or {}
    if isinstance(delta.get("content"), str):
        delta["content"] = unmasker((index, None)).feed(delta["content"])
    for call in delta.get("tool_calls") or ():
        fn = call.get("function") or {}
        if isinstance(fn.get("arguments"), str):
            fn["arguments"] = unmasker((index, call.get("index", 0))).feed(fn["arguments"])
    if choice.get("finish_reason"):
        _release_held(index, delta, streams)
        choice["delta"] = delta


def _release_held(index: int, delta: dict[str, Any],
                  streams: dict[tuple[int, int | None], StreamUnmasker]) -> None:
    """A finishing choice releases whatever its unmaskers still hold back."""
    for (choice_index, call_index), unmasker in streams.items():
        held = unmasker.flush() if choice_index == index else ""
        if not held:
            continue
        if call_index is None:
            delta["content"] = (delta.get("content") or "") + held
        else:
            delta.setdefault("tool_calls", []).append(
                {"index": call_index, "function": {"arguments": held}})
