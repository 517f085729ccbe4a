"""Processes the tests started, read from /proc: children, workers, whether one is gone, resident memory."""

from __future__ import annotations

import contextlib
from pathlib import Path


def children(pid: int) -> list[int]:
    """Child processes of `pid`: /proc/<pid>/task/*/children, else a scan of every /proc/<n>/stat's parent."""
    tasks = list(Path(f"/proc/{pid}/task").glob("*/children"))
    if tasks:
        found: list[int] = []
        for task in tasks:
            with contextlib.suppress(OSError):
                found += [int(c) for c in task.read_text().split()]
        return found
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                kids.append(int(stat.parent.name))
    return kids


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def worker_pids(supervisor: int) -> set[int]:
    """The supervisor's worker processes (multiprocessing 'spawn' children, not its resource tracker)."""
    return {pid for pid in children(supervisor) if b"spawn_main" in cmdline(pid)}


def gone(pid: int) -> bool:
    """The process no longer runs (absent, or a zombie waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def rss_mb(pid: int) -> float:
    """Resident memory of one process (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (a supervisor and its workers), in MiB."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, AssertionError):
            total += rss_mb(current)
            todo += children(current)
    return total
