"""The one walker over a request's strings (gateway/pipeline/messages.py): what it finds, what
a rewrite changes (and leaves alone), and the kinds that are ready for the PII work of the
trust issue (user, metadata, tool descriptions, legacy function_call, refusals, prediction)."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pipeline.messages import (
    CARRIED,
    SPOKEN,
    Kind,
    Text,
    conversation,
    request_strings,
    rewrite,
    rewrite_conversation,
    rewrite_request,
    strings,
    text_of,
)

EVERY_KIND: frozenset[Kind] = frozenset(
    {"content", "text", "refusal", "tool_name", "tool_arguments", "function_call", "image",
     "user", "metadata", "tool_description", "prediction"})

MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": [
        {"type": "text", "text": "look at"},
        {"type": "image_url", "image_url": {"url": "https://img.example/cat.png"}},
        {"type": "text", "text": "this"}]},
    {"role": "assistant", "content": None, "refusal": "no can do",
     "tool_calls": [{"id": "c1", "type": "function",
                     "function": {"name": "lookup", "arguments": "{\"q\": 1}"}}],
     "function_call": {"name": "old_style", "arguments": "{}"}},
    {"role": "assistant", "content": [{"type": "refusal", "refusal": "not that"}]},
    {"role": "tool", "tool_call_id": "c1", "content": "42"},
]
BODY: dict[str, Any] = {
    "model": "chat", "messages": MESSAGES, "user": "user-7", "metadata": {"ticket": "T-1"},
    "tools": [{"type": "function", "function": {"name": "lookup", "description": "Find it."}}],
    "functions": [{"name": "legacy", "description": "Old way."}],
    "prediction": {"type": "content", "content": [{"type": "text", "text": "probably 42"}]},
}


def found(texts: Any) -> list[tuple[str, str, str | None]]:
    return [(t.kind, t.value, t.role) for t in texts]


def test_what_reaches_the_upstream_today_is_content_text_parts_and_tool_arguments() -> None:
    assert found(conversation(MESSAGES, CARRIED)) == [
        ("content", "be brief", "system"), ("text", "look at", "user"),
        ("text", "this", "user"), ("tool_arguments", "{\"q\": 1}", "assistant"),
        ("content", "42", "tool")]


def test_every_other_place_text_reaches_the_upstream_is_a_kind_of_its_own() -> None:
    extra = EVERY_KIND - CARRIED
    assert found(request_strings(BODY, frozenset(extra))) == [
        ("image", "https://img.example/cat.png", "user"),
        ("refusal", "no can do", "assistant"), ("tool_name", "lookup", "assistant"),
        ("function_call", "old_style", "assistant"), ("function_call", "{}", "assistant"),
        ("refusal", "not that", "assistant"),
        ("user", "user-7", None), ("metadata", "T-1", None),
        ("tool_description", "Find it.", None), ("tool_description", "Old way.", None),
        ("prediction", "probably 42", None)]


def test_the_request_level_strings_can_be_masked_too() -> None:
    extra = frozenset({"user", "metadata", "tool_description", "prediction"})
    masked = rewrite_request(BODY, extra, lambda t: "*" * len(t.value))
    assert [t.value for t in request_strings(masked, extra)] == [
        "*" * len(t.value) for t in request_strings(BODY, extra)]
    assert masked["messages"] == MESSAGES and masked["tools"][0]["function"]["name"] == "lookup"
    assert rewrite_request(BODY, EVERY_KIND, lambda t: t.value) == BODY


def test_spoken_text_of_a_message() -> None:
    assert text_of(MESSAGES[1]) == "look at this"
    assert text_of(MESSAGES[2]) == "" and text_of("not a message") == ""


def test_a_rewrite_changes_the_chosen_strings_in_a_copy_only() -> None:
    before = copy.deepcopy(MESSAGES)
    masked = rewrite_conversation(MESSAGES, CARRIED, lambda t: t.value.upper())
    assert MESSAGES == before
    assert [t.value for t in conversation(masked, CARRIED)] == [
        "BE BRIEF", "LOOK AT", "THIS", "{\"Q\": 1}", "42"]
    # What the kinds do not name is left exactly as it was.
    assert masked[2]["refusal"] == "no can do" and masked[2]["function_call"]["arguments"] == "{}"
    assert masked[1]["content"][1] == MESSAGES[1]["content"][1]
    assert masked[2]["tool_calls"][0]["id"] == "c1"


def test_a_rewrite_to_none_removes_spoken_text() -> None:
    untexted = rewrite_conversation(MESSAGES, SPOKEN, lambda _: None)
    assert untexted[0]["content"] is None
    assert untexted[1]["content"] == [{"type": "text"}, MESSAGES[1]["content"][1], {"type": "text"}]
    assert list(conversation(untexted, SPOKEN)) == []


def test_odd_shapes_are_walked_past_not_failed_on() -> None:
    odd = [None, 3, {"role": "user", "content": 5}, {"content": [1, None, {"text": 2}]},
           {"tool_calls": [None, {"function": "x"}, {"function": {"arguments": 7}}]}]
    assert list(conversation(odd, EVERY_KIND)) == []
    assert rewrite_conversation(odd, EVERY_KIND, lambda t: "x") == odd


_KEYS = ["role", "content", "text", "type", "tool_calls", "function", "function_call",
         "arguments", "name", "refusal", "image_url", "url"]
_json = st.recursive(st.none() | st.booleans() | st.integers()
                     | st.sampled_from(["text", "refusal", "image_url", "user"])
                     | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.sampled_from(_KEYS), inner, max_size=4),
                     max_leaves=12)
REWRITTEN = EVERY_KIND - {"image"}  # image URLs are found, never rewritten


@settings(max_examples=300, deadline=None)
@given(st.lists(_json, max_size=4))
def test_identity_rewrite_and_marked_rewrite_agree_with_strings(messages: list[Any]) -> None:
    assert rewrite_conversation(messages, EVERY_KIND, lambda t: t.value) == messages
    marked = rewrite_conversation(messages, EVERY_KIND, lambda t: f"<{t.value}>")
    assert [t.value for t in conversation(marked, REWRITTEN)] == [
        f"<{t.value}>" for t in conversation(messages, REWRITTEN)]
    assert [t.value for t in conversation(marked, frozenset({"image"}))] == [
        t.value for t in conversation(messages, frozenset({"image"}))]


def test_a_text_is_a_small_immutable_value() -> None:
    text = Text("content", "hi", "user")
    assert text == Text("content", "hi", "user") and hash(text)
    assert list(strings({"role": "user", "content": "hi"}, frozenset({"content"}))) == [text]
    assert rewrite("not a message", CARRIED, lambda t: "x") == "not a message"
