"""The architecture's measures: docs/architecture.md's layout is the layout on disk, no function of the packages is
too complex to read, no import loop and no upward import among the packages' modules, no module over 600 lines."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from harness import ROOT

PACKAGES = ("mailload", "smartsink", "trafficgen", "bench")


def documented() -> set[str]:
    """The module paths the layout block of docs/architecture.md names."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    paths, stack = set(), []  # stack: (indent, directory)
    for line in block.splitlines():
        m = re.match(r"^( *)(\S+)", line)
        if not m:
            continue
        indent, name = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if name.endswith("/"):
            stack.append((indent, name))
        else:
            paths.add("".join(d for _, d in stack) + name)
    return paths


def on_disk() -> set[str]:
    return {str(p.relative_to(ROOT)) for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def test_layout_matches_disk():
    """Every module on disk is in the documented layout, and every documented module exists."""
    assert documented() == on_disk()


def test_no_function_is_rated_d_or_worse():
    """radon cc -n D lists no function of the packages (cyclomatic complexity at most 20)."""
    done = subprocess.run(
        [sys.executable, "-m", "radon", "cc", "-n", "D", "-s", *PACKAGES], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", done.stdout


# --- imports and sizes --------------------------------------------------------------------------------------------

TOOLS = ("mailload", "smartsink", "trafficgen")
# What each package may import of the others: the shared package knows neither tool, and neither tool the other.
MAY_IMPORT = {
    "mailload": {"mailload"},
    "smartsink": {"mailload", "smartsink"},
    "trafficgen": {"mailload", "trafficgen"},
}
MAX_LINES = 600
# Modules still over MAX_LINES, each with why; the list may only shrink (a test fails when one is no longer over).
TOO_LONG: dict[str, str] = {}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in TOOLS for p in sorted((ROOT / package).rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """The packages' modules a module imports, wherever in it (at the top, in a function, under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from trafficgen import workload` imports the module workload; `from trafficgen import run`, the package
            named = {alias.name: f"{base}.{alias.name}" for alias in node.names}
            out.update(full for full in named.values() if full in known)
            if any(full not in known for full in named.values()):
                out.add(base)
    return {name for name in out if name in known and name != here}


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(path, set(found)) for name, path in found.items()}


def loops(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import loops: each strongly connected set of two or more modules (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(edges[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return out


def test_no_import_loop():
    """No module of the packages imports, through others, a module that imports it."""
    assert loops(graph()) == []


def test_no_upward_import():
    """mailload imports neither tool; smartsink does not import trafficgen, nor trafficgen smartsink."""
    wrong = [
        f"{name} imports {other}"
        for name, others in graph().items()
        for other in sorted(others)
        if other.split(".")[0] not in MAY_IMPORT[name.split(".")[0]]
    ]
    assert wrong == []


def test_the_loop_finder_finds_loops():
    """The finder itself: a loop through three modules is one loop, a chain is none."""
    assert loops({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert loops({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_module_is_over_600_lines():
    """No module of the packages is over 600 lines, but those listed in TOO_LONG, each of which still is."""
    lengths = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in modules().values()}
    over = {path for path, count in lengths.items() if count > MAX_LINES}
    assert over - set(TOO_LONG) == set(), {path: lengths[path] for path in over - set(TOO_LONG)}
    assert set(TOO_LONG) - over == set(), "no longer over: take them off TOO_LONG"


def test_only_the_command_lines_import_typer():
    """Typer is the command lines' alone (mailload/cli.py and each tool's cli.py): no module a worker process
    imports, directly or through others, imports it (mailload.runtime has what every process needs)."""
    allowed = {"mailload.cli", "trafficgen.cli", "smartsink.cli"}
    found = modules()
    users = {
        name
        for name, path in found.items()
        for node in ast.walk(ast.parse(path.read_text()))
        if (isinstance(node, ast.Import) and any(a.name.split(".")[0] == "typer" for a in node.names))
        or (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "typer")
    }
    assert users == allowed
    edges = graph()
    reach, todo = set(), ["trafficgen.supervisor", "trafficgen.launch", "smartsink.supervisor", "smartsink.server"]
    while todo:
        name = todo.pop()
        if name not in reach:
            reach.add(name)
            todo.extend(edges[name])
    assert reach & allowed == set()
