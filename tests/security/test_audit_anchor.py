"""The audit trail notices truncation and rewriting (issue 12, section 10).

Before, deleting the newest rows, or rewriting a row and recomputing the hash chain after it,
passed `podium audit verify`, and the indexed columns (request_id, key_id, team, status) could
be edited freely. Now links are MACed with a key kept out of the database, a MACed checkpoint
of the newest row is kept apart from the rows, and the columns are checked against the records
they index.
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import APP_KEY, GatewayFactory, Upstream, base_config

ROOT = Path(__file__).resolve().parents[2]
HI = [{"role": "user", "content": "hi"}]


def _config(url: str, tmp: Path, key: str | None) -> dict[str, Any]:
    cfg = base_config(url)
    cfg["storage"] = {"path": str(tmp / "podium.sqlite3")}
    if key is not None:
        cfg["audit"] = {"hmac_key": key}
    return cfg


async def _trail(upstream: Upstream, tmp: Path, make_gateway: GatewayFactory,
                 key: str | None = "an-audit-key-from-the-environment") -> Path:
    cfg = _config(upstream.url, tmp, key)
    gw = await make_gateway(cfg)
    for _ in range(5):
        await gw.client(APP_KEY).chat.completions.create(model="chat", messages=HI)
    await gw.server.close()  # flushes the batched writes
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in cfg.items()}))
    return path


def _verify(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "audit", "verify", "--config",
                           str(config)], capture_output=True, text=True, timeout=60, cwd=ROOT)


def _db(tmp: Path) -> sqlite3.Connection:
    return sqlite3.connect(tmp / "podium.sqlite3", isolation_level=None)


async def test_deleting_the_newest_records_is_detected(
        upstream: Upstream, tmp_path: Path, make_gateway: GatewayFactory) -> None:
    config = await _trail(upstream, tmp_path, make_gateway)
    assert _verify(config).returncode == 0
    with _db(tmp_path) as db:
        db.execute("DELETE FROM audit WHERE seq > 3")
    result = _verify(config)
    assert result.returncode == 1
    assert "newer records were removed" in result.stderr


async def test_a_rewritten_and_recomputed_chain_is_detected(
        upstream: Upstream, tmp_path: Path, make_gateway: GatewayFactory) -> None:
    config = await _trail(upstream, tmp_path, make_gateway)
    with _db(tmp_path) as db:
        rows = db.execute("SELECT seq, record FROM audit ORDER BY seq").fetchall()
        prev = "0" * 64
        for seq, record in rows:  # the attacker recomputes every link, as the old chain allowed
            if seq == 2:
                record = record.replace('"status":200', '"status":500')
            digest = hashlib.sha256((prev + record).encode()).hexdigest()
            db.execute("UPDATE audit SET record = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                       (record, prev, digest, seq))
            prev = digest
    result = _verify(config)
    assert result.returncode == 1
    assert "record seq=1" in result.stderr  # the first link the attacker could not MAC


async def test_removing_the_checkpoint_is_detected(
        upstream: Upstream, tmp_path: Path, make_gateway: GatewayFactory) -> None:
    config = await _trail(upstream, tmp_path, make_gateway)
    (tmp_path / "podium.sqlite3.head").unlink()
    result = _verify(config)
    assert result.returncode == 1 and "checkpoint is missing" in result.stderr


@pytest.mark.parametrize(("column", "value"), [("request_id", "'req_other'"),
                                               ("key_id", "'key_someone'"),
                                               ("team", "'elsewhere'"), ("status", "500")])
async def test_editing_an_indexed_column_is_detected(
        upstream: Upstream, tmp_path: Path, make_gateway: GatewayFactory, column: str,
        value: str) -> None:
    config = await _trail(upstream, tmp_path, make_gateway)
    with _db(tmp_path) as db:
        db.execute(f"UPDATE audit SET {column} = {value} WHERE seq = 2")
    result = _verify(config)
    assert result.returncode == 1
    assert f"column {column} does not match" in result.stderr


async def test_without_a_configured_key_one_is_generated_apart_from_the_rows(
        upstream: Upstream, tmp_path: Path, make_gateway: GatewayFactory) -> None:
    config = await _trail(upstream, tmp_path, make_gateway, key=None)
    key = tmp_path / "podium.sqlite3.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert _verify(config).returncode == 0
    with _db(tmp_path) as db:
        db.execute("DELETE FROM audit WHERE seq = 5")
    assert _verify(config).returncode == 1
