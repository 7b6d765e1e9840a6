"""The README's reference tables, kept in step with the code: every environment variable Podium
reads, and every status and error code it returns."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from gateway import errors

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PACKAGES = ("gateway", "routing", "plugins")
NAME = r"[A-Z][A-Z0-9_]+"
# os.environ.get("X") / .setdefault / .pop / ["X"], os.getenv("X"), env.get("X") on a mapping
# of the environment, "X" in os.environ: a literal, or a constant assigned a literal.
READ = re.compile(rf"(?:environ(?:\.get|\.setdefault|\.pop)?\(|environ\[|getenv\(|\benv\.get\("
                  rf"|\benv\[)\s*(\"{NAME}\"|{NAME})")
IN_ENVIRON = re.compile(rf"(\"{NAME}\"|{NAME}) in os\.environ")
CONSTANT = re.compile(rf"^(\w+)\s*(?::\s*\w+\s*)?=\s*\"({NAME})\"", re.M)


def section(title: str) -> str:
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def table_rows(text: str) -> Iterator[list[str]]:
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            yield [cell.strip() for cell in line.strip("|").split(" | ")]


def variables_read_by_the_code() -> set[str]:
    sources = [p.read_text() for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    constants = {name: value for text in sources for name, value in CONSTANT.findall(text)}
    found = set()
    for text in sources:
        for ref in READ.findall(text) + IN_ENVIRON.findall(text):
            found.add(ref.strip('"') if ref.startswith('"') else constants.get(ref, ref))
    return found


def variables_in_the_default_config() -> set[str]:
    def strings(value: Any) -> Iterator[str]:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)
    config = yaml.safe_load((ROOT / "config" / "gateway.yaml").read_text())
    return {m for s in strings(config) for m in re.findall(rf"\$\{{({NAME})|os\.environ/({NAME})",
                                                             s) for m in m if m}


def documented() -> dict[str, str]:
    """Each variable in the README's table, with who reads it."""
    rows = list(table_rows(section("Environment variables")))[1:]
    return {name: row[1] for row in rows for name in re.findall(rf"`({NAME}\*?)`", row[0])}


def test_the_scanner_finds_what_it_is_meant_to() -> None:
    # Guards the guard: a reading of each shape the code uses is found.
    code = variables_read_by_the_code()
    assert {"PODIUM_CONFIG", "PODIUM_PORT", "OTEL_SERVICE_NAME", "OTEL_TRACES_EXPORTER",
            "LITELLM_LOCAL_MODEL_COST_MAP", "PODIUM_METRICS_DIR",
            "PODIUM_WORKER_INDEX", "TIKTOKEN_CACHE_DIR"} <= code
    assert {"PODIUM_SIM_PORT", "PODIUM_STATE_DIR", "PODIUM_KEY",
            "PODIUM_ADMIN_KEY"} == variables_in_the_default_config()


def test_every_environment_variable_is_in_the_one_readme_table() -> None:
    table = documented()
    read = variables_read_by_the_code() | variables_in_the_default_config()
    assert read - set(table) == set(), "read by Podium but not in the README's table"
    claimed = {name for name, who in table.items() if who in ("podium", "config")}
    assert claimed - read == set(), "in the README's table as read by Podium, but it is not"
    assert {who for who in table.values()} == {"podium", "config", "OpenTelemetry SDK"}
    assert README.count("| variable | read by |") == 1


def statuses_and_codes() -> tuple[set[str], set[str]]:
    """The tree drawn in gateway/errors.py: each row's status(es) and fixed code."""
    statuses, codes = set(), set()
    tree = (errors.__doc__ or "").split("PodiumError", 1)[1].split("\n\n", 1)[0]
    for line in tree.splitlines()[1:]:
        cells = re.split(r"\s{2,}", line.strip(" │├└─"))
        statuses |= set(re.findall(r"\b[1-5]\d\d\b", cells[1])) if len(cells) > 1 else set()
        if len(cells) > 3 and re.fullmatch(r"[a-z_]+", cells[3]):
            codes.add(cells[3])
    return statuses, codes


def test_the_error_table_lists_every_status_and_code() -> None:
    statuses, codes = statuses_and_codes()
    assert {"400", "401", "403", "404", "413", "429", "500", "502", "503", "504"} <= statuses
    assert {"no_deployment_available", "state_unavailable", "invalid_json"} <= codes
    rows = [r for r in table_rows(README.split("Every\nstatus Podium returns", 1)[1]
                                  .split("\n\n", 2)[1])][1:]
    in_readme = {s for row in rows for s in re.findall(r"\b[1-5]\d\d\b", row[0])}
    assert statuses - in_readme == set(), "statuses missing from the README's error table"
    listed = " ".join(row[1] for row in rows)
    assert {c for c in codes if f"`{c}`" not in listed} == set(), "codes missing"


def test_the_readme_says_what_the_first_test_run_costs_and_how_to_skip_it() -> None:
    tests = section("Tests")
    assert "first run" in tests and "minutes" in tests and "provisioned" in tests
    assert '-m "not provisioned"' in tests
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"provisioned(tool)' in pyproject  # the marker the command deselects exists
