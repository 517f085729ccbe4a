"""Options declared once.

Each field of a tool's config dataclass (trafficgen's RunConfig, smartsink's SinkConfig) carries its command-line
option: `field: T = option(DEFAULT, help=..., panel=..., metavar=..., parse=...)`. From that one declaration come
the command line and its environment variable, the `--help` text and its panels, the reading of the text a user
writes into the field's value, what the JSON report shows, and the reference table in docs/cli.md
(`python -m mailload.options` rewrites it; a test checks it is current). Only cli.py modules import Typer; this
module gives them a plain function signature Typer reads.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, NamedTuple

HIDDEN = "hidden"  # report=HIDDEN: the option never shows in the JSON report (a password, a path to write)


class OptionError(ValueError):
    """A value that cannot be used; the message names the option."""


@dataclasses.dataclass(frozen=True)
class Option:
    """How one config field is given on the command line."""

    help: str  # one line for --help
    panel: str
    doc: str = ""  # the fuller meaning docs/cli.md gives (markdown); "" repeats the help
    metavar: str | None = None  # what --help shows for the value: N, SIZE, RATE (None: derived from the type)
    flags: tuple[str, ...] = ()  # the spellings, e.g. ("--json",) or ("--quiet", "-q"); default --field-name
    given_as: Any = str  # the command line's type: str, int, float, bool, or list[str] for a repeatable option
    parse: Callable[[Any], Any] | None = None  # the value as written -> the field's value; ValueError names why
    shown_default: str | None = None  # the default as people read it ("10 x CPUs"); None: the field's default
    env: bool = True  # the option has a PREFIX_NAME environment variable
    report: str | Callable[[Any], dict[str, Any]] | None = None  # the report key (None: the field's name),
    # HIDDEN, or a function of the field's value giving the report's keys


def option(default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | None = None, **spec: Any) -> Any:
    """A dataclass field that is also a command-line option (see Option for `spec`)."""
    metadata = {"option": Option(**spec)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class Declared(NamedTuple):
    """One option as a config class declares it."""

    name: str  # the field's name, and the keyword build() takes
    option: Option
    default: Any  # the field's default (dataclasses.MISSING when it has a factory)

    @property
    def flags(self) -> tuple[str, ...]:
        return self.option.flags or ("--" + self.name.replace("_", "-"),)

    @property
    def long_flag(self) -> str:
        return next(f for f in self.flags if f.startswith("--")).split("/")[0]

    def envvar(self, prefix: str) -> str | None:
        if not self.option.env:
            return None
        return f"{prefix}_{self.long_flag[2:].replace('-', '_').upper()}"

    def default_text(self) -> str:
        """The default as --help and docs/cli.md say it."""
        if self.option.shown_default is not None:
            return self.option.shown_default
        value = self.default
        if value is dataclasses.MISSING or value is None or value == ():
            return ""
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)


def declared(config_class: type) -> list[Declared]:
    """The options of a config dataclass, in the order of its fields."""
    found = []
    for f in dataclasses.fields(config_class):
        spec = f.metadata.get("option")
        if spec is not None:
            found.append(Declared(f.name, spec, f.default))
    return found


def values(config_class: type, given: Mapping[str, Any]) -> dict[str, Any]:
    """The fields' values from the options given (by field name, as a user writes them): each given value read
    by its option's parser; options not given (or None) are left out, so the field's default applies."""
    out: dict[str, Any] = {}
    for item in declared(config_class):
        raw = given.get(item.name)
        if raw is None:
            continue
        parse = item.option.parse
        try:
            raw = _number(item, raw)
            out[item.name] = parse(raw) if parse is not None else raw
        except ValueError as e:
            message = str(e)
            flag = item.long_flag
            raise OptionError(message if message.startswith(flag) else f"{flag}: {message}") from None
    unknown = set(given) - {d.name for d in declared(config_class)}
    if unknown:
        raise TypeError(f"no such option: {', '.join(sorted(unknown))}")
    return out


def _number(item: Declared, raw: Any) -> Any:
    """A number option's text as its number (the command line and variables give text: Typer leaves it to us,
    so the words are ours); ValueError names the option and what was given."""
    kind = item.option.given_as
    if kind not in (int, float) or not isinstance(raw, str):
        return raw
    try:
        return kind(raw.strip().replace("_", ""))
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ValueError(f"{item.long_flag} {raw!r} is not {what}") from None


def report(config: Any) -> dict[str, Any]:
    """The options of a built config as the JSON report shows them."""
    out: dict[str, Any] = {}
    for item in declared(type(config)):
        shown = item.option.report
        if shown == HIDDEN:
            continue
        value = getattr(config, item.name)
        if callable(shown):
            out.update(shown(value))
        else:
            out[shown or item.name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


# --- the command line ---------------------------------------------------------------------------------------------


def signature(config_class: type, prefix: str, typer_option: Callable[..., Any], context: type) -> inspect.Signature:
    """A function signature Typer reads as the config's options: `ctx` then one keyword per option, each
    defaulting to None ("not given": the field's default applies) except flags, which default to theirs."""
    parameters = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=context)]
    for item in declared(config_class):
        spec = item.option
        flag = spec.given_as is bool
        metavar = "" if flag else spec.metavar
        shown = item.default_text()
        # numbers are taken as text and read by values(), which names a bad one in the project's words
        given_as = str if spec.given_as in (int, float) else spec.given_as
        typed = Annotated[  # type: ignore[valid-type]
            given_as if flag else given_as | None,
            typer_option(
                *item.flags,
                envvar=item.envvar(prefix),
                help=spec.help,
                metavar=metavar,
                rich_help_panel=spec.panel,
                show_default=shown if shown and not flag else False,
            ),
        ]
        default = bool(item.default) if flag else None
        parameters.append(
            inspect.Parameter(item.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=typed)
        )
    return inspect.Signature(parameters)


