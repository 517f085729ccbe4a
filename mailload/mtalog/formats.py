"""Which format a log is (from its first lines), and a parser for it: KumoMTA, Postfix or Exim."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from mailload.mtalog import exim, kumomta, postfix
from mailload.mtalog.events import Event

NAMES = (kumomta.NAME, postfix.NAME, exim.NAME)
LABELS = {kumomta.NAME: "KumoMTA JSON records", postfix.NAME: "Postfix log lines", exim.NAME: "Exim main log lines"}
SNIFF_LINES = 1000  # lines looked at to tell the format


class Parser(Protocol):
    evicted: int  # ids forgotten to bound memory (0 where there are none)
    before_log: int  # attempts to messages taken in before the log began

    def start_file(self, mtime: float) -> None:
        """The lines that follow come from a file last written at `mtime`."""

    def feed(self, line: str) -> list[Event] | None:
        """The events of one line: [] for a line read and not used, None for one not understood."""


def detect(lines: Iterable[str]) -> str | None:
    """The format the first of these lines (at most SNIFF_LINES) is written in; None when none is one of ours."""
    for n, line in enumerate(lines):
        if n >= SNIFF_LINES:
            break
        if kumomta.looks_like(line):
            return kumomta.NAME
        if postfix.looks_like(line):
            return postfix.NAME
        if exim.looks_like(line):
            return exim.NAME
    return None


def parser(name: str, tenant_header: str = "X-Tenant", campaign_header: str = "X-Campaign") -> Parser:
    """A new parser of format `name`, for every file of that format in turn (a queue id's lines may span a
    rotation)."""
    if name == kumomta.NAME:
        return kumomta.Parser(tenant_header, campaign_header)
    if name == postfix.NAME:
        return postfix.Parser()
    if name == exim.NAME:
        return exim.Parser()
    raise ValueError(f"no such format: {name!r} (known: {', '.join(NAMES)})")
