"""Structured logs: one JSON object per line, for access and events alike.

Access lines carry the request id, trace id, principal (key id and team, never the key),
deployment, status, latency and cost; no prompt or answer text. Event lines (reloads, breaker
changes, a Redis outage) carry their message and whatever fields the caller attached with
`extra=`. `logging.format: text` gives the classic human format instead.
"""

from __future__ import annotations

import logging
import os
import select
import sys
import threading
import time
from collections import deque
from typing import Any

import orjson

# Attributes every LogRecord has; anything else was passed with `extra=` and is logged as a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name,
            "message": record.getMessage(),
        }
        fields = record.__dict__
        for key in [k for k in fields if k not in _STANDARD]:  # what `extra=` added
            if key[0] != "_":
                entry[key] = fields[key]
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


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
        self._lines: deque[str] = deque()  # append and popleft are atomic: no lock shared
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

    def _write(self, lines: list[str]) -> None:
        """Whole lines, at most PIPE_BUF bytes per write(2) where the stream has a file
        descriptor: the kernel never splits such a write on a pipe, so the lines of several
        worker processes sharing one stderr never cut into each other. (A line longer than
        PIPE_BUF gets a write of its own.)"""
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):  # an in-memory stream
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
            return
        self.stream.flush()  # whatever was written to the stream directly goes first
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            data = line.encode("utf-8", "backslashreplace") + b"\n"
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
