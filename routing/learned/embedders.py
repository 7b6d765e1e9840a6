"""Text → vector, for the difficulty head. Behind one small Protocol, picked by name.

`hashed` (the default) needs nothing but numpy and no file: word 1-2-grams and character 3-5-grams
hashed into a fixed number of buckets (the "hashing trick"), so there is no vocabulary to ship,
download or keep in step with the head. `wordllama` is the optional heavier one: WordLlama's
256-d static token embeddings, mean-pooled; its wheel bundles the weights, loaded lazily on first
use. `hashed+wordllama` concatenates the two. Measurements behind the default are in
docs/learned-router.md.
"""

from __future__ import annotations

import logging
import re
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

SparseVector = tuple[np.ndarray, np.ndarray]  # (int64 indices < dim, unique; float32 values)


class Embedder(Protocol):
    name: str
    dim: int
    params: dict[str, Any]            # what rebuilds it: make_embedder(name, **params)

    def embed(self, text: str) -> SparseVector:
        """The text's vector as its nonzero coordinates. Pure: the same text always gives the
        same vector, in any process (no salted hashes); safe to call from any thread."""
        ...


_WORD = re.compile(r"\w+|[^\w\s]")
_MASK32 = np.uint64(0xFFFFFFFF)


class HashedNgrams:
    """Sublinear term frequencies of hashed n-grams, L2-normalised (TF without IDF: a linear
    head learns each bucket's weight, so IDF would only rescale what it learns)."""

    name = "hashed"

    # Defaults measured on RouteLLM's labels (docs/learned-router.md): word 1-2-grams in 2^18
    # buckets beat 2^16 buckets and beat adding character 3-5-grams, which also cost 4x the CPU.
    def __init__(self, bits: int = 18, word_ngrams: int = 2,
                 char_ngrams: tuple[int, int] | list[int] | None = None) -> None:
        if not 10 <= bits <= 24 or word_ngrams < 1:
            raise ValueError("hashed embedder: bits must be 10..24 and word_ngrams >= 1")
        self.bits, self.word_ngrams = bits, word_ngrams
        self.char_ngrams = (int(char_ngrams[0]), int(char_ngrams[1])) if char_ngrams else None
        self.dim = 1 << bits
        self.params = {"bits": bits, "word_ngrams": word_ngrams,
                       "char_ngrams": list(self.char_ngrams) if self.char_ngrams else None}

    def embed(self, text: str) -> SparseVector:
        text = text.lower()
        parts = [self._words(text)]
        if self.char_ngrams:
            parts.append(self._chars(text, *self.char_ngrams))
        buckets = np.concatenate(parts) & np.uint64(self.dim - 1)
        index, counts = np.unique(buckets.astype(np.int64), return_counts=True)
        values = (1.0 + np.log(counts)).astype(np.float32)
        norm = float(np.sqrt(values @ values))
        return index, values / norm if norm else values

    def _words(self, text: str) -> np.ndarray:
        tokens = np.fromiter((zlib.crc32(t.encode()) for t in _WORD.findall(text)),
                             dtype=np.uint64)
        grams = [tokens]
        for n in range(2, self.word_ngrams + 1):
            if len(tokens) >= n:
                h = tokens[: len(tokens) - n + 1].copy()
                for k in range(1, n):
                    h = (h * np.uint64(0x01000193) + tokens[k: len(tokens) - n + 1 + k]) & _MASK32
                grams.append(h ^ np.uint64(n * 0x9E3779B1 & 0xFFFFFFFF))
        return np.concatenate(grams) if grams else np.zeros(0, np.uint64)

    @staticmethod
    def _chars(text: str, lo: int, hi: int) -> np.ndarray:
        # A polynomial rolling hash over code points, vectorised: one pass per n-gram length.
        codes = np.frombuffer(f" {text} ".encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        grams = []
        for n in range(lo, hi + 1):
            if len(codes) < n:
                break
            h = np.full(len(codes) - n + 1, np.uint64(0x811C9DC5 + n))
            for k in range(n):
                h = ((h ^ codes[k: len(codes) - n + 1 + k]) * np.uint64(0x01000193)) & _MASK32
            grams.append(h)
        return np.concatenate(grams) if grams else np.zeros(0, np.uint64)


class WordLlamaEmbedder:
    """WordLlama's bundled 256-d static embeddings, loaded on first use (measured ~0.25 s with a
    warm disk cache, ~37 MB RSS; p95 0.75 ms per score)."""

    name = "wordllama"

    def __init__(self, dim: int = 256, max_tokens: int = 512) -> None:
        self.dim, self.max_tokens = dim, max_tokens
        self.params = {"dim": dim, "max_tokens": max_tokens}
        self._model: Any = None
        self._lock = threading.Lock()

    def embed(self, text: str) -> SparseVector:
        vector = self._loaded().embed([text], norm=True, return_np=True)[0]
        return np.arange(self.dim, dtype=np.int64), vector.astype(np.float32)

    def _loaded(self) -> Any:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = _load_wordllama(self.dim, self.max_tokens)
        return self._model


def _load_wordllama(dim: int, max_tokens: int) -> Any:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        import wordllama
    except ImportError:
        raise RuntimeError("the 'wordllama' embedder needs the wordllama package: "
                           "pip install 'podium[learned]'") from None
    finally:
        # Importing wordllama sets the root logger to INFO and may add a handler; undo both.
        root.setLevel(level)
        root.handlers[:] = handlers
    # The wheel bundles weights and tokenizer; without cache_dir it looks elsewhere and tries
    # to download them, which must never happen at run time.
    model = wordllama.WordLlama.load(cache_dir=Path(wordllama.__file__).parent,
                                     disable_download=True, dim=dim)
    model.tokenizer.enable_truncation(max_length=max_tokens)
    return model


class Concatenated:
    """Two embedders side by side: the second's indices start after the first's."""

    def __init__(self, first: Embedder, second: Embedder) -> None:
        self.first, self.second = first, second
        self.dim = first.dim + second.dim
        self.name = f"{first.name}+{second.name}"
        self.params = first.params

    def embed(self, text: str) -> SparseVector:
        i1, v1 = self.first.embed(text)
        i2, v2 = self.second.embed(text)
        return np.concatenate([i1, i2 + self.first.dim]), np.concatenate([v1, v2])


def _hashed_and_wordllama(**params: Any) -> Embedder:
    return Concatenated(HashedNgrams(**params), WordLlamaEmbedder())


# name → factory; heavy parts load on first embed, never at import.
EMBEDDERS: dict[str, Callable[..., Embedder]] = {
    "hashed": HashedNgrams,
    "wordllama": WordLlamaEmbedder,
    "hashed+wordllama": _hashed_and_wordllama,
}


def make_embedder(name: str, **params: Any) -> Embedder:
    factory = EMBEDDERS.get(name)
    if factory is None:
        raise ValueError(f"unknown embedder {name!r}; known: {', '.join(EMBEDDERS)}")
    try:
        return factory(**params)
    except TypeError as exc:
        raise ValueError(f"embedder {name!r}: bad parameters {params}: {exc}") from None
