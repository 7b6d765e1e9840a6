"""Structured logs: one JSON object per line, for access and events alike.

Access lines carry the request id, trace id, principal (key id and team, never the key),
deployment, status, latency and cost; no prompt or answer text. Event lines (reloads, breaker
changes, a Redis outage) carry their message and whatever fields the caller attached with
`extra=`. `logging.format: text` gives the classic human format instead.

The access line is the one written per request, so it skips `logging`'s machinery when it can:
`access()` renders it straight to JSON bytes (orjson, one dict) and hands it to the batching
handler, the same fields in the same order as the formatter would give. Whenever anything else
could see the record (another handler or a filter on its way, as in tests' log capture, or
the text format), it goes through `logging` as any other line.
"""

from __future__ import annotations

import logging
import os
import select
import sys
import threading
import time
from collections import deque
from functools import lru_cache
from typing import Any

import orjson

# Attributes every LogRecord has; anything else was passed with `extra=` and is logged as a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}
ACCESS_LOG = logging.getLogger("podium.access")
_INT64 = (-(2**63), 2**64 - 1)        # what orjson writes as a number


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _stamp(int(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name,
            "message": record.getMessage(),
        }
        fields = record.__dict__
        for key in [k for k in fields if k not in _STANDARD]:  # what `extra=` added
            if key[0] != "_":
                entry[key] = fields[key]
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json_line(entry).decode()


def access(message: str, fields: dict[str, Any]) -> None:
    """The access line of one request: `message`, then `fields` (in their order)."""
    if not ACCESS_LOG.isEnabledFor(logging.INFO):
        return
    sink = _json_sink()
    if sink is None:
        ACCESS_LOG.info("%s", message, extra=fields)
        return
    now = time.time()
    second = int(now)
    sink.put(json_line({"time": f"{_stamp(second)}.{int((now - second) * 1000):03d}Z",
                        "level": "info", "logger": ACCESS_LOG.name, "message": message,
                        **fields}))


def json_line(entry: dict[str, Any]) -> bytes:
    """`entry` as one line of JSON. A value orjson refuses (a string with a lone surrogate,
    as a header decoded with surrogateescape can hold; an integer past 64 bits) is written
    as text instead, so a hostile value never costs the line."""
    try:
        return orjson.dumps(entry, default=str)
    except TypeError:
        return orjson.dumps(_writable(entry), default=str)


def _writable(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_writable(k): _writable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_writable(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not (
            _INT64[0] <= value <= _INT64[1]):
        return str(value)
    return value


@lru_cache(maxsize=4)
def _stamp(second: int) -> str:
    """A second as the lines show it (formatted once per second, not once per line)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def _json_sink() -> BatchingHandler | None:
    """The batching JSON handler that alone would receive an access record, or None when
    the record must go through `logging` (another handler or a filter on the way)."""
    logger: logging.Logger | None = ACCESS_LOG
    while logger is not None:
        if logger.filters:
            return None
        if logger.handlers:
            if logger is not logging.root or len(logger.handlers) != 1:
                return None
            handler = logger.handlers[0]
            if (isinstance(handler, BatchingHandler) and not handler.filters
                    and type(handler.formatter) is JsonFormatter
                    and handler.level <= logging.INFO):
                return handler
            return None
        if not logger.propagate:
            return None
        logger = logger.parent
    return None


class BatchingHandler(logging.StreamHandler[Any]):
    """Formats on the caller's thread, writes in batches from a flusher thread.

    A few writes per batch (whole lines, at most PIPE_BUF bytes each) instead of a write and
    flush per line keep the access log off the request path's syscalls. A line reaches the
    stream within `interval_s`; a WARNING or worse line, a full batch, `flush()` and `close()`
    (which `logging.shutdown` calls at exit) write at once. Only a process killed outright
    loses the last interval's lines.
    """

    def __init__(self, stream: Any, interval_s: float = 0.1, capacity: int = 512) -> None:
        super().__init__(stream)
        # Formatted lines, or JSON lines already encoded (`put`). append and popleft are
        # atomic: no lock shared.
        self._lines: deque[str | bytes] = deque()
        self._interval_s = interval_s
        self._capacity = capacity
        self._write_lock = threading.Lock()  # keeps batches in order
        self._pending = threading.Event()
        self._closed = False
        self._flusher = threading.Thread(target=self._run, name="podium-log-flush", daemon=True)
        self._flusher.start()

    def emit(self, record: logging.LogRecord) -> None:  # called with self.lock held
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        if not self._lines:
            self._pending.set()
        self._lines.append(line)
        if record.levelno >= logging.WARNING or len(self._lines) >= self._capacity:
            self.flush()

    def put(self, line: bytes) -> None:
        """A line rendered by the caller (no newline): batched as `emit` batches records."""
        if not self._lines:
            self._pending.set()
        self._lines.append(line)
        if len(self._lines) >= self._capacity:
            self.flush()

    def flush(self) -> None:
        with self._write_lock:  # never waits for self.lock, which emit and shutdown hold
            lines = []
            while self._lines:
                lines.append(self._lines.popleft())
            if lines and self.stream is not None:
                try:
                    self._write(lines)
                except (OSError, ValueError):  # the stream is gone (closed pipe, exit)
                    pass

    def _write(self, lines: list[str | bytes]) -> None:
        """Whole lines, at most PIPE_BUF bytes per write(2) where the stream has a file
        descriptor: the kernel never splits such a write on a pipe, so the lines of several
        worker processes sharing one stderr never cut into each other. (A line longer than
        PIPE_BUF gets a write of its own.)"""
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):  # an in-memory stream
            self.stream.write("\n".join(line if isinstance(line, str) else line.decode()
                                        for line in lines) + "\n")
            self.stream.flush()
            return
        self.stream.flush()  # whatever was written to the stream directly goes first
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            data = (line if isinstance(line, bytes)
                    else line.encode("utf-8", "backslashreplace")) + b"\n"
            if chunk and size + len(data) > select.PIPE_BUF:
                _write_all(fd, b"".join(chunk))
                chunk, size = [], 0
            chunk.append(data)
            size += len(data)
        if chunk:
            _write_all(fd, b"".join(chunk))

    def close(self) -> None:
        self._closed = True
        self._pending.set()
        if self._flusher.is_alive() and self._flusher is not threading.current_thread():
            self._flusher.join(timeout=2)
        self.flush()
        super().close()

    def _run(self) -> None:
        while not self._closed:  # checked again after a flush: close() may have come meanwhile
            self._pending.wait()
            if self._closed:
                return
            time.sleep(self._interval_s)  # let a batch gather
            self._pending.clear()
            self.flush()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def setup(fmt: str, level: str) -> None:
    """Configure the root logger once, at process start (the CLI calls this)."""
    handler = BatchingHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Fields no Podium line shows; the logging HOWTO's "Optimization" section names these
    # switches. Without them every record walks the stack to find its caller.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root.setLevel(level.upper())
    # litellm logs every call at INFO through its own handler; Podium's access log says more.
    litellm_log = logging.getLogger("LiteLLM")
    litellm_log.setLevel(logging.WARNING)
    litellm_log.propagate = True
