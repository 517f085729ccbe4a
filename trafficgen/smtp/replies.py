"""SMTP replies as the client reads them: parsing bytes into (code, text) with no sockets involved.

RFC 5321 4.2: a reply is one or more lines "CODE-text" ending with a line "CODE text" (or just "CODE").
Anything else from a server is a protocol violation.
"""

from __future__ import annotations

from trafficgen.outcome import Kind

MAX_LINE = 64 * 1024  # a server line longer than this is not SMTP


class ProtocolError(Exception):
    """The server sent something that is not an SMTP reply."""


class Reply:
    """One reply: its code, its lines' texts joined with "\n", and the time (monotonic) it was complete.

    A plain class with slots, not a NamedTuple: compiled, it is built and read natively (a NamedTuple stays a
    Python class whose construction and fields are generic calls), and the client reads four or more a message."""

    __slots__ = ("at", "code", "text")

    def __init__(self, code: int, text: str, at: float) -> None:
        self.code = code
        self.text = text
        self.at = at

    def __repr__(self) -> str:
        return f"Reply({self.code}, {self.text!r}, {self.at})"

    @property
    def kind(self) -> Kind:
        return Kind.of_code(self.code)

    def one_line(self) -> str:
        return " ".join(self.text.split("\n"))

    @property
    def too_many_recipients(self) -> bool:
        """451 4.5.3: this connection takes no more recipients (KumoMTA's answer once a connection's
        batch is full); KumoMTA's traffic-gen reconnects on it, and so does trafficgen."""
        return self.code == 451 and self.text.startswith("4.5.3")


class ReplyParser:
    """Feed it bytes as they arrive; it returns the replies completed by them."""

    __slots__ = ("buf", "lines")

    def __init__(self) -> None:
        self.buf = b""
        self.lines: list[str] = []

    def feed(self, data: bytes, now: float) -> list[Reply]:
        if self.buf:
            data, self.buf = self.buf + data, b""
        if not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            data, self.buf = data[:cut], data[cut:]
            if len(self.buf) > MAX_LINE:
                raise ProtocolError(f"a reply line longer than {MAX_LINE} bytes")
        replies: list[Reply] = []
        lines = self.lines
        for line in data.splitlines():  # bytes.splitlines: \r\n, \n or \r
            separator = line[3:4]
            # A tuple, not `separator not in b" -"`: on Python 3.11 `bytes in bytes` raises and clears a TypeError.
            if len(line) < 3 or not line[:3].isdigit() or separator not in (b" ", b"-", b""):
                raise ProtocolError(f"not an SMTP reply: {line[:80]!r}")
            if separator == b"-":
                lines.append(line[4:].decode("utf-8", "replace"))
                continue
            if lines:
                lines.append(line[4:].decode("utf-8", "replace"))
                text = "\n".join(lines)
                self.lines = lines = []
            else:
                text = line[4:].decode("utf-8", "replace")
            replies.append(Reply(int(line[:3]), text, now))
        return replies
