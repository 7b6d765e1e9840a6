"""The shape of the code: an import graph without circles, modules of a readable size, and
litellm behind its one adapter.

The graph is read from the source (the AST of every module of `gateway/`, `routing/` and
`plugins/`), with every import wherever it is written: at the top, under `TYPE_CHECKING` (a
circle kept alive for the type checker is still a circle in the design), and inside functions
(a lazy import may exist for a heavy optional dependency, never to dodge a circle). Then every
module is imported in a fresh interpreter, on its own, which catches what only an import order
would reveal.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gateway", "routing", "plugins")
MAX_LINES = 400
# The one module allowed to import litellm (STYLE.md: one adapter, nothing else touches it).
LITELLM_ADAPTER = "routing.providers.litellm"


def modules() -> dict[str, Path]:
    """Every module of the three packages, by dotted name."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imported(node: ast.AST, module: str, is_package: bool) -> Iterator[tuple[str, str]]:
    """(module, name) pairs an import statement loads: `from x import y` may name a module
    `x.y` or an attribute of `x`; a plain import names its module (name "")."""
    if isinstance(node, ast.Import):
        yield from ((alias.name, "") for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: resolve against this module's package
            package = module.split(".") if is_package else module.split(".")[:-1]
            anchor = package[: len(package) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        yield from ((base, alias.name) for alias in node.names)


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports: each one it names, and the packages whose
    `__init__` an import runs first. A module's own parent packages are left out of the
    latter: they are loaded before the module itself, whatever it imports (so a package's
    `__init__` may re-export its submodules, as httpx's does)."""
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    out: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        for base, attr in _imported(node, name, path.name == "__init__.py"):
            target = f"{base}.{attr}" if f"{base}.{attr}" in known else base
            parts = target.split(".")
            out |= ({".".join(parts[:i]) for i in range(1, len(parts))} & known) - own
            if target in known:
                out.add(target)
    out.discard(name)
    return out


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_circle_finder_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(graph) == [["a", "b", "c"]]


def test_the_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\n"
                      "import p.a\n"
                      "from p import b\n"
                      "from p.c import thing\n"
                      "if TYPE_CHECKING:\n"
                      "    from p.d import Type\n"
                      "def lazy():\n"
                      "    from p import e\n")
    known = {"p", "p.a", "p.b", "p.c", "p.d", "p.e", "p.f"}
    assert imports_of("q.m", source, known) == known - {"p.f"}
    assert imports_of("p.f", source, known) == known - {"p", "p.f"}


def test_the_import_graph_has_no_circles() -> None:
    found = circles(import_graph())
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def third_party_imports() -> set[str]:
    """The other libraries the modules import at their top (never a lazy import's)."""
    found: set[str] = set()
    for path in modules().values():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                found.add(node.module)
    return {n for n in found if n.split(".")[0] not in (*PACKAGES, "__future__")}


def test_every_module_imports_on_its_own_in_a_fresh_interpreter() -> None:
    """One interpreter per module: a module that works only when another was imported first
    (a half-initialised module in a circle, a missing import) fails here. Each is a fork of a
    parent that has imported the third-party libraries and nothing of Podium's, so every child
    starts with none of Podium's modules loaded, and the test takes seconds, not minutes."""
    names = sorted(n for n in modules() if not n.endswith("__main__"))
    script = (
        "import importlib, json, os, sys\n"
        "names, libraries = json.loads(sys.argv[1]), json.loads(sys.argv[2])\n"
        "for library in libraries:\n"
        "    importlib.import_module(library)\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in names], 'not fresh'\n"
        "failed = {}\n"
        "for name in names:\n"
        "    r, w = os.pipe()\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        os.close(r)\n"
        "        try:\n"
        "            __import__(name)\n"
        "        except BaseException as exc:\n"
        "            os.write(w, f'{type(exc).__name__}: {exc}'.encode()[:2000])\n"
        "            os._exit(1)\n"
        "        os._exit(0)\n"
        "    os.close(w)\n"
        "    message = b''\n"
        "    while chunk := os.read(r, 4096):\n"
        "        message += chunk\n"
        "    os.close(r)\n"
        "    if os.waitpid(pid, 0)[1] != 0:\n"
        "        failed[name] = message.decode(errors='replace')\n"
        "print(json.dumps(failed))\n")
    libraries = sorted(third_party_imports())
    done = subprocess.run([sys.executable, "-c", script, json.dumps(names),
                           json.dumps(libraries)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    failed = json.loads(done.stdout.strip().splitlines()[-1])
    assert failed == {}


def test_no_module_is_longer_than_the_style_allows() -> None:
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"


def test_litellm_is_imported_by_its_adapter_only() -> None:
    importers = set()
    for name, path in modules().items():
        source = path.read_text()
        tree = ast.parse(source)
        for node in ast.walk(tree):
            targets = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(t == "litellm" or t.startswith("litellm.") for t in targets):
                importers.add(name)
        if '"litellm"' in source and "import_module" in source:
            importers.add(name)
    assert importers == {LITELLM_ADAPTER}
