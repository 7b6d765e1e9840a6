"""Structured JSON logs from a real `podium serve`: one access line per request with the
fields an operator needs, and no secrets or content anywhere."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import openai
import pytest
import yaml

from gateway.observability import logs
from tests.conftest import APP_KEY, UPSTREAM_KEY, Upstream, base_config
from tests.support.net import free_port, get_json
from tests.support.waiting import CEILING_S, until

ROOT = Path(__file__).resolve().parents[1]
SECRET_PROMPT = "my card is 4111 1111 1111 1111, tell nobody"


async def test_access_and_event_logs_are_json_without_secrets(upstream: Upstream,
                                                              tmp_path: Path) -> None:
    cfg = base_config(upstream.url)
    cfg["storage"] = {"path": str(tmp_path / "podium.sqlite3")}
    cfg["key_store"] = {"path": str(tmp_path / "keys.sqlite3")}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    port = free_port()
    proc = subprocess.Popen(  # noqa: ASYNC220 - Popen returns at once
        [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", str(port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        await until(lambda: get_json(base + "/readyz"), "the gateway to be ready")
        client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=APP_KEY, max_retries=0)
        raw = await client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": SECRET_PROMPT}])
        try:
            await openai.AsyncOpenAI(base_url=base + "/v1", api_key="sk-wrong-123456",
                                     max_retries=0).models.list()
        except openai.AuthenticationError:
            pass
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=CEILING_S)
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert lines and all({"time", "level", "logger", "message"} <= set(e) for e in lines)
    [access] = [e for e in lines if e.get("request_id") == raw.headers["x-request-id"]]
    assert access["logger"] == "podium.access" and access["status"] == 200
    assert access["path"] == "/v1/chat/completions" and access["method"] == "POST"
    assert access["deployment"] == "sim-cheap" and access["team"] == "support"
    assert access["key_id"].startswith("key_") and access["cost_usd"] > 0
    assert access["latency_ms"] > 0 and access["cache"] == "bypass"  # sampled: not cached
    assert any(e.get("status") == 401 and e["path"] == "/v1/models" for e in lines)
    for secret in (APP_KEY, UPSTREAM_KEY, "sk-wrong-123456", "4111 1111", "tell nobody"):
        assert secret not in output


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


async def test_batching_handler_writes_in_order_without_a_write_per_line() -> None:
    stream = io.StringIO()
    handler = logs.BatchingHandler(stream, interval_s=0.05, capacity=50)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("podium.test.batching")
    log.propagate, log.handlers[:] = False, [handler]
    log.setLevel(logging.INFO)
    try:
        log.info("one")
        log.info("two")
        assert _lines(stream) == []  # held for the batch, not written per line

        async def flushed() -> bool:
            return _lines(stream) == ["one", "two"]
        await until(flushed, "the flusher thread to write the batch")
        log.info("three")
        log.warning("four")  # a warning is written at once, after what came before it
        assert _lines(stream) == ["one", "two", "three", "four"]
        for n in range(50):  # a full batch is written at once too
            log.info("n%d", n)
        assert _lines(stream)[-1] == "n49"
        log.info("last")
    finally:
        handler.close()  # logging.shutdown() does this at exit
    assert _lines(stream)[-1] == "last" and len(_lines(stream)) == 55


_WORKER = """
import logging, sys
from gateway.observability import logs
logs.setup("json", "INFO")
log = logging.getLogger("podium.access")
for n in range(4000):
    log.info("request", extra={"worker": sys.argv[1], "n": n, "pad": "x" * 300})
logging.shutdown()
"""


def test_workers_sharing_one_pipe_never_cut_into_each_others_lines() -> None:
    """`--workers N` processes share one stderr; a collector reading it slowly (so the pipe
    is full and writers block part-way) still gets every line whole, and every line."""
    read_fd, write_fd = os.pipe()
    workers = [subprocess.Popen([sys.executable, "-c", _WORKER, str(w)], cwd=ROOT,
                                stderr=write_fd) for w in range(3)]
    os.close(write_fd)
    data = bytearray()
    with os.fdopen(read_fd, "rb", buffering=0) as reader:
        while chunk := reader.read(256):  # small reads: the pipe stays nearly full
            data += chunk
    for worker in workers:
        assert worker.wait(timeout=CEILING_S) == 0
    entries = [json.loads(line) for line in data.decode().splitlines()]
    for w in range(3):
        assert [e["n"] for e in entries if e["worker"] == str(w)] == list(range(4000))


def test_closing_the_handler_stops_its_flusher_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Shutdown must not wait for the flusher's join timeout, even when close() comes while
    the flusher is gathering a batch."""
    gathering = threading.Event()
    sleep = time.sleep

    def observed_sleep(seconds: float) -> None:
        gathering.set()
        sleep(seconds)
    monkeypatch.setattr(logs.time, "sleep", observed_sleep)
    handler = logs.BatchingHandler(io.StringIO(), interval_s=0.2)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.handle(logging.makeLogRecord({"msg": "gathering", "levelno": logging.INFO}))
    assert gathering.wait(5)
    handler.close()  # while the flusher sleeps through its interval
    assert not handler._flusher.is_alive()
    assert handler.stream.getvalue() == "gathering\n"


