"""The two builds: the hot modules compiled by mypyc (`make install` where it can) or pure Python. The list of hot
modules follows the code, the build a process runs is the one on disk, and both tools say which one runs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from harness import ROOT
from harness.policies import ACCEPT_ALL
from harness.sink import running_sink
from harness.trafficgen import run_report
from mailload import native


def test_every_hot_module_exists():
    """A module renamed or split leaves no name behind in the list mypyc compiles (setup.py would fail on it)."""
    missing = [name for name in native.COMPILED if not (Path(ROOT) / native.source(name)).is_file()]
    assert not missing
    assert len(set(native.COMPILED)) == len(native.COMPILED)


def test_the_build_is_what_is_on_disk():
    """A module counts as compiled when its shared object is the one Python loads, beside its .py."""
    build = native.build()
    on_disk = []
    for name in native.COMPILED:
        folder = (Path(ROOT) / native.source(name)).parent
        stem = name.rpartition(".")[2]
        if any(folder.glob(f"{stem}.*.so")):
            on_disk.append(name)
    assert list(build.compiled) == on_disk
    for name in build.compiled:
        spec = importlib.util.find_spec(name)
        assert spec is not None
        assert spec.origin is not None
        assert not spec.origin.endswith(".py")
    expected = "pure" if not on_disk else "partly compiled"
    if len(on_disk) == len(native.COMPILED):
        expected = "compiled"
    assert build.kind == expected


def test_status_says_which_build(tmp_path):
    """`scripts/native.py status` says it in one line (make install prints the same after compiling)."""
    done = subprocess.run(
        [sys.executable, "scripts/native.py", "status"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"build: {native.build().describe()}"


def test_the_sink_says_which_build(tmp_path):
    """The ready line and /health name the build the sink runs."""
    with running_sink(policy=ACCEPT_ALL, tmp=tmp_path) as sink:
        health = sink.health()
        log = sink.log()
    build = native.build()
    assert health["build"] == build.kind
    built = "pure Python" if build.kind == "pure" else build.kind
    assert f" engine, 1 worker, {built}), admin " in log


def test_the_report_says_which_build(tmp_path):
    """trafficgen's report names its build in `tool` (and so every saved report says what measured it)."""
    with running_sink(policy=ACCEPT_ALL, tmp=tmp_path) as sink:
        report, _ = run_report("--target", sink.target, "--message-count", "5", "--concurrency", "1")
    kind = native.build().kind
    assert report["tool"].endswith(f" ({'pure Python' if kind == 'pure' else kind})")
