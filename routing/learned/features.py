"""What a difficulty score may look at: the last user turn and the conversation's size.

The last user turn carries the task; earlier turns mostly carry context, whose size is a signal
on its own (long conversations go wrong more often), so it enters only as counts. Images and
other non-text parts are ignored: the score is about the words.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Only this many characters of the last user turn are embedded: the cost of a score stays bounded
# for a 100k-token prompt, and a question's difficulty shows in its first few thousand characters
# (the tail of a long prompt is usually pasted context). About 512 tokens of English.
MAX_TEXT_CHARS = 2048


@dataclass(frozen=True, slots=True)
class PromptFeatures:
    text: str                         # the last user turn (truncated to MAX_TEXT_CHARS)
    text_chars: int                   # its full length in characters
    turns: int                        # messages in the conversation (system included)
    total_chars: int                  # characters of text over every message

    @classmethod
    def of_prompt(cls, prompt: str) -> PromptFeatures:
        """A single-turn conversation: one user message."""
        return cls(prompt[:MAX_TEXT_CHARS], len(prompt), 1, len(prompt))

    @classmethod
    def of_messages(cls, messages: Sequence[Mapping[str, Any]]) -> PromptFeatures:
        """OpenAI chat messages: content as a string or as a list of typed parts."""
        texts = [_text_of(m.get("content")) for m in messages]
        last = next((t for m, t in zip(reversed(messages), reversed(texts), strict=True)
                     if m.get("role") == "user"), "")
        return cls(last[:MAX_TEXT_CHARS], len(last), len(messages), sum(map(len, texts)))

    def digest(self) -> bytes:
        """Identifies the features (not the whole request) for caching scores."""
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{self.text_chars}:{self.turns}:{self.total_chars}:".encode())
        h.update(self.text.encode("utf-8", "surrogatepass"))
        return h.digest()

    def sizes(self) -> tuple[float, float, float]:
        """Log sizes: last turn, whole conversation, turns. Logs, because difficulty grows with
        size far slower than size does, and a linear head needs the scale tamed."""
        return (math.log1p(self.text_chars), math.log1p(self.total_chars),
                math.log(max(self.turns, 1)))


@dataclass(frozen=True, slots=True)
class RecordedFeatures:
    """A prompt's features as the audit trail keeps them for training (`router train
    --from-audit`): the embedder's nonzero coordinates, not the text, and the raw sizes.
    Values are rounded to 5 decimals (they are at most 1: an L2-normalised vector), which moves
    a score by far less than the spread between prompts and keeps a record small."""
    embedder: str
    params: Mapping[str, Any]
    index: tuple[int, ...]
    value: tuple[float, ...]
    text_chars: int
    total_chars: int
    turns: int

    def features(self) -> PromptFeatures:
        """Sizes only (the text is not kept): what `PromptFeatures.sizes` needs."""
        return PromptFeatures("", self.text_chars, self.turns, self.total_chars)

    def to_json(self) -> dict[str, Any]:
        return {"embedder": self.embedder, "params": dict(self.params),
                "index": list(self.index), "value": list(self.value),
                "sizes": [self.text_chars, self.total_chars, self.turns]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RecordedFeatures:
        """The inverse of `to_json`; KeyError, TypeError or ValueError for anything else."""
        index, value = tuple(map(int, data["index"])), tuple(map(float, data["value"]))
        text_chars, total_chars, turns = map(int, data["sizes"])
        if len(index) != len(value):
            raise ValueError("index and value differ in length")
        return cls(str(data["embedder"]), dict(data["params"]), index, value, text_chars,
                   total_chars, turns)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Iterable) and not isinstance(content, (bytes, Mapping)):
        return "\n".join(p["text"] for p in content
                         if isinstance(p, Mapping) and isinstance(p.get("text"), str))
    return ""


SIZE_FEATURES = ("log_text_chars", "log_total_chars", "log_turns")
