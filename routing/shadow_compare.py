"""Comparing a shadow candidate's answer with the answer the client got.

Three views of one pair of answers, each cheap next to the calls that made them:

- **checks**: the cascade's checks (routing/cascade.py: empty, refusal, cut off, JSON and
  schema validity, the rule's patterns) on each answer, so "the candidate refuses where the
  primary answers" is counted, not guessed;
- **similarity**: the overlap of the two answers' words (the Dice coefficient of their word
  multisets, 0-1), linear in their length so a long answer never stalls the loop; a tool call
  is compared by its name and arguments;
- **a judge** (optional): a model given the question, both answers and the rule's rubric,
  asked for a score 0-1 of the candidate's answer measured against the primary's.

Agreement is the judge's verdict (score >= 0.5) where a judge graded the pair, else similarity
at or above the rule's `agree_at`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from routing.cascade import AnswerCheck
from routing.providers.base import ChatAnswer, Usage
from routing.rules import CascadeChecks

_WORD = re.compile(r"\w+", re.UNICODE)
_SCORE = re.compile(r"\"?score\"?\s*[:=]\s*([01](?:\.\d+)?|\.\d+)", re.IGNORECASE)
JUDGE_PASS = 0.5
MAX_JUDGED_CHARS = 8000              # of each answer and the question, in a judge's prompt
JUDGE_SYSTEM = (
    "You compare two answers to the same request. The reference answer is the one the user "
    "received; the candidate answer comes from a model on trial. Grade the candidate against "
    "the reference using this rubric:\n\n{rubric}\n\nReply with only a JSON object "
    "{{\"score\": S}} where S is a number from 0 (unacceptable) to 1 (as good or better).")


@dataclass(frozen=True, slots=True)
class Comparison:
    primary_check: str | None          # None: the primary's answer passed every check
    candidate_check: str | None
    similarity: float


def answer_text(body: Mapping[str, Any]) -> str:
    """What an answer says: its first choice's content, or its tool calls (name, arguments)."""
    choices = body.get("choices") or []
    message = (choices[0].get("message") or {}) if choices else {}
    calls = message.get("tool_calls") or []
    if calls:
        return " ".join(f"{(c.get('function') or {}).get('name', '')} "
                        f"{(c.get('function') or {}).get('arguments', '')}" for c in calls)
    content = message.get("content")
    return content if isinstance(content, str) else ""


def similarity(a: str, b: str) -> float:
    """Dice coefficient of the two texts' lower-cased word multisets (1.0: the same words)."""
    left, right = Counter(w.lower() for w in _WORD.findall(a)), \
        Counter(w.lower() for w in _WORD.findall(b))
    total = sum(left.values()) + sum(right.values())
    if total == 0:
        return 1.0
    return round(2 * sum((left & right).values()) / total, 6)


def compare(checks: CascadeChecks, request: Mapping[str, Any], primary: dict[str, Any],
            candidate: dict[str, Any]) -> Comparison:
    check = AnswerCheck(checks, request)
    return Comparison(check(_as_answer(primary)), check(_as_answer(candidate)),
                      similarity(answer_text(primary), answer_text(candidate)))


def checked(checks: CascadeChecks, request: Mapping[str, Any],
            body: dict[str, Any]) -> str | None:
    """One answer through the cascade's checks: None when it passes, else why not."""
    return AnswerCheck(checks, request)(_as_answer(body))


def _as_answer(body: dict[str, Any]) -> ChatAnswer:
    return ChatAnswer(body=body, usage=Usage(), response_model=None)


def judge_body(rubric: str, messages: Any, primary: Mapping[str, Any],
               candidate: Mapping[str, Any]) -> dict[str, Any]:
    """The chat request a judge is sent: the rubric, the user's last turn, both answers."""
    question = _last_user_text(messages)[:MAX_JUDGED_CHARS]
    user = (f"Request:\n{question}\n\nReference answer:\n"
            f"{answer_text(primary)[:MAX_JUDGED_CHARS]}\n\nCandidate answer:\n"
            f"{answer_text(candidate)[:MAX_JUDGED_CHARS]}")
    return {"messages": [{"role": "system", "content": JUDGE_SYSTEM.format(rubric=rubric)},
                         {"role": "user", "content": user}],
            "temperature": 0, "max_tokens": 64}


def judge_score(answer: Mapping[str, Any]) -> float | None:
    """The judge's score in [0, 1], from `{"score": S}` (or a `score: S` line); None when the
    judge said nothing usable."""
    text = answer_text(answer).strip()
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("score"), int | float):
        value = float(parsed["score"])
        return value if 0.0 <= value <= 1.0 else None
    found = _SCORE.search(text)
    return float(found.group(1)) if found else None


def _last_user_text(messages: Any) -> str:
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, Mapping) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content
                                if isinstance(p, Mapping) and isinstance(p.get("text"), str))
    return ""
