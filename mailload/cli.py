"""The command lines' Typer side, shared by both tools: bad input is one line naming the problem and exit 2.

Click's own usage errors span several lines ("Usage: ... Try --help ... Error: ..."); here they become
`PROG: error: MESSAGE`. Exit codes are documented in docs/cli.md. Only the tools' cli.py modules import this
module (and so Typer); what every process needs at start is mailload.runtime.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer

from mailload.runtime import fail

# Click's exception classes, whether Typer uses click itself or its own copy of it (Typer >= 0.20).
_USAGE_ERROR: type[Exception] = typer.BadParameter.__mro__[1]
_CLICK_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def set_empty_in_environment(ctx: typer.Context, param: str, envvar: str) -> bool:
    """Click ignores an empty environment variable; True when the user set this option's variable to ''."""
    return getattr(ctx.get_parameter_source(param), "name", "") == "DEFAULT" and os.environ.get(envvar) == ""


def missing_value(command: Any, args: Sequence[str]) -> str | None:
    """The problem when an option that takes a value is followed by another option (`--target --duration 2`):
    Click would take `--duration` as the target and `2` as a command. Each command's own options are checked,
    then its subcommand's."""
    options = [p for p in command.params if getattr(p, "param_type_name", "") == "option"]
    takes_value = {o for p in options if not (p.is_flag or p.count) for o in p.opts}
    known = {o for p in options for o in (*p.opts, *p.secondary_opts)} | {"-h", "--help"}
    subcommands = getattr(command, "commands", {})
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            break
        if arg in subcommands:
            return missing_value(subcommands[arg], args[index + 1 :])
        if arg in takes_value:
            following = args[index + 1] if index + 1 < len(args) else None
            if following is not None and following.partition("=")[0] in known:
                return f"{arg} needs a value: the next word, {following}, is an option"
            index += 1
        index += 1
    return None


def _plain_help(command: Any, help_names: list[str] | None = None) -> None:
    """--help without Typer's type labels where the words say enough: no `<bool>` after -h or a flag, an option's
    value named in upper case (not `<str>`, `<int>`), no `<str>` beside an argument, and an argument's name in the
    usage line as its metavar gives it (not `{before}`)."""
    # a subcommand's help option has its group's names (-h too), as its context would inherit them
    help_names = command.context_settings.get("help_option_names", help_names) or ["--help"]
    context = command.context_class(command, **{**command.context_settings, "help_option_names": help_names})
    help_option = command.get_help_option(context)
    if help_option is not None:
        help_option.metavar = ""
    for param in command.params:
        if getattr(param, "param_type_name", "") == "option" and param.metavar is None:
            param.metavar = "" if param.is_flag else param.name.upper()  # not <str>, <int>, <bool>
        if getattr(param, "param_type_name", "") == "argument":
            name = param.metavar or param.name.upper()
            param.display_type_rich = lambda ctx: None
            many = param.nargs != 1 and not name.endswith("...")
            param._usage_display_name = lambda name=name, many=many: name + ("..." if many else "")
    for sub in getattr(command, "commands", {}).values():
        _plain_help(sub, help_names)


def run_app(app: typer.Typer, prog: str, argv: Sequence[str] | None = None) -> None:
    command = typer.main.get_command(app)
    _plain_help(command)
    problem = missing_value(command, list(argv) if argv is not None else sys.argv[1:])
    if problem is not None:
        fail(prog, problem)
    try:
        result = command.main(args=list(argv) if argv is not None else None, prog_name=prog, standalone_mode=False)
    except (_USAGE_ERROR, _CLICK_ERROR) as e:
        fail(prog, e.format_message().replace("\n", " "))  # type: ignore[attr-defined]
    except (typer.Abort, KeyboardInterrupt):
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    raise SystemExit(int(result or 0))


# The arguments both `from-logs` commands take, declared once.
LogsArgument = Annotated[
    list[str],
    typer.Argument(
        help="Log files or directories (KumoMTA's log_dir): KumoMTA JSON records (plain, gzip or zstd), Postfix or "
        "Exim log lines",
        metavar="LOG...",
        show_default=False,
    ),
]
OutputOption = Annotated[
    str | None, typer.Option("--output", "-o", help="Write it here [default: stdout]", metavar="FILE")
]
FormatOption = Annotated[
    str,
    typer.Option(
        "--format", help="The logs' format: auto (told from each file's first lines), kumomta, postfix or exim"
    ),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, no summary of what was read")]


def derive_from_logs(
    prog: str,
    logs: list[str],
    render: Callable[..., str],
    output: str | None,
    fmt: str = "auto",
    quiet: bool = False,
    tenant_header: str = "X-Tenant",
    campaign_header: str = "X-Campaign",
) -> None:
    """`PROG ... from-logs LOG...`: read the logs (a progress bar on a terminal), write what `render(aggregate,
    report)` makes of them to `output` (stdout when None), and what was read to stderr. A log that cannot be read
    or holds nothing to derive from is one line and exit 2."""
    from mailload.mtalog.read import LogError, progress_bar, read_logs, summary

    if output is not None and output != "-":
        directory = os.path.dirname(os.path.abspath(output))
        if os.path.isdir(output) or not os.path.isdir(directory):
            fail(prog, f"--output {output}: {'is a directory' if os.path.isdir(output) else 'no such directory'}")
    try:
        with progress_bar(logs, enabled=not quiet) as progress:
            aggregate, report = read_logs(logs, fmt, tenant_header, campaign_header, progress)
        text = render(aggregate, report)
    except LogError as e:
        fail(prog, str(e))
    if output is None or output == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        try:
            with open(output, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            fail(prog, f"--output {output}: cannot write: {e.strerror}")
    if not quiet:
        for line in summary(aggregate, report):
            print(f"{prog}: {line}" if not line.startswith(" ") else line, file=sys.stderr)
        if output not in (None, "-"):
            print(f"{prog}: wrote {output}", file=sys.stderr)
