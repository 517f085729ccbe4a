"""docs/architecture.md's layout is the layout on disk, and no function of the packages is too complex to read."""

from __future__ import annotations

import re
import subprocess
import sys

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
