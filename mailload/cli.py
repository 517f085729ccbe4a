"""Running a Typer app the way both tools promise: bad input is one line naming the problem and exit 2.

Click's own usage errors span several lines ("Usage: ... Try --help ... Error: ..."); here they become
`PROG: error: MESSAGE`. Exit codes are documented in docs/cli.md.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
from collections.abc import Callable, Sequence
from enum import IntEnum

import typer

# Click's exception classes, whether Typer uses click itself or its own copy of it (Typer >= 0.20).
_USAGE_ERROR: type[Exception] = typer.BadParameter.__mro__[1]
_CLICK_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


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


def set_empty_in_environment(ctx: typer.Context, param: str, envvar: str) -> bool:
    """Click ignores an empty environment variable; True when the user set this option's variable to ''."""
    return getattr(ctx.get_parameter_source(param), "name", "") == "DEFAULT" and os.environ.get(envvar) == ""


def fail(prog: str, message: str, status: ExitStatus = ExitStatus.USAGE) -> None:
    """Print one line naming the problem and exit."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(int(status))


def run_app(app: typer.Typer, prog: str, argv: Sequence[str] | None = None) -> None:
    command = typer.main.get_command(app)
    try:
        result = command.main(args=list(argv) if argv is not None else None, prog_name=prog, standalone_mode=False)
    except (_USAGE_ERROR, _CLICK_ERROR) as e:
        fail(prog, e.format_message().replace("\n", " "))  # type: ignore[attr-defined]
    except (typer.Abort, KeyboardInterrupt):
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    raise SystemExit(int(result or 0))
