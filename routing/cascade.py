"""Cascade checks: is a cheap model's answer good enough, or must the request escalate?

Each check looks only at the answer and at what the caller asked for; none calls a model, so a
check costs microseconds next to the model call it may save.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jsonschema
import orjson

from routing.providers.base import ChatAnswer
from routing.rules import CascadeChecks

# Openings of a refusal in the major models' house styles.
_REFUSAL = re.compile(
    r"^\s*(I'?m sorry,? but I (can(?:'|no)t|won'?t)|I (can(?:'|no)t|won'?t) (help|assist|"
    r"comply|provide)|I am (unable|not able) to (help|assist|comply)|As an AI(?: language model)?"
    r", I (can(?:'|no)t|won'?t))", re.IGNORECASE)


class AnswerCheck:
    """Callable check for one request: returns None when the answer passes, else the reason."""

    def __init__(self, checks: CascadeChecks, request: Mapping[str, Any]) -> None:
        self._checks = checks
        self._must = re.compile(checks.must_match) if checks.must_match else None
        self._must_not = re.compile(checks.must_not_match) if checks.must_not_match else None
        fmt = request.get("response_format") or {}
        self._json = fmt.get("type") in ("json_object", "json_schema")
        self._schema = (fmt.get("json_schema") or {}).get("schema") if self._json else None
        self._short_ok = (checks.allow_length_finish or request.get("max_tokens") is not None
                          or request.get("max_completion_tokens") is not None)

    def __call__(self, answer: ChatAnswer) -> str | None:
        choices = answer.body.get("choices") or []
        if not choices:
            return "no choices in the answer"
        message = choices[0].get("message") or {}
        content = message.get("content") or ""
        if message.get("tool_calls"):
            return None  # a tool call is a complete answer; its arguments are the caller's job
        for reason in (self._empty(content), self._refused(message, content),
                       self._truncated(choices[0]), self._not_json(content),
                       self._patterns(content)):
            if reason:
                return reason
        return None

    @staticmethod
    def _empty(content: str) -> str | None:
        return "empty answer" if not content.strip() else None

    @staticmethod
    def _refused(message: Mapping[str, Any], content: str) -> str | None:
        if message.get("refusal") or _REFUSAL.search(content):
            return "the model refused"
        return None

    def _truncated(self, choice: Mapping[str, Any]) -> str | None:
        if choice.get("finish_reason") == "length" and not self._short_ok:
            return "answer cut off (finish_reason=length)"
        return None

    def _not_json(self, content: str) -> str | None:
        if not self._json:
            return None
        try:
            value = orjson.loads(content)
        except orjson.JSONDecodeError:
            return "answer is not valid JSON"
        if self._schema is not None:
            try:
                jsonschema.validate(value, self._schema)
            except jsonschema.ValidationError as exc:
                return f"answer does not match the JSON schema: {exc.message[:120]}"
            except jsonschema.SchemaError:
                return None  # the caller's schema is broken; not the model's fault
        elif not isinstance(value, dict):
            return "answer is not a JSON object"
        return None

    def _patterns(self, content: str) -> str | None:
        if self._must and not self._must.search(content):
            return f"answer does not match {self._checks.must_match!r}"
        if self._must_not and self._must_not.search(content):
            return f"answer matches {self._checks.must_not_match!r}"
        return None
