"""Options declared once.

Each field of a tool's config dataclass (trafficgen's RunConfig, smartsink's SinkConfig) carries its command-line
option: `field: T = option(DEFAULT, help=..., panel=..., metavar=..., kind=...)`. From that one declaration come
the command line and its environment variable, the `--help` text and its panels, the reading of a value into the
field's (its kind, mailload.values: the same for the command line, a variable, a workload file and a program), what
the JSON report shows, and the reference table in docs/cli.md (`make docs` writes it; a test checks it is current).
Only the tools' cli.py modules import Typer; this module gives them a plain function signature Typer reads. It
knows neither tool: each passes its own config class.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Annotated, Any, NamedTuple

from mailload.values import Kind, Text, named

TEXT = Text()  # the kind of an option that takes any text as it is
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
    kind: Kind = TEXT  # how a value given becomes the field's (mailload.values); ValueError names why
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
    """The fields' values from the options given (by field name, as a user writes them, from wherever): each
    given value read by its option's kind; options not given (or None) are left out, so the field's default
    applies. OptionError names the option and the problem; a name no option has is a program's mistake
    (TypeError)."""
    unknown = set(given) - {d.name for d in declared(config_class)}
    if unknown:
        raise TypeError(f"no such option: {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {}
    for item in declared(config_class):
        raw = given.get(item.name)
        if raw is None:
            continue
        try:
            out[item.name] = item.option.kind.read(raw)
        except ValueError as e:
            raise OptionError(named(item.long_flag, e)) from None
    return out


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
        given_as = spec.kind.given_as  # numbers are taken as text too: their kind reads them, in our words
        flag = given_as is bool
        metavar = "" if flag else spec.metavar
        shown = item.default_text()
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
            value = "" if spec.kind.given_as is bool else f" {spec.metavar or 'VALUE'}"
            flags = ", ".join(f"`{f}{value if f.startswith('--') else ''}`" for f in item.flags)
            env = item.envvar(prefix)
            default = item.default_text()
            cells = [flags, f"`{env}`" if env else "", f"`{default}`" if default else "", _cell(spec.doc or spec.help)]
            rows.append("| " + " | ".join(cells).replace("|  |", "| |") + " |")
    return "\n".join(rows)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
