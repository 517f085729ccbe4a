"""SMTP replies as the client reads them: parsing bytes into (code, text) with no sockets involved.

RFC 5321 4.2: a reply is one or more lines "CODE-text" ending with a line "CODE text" (or just "CODE").
Anything else from a server is a protocol violation.
"""

from __future__ import annotations

from typing import NamedTuple

MAX_LINE = 64 * 1024  # a server line longer than this is not SMTP


class ProtocolError(Exception):
    """The server sent something that is not an SMTP reply."""


class Reply(NamedTuple):
    code: int
    text: str  # the lines' texts joined with "\n"
    at: float  # loop time when the reply was complete

    @property
    def kind(self) -> int:
        return kind_of(self.code)

    def one_line(self) -> str:
        return " ".join(self.text.split("\n"))


ACCEPTED, TEMPFAILED, PERMFAILED, ERROR = 0, 1, 2, 3
KIND_NAMES = ("accepted", "tempfailed", "permfailed", "errors")


def kind_of(code: int) -> int:
    if code >= 500:
        return PERMFAILED
    if code >= 400:
        return TEMPFAILED
    return ACCEPTED


class ReplyParser:
    """Feed it bytes as they arrive; it returns the replies completed by them."""

    __slots__ = ("buf", "lines")

    def __init__(self) -> None:
        self.buf = b""
        self.lines: list[str] = []

    def feed(self, data: bytes, now: float) -> list[Reply]:
        buf = self.buf + data if self.buf else data
        replies: list[Reply] = []
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            line = buf[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) < 3 or not line[:3].isdigit() or (len(line) > 3 and line[3:4] not in b" -"):
                raise ProtocolError(f"not an SMTP reply: {line[:80]!r}")
            self.lines.append(line[4:].decode("utf-8", "replace"))
            if line[3:4] != b"-":
                replies.append(Reply(int(line[:3]), "\n".join(self.lines), now))
                self.lines = []
        self.buf = buf[start:]
        if len(self.buf) > MAX_LINE:
            raise ProtocolError(f"a reply line longer than {MAX_LINE} bytes")
        return replies