# --- docs/cli.md ------------------------------------------------------------------------------------------------

TABLE_BEGIN = "<!-- options of {name}: generated by `python -m mailload.options`, do not edit by hand -->"
TABLE_END = "<!-- end of the options of {name} -->"


def reference_table(config_class: type, prefix: str) -> str:
    """The markdown table of every option: flags, variable, default, meaning; grouped by panel."""
    rows = ["| option | variable | default | meaning |", "| --- | --- | --- | --- |"]
    panels: dict[str, list[Declared]] = {}
    for item in declared(config_class):
        panels.setdefault(item.option.panel, []).append(item)
    for panel, items in panels.items():
        rows.append(f"| **{panel}** | | | |")
        for item in items:
            spec = item.option
            value = "" if spec.given_as is bool else f" {spec.metavar or 'VALUE'}"
            flags = ", ".join(f"`{f}{value if f.startswith('--') else ''}`" for f in item.flags)
            env = item.envvar(prefix)
            default = item.default_text()
            cells = [flags, f"`{env}`" if env else "", f"`{default}`" if default else "", _cell(spec.doc or spec.help)]
            rows.append("| " + " | ".join(cells).replace("|  |", "| |") + " |")
    return "\n".join(rows)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _tables() -> Iterator[tuple[str, str]]:
    from smartsink.config import SinkConfig
    from trafficgen.config import RunConfig

    yield "trafficgen", reference_table(RunConfig, "TRAFFICGEN")
    yield "smartsink", reference_table(SinkConfig, "SMARTSINK")


def rewrite_docs(text: str) -> str:
    """docs/cli.md with each tool's table between its markers replaced by the table its options make."""
    for name, table in _tables():
        begin, end = TABLE_BEGIN.format(name=name), TABLE_END.format(name=name)
        head, found, rest = text.partition(begin)
        if not found:
            raise ValueError(f"docs/cli.md has no line {begin!r}")
        _, found, tail = rest.partition(end)
        if not found:
            raise ValueError(f"docs/cli.md has no line {end!r}")
        text = f"{head}{begin}\n{table}\n{end}{tail}"
    return text


def main(argv: list[str]) -> int:
    path = Path(argv[0] if argv else "docs/cli.md")
    path.write_text(rewrite_docs(path.read_text()))
    print(f"{path}: option tables rewritten")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
