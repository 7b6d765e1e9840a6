"""What the request models of every front door share."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Discriminator


class OpenModel(BaseModel):
    # Unknown fields are allowed, as in ingress: these APIs grow faster than any gateway.
    # Strict, because the APIs are (no "1" for 1, no 0 for false).
    model_config = ConfigDict(extra="allow", frozen=True, strict=True, populate_by_name=True)


def by_type(tags: Mapping[str, str], default: str | None = None) -> Discriminator:
    """Routes a dict to the model tagged for its `type`, or to the catch-all tagged "other",
    so that a type Podium cannot translate is refused by name instead of by a parse error."""
    def pick(value: Any) -> str:
        kind = value.get("type", default) if isinstance(value, dict) \
            else getattr(value, "type", default)
        return tags.get(kind, "other") if isinstance(kind, str) else "other"
    return Discriminator(pick)
