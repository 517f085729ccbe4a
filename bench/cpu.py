"""CPU time of process trees: what a sending command cost, children and grandchildren included, and what a running
server (with its workers) spent between two moments.

A command run to its end is measured with getrusage(RUSAGE_CHILDREN): the kernel adds a child's user and system time
to its parent's "children" total when the parent waits for it, and that total includes the child's own waited-for
children, so `trafficgen --processes N` (whose supervisor joins its workers) is counted whole. A server is still
running when it is measured, so it is read from /proc instead: utime + stime of the server and every live
descendant, plus their cutime + cstime (descendants that already exited and were waited for). Sampled just before
and just after the sending command, the difference is the server's share of the run.

Resolution: /proc counts in clock ticks (1/100 s here), per process; getrusage in microseconds.
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Cost:
    """What one run of a command cost: wall-clock seconds and CPU seconds (user + system) of its process tree."""

    wall: float
    user: float
    system: float

    @property
    def cpu(self) -> float:
        return self.user + self.system


def _children_times() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime, usage.ru_stime


def run_measured(command: Sequence[str], *, cwd: Path | None = None, timeout: float | None = None) -> Cost:
    """Run `command` to its end and return its wall time and the CPU of its whole process tree.

    Raises RuntimeError when the command fails. Only the command may end (be waited for) in this process while it
    runs, or that other child's time would be counted too: servers are started before and stopped after.
    """
    user0, system0 = _children_times()
    started = time.perf_counter()
    result = subprocess.run(
        list(command), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=cwd, timeout=timeout
    )
    wall = time.perf_counter() - started
    user1, system1 = _children_times()
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()[-500:]}")
    return Cost(wall, user1 - user0, system1 - system0)


def parents() -> dict[int, int]:
    """Every process's parent, read from /proc/*/stat (no need for CONFIG_PROC_CHILDREN)."""
    found = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):  # gone since the listing
                found[int(entry.name)] = int(_stat_fields(entry / "stat")[1])
    return found


def descendants(pid: int) -> list[int]:
    """`pid` and every live process below it."""
    below: dict[int, list[int]] = {}
    for child, parent in parents().items():
        below.setdefault(parent, []).append(child)
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += below.get(current, [])
    return tree


def _stat_fields(path: Path) -> list[str]:
    """The fields of a /proc/PID/stat after the command name (which may hold spaces and parentheses): the
    process state first, then the parent's pid... (proc(5) numbers them from 3)."""
    return path.read_text().rpartition(")")[2].split()


def process_cpu(pid: int) -> tuple[float, float]:
    """(user, system) seconds of one process, with its exited and waited-for children; (0, 0) once it is gone."""
    try:
        fields = _stat_fields(PROC / str(pid) / "stat")
    except OSError:
        return 0.0, 0.0
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])  # proc(5) fields 14-17
    return (utime + cutime) / TICKS, (stime + cstime) / TICKS


def tree_cpu(pid: int) -> tuple[float, float]:
    """(user, system) seconds of `pid` and all its descendants so far."""
    user = system = 0.0
    for member in descendants(pid):
        u, s = process_cpu(member)
        user, system = user + u, system + s
    return user, system


@dataclass
class TreeMeter:
    """The CPU a running process tree spends between start() and stop()."""

    pid: int
    _user: float = 0.0
    _system: float = 0.0

    def start(self) -> None:
        self._user, self._system = tree_cpu(self.pid)

    def stop(self) -> tuple[float, float]:
        """(user, system) seconds since start()."""
        user, system = tree_cpu(self.pid)
        return user - self._user, system - self._system
