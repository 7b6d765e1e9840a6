"""Child processes of a bench run: started in their own session (so a whole tree can be
stopped at once), optionally pinned to CPUs with taskset, logged to files, always stopped.
Also the /proc readings: CPU seconds and RSS of a process tree."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

CLK_TCK = os.sysconf("SC_CLK_TCK")
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def can_pin() -> bool:
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def _session_pids(sid: int) -> list[int]:
    """Every live process in session `sid` (a child started with start_new_session and all of
    its descendants, e.g. pre-forked workers)."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # fields[0] is the state: the session id is stat field 6
            pids.append(int(entry.name))
    return pids


def cpu_split(sid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of all threads of all processes in the session."""
    user = system = 0
    for pid in _session_pids(sid):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])    # utime (stat field 14)
        system += int(fields[12])  # stime (stat field 15)
    return user / CLK_TCK, system / CLK_TCK


def cpu_seconds(sid: int) -> float:
    """User + system CPU seconds of all threads of all processes in the session."""
    return sum(cpu_split(sid))


def rss_mb(sid: int) -> float:
    """Resident memory of the session's processes, in MiB (VmRSS summed)."""
    total_kb = 0
    for pid in _session_pids(sid):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total_kb += int(line.split()[1])
                        break
        except OSError:
            continue
    return round(total_kb / 1024, 1)


def http_get(url_host: str, port: int, path: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(url_host, port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    cpus: str | None
    started_at: float

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, port: int, path: str, timeout_s: float = 30.0,
                   interval_s: float = 0.01) -> float:
        """Poll GET `path` until it answers 200; seconds from the launch until then."""
        for _ in range(int(timeout_s / interval_s) + 1):
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                if http_get(LOOPBACK, port, path, timeout_s=1.0)[0] == 200:
                    return time.perf_counter() - self.started_at
            except OSError:
                pass
            time.sleep(interval_s)  # polling interval, not synchronisation
        raise RuntimeError(f"{self.name} not ready on port {port} within {timeout_s}s:\n"
                           f"{self.log_tail()}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the whole session, then SIGKILL whatever is left."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        try:  # stragglers in the group (workers whose parent is gone)
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.popen.poll() is None:
            self.popen.wait(timeout_s)


class Procs:
    """Every process a run starts; `with Procs(...)` stops them all on the way out."""

    def __init__(self, log_dir: Path, pin: bool) -> None:
        self.log_dir = log_dir
        self.pin = pin
        self._procs: list[Proc] = []

    def start(self, name: str, cmd: Sequence[str], cpus: str | None = None,
              env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Proc:
        argv = list(cmd)
        if cpus is not None and self.pin:
            argv = ["taskset", "-c", cpus, *argv]
        log_path = self.log_dir / f"{name}.log"
        started_at = time.perf_counter()
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     env={**os.environ, **(env or {})}, cwd=cwd)
        proc = Proc(name, popen, log_path, cpus if self.pin else None, started_at)
        self._procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self._procs:
            self._procs.remove(proc)

    def running(self) -> list[Proc]:
        return [p for p in self._procs if p.alive()]

    def stop_all(self) -> None:
        while self._procs:
            self._procs.pop().stop()

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop_all()


def venv_install(venv: Path, requirement: str, python: str) -> str | None:
    """A venv at `venv` (made by `python`) with `requirement` pip-installed: a bench tool kept
    out of the project's venv. None when done, else the tail of pip's error."""
    steps = [[python, "-m", "venv", str(venv)],
             [str(venv / "bin" / "pip"), "install", "-q", requirement]]
    for step in steps:
        out = subprocess.run(step, capture_output=True, text=True, timeout=1200, check=False)
        if out.returncode:
            return (out.stderr.strip() or out.stdout.strip())[-300:]
    return None
