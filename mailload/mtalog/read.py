"""Reading the logs a user names into an Aggregate: the files in order, the format of each, a progress bar on a
terminal, and a report of what was read (lines used, read and not used, not understood, streams cut short).

A log that cannot be used at all is a LogError with one line: a missing file, a file in none of the formats (or
not in the one given with --format). A line not understood is counted, never fatal.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TextIO

from mailload.mtalog import formats
from mailload.mtalog.aggregate import Aggregate
from mailload.mtalog.sources import LogFile, SourceError, expand

AUTO = "auto"
PROGRESS_EVERY = 8191  # lines between two updates of the progress bar


class LogError(ValueError):
    """Logs that cannot be read as asked; the message is one line naming the file and the problem."""


@dataclass
class FileReport:
    """What one file held."""

    path: str
    format: str = ""
    compression: str = ""
    lines: int = 0
    used: int = 0
    skipped: int = 0  # read and not used: other programs, other steps of the MTA
    not_understood: int = 0
    first_not_understood: int | None = None  # its line number
    cut_short: str | None = None


@dataclass
class ReadReport:
    """What the logs held, file by file, and how long reading them took."""

    files: list[FileReport] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # of this process: on a busy machine, the figure that does not move with the neighbours
    evicted: int = 0
    before_log: int = 0

    def total(self, name: str) -> int:
        return sum(int(getattr(f, name)) for f in self.files)

    @property
    def formats(self) -> list[str]:
        return sorted({f.format for f in self.files if f.format})


Progress = Callable[[LogFile, int, int], None]  # (file, bytes done in all, lines in all)


def read_logs(
    paths: list[str],
    fmt: str = AUTO,
    tenant_header: str = "X-Tenant",
    campaign_header: str = "X-Campaign",
    progress: Progress | None = None,
) -> tuple[Aggregate, ReadReport]:
    """Every line of every log, folded into an Aggregate."""
    if fmt != AUTO and fmt not in formats.NAMES:
        raise LogError(f"--format {fmt!r}: use {AUTO}, {', '.join(formats.NAMES)}")
    try:
        files = expand(paths)
    except SourceError as e:
        raise LogError(str(e)) from None
    aggregate, report = Aggregate(), ReadReport()
    parsers: dict[str, formats.Parser] = {}
    started, cpu_started, done_before = time.monotonic(), time.process_time(), 0
    for log in files:
        file_report = FileReport(str(log.path))
        report.files.append(file_report)
        name = fmt if fmt != AUTO else _detect(log)
        if name is None:
            continue  # an empty file
        file_report.format = name
        parser = parsers.get(name)
        if parser is None:
            parser = parsers[name] = formats.parser(name, tenant_header, campaign_header)
        parser.start_file(log.mtime)
        _read(log, parser, aggregate, file_report, progress, done_before, report)
        done_before += log.size
    report.seconds = time.monotonic() - started
    report.cpu_seconds = time.process_time() - cpu_started
    report.evicted = sum(p.evicted for p in parsers.values())
    report.before_log = sum(p.before_log for p in parsers.values())
    if report.total("used") == 0:
        raise LogError(f"{', '.join(paths)}: no mail was taken in or delivered in these logs")
    return aggregate, report


def _detect(log: LogFile) -> str | None:
    """The file's format; None when it is empty; LogError when its first lines are in none of ours."""
    lines = 0
    try:
        sample = []
        for line in log.lines():
            if line.strip():
                sample.append(line)
            lines += 1
            if len(sample) >= formats.SNIFF_LINES:
                break
    except SourceError as e:
        raise LogError(str(e)) from None
    if not sample:
        return None
    found = formats.detect(sample)
    if found is None:
        raise LogError(
            f"{log.path}: not a log of KumoMTA, Postfix or Exim: none of its first {len(sample):,} lines is one "
            "(--format names the format to read it as)"
        )
    return found


