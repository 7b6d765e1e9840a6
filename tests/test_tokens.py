"""The token gauge: an estimate wherever it cannot change a routing decision, the exact count
(tiktoken) wherever it could. Checked against the exact count on arbitrary text."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from routing.tokens import TokenGauge


def count_messages(msgs: list[dict[str, Any]]) -> int:
    """The exact count: a gauge whose every threshold is 0 always counts."""
    size = TokenGauge(0).messages(msgs)
    assert size.exact
    return size.tokens

text = st.text(st.characters(codec="utf-8"), max_size=400)
parts = st.one_of(
    text,
    st.lists(st.one_of(
        st.builds(lambda t: {"type": "text", "text": t}, text),
        st.just({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}),
    ), max_size=3))
messages = st.lists(st.builds(lambda c: {"role": "user", "content": c}, parts),
                    min_size=1, max_size=4)


@settings(max_examples=300, deadline=None)
@given(messages, st.integers(0, 3000), st.integers(0, 2000), st.integers(0, 600))
def test_every_decision_above_the_threshold_matches_the_exact_count(
        msgs: list[dict[str, Any]], exact_from: int, bump: int, headroom: int) -> None:
    """For every threshold a decision could compare with (>= exact_from), the gauge's answer
    and the exact count fall on the same side: windows (with output headroom) and rule bounds."""
    size = TokenGauge(exact_from).messages(msgs, headroom=headroom)
    exact = count_messages(msgs)
    threshold = exact_from + bump
    assert (size.tokens + headroom > threshold) == (exact + headroom > threshold)
    assert (size.tokens >= threshold) == (exact >= threshold)
    assert (size.tokens <= threshold) == (exact <= threshold)
    if size.exact:
        assert size.tokens == exact


def test_long_prompts_are_counted_exactly_and_short_ones_estimated() -> None:
    gauge = TokenGauge(1000)
    short = [{"role": "user", "content": "hello " * 10}]
    assert gauge.messages(short) == (6 + 15, False)  # 3 + 3 overhead, 60 bytes / 4
    long = [{"role": "user", "content": "hello " * 400}]
    assert gauge.messages(long) == (count_messages(long), True)
    # The output tokens asked for share the window: they tip a short prompt into counting.
    assert gauge.messages(short, headroom=990).exact
    assert gauge.texts(["été " * 300]).exact          # 1,500 UTF-8 bytes, 1,200 characters
    assert not TokenGauge(None).messages(long).exact  # nothing to compare with: never counted


def test_short_prompts_never_load_the_tokenizer() -> None:
    """tiktoken's tables cost ~40 MB and ~0.2 s: a process that only sees short prompts never
    loads them."""
    code = (
        "import sys\n"
        "from routing.tokens import TokenGauge, loaded\n"
        "g = TokenGauge(8192)\n"
        "for n in range(100):\n"
        "    g.messages([{'role': 'user', 'content': 'hi there ' * n}], headroom=256)\n"
        "print(loaded(), 'tiktoken' in sys.modules)\n"
        "g.messages([{'role': 'user', 'content': 'x' * 9000}])\n"
        "print(loaded(), 'tiktoken' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.split() == ["False", "False", "True", "True"]
