"""The simulator's embeddings: deterministic unit vectors that preserve similarity.

Crudely like a real model: lower-cased words and word bigrams are feature-hashed into the
requested dimensions, so texts that share most words point the same way and unrelated ones do
not. Token arrays and wordless text are hashed whole.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import struct

import orjson

_WORD = re.compile(r"\w+")
_SLOTS_PER_FEATURE = 4  # 4 x 5 bytes of a sha256 digest: a uint32 index and a sign byte


def text_vector(item: str | list[int], dimensions: int) -> list[float]:
    """A unit vector. For text it preserves similarity, like a real model (if crudely): the
    lower-cased words and word bigrams are feature-hashed into the dimensions, so texts that
    share most words point the same way. Token arrays and wordless text are hashed whole."""
    words = _WORD.findall(item.lower()) if isinstance(item, str) else []
    if not words:
        return hashed_vector(item, dimensions)
    values = [0.0] * dimensions
    for feature in [*words, *(f"{a} {b}" for a, b in itertools.pairwise(words))]:
        digest = hashlib.sha256(feature.encode()).digest()
        for slot in range(_SLOTS_PER_FEATURE):  # a few signed slots each: dense at low dims
            index, sign = struct.unpack_from("<IB", digest, slot * 5)
            values[index % dimensions] += 1.0 if sign & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values] if norm else hashed_vector(item, dimensions)


def hashed_vector(item: str | list[int], dimensions: int) -> list[float]:
    seed = orjson.dumps(item)
    blocks = range(math.ceil(dimensions / 16))  # a sha256 digest yields 16 uint16 values
    raw = b"".join(hashlib.sha256(seed + b.to_bytes(4, "little")).digest() for b in blocks)
    values = [v / 32767.5 - 1.0 for v in struct.unpack(f"<{dimensions}H", raw[: dimensions * 2])]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]