def _read(
    log: LogFile,
    parser: formats.Parser,
    aggregate: Aggregate,
    report: FileReport,
    progress: Progress | None,
    done_before: int,
    read: ReadReport,
) -> None:
    feed, add = parser.feed, aggregate.add
    lines = used = skipped = wrong = 0
    first_wrong: int | None = None
    try:
        for line in log.lines():
            lines += 1
            if not lines & PROGRESS_EVERY and progress is not None:
                progress(log, done_before + log.position, read.total("lines") + lines)
            text = line.rstrip("\r\n")
            if not text:
                continue
            events = feed(text)
            if events is None:
                wrong += 1
                if first_wrong is None:
                    first_wrong = lines
                if wrong == formats.SNIFF_LINES and used + skipped == 0:
                    raise LogError(
                        f"{log.path}: not {formats.LABELS[report.format]}: none of its first "
                        f"{formats.SNIFF_LINES:,} lines is one"
                    )
            elif events:
                used += 1
                for event in events:
                    add(event)
            else:
                skipped += 1
    except SourceError as e:
        raise LogError(str(e)) from None
    if wrong and used + skipped == 0:
        raise LogError(f"{log.path}: not {formats.LABELS[report.format]}: none of its {wrong:,} lines is one")
    report.compression, report.cut_short = log.compression, log.cut_short
    report.lines, report.used, report.skipped, report.not_understood = lines, used, skipped, wrong
    report.first_not_understood = first_wrong
    if progress is not None:
        progress(log, done_before + log.size, read.total("lines"))


@contextlib.contextmanager
def progress_bar(paths: list[str], enabled: bool = True, stream: TextIO = sys.stderr) -> Iterator[Progress | None]:
    """A rich progress bar on `stream` while the logs are read, when it is a terminal; else nothing."""
    if not enabled or not stream.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    try:
        total = sum(f.size for f in expand(paths))
    except SourceError:
        yield None
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[lines]:,} lines, {task.fields[rate]:,.0f}/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(file=stream),
        transient=True,
    ) as bar:
        task = bar.add_task("reading", total=total or 1, lines=0, rate=0.0)
        started = time.monotonic()

        def update(log: LogFile, done: int, lines: int) -> None:
            rate = lines / max(1e-9, time.monotonic() - started)
            bar.update(task, completed=done, description=log.path.name, lines=lines, rate=rate)

        yield update


def summary(aggregate: Aggregate, report: ReadReport) -> list[str]:
    """What was read, as lines for people (no address, no text of a line)."""
    lines_read = report.total("lines")
    kinds = ", ".join(formats.LABELS[f] for f in report.formats)
    rate = lines_read / report.seconds if report.seconds > 0 else 0.0
    cpu_rate = lines_read / report.cpu_seconds if report.cpu_seconds > 0 else 0.0
    out = [
        f"read {len(report.files)} file{'s' if len(report.files) != 1 else ''} ({kinds}): {lines_read:,} lines in "
        f"{report.seconds:.1f} s, {rate:,.0f} a second ({report.cpu_seconds:.1f} s of CPU, {cpu_rate:,.0f} a "
        "CPU-second)",
        f"  {report.total('used'):,} used, {report.total('skipped'):,} read and not used, "
        f"{report.total('not_understood'):,} not understood" + _first_wrong(report),
    ]
    out.extend(f"  {f.path}: {f.cut_short}; the lines before were read" for f in report.files if f.cut_short)
    out.extend(f"  {f.path}: empty" for f in report.files if not f.format)
    replies = aggregate.replies
    out.append(
        f"  {aggregate.messages:,} messages taken in ({aggregate.bounce_notices:,} bounce notices of the MTA's own "
        f"left out), {aggregate.domains.total:,} recipients in {aggregate.domains.distinct:,} domains"
    )
    if aggregate.attempts:
        shares = _answer_shares(aggregate)
        out.append(
            f"  {aggregate.attempts:,} delivery attempts: {replies:,} answered ({shares}), "
            f"{aggregate.no_reply:,} without an answer"
        )
    if report.before_log:
        out.append(f"  {report.before_log:,} attempts to messages taken in before the logs begin: not in the traffic")
    if report.evicted:
        out.append(f"  {report.evicted:,} queue ids forgotten to bound memory (too many open at once)")
    return out


def _first_wrong(report: ReadReport) -> str:
    first = next((f for f in report.files if f.first_not_understood is not None), None)
    return f" (the first: {first.path}:{first.first_not_understood})" if first else ""


def _answer_shares(aggregate: Aggregate) -> str:
    answers = [*aggregate.answers.values(), aggregate.others]
    replies = sum(a.replies for a in answers) or 1
    accepted = sum(a.accepted for a in answers) / replies
    temp = sum(a.tempfailed for a in answers) / replies
    perm = sum(a.permfailed for a in answers) / replies
    return f"{accepted:.1%} accepted, {temp:.1%} temporary and {perm:.1%} permanent failures"
