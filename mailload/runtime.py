"""What every process of both tools needs, command line or not: uvloop's loop, the open-files limit, the exit
statuses and the one line that ends a process on bad input. No Typer here: worker processes import this.
"""

from __future__ import annotations

import asyncio
import resource
import sys
from collections.abc import Callable
from enum import IntEnum


class ExitStatus(IntEnum):
    OK = 0
    ERROR = 1  # the run started but stopped on an error
    USAGE = 2  # bad options, bad input files, or the service could not start
    THRESHOLD = 3  # the run completed but a --fail-if threshold failed (or `report compare` found a regression)


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed (it is a dependency on Linux and macOS), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def raise_open_files_limit() -> int:
    """Raise this process's open-files soft limit to its hard limit (many connections need many files);
    return the soft limit now in force (-1: unlimited)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return -1 if soft == resource.RLIM_INFINITY else soft


def fail(prog: str, message: str, status: ExitStatus = ExitStatus.USAGE) -> None:
    """Print one line naming the problem and exit."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(int(status))
