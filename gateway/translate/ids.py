"""Identifiers in the shapes the Responses and Anthropic APIs use (`resp_...`, `msg_...`)."""

from __future__ import annotations

import secrets


def new_id(prefix: str) -> str:
    # 24 random bytes: unguessable, since a response id is what reads stored conversation state.
    return f"{prefix}_{secrets.token_hex(24)}"
