"""A policy file's problems, each named by file, line and key: where each table header and key of the file
stands, found once when a problem first needs a line, and how tables and keys are named in problems.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a policy file."""

    source: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class PolicyError(Exception):
    """A policy file that cannot be used; str() gives one line per problem."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


_HEADER = re.compile(r"^\s*(\[\[?)\s*(.+?)\s*\]\]?\s*(?:#.*)?$")


def _split_dotted(text: str) -> tuple[str, ...]:
    parts, current, quote = [], "", ""
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
            else:
                current += ch
        elif ch in "\"'":
            quote = ch
        elif ch == ".":
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    parts.append(current.strip())
    return tuple(parts)


_KEY = re.compile(r"""^\s*["']?(.*?)["']?\s*=""")


@dataclass
class Lines:
    """Where each table header and key of the file stands, to put line numbers on problems.

    Indexed once (headers by path, a table's keys the first time one of them is asked for), so naming the line of
    every key of a file is linear in its size, however many tables it has."""

    lines: list[str]
    headers: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)
    by_path: dict[tuple[str, ...], list[int]] = field(default_factory=dict)
    keys: dict[int, dict[str, int]] = field(default_factory=dict)  # a table's first line -> its keys' lines

    @classmethod
    def of(cls, text: str) -> Lines:
        found = cls(text.splitlines())
        for number, line in enumerate(found.lines, start=1):
            m = _HEADER.match(line)
            if m and not line.lstrip().startswith("#"):
                path = _split_dotted(m.group(2))
                found.headers.append((number, path))
                found.by_path.setdefault(path, []).append(number)
        return found

    def table(self, path: tuple[str, ...], nth: int = 0) -> int | None:
        matches = self.by_path.get(path, ())
        return matches[nth] if nth < len(matches) else (matches[0] if matches else None)

    def place(self, path: tuple[str, ...]) -> int | None:
        """Where a table is defined: its header, else the line of its key (an inline table, a bad value)."""
        return self.table(path) or (self.key(path[:-1], path[-1]) if path else None)

    def first_under(self, name: str) -> int | None:
        """The first header of a table named `name` or nested in it (`[domian."gmail.com"]` for `domian`)."""
        return next((n for n, p in self.headers if p[:1] == (name,)), None)

    def key(self, path: tuple[str, ...], key: str, nth: int = 0) -> int | None:
        # Top-level keys stand before the first header; a table without a header of its own is an inline
        # table (`"gmail.com" = { bounce = 5 }`): its keys are on the line that defines it.
        start = self.table(path, nth) if path else 0
        if start is None:
            return self.key(path[:-1], path[-1])
        keys = self.keys.get(start)
        if keys is None:
            keys = self.keys[start] = self._keys_after(start)
        return keys.get(key, start or None)

    def _keys_after(self, start: int) -> dict[str, int]:
        """The first line of each key between the header on line `start` (0: the top) and the next header."""
        keys: dict[str, int] = {}
        for number in range(start + 1, len(self.lines) + 1):
            text = self.lines[number - 1]
            if _HEADER.match(text) and not text.lstrip().startswith("#"):
                break
            m = _KEY.match(text)
            if m:
                keys.setdefault(m.group(1), number)
        return keys


def quote(name: str) -> str:
    """A name as a TOML key writes it: quoted when it holds a dot or is not a bare word."""
    return f'"{name}"' if "." in name or not name.isidentifier() else name


def table_label(path: tuple[str, ...]) -> str:
    """A table as a problem names it: [domain."gmail.com"]."""
    return "[" + ".".join(quote(p) for p in path) + "]"
