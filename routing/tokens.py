"""Prompt token counting for routing decisions (context-window filter, cost estimate).

Uses tiktoken with the encodings litellm ships, so nothing is downloaded and litellm itself need
not be imported. The count is an estimate for routing; billing always uses the upstream's usage.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

import tiktoken

from routing.pricemap import litellm_package_dir

# OpenAI's documented overhead per message and per reply in chat formatting.
_PER_MESSAGE = 3
_PER_REPLY = 3
# OpenAI bills a low-detail image at 85 tokens; routing uses it as a floor for any image part.
_PER_IMAGE = 85


@lru_cache(maxsize=1)
def _encoding() -> tiktoken.Encoding:
    pkg = litellm_package_dir()
    if pkg is not None:
        # tiktoken looks for its cached BPE files here; litellm bundles cl100k_base's.
        os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(pkg / "litellm_core_utils" / "tokenizers"))
    return tiktoken.get_encoding("cl100k_base")


def warm() -> None:
    """Load the encoding now (it is loaded on first use otherwise)."""
    _encoding()


def count_text(text: str) -> int:
    return len(_encoding().encode_ordinary(text)) if text else 0


def count_messages(messages: Iterable[Mapping[str, Any]]) -> int:
    total = _PER_REPLY
    for message in messages:
        total += _PER_MESSAGE + _count_content(message.get("content"))
        for call in message.get("tool_calls") or ():
            fn = call.get("function") or {}
            total += count_text(str(fn.get("name", ""))) + count_text(str(fn.get("arguments", "")))
    return total


def _count_content(content: Any) -> int:
    if isinstance(content, str):
        return count_text(content)
    if not isinstance(content, list):
        return 0
    total = 0
    for part in content:
        if not isinstance(part, Mapping):
            continue
        if part.get("type") == "text":
            total += count_text(str(part.get("text", "")))
        elif part.get("type") == "image_url":
            total += _PER_IMAGE
    return total
