"""The instruction-count bench (bench/instructions.py, bench/hops.py) on a tiny real run: a few
requests to the bare proxy under valgrind's callgrind, its dump read back, its block written
into a RESULTS.md; and the per-hop loops run natively on a request captured from a real
gateway. Nothing here measures speed: it proves the harness works end to end."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent

needs_valgrind = pytest.mark.skipif(
    shutil.which("valgrind") is None or shutil.which("callgrind_control") is None,
    reason="valgrind is not installed: `python -m bench.instructions` installs it itself "
           "(apt-get install -y valgrind); this test does not install anything")


@needs_valgrind
def test_instruction_mode_counts_bare_proxy_requests(tmp_path: Path) -> None:
    from bench import callgrind, instructions

    out = subprocess.run(
        [sys.executable, "-m", "bench.run", "--instructions", "--only", "bare", "--requests",
         "5", "--warmup", "2", "--no-hops", "--no-results-md", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    result = orjson.loads((tmp_path / "instructions.json").read_bytes())
    [row] = result["scenarios"]
    assert row["scenario"] == "bare" and row["requests"] == 5 and row["errors"] == 0
    assert row["upstream_calls_per_request"] == 1.0
    # the counters were dumped around the measured block only: a request costs something, and
    # far less than starting Python under valgrind would
    # (dump 1: the measured block; dump 2: the idle window after it)
    dumps = sorted(Path(result["work_dir"]).glob("bare.*.callgrind.*"))
    assert [d.suffix for d in dumps] == [".1", ".2"]
    assert callgrind.instructions(dumps[0]) == row["instructions"]
    # the idle rate is the second dump over its window, and what it explains is taken off
    assert 0 <= callgrind.instructions(dumps[1]) < row["instructions"]
    assert row["per_request"] <= row["per_request_raw"] == round(row["instructions"] / 5)
    assert 10_000 < row["per_request"] < 50_000_000
    assert row["vs_bare"] == 1.0

    # the block goes into RESULTS.md after the wall-clock block, and replaces itself
    md = tmp_path / "RESULTS.md"
    md.write_text("# Benchmark results\n\n<!-- bench:generated:begin -->\nwall\n"
                  "<!-- bench:generated:end -->\n\n## Analysis\nby hand\n")
    block = instructions.markdown(result)
    assert "| bare aiohttp proxy | " in block and f"{row['per_request']:,}" in block
    instructions.write_results_md(md, block)
    instructions.write_results_md(md, block)
    text = md.read_text()
    assert text.count(instructions.BEGIN) == 1
    assert text.index("bench:generated:end") < text.index(instructions.BEGIN)
    assert text.rstrip().endswith("by hand")


def test_hop_loops_run_on_a_captured_request(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.hop_cases", "--calls", "5", "--native", "--work",
         str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    messages = [orjson.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    names = messages[0]["hops"]
    assert messages[0]["spans"] > 0, "the traced twin recorded no span"
    done = {m["done"]: m for m in messages if "done" in m}
    na = {m["na"]: m["reason"] for m in messages if "na" in m}
    assert set(done) | set(na) == set(names)
    assert all(reason for reason in na.values())
    assert all(m["calls"] == 5 and m["ns"] > 0 for m in done.values())
    # a hop another change reshaped is n/a, not a crash; most of them must still run
    assert len(done) >= len(names) // 2, na
