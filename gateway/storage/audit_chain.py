"""The audit trail's chain, the same on every backend, and what anchors it.

Each row stores the record's canonical JSON, the previous row's hash and its own:

    hash = HMAC-SHA256(key, prev_hash + record_json)

The key comes from outside the database (`audit.hmac_key`, normally `${PODIUM_AUDIT_KEY}`; for
the embedded store, failing that, a key generated once into a file beside the database), so
whoever can rewrite rows cannot recompute the chain after editing one. Rows written by an
older Podium, before any key, keep their plain sha256 links up to `keyed_from`.

A *checkpoint* — the newest row's seq and hash, and `keyed_from`, MACed with the same key — is
written after every committed batch, apart from the rows (a file beside the SQLite database, a
table of its own in PostgreSQL) and logged as an event line. So deleting the newest rows, or
rewriting a row and recomputing every hash after it, no longer passes `podium audit verify`:
the chain no longer reaches the checkpoint, or reaches it with another hash. What remains
possible for someone holding both the database and the checkpoint is to roll both back to an
earlier consistent state together; the logged checkpoint lines, kept by the log pipeline, are
the anchor against that.

`verify` also checks the indexed columns (time, request_id, key_id, team, status) against the
record they index, so editing a column to hide a record from a query is caught too.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

GENESIS = "0" * 64
KEY_ENV = "PODIUM_AUDIT_KEY"
log = logging.getLogger("podium.audit")
# The record fields the table keeps as indexed columns, in the rows' column order.
COLUMNS = ("time", "request_id", "key_id", "team", "status")


@dataclass(frozen=True)
class ChainKey:
    """What links are MACed with; `secret` None means plain sha256 (no key could be found)."""
    secret: bytes | None
    source: str

    def link(self, prev_hash: str, record_json: str) -> str:
        data = (prev_hash + record_json).encode()
        if self.secret is None:
            return hashlib.sha256(data).hexdigest()
        return hmac.new(self.secret, data, hashlib.sha256).hexdigest()

    def sign(self, fields: Mapping[str, Any]) -> str:
        return self.link("checkpoint", orjson.dumps(dict(fields),
                                                    option=orjson.OPT_SORT_KEYS).decode())


def chain_key(configured: str | None, generated_at: Path | None) -> ChainKey:
    """The configured key, else $PODIUM_AUDIT_KEY, else (embedded store only) a key generated
    once into `generated_at`, else none."""
    if configured:
        return ChainKey(configured.encode(), "config (audit.hmac_key)")
    if os.environ.get(KEY_ENV):
        return ChainKey(os.environ[KEY_ENV].encode(), f"${KEY_ENV}")
    if generated_at is None:
        log.warning("no audit key (%s): the audit chain is plain sha256, so a rewritten and "
                    "recomputed chain cannot be told from the original", KEY_ENV)
        return ChainKey(None, "none")
    return ChainKey(_generated(generated_at), f"generated file {generated_at}")


def _generated(path: Path) -> bytes:
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    key = secrets.token_hex(32).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another worker made it first
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as out:
        out.write(key)
    log.warning("audit chain keyed by a key generated into %s; set %s to keep the key apart "
                "from the database", path, KEY_ENV)
    return key


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    keyed_from: int
    mac: str

    @classmethod
    def make(cls, key: ChainKey, seq: int, digest: str, keyed_from: int) -> Checkpoint:
        return cls(seq, digest, keyed_from, key.sign(_fields(seq, digest, keyed_from)))

    def valid(self, key: ChainKey) -> bool:
        return hmac.compare_digest(self.mac, key.sign(_fields(self.seq, self.hash,
                                                              self.keyed_from)))

    def json(self) -> bytes:
        return orjson.dumps({"seq": self.seq, "hash": self.hash, "keyed_from": self.keyed_from,
                             "mac": self.mac})

    @classmethod
    def parse(cls, raw: bytes | str) -> Checkpoint | None:
        try:
            data = orjson.loads(raw)
            return cls(int(data["seq"]), str(data["hash"]), int(data["keyed_from"]),
                       str(data["mac"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None


def _fields(seq: int, digest: str, keyed_from: int) -> dict[str, Any]:
    return {"seq": seq, "hash": digest, "keyed_from": keyed_from}


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int
    problem: str | None = None


class ChainCheck:
    """Rows in seq order, one at a time (any backend); `add` names the first bad one, `end`
    compares where the chain ends with the checkpoint."""

    def __init__(self, key: ChainKey, keyed_from: int, checkpoint: Checkpoint | None) -> None:
        self.key, self.keyed_from, self.checkpoint = key, keyed_from, checkpoint
        self.prev, self.count, self.last_seq = GENESIS, 0, 0
        self.at_checkpoint: str | None = None   # the hash of the row the checkpoint names

    def add(self, row: Sequence[Any]) -> VerifyResult | None:
        """`row`: seq, then the COLUMNS, then record, prev_hash, hash."""
        seq, *columns, text, prev_hash, digest = row
        where = f"record seq={seq} (request {columns[1]})"
        if prev_hash != self.prev:
            return self._bad(f"{where}: does not follow the previous record (a record was "
                             "removed, inserted or reordered)")
        link = self.key if seq >= self.keyed_from else ChainKey(None, "legacy")
        if not hmac.compare_digest(link.link(prev_hash, text), digest):
            return self._bad(f"{where}: content does not match its hash (the record was "
                             "altered, or the audit key changed)")
        if (column := _column_mismatch(columns, text)) is not None:
            return self._bad(f"{where}: column {column} does not match the record it indexes "
                             "(the column was altered)")
        self.prev, self.count, self.last_seq = digest, self.count + 1, seq
        if self.checkpoint is not None and seq == self.checkpoint.seq:
            self.at_checkpoint = digest
        return None

    def end(self) -> VerifyResult:
        checkpoint = self.checkpoint
        if self.key.secret is None:
            return VerifyResult(True, self.count)  # nothing to anchor with: said at start
        if checkpoint is None:
            if self.count:
                return self._bad("the checkpoint is missing (it is written after every batch; "
                                 "without it, removed newest records cannot be detected)")
            return VerifyResult(True, 0)
        if not checkpoint.valid(self.key):
            return self._bad("the checkpoint's MAC is wrong (it was forged or altered)")
        if checkpoint.keyed_from != self.keyed_from:
            return self._bad("the chain's keyed_from differs from the checkpoint's")
        if checkpoint.seq > self.last_seq:
            return self._bad(f"the chain ends at seq={self.last_seq} but the checkpoint "
                             f"names seq={checkpoint.seq}: newer records were removed")
        if self.at_checkpoint != checkpoint.hash:
            return self._bad(f"record seq={checkpoint.seq} differs from the checkpoint: the "
                             "chain was rewritten and recomputed")
        return VerifyResult(True, self.count)

    def _bad(self, problem: str) -> VerifyResult:
        return VerifyResult(False, self.count, problem)


def _column_mismatch(columns: Sequence[Any], text: str) -> str | None:
    record = orjson.loads(text)
    for name, value in zip(COLUMNS, columns, strict=True):
        expected = record.get(name)
        if value != expected and not (name == "time" and _same_time(value, expected)):
            return name
    return None


def _same_time(column: Any, recorded: Any) -> bool:
    return isinstance(column, int | float) and isinstance(recorded, int | float) and \
        abs(column - recorded) < 1e-6
