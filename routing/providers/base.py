"""The provider contract: one upstream attempt in, an OpenAI-shaped answer (or chunks) out.

Kept close to the wire on purpose: a request body goes in, OpenAI-shaped JSON objects come out,
usage and failures are Podium's own types (`Usage`, `errors.ProviderError`). Nothing from a
provider library (litellm's objects, an HTTP client's exceptions) crosses this boundary, so a
native HTTP path and the litellm path are interchangeable behind it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from routing.catalog import Deployment
from routing.providers.answer_shape import usage_counts


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reported: bool = True            # False: the upstream gave no sane usage; counted locally

    @classmethod
    def from_openai(cls, usage: Any) -> Usage:
        """The counts of an OpenAI `usage` object; zero and not `reported` when it is missing
        or not sane (see answer_shape.py), never an exception."""
        counts = usage_counts(usage)
        return cls(reported=False) if counts is None else cls(*counts)

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.prompt_tokens + other.prompt_tokens,
                     self.completion_tokens + other.completion_tokens,
                     self.reported and other.reported)


@dataclass(frozen=True, slots=True)
class Wire:
    """A request in the API its client spoke (e.g. "responses"), for a deployment that speaks
    that API itself (`model_info.supports`): sent as it is instead of its chat translation."""
    api: str
    body: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try against one deployment, built afresh from the original request each time, so a
    retry never inherits an earlier attempt's changes."""
    deployment: Deployment
    body: Mapping[str, Any]          # the client's body with `model` set to the upstream's name
    headers: Mapping[str, str]       # only what Podium chooses to send (e.g. traceparent)
    timeout_s: float
    number: int
    # Set only where the deployment speaks the client's API and the body goes unmasked: a
    # provider that can send it does (and answers with `ChatAnswer.native` too); any other
    # sends `body`, the chat translation.
    wire: Wire | None = None


@dataclass(frozen=True, slots=True)
class ChatAnswer:
    body: dict[str, Any]             # an OpenAI `chat.completion` object
    usage: Usage
    response_model: str | None
    finish_reasons: tuple[str, ...] = field(default=())
    native: dict[str, Any] | None = None   # the upstream's own answer to `Attempt.wire`


@dataclass(frozen=True, slots=True)
class EmbeddingAnswer:
    body: dict[str, Any]             # an OpenAI embeddings list, embeddings as float lists
    usage: Usage
    response_model: str | None


class Provider(Protocol):
    async def chat(self, attempt: Attempt) -> ChatAnswer:
        """Send one non-streamed chat request. Raises ProviderError on any upstream failure."""
        ...

    def chat_stream(self, attempt: Attempt) -> AsyncIterator[dict[str, Any]]:
        """Yield `chat.completion.chunk` objects, the usage chunk included (the caller asks for
        it). Raises ProviderError, before the first chunk or mid-stream."""
        ...

    async def embed(self, attempt: Attempt) -> EmbeddingAnswer:
        """Create embeddings, always as float lists. Raises ProviderError on failure."""
        ...

    async def close(self) -> None:
        """Release pooled connections; called once at shutdown."""
        ...


def finish_reasons(body: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(str(c.get("finish_reason")) for c in body.get("choices") or ()
                 if isinstance(c, Mapping) and c.get("finish_reason"))
