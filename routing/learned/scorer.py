"""`DifficultyScorer`: a head plus its embedder, with a bounded cache and a known CPU cost.

A score belongs on the event loop only while it is cheap. The cost is measured, not guessed:
CPU time of each uncached score, smoothed, per character of text (an embed's cost grows with
the text, which is capped at 2,048 characters). Callers ask `off_loop_for(features)` before
scoring on a loop: a score expected to cost more than `off_loop_ms` (1 ms) runs on a worker
thread. Not lower, because a thread buys less than it seems: the hop itself costs the loop
about as much as a whole default score (~0.1 ms each on these shared 2-core machines,
bench/learned_hop.py), and the worker holds the GIL while it runs Python (the default
embedder's tokenising and hashing), so the loop waits anyway. Past ~1 ms (a heavy embedder, much
of whose work is in native code that releases the GIL) the loop gets to interleave other
requests. A cached score is a digest and a dictionary lookup: always inline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from cachetools import LRUCache

from routing.learned.embedders import Embedder
from routing.learned.features import PromptFeatures, RecordedFeatures
from routing.learned.head import LinearHead

OFF_LOOP_MS = 1.0
_SMOOTHING = 0.1                      # weight of the newest sample in the running cost
_FIXED_CHARS = 256                    # a score's fixed cost, in characters' worth of text


class DifficultyScorer:
    def __init__(self, head: LinearHead, embedder: Embedder | None = None,
                 cache_size: int = 4096, off_loop_ms: float = OFF_LOOP_MS) -> None:
        self.head = head
        self.embedder = embedder or head.make_embedder()
        self.off_loop_ms = off_loop_ms
        self._cache: LRUCache[bytes, float] = LRUCache(maxsize=max(cache_size, 1))
        self._lock = threading.Lock()  # scores may run on worker threads; the cache is shared
        self._cost_ms: float | None = None
        self._ms_per_char = 0.0
        self.hits = self.misses = 0

    @classmethod
    def from_file(cls, path: Path, cache_size: int = 4096) -> DifficultyScorer:
        return cls(LinearHead.load(path), cache_size=cache_size)

    def score(self, features: PromptFeatures) -> float:
        """The prompt's difficulty; the same features always give the same score."""
        cached = self.cached(features)
        if cached is not None:
            return cached
        started = time.thread_time_ns()
        value = self.head.score(features, self.embedder)
        self._note(features, value, started, miss=True)
        return value

    def cached(self, features: PromptFeatures) -> float | None:
        """The score if it is in the cache (a digest and a lookup: microseconds), else None."""
        with self._lock:
            value = self._cache.get(features.digest())
            self.hits += value is not None
        return value

    def score_and_record(self, features: PromptFeatures) -> tuple[float, RecordedFeatures]:
        """The score and the features as the audit trail keeps them. It always embeds (the
        record needs the vector, which the cache does not keep), so a cached score saves
        nothing here; the score is cached for requests that are not recorded."""
        started = time.thread_time_ns()
        index, values = self.embedder.embed(features.text)
        value = self.head.score_embedded(features, index, values)
        kept = recorded(self.embedder, features, index, values)
        self._note(features, value, started, miss=False)
        return value, kept

    def _note(self, features: PromptFeatures, value: float, started_ns: int, *,
              miss: bool) -> None:
        spent_ms = (time.thread_time_ns() - started_ns) / 1e6
        per_char = spent_ms / (len(features.text) + _FIXED_CHARS)
        with self._lock:
            self.misses += miss
            self._cache[features.digest()] = value
            if self._cost_ms is None:
                self._cost_ms, self._ms_per_char = spent_ms, per_char
            else:
                self._cost_ms = (1 - _SMOOTHING) * self._cost_ms + _SMOOTHING * spent_ms
                self._ms_per_char = ((1 - _SMOOTHING) * self._ms_per_char
                                     + _SMOOTHING * per_char)

    def score_messages(self, messages: Sequence[Mapping[str, Any]]) -> float:
        return self.score(PromptFeatures.of_messages(messages))

    def warm(self) -> float:
        """Load lazy parts (a heavy embedder's weights) and measure a first cost; returns ms.
        Call it at start-up, off the event loop, so no request pays for the load."""
        prompts = [PromptFeatures.of_prompt(("How many prime numbers are there below 100? "
                                             "Explain each step. ") * n) for n in (1, 8, 24)]
        for _ in range(2):   # the first round pays for first calls: only the second counts
            with self._lock:
                self._cache.clear()
                self._cost_ms = None
            for features in prompts:
                self.score(features)
        with self._lock:
            self._cache.clear()
            self.hits = self.misses = 0
        return self.cost_ms

    @property
    def cost_ms(self) -> float:
        """Smoothed CPU milliseconds of an uncached score (0 before the first)."""
        return self._cost_ms or 0.0

    def expected_ms(self, features: PromptFeatures) -> float:
        """What an uncached score of these features should cost, from the measured rate."""
        return self._ms_per_char * (len(features.text) + _FIXED_CHARS)

    def off_loop_for(self, features: PromptFeatures) -> bool:
        """Whether an uncached score of these features belongs on a worker thread."""
        return self.expected_ms(features) > self.off_loop_ms

    @property
    def runs_off_loop(self) -> bool:
        """Whether a typical uncached score (the smoothed cost) belongs on a worker thread."""
        return self.cost_ms > self.off_loop_ms


def recorded(embedder: Embedder, features: PromptFeatures, index: np.ndarray | None = None,
             values: np.ndarray | None = None) -> RecordedFeatures:
    """The features as the audit trail keeps them (embedding the text unless given)."""
    if index is None or values is None:
        index, values = embedder.embed(features.text)
    return RecordedFeatures(embedder.name, embedder.params, tuple(index.tolist()),
                            tuple(np.round(values.astype(np.float64), 5).tolist()),
                            features.text_chars, features.total_chars, features.turns)
