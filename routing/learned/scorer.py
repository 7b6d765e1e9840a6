"""`DifficultyScorer`: a head plus its embedder, with a bounded cache and a known CPU cost.

Callers ask `runs_off_loop` before scoring on an event loop: a score that costs more than about
1 ms of CPU (a heavy embedder, a cold cache of a huge prompt) belongs on a worker thread, where
it delays no other request; a cheaper one is faster inline than the thread hop (~50-100 µs).
The cost is measured, not guessed: CPU time of each uncached score, smoothed.
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


class DifficultyScorer:
    def __init__(self, head: LinearHead, embedder: Embedder | None = None,
                 cache_size: int = 4096, off_loop_ms: float = OFF_LOOP_MS) -> None:
        self.head = head
        self.embedder = embedder or head.make_embedder()
        self.off_loop_ms = off_loop_ms
        self._cache: LRUCache[bytes, float] = LRUCache(maxsize=max(cache_size, 1))
        self._lock = threading.Lock()  # scores may run on worker threads; the cache is shared
        self._cost_ms: float | None = None
        self.hits = self.misses = 0

    @classmethod
    def from_file(cls, path: Path, cache_size: int = 4096) -> DifficultyScorer:
        return cls(LinearHead.load(path), cache_size=cache_size)

    def score(self, features: PromptFeatures) -> float:
        """The prompt's difficulty; the same features always give the same score."""
        key = features.digest()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self.hits += 1
                return cached
        started = time.thread_time_ns()
        value = self.head.score(features, self.embedder)
        self._note(key, value, started, miss=True)
        return value

    def score_and_record(self, features: PromptFeatures) -> tuple[float, RecordedFeatures]:
        """The score and the features as the audit trail keeps them. It always embeds (the
        record needs the vector, which the cache does not keep), so a cached score saves
        nothing here; the score is cached for requests that are not recorded."""
        started = time.thread_time_ns()
        index, values = self.embedder.embed(features.text)
        value = self.head.score_embedded(features, index, values)
        self._note(features.digest(), value, started, miss=False)
        return value, recorded(self.embedder, features, index, values)

    def _note(self, key: bytes, value: float, started_ns: int, *, miss: bool) -> None:
        spent_ms = (time.thread_time_ns() - started_ns) / 1e6
        with self._lock:
            self.misses += miss
            self._cache[key] = value
            self._cost_ms = spent_ms if self._cost_ms is None else (
                (1 - _SMOOTHING) * self._cost_ms + _SMOOTHING * spent_ms)

    def score_messages(self, messages: Sequence[Mapping[str, Any]]) -> float:
        return self.score(PromptFeatures.of_messages(messages))

    def warm(self) -> float:
        """Load lazy parts (a heavy embedder's weights) and measure a first cost; returns ms.
        Call it at start-up, off the event loop, so no request pays for the load."""
        self.score(PromptFeatures.of_prompt("How many prime numbers are there below 100?"))
        with self._lock:
            self._cache.clear()
        return self.cost_ms

    @property
    def cost_ms(self) -> float:
        """Smoothed CPU milliseconds of an uncached score (0 before the first)."""
        return self._cost_ms or 0.0

    @property
    def runs_off_loop(self) -> bool:
        return self.cost_ms > self.off_loop_ms


def recorded(embedder: Embedder, features: PromptFeatures, index: np.ndarray | None = None,
             values: np.ndarray | None = None) -> RecordedFeatures:
    """The features as the audit trail keeps them (embedding the text unless given)."""
    if index is None or values is None:
        index, values = embedder.embed(features.text)
    return RecordedFeatures(embedder.name, embedder.params, tuple(index.tolist()),
                            tuple(np.round(values.astype(np.float64), 5).tolist()),
                            features.text_chars, features.total_chars, features.turns)