_ACCESS_LINES = """
import logging, sys
from gateway.observability import logs
made = []
plain = logging.getLogRecordFactory()
def counted(*args, **kwargs):
    record = plain(*args, **kwargs)
    made.append(record.name)
    return record
logging.setLogRecordFactory(counted)
logs.setup("json", "INFO")
# A header value as aiohttp decodes bytes that are not UTF-8 (surrogateescape), a path with
# quotes, a newline and a line separator, a number past 64 bits.
header = b"\\xed\\xa0\\x80 \\"x\\"".decode("utf-8", "surrogateescape")
fields = {"request_id": "req_1", "method": "GET", "path": '/v1/"a"\\n\\u2028b\\\\',
          "status": 404, "latency_ms": 1.5, "trace_id": None, "config_version": 3,
          "key_id": header, "team": None, "attempts": 2**70}
logs.access("GET /x 404", fields)                       # the direct path: no LogRecord
assert made == [], made
logging.root.addHandler(logging.NullHandler())          # another handler would see it:
logs.access("GET /x 404", fields)                       # through logging, as a record
assert made == ["podium.access"], made
logging.shutdown()
"""


def test_access_lines_are_json_bytes_with_a_records_fields_even_for_hostile_values() -> None:
    """The access line is rendered straight to JSON (no LogRecord, no Formatter) while the
    batching JSON handler is all that would see it, and is the same line, field for field and
    in the same order, as the record `logging` makes when something else listens. Quotes,
    newlines, a lone surrogate (a non-UTF-8 header) and a huge integer all stay one valid
    JSON line, never a lost one."""
    done = subprocess.run([sys.executable, "-c", _ACCESS_LINES], cwd=ROOT, capture_output=True,
                          timeout=CEILING_S)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    direct, recorded = [json.loads(line) for line in done.stderr.splitlines()]
    assert list(direct) == list(recorded) == [
        "time", "level", "logger", "message", "request_id", "method", "path", "status",
        "latency_ms", "trace_id", "config_version", "key_id", "team", "attempts"]
    assert {k: v for k, v in direct.items() if k != "time"} == \
        {k: v for k, v in recorded.items() if k != "time"}
    assert direct["path"] == '/v1/"a"\n\u2028b\\' and direct["status"] == 404
    assert direct["key_id"] == '\\udced\\udca0\\udc80 "x"'   # the bytes, shown as escapes
    assert direct["attempts"] == str(2**70) and direct["logger"] == "podium.access"
    assert direct["level"] == "info" and direct["message"] == "GET /x 404"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", direct["time"])


async def test_a_hostile_path_and_model_stay_one_json_access_line(upstream: Upstream,
                                                                   tmp_path: Path) -> None:
    cfg = base_config(upstream.url)
    cfg["storage"] = {"path": str(tmp_path / "podium.sqlite3")}
    cfg["key_store"] = {"path": str(tmp_path / "keys.sqlite3")}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    port = free_port()
    proc = subprocess.Popen(  # noqa: ASYNC220 - Popen returns at once
        [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", str(port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    model = 'gpt"}\n{"level": "error"\u2028'
    try:
        base = f"http://127.0.0.1:{port}"
        await until(lambda: get_json(base + "/readyz"), "the gateway to be ready")
        client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=APP_KEY, max_retries=0)
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model=model, messages=[{"role": "user",
                                                                         "content": "hi"}])
        async with aiohttp.ClientSession() as session, session.get(
                base + "/v1/no%22pe%0A%7B%22x%22:1%7D%ED%A0%80") as resp:
            assert resp.status == 404
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=CEILING_S)
    lines = [json.loads(line) for line in output.splitlines() if line.startswith(b"{")]
    [by_model] = [e for e in lines if e.get("model") == model]
    assert by_model["status"] == 404 and by_model["error_code"] == "model_not_found"
    [by_path] = [e for e in lines if e.get("path", "").startswith("/v1/no")]
    assert by_path["path"] == '/v1/no"pe\n{"x":1}%ED%A0%80' and by_path["status"] == 404
    assert not [e for e in lines if e.get("level") == "error"]
