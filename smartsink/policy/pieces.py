"""A policy's TOML put together from pieces, each parsed once: what makes reloading a big policy cost its edit.

A policy is a run of tables: `[default]`, `[listener]`, `[domain."NAME"]`, `[[bounce."NAME"]]`... Cut before some of
the lines that start with "[" (chosen by the line's own text, so an edit moves no cut but its own), each chunk
parses alone, and the whole is the chunks put together: tables side by side, the entries of a list in order. A
reload parses only the chunks whose text changed and says which domain names they hold (`Parsed.touched`).

Whatever is not of that shape (another table, a table named twice, a name that is not lower case, a chunk that does
not parse alone: a cut inside a multi-line string or array leaves its first half unterminated) raises Whole: the
caller parses the text whole with tomllib, which names any problem exactly. The result is always tomllib's.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

LISTED = ("bounce", "defer", "throttle", "block", "unknown", "schedule")  # [[KIND."NAME"]]: lists of tables
SINGLE = ("default", "listener")
OWNED = {"domain", *SINGLE, *LISTED}  # the top-level keys the headers of the pieces own
CHUNK_MASK = 63  # about one cut in 64 headers

_HEADER_LINE = re.compile(r"^[ \t]*\[[^\n]*", re.MULTILINE)


class Whole(Exception):
    """The text is not of the shape its pieces can be put together for: parse it whole."""


@dataclass
class Chunk:
    """Some consecutive tables of the file, parsed: [domain."NAME"] tables by name, [[KIND."NAME"]] entries by
    kind and name, [default] and [listener]; `names`: every domain name it holds (lower case)."""

    domains: dict[str, Any] = field(default_factory=dict)
    lists: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    single: dict[str, Any] = field(default_factory=dict)
    names: frozenset[str] = frozenset()


@dataclass
class Parsed:
    """The TOML of the whole text, and the names of the domains whose tables or lists changed since the chunks
    of `known` ([default] and [listener] are not named: the caller compares what they make)."""

    data: dict[str, Any]
    chunks: dict[str, Chunk]
    touched: set[str]


_PLAIN_HEADER = re.compile(
    r'[ \t]*(\[\[?)[ \t]*([a-z]+)[ \t]*(?:\.[ \t]*"([^"\\\x00-\x1f]*)"[ \t]*)?(\]\]?)[ \t]*(?:#.*)?\r?'
)


def _usual(top: str, name: str | None, listed: bool) -> bool:
    """A header a policy uses: [default], [listener], [domain."NAME"] or [[KIND."NAME"]], its name in lower case."""
    if name is None:
        return top in SINGLE and not listed
    return name == name.lower() and (top in LISTED if listed else top == "domain")


def _table(line: str) -> tuple[str, str | None, bool]:
    """(top-level key, name or None, a list) of a header line; Whole for one a policy does not use."""
    m = _PLAIN_HEADER.fullmatch(line)
    if m and len(m[1]) == len(m[4]) and _usual(m[2], m[3], len(m[1]) == 2):  # read without a TOML parser
        return m[2], m[3], len(m[1]) == 2
    try:
        header = tomllib.loads(line + "\n")
    except tomllib.TOMLDecodeError:
        raise Whole from None
    # The header alone parses to its path down to an empty table ([a."b"]) or a list of one ([[a."b"]]).
    path: list[str] = []
    node: Any = header
    while isinstance(node, dict) and len(node) == 1:
        (key, node), *_ = node.items()
        path.append(key)
    listed = node == [{}]
    name = path[1] if len(path) == 2 else None
    if (node != {} and not listed) or len(path) > 2 or not _usual(path[0], name, listed):
        raise Whole
    return path[0], name, listed


def _chunk(text: str) -> Chunk:
    """Parse one chunk (text that starts with a header): tomllib reads it, its headers say it is of the shape."""
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        raise Whole from None
    names = {name for top, name, _ in map(_table, _HEADER_LINE.findall(text)) if name is not None}
    return Chunk(
        parsed.get("domain", {}),
        {kind: parsed[kind] for kind in LISTED if kind in parsed},
        {top: parsed[top] for top in SINGLE if top in parsed},
        frozenset(names),
    )


def _chosen(text: str, start: int, end: int) -> list[int]:
    """Where chunks start between `start` and `end`: the first header, then about one header in CHUNK_MASK + 1,
    chosen by its text (so the cuts after an edit are the ones before it)."""
    cuts: list[int] = []
    for m in _HEADER_LINE.finditer(text, start, end):
        if not cuts or not hash(m.group()) & CHUNK_MASK:
            cuts.append(m.start())
    return cuts


def _cuts(text: str, known: list[str]) -> list[int]:
    """Where chunks start: the last load's chunks (`known`, in order) the text still begins and ends with stand;
    only the text between them is looked at (a comparison of text, not a Python step a line)."""
    first = _HEADER_LINE.search(text)
    if first is None:
        return []
    front, pos = [], first.start()
    for chunk in known:
        if not text.startswith(chunk, pos):
            break
        front.append(pos)
        pos += len(chunk)
    back, end = [], len(text)
    for chunk in reversed(known[len(front) :]):
        if end - len(chunk) < pos or not text.startswith(chunk, end - len(chunk)):
            break
        end -= len(chunk)
        back.append(end)
    while front and pos < end and not _HEADER_LINE.match(text, pos):
        pos = front.pop()  # the edit added lines to the last table of the front: its chunk is read again
    return [*front, *_chosen(text, pos, end), *reversed(back)]


def parse(text: str, known: dict[str, Chunk]) -> Parsed:
    """The text's TOML from its chunks (those in `known`, by text and in order, are not parsed again); Whole when
    it cannot be."""
    cuts = _cuts(text, list(known))
    try:
        data = tomllib.loads(text[: cuts[0]] if cuts else text)
    except tomllib.TOMLDecodeError:
        raise Whole from None
    if OWNED & set(data):
        raise Whole
    chunks: dict[str, Chunk] = {}
    order: list[Chunk] = []
    touched: set[str] = set()
    for start, end in zip(cuts, [*cuts[1:], len(text)], strict=False):  # no cut: no chunk
        piece = text[start:end]
        chunk = known.get(piece) or chunks.get(piece)
        if chunk is None:
            chunk = _chunk(piece)
            touched |= chunk.names
        if piece in chunks:
            raise Whole  # the same text twice: rare, and not worth a second way of keeping chunks in order
        chunks[piece] = chunk
        order.append(chunk)
    for piece, chunk in known.items():
        if piece not in chunks:
            touched |= chunk.names
    _put_together(data, order)
    return Parsed(data, chunks, touched)


def _put_together(data: dict[str, Any], chunks: Any) -> None:
    domains: dict[str, Any] = {}
    lists: dict[str, dict[str, list[Any]]] = {}
    for chunk in chunks:
        size = len(domains)
        domains.update(chunk.domains)
        if len(domains) != size + len(chunk.domains):
            raise Whole  # a table defined twice: tomllib says so
        for top, value in chunk.single.items():
            if top in data:
                raise Whole
            data[top] = value
        for kind, by_name in chunk.lists.items():
            into = lists.setdefault(kind, {})
            for name in into.keys() & by_name.keys():  # a list whose entries stand in several chunks
                into[name] = into[name] + by_name[name]
            into.update({name: entries for name, entries in by_name.items() if name not in into})
    if domains:
        data["domain"] = domains
    data.update(lists)
