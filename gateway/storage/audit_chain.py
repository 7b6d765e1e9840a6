"""The audit trail's hash chain, the same on every backend.

Each row stores the record's canonical JSON, the previous row's hash and its own hash,
sha256(prev_hash + record_json). Editing a record breaks its hash; deleting, inserting or
reordering rows breaks the next row's link. `ChainCheck` walks rows in order and names the
first that does not fit.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

GENESIS = "0" * 64


def chain_hash(prev_hash: str, record_json: str) -> str:
    return hashlib.sha256((prev_hash + record_json).encode()).hexdigest()


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int
    problem: str | None = None


class ChainCheck:
    """Rows in seq order, one at a time (any backend); `add` names the first bad one."""

    def __init__(self) -> None:
        self.prev, self.count = GENESIS, 0

    def add(self, seq: int, request_id: str, text: str, prev_hash: str,
            digest: str) -> VerifyResult | None:
        where = f"record seq={seq} (request {request_id})"
        if prev_hash != self.prev:
            return VerifyResult(False, self.count, f"{where}: does not follow the previous "
                                "record (a record was removed, inserted or reordered)")
        if chain_hash(prev_hash, text) != digest:
            return VerifyResult(False, self.count, f"{where}: content does not match its hash "
                                "(the record was altered)")
        self.prev, self.count = digest, self.count + 1
        return None

    def ok(self) -> VerifyResult:
        return VerifyResult(True, self.count)
