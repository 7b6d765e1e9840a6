"""Named server-sent events, as the Responses and Anthropic Messages APIs stream them.

Both APIs put the event's name in an `event:` line and repeat it as the payload's `type`; the
Anthropic SDK ignores any event without the `event:` line, so it is always written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson


def encode(event: Mapping[str, Any]) -> bytes:
    """One event as `event: <type>\\ndata: <json>\\n\\n`."""
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def encode_all(events: Iterable[Mapping[str, Any]]) -> bytes:
    return b"".join(encode(event) for event in events)
