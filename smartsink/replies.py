"""What the sink says: Answers (structured replies), the one place an Answer becomes bytes, and the catalogue of
the sink's own replies.

An Answer is what a front-end gets from the Responder and from the catalogue: the code, the enhanced status, the text
of each line, whether the connection closes after it. The engines put it on the wire at the edge with wire(), which
renders each Answer once; the inject API reports its code and lines. Nothing reads a reply back from bytes. A policy's
Reply (its file's text, as written) becomes an Answer once (answer(), cached): split into lines, cleaned, folded.

RFC 5321 4.2.1: a multi-line reply repeats the code on every line, with "-" after it on every line but
the last, which has a space. 4.5.3.1.5: a reply line is at most 512 octets including CRLF.
Policy texts come from people's files (KumoMTA's among them): they may hold CR LF or bare LF, lines that
already start with the code ("421-4.7.0 ..."), stray spaces, or characters that are not 7-bit text.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Final

from smartsink.policy import fallback
from smartsink.policy.model import Reply

MAX_LINE = 512
_TEXT_MAX = MAX_LINE - 6  # code, separator, CRLF
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_NOT_TEXT = re.compile(r"[^\x20-\x7e]")
_ENHANCED = re.compile(r"^([245])\.(\d{1,3}\.\d{1,3})(?=\s|$)")
_STATUS_MAX = 12  # "5.123.456 " and a margin


def split_lines(reply: Reply) -> list[str]:
    """The reply's text lines, without code prefixes, folded to fit one reply line each; for a failure, each line
    starts with an enhanced status code of the reply's class (RFC 2034, as EHLO advertises ENHANCEDSTATUSCODES)."""
    code = str(reply.code)
    failure = code[0] in "45"
    width = _TEXT_MAX - _STATUS_MAX if failure else _TEXT_MAX
    lines: list[str] = []
    for raw in _LINE_BREAK.split(reply.text):
        line = _NOT_TEXT.sub("?", raw.replace("\t", " ")).strip()
        # A line that already carries this reply's code ("421-4.7.0", "421 ...", KumoMTA's "421,4.7.0")
        # must not be prefixed twice.
        if line.startswith(code) and (len(line) == 3 or line[3] in " -,"):
            line = line[4:].lstrip()
        if line:
            lines.extend(_fold(line, width))
    return _with_status(lines, code) if failure else lines


def _with_status(lines: list[str], code: str) -> list[str]:
    """Every line led by an enhanced status code whose class is the reply's: the first line's own code (its class
    corrected), else X.0.0; texts that have one keep it."""
    first = _ENHANCED.match(lines[0]) if lines else None
    status = f"{code[0]}.{first.group(2)}" if first else f"{code[0]}.0.0"
    out = []
    for line in lines:
        m = _ENHANCED.match(line)
        out.append(f"{code[0]}.{m.group(2)}{line[m.end() :]}" if m else f"{status} {line}")
    return out or [status]


def _fold(line: str, width: int = _TEXT_MAX) -> list[str]:
    out = []
    while len(line) > width:
        cut = line.rfind(" ", 0, width + 1)
        if cut <= 0:
            cut = width
        out.append(line[:cut].rstrip())
        line = line[cut:].lstrip()
    if line:
        out.append(line)
    return out


# RFC 5321 3.8: a server that answers 421 closes the channel; 221 answers QUIT, after which it closes too.
_CLOSING = (221, 421)


class Answer:
    """One reply of the sink's: `code`; `status`, its enhanced status code (RFC 3463: "4.7.0"; "" when its text has
    none); `lines`, the text of each line as it follows the code on the wire (a failure's each led by its enhanced
    status); `close`: the connection closes after it. `accepted`: a 2xx or 3xx, which at the Responder's steps means
    the greeting let the client in, the recipient or the message was taken. Made once (the policy's through
    answer(), the sink's own below), or once a message for the queue id; never changed after."""

    __slots__ = ("_wire", "accepted", "close", "code", "lines", "status")

    def __init__(
        self, code: int, lines: tuple[str, ...], status: str = "", close: bool = False, _wire: bytes | None = None
    ) -> None:
        self.code: Final = code
        self.lines: Final = lines
        self.status: Final = status
        self.close: Final = close
        self.accepted: Final = code < 400
        self._wire = _wire  # wire()'s bytes, rendered the first time an engine asks

    def __repr__(self) -> str:
        return f"Answer({self.code}, {self.lines!r}, status={self.status!r}, close={self.close})"


def wire(answer: Answer) -> bytes:
    """The answer as it goes on the wire, CRLF-terminated: the code on every line, "-" after it on all but the
    last. Rendered once, the first time an engine asks, and kept on the answer."""
    data = answer._wire
    if data is None:
        code, lines = answer.code, answer.lines
        if not lines:
            data = f"{code}\r\n".encode("ascii")
        else:
            last = len(lines) - 1
            data = "".join(f"{code}{' ' if i == last else '-'}{text}\r\n" for i, text in enumerate(lines)).encode()
        answer._wire = data
    return data


def _make(reply: Reply) -> Answer:
    lines = tuple(split_lines(reply))
    status = _ENHANCED.match(lines[0]) if lines else None
    return Answer(reply.code, lines, status.group(0) if status else "", reply.code in _CLOSING)


@lru_cache(maxsize=4096)
def answer(reply: Reply) -> Answer:
    """A policy's reply as the sink says it: its text in lines (code prefixes removed, 7-bit, folded within 512
    octets, a failure's lines led by an enhanced status of its class); a 421 closes the connection. Cached: the
    policy's replies are few, and their answers rendered once."""
    return _make(reply)


def render(reply: Reply) -> bytes:
    """A policy's reply as it goes on the wire (answer(), then wire())."""
    return wire(answer(reply))


def _own(code: int, text: str) -> Answer:
    """One of the sink's own replies: made like a policy's."""
    return _make(Reply(code, text))


# --- the catalogue: every reply of the sink's own (the policy's come from its file and smartsink.policy.fallback) ---

OK = _own(250, "2.0.0 Ok")
MAIL_OK = _own(250, "2.1.0 Ok")
BYE = _own(221, "2.0.0 Bye")
TIMEOUT = _own(421, "4.4.2 Error: timeout exceeded")
SHUTDOWN = _own(421, "4.3.2 Service shutting down, closing connection")
TOO_MANY_ERRORS = _own(421, "4.7.0 Too many errors, closing connection")
INTERNAL = _own(421, "4.3.0 Internal error, closing connection")
UNKNOWN = _own(500, "5.5.2 Error: command not recognized")
LINE_TOO_LONG = _own(500, "5.5.2 Error: line too long")
NEED_HELO = _own(503, "5.5.1 Error: send HELO first")
NESTED_MAIL = _own(503, "5.5.1 Error: nested MAIL command")
NEED_MAIL = _own(503, "5.5.1 Error: need MAIL command")
NEED_RCPT = _own(503, "5.5.1 Error: need RCPT command")
NO_VALID_RCPT = _own(554, "5.5.1 Error: no valid recipients")
MAIL_SYNTAX = _own(501, "5.5.4 Syntax: MAIL FROM:<address>")
RCPT_SYNTAX = _own(501, "5.5.4 Syntax: RCPT TO:<address>")
BAD_RCPT = _own(501, "5.1.3 Bad recipient address syntax")
PARAM_SYNTAX = _own(501, "5.5.4 Syntax error in parameters")
PARAM_UNKNOWN = _own(555, "5.5.4 Unsupported parameter")
SIZE_EXCEEDED = _make(fallback.SIZE_EXCEEDED)
TOO_MANY_RCPTS = _own(452, "4.5.3 Error: too many recipients")
DATA_SYNTAX = _own(501, "5.5.4 Syntax: DATA")
# RFC 5321 4.1.1.5 and 4.1.1.10: RSET and QUIT take no argument (aiosmtpd's answer too).
RSET_SYNTAX = _own(501, "5.5.4 Syntax: RSET")
QUIT_SYNTAX = _own(501, "5.5.4 Syntax: QUIT")
ARG_SYNTAX = _own(501, "5.5.4 Syntax error in arguments")
VRFY = _own(252, "2.0.0 Cannot VRFY user, but will accept message and attempt delivery")
VRFY_SYNTAX = _own(501, "5.5.4 Syntax: VRFY <address>")
EXPN = _own(502, "5.5.1 Error: EXPN not implemented")
HELP = _own(214, "2.0.0 Supported commands: AUTH DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET STARTTLS VRFY")
TLS_READY = _own(220, "2.0.0 Ready to start TLS")
TLS_UNAVAILABLE = _own(454, "4.7.0 TLS not available")
TLS_ACTIVE = _own(503, "5.5.1 Error: TLS already active")
AUTH_DISABLED = _own(502, "5.5.1 Error: authentication not enabled")
AUTH_DONE = _own(503, "5.5.1 Error: already authenticated")
AUTH_IN_MAIL = _own(503, "5.5.1 Error: AUTH not allowed during a mail transaction")
AUTH_MECH = _own(504, "5.5.4 Unrecognized authentication type")
AUTH_OK = _own(235, "2.7.0 Authentication successful")
AUTH_BAD = _own(501, "5.5.2 Cannot decode response")
AUTH_CANCELLED = _own(501, "5.7.0 Authentication cancelled")
AUTH_REQUIRED = _own(530, "5.7.0 Authentication required")
# RFC 4954 4: a server challenge is "334 " and base64 (empty for PLAIN: the client sends its initial response)
AUTH_PLAIN = Answer(334, ("",))
AUTH_USER = Answer(334, ("VXNlcm5hbWU6",))  # "Username:"
AUTH_PASS = Answer(334, ("UGFzc3dvcmQ6",))  # "Password:"
RCPT_OK = _own(250, "2.1.5 Ok")
DATA_GO = _own(354, "End data with <CR><LF>.<CR><LF>")


def banner(hostname: str) -> Answer:
    return _own(220, f"{hostname} ESMTP smartsink")


def queued(queue_id: int) -> Answer:
    """The acceptance of one message. It differs for every message, so its bytes are made with it, in one format
    (wire() then has them)."""
    text = f"2.0.0 Ok: queued as {queue_id:X}"
    return Answer(250, (text,), "2.0.0", False, b"250 %b\r\n" % text.encode())


@lru_cache(maxsize=64)
def helo(hostname: str) -> Answer:
    return _own(250, hostname)


def helo_syntax(verb: str) -> Answer:
    return _own(501, f"5.5.4 Syntax: {verb} hostname")


@lru_cache(maxsize=64)
def ehlo(hostname: str, max_message_size: int, tls_offered: bool, auth_offered: bool) -> Answer:
    """The EHLO reply: the extensions the sink serves."""
    lines = [hostname, "PIPELINING", f"SIZE {max_message_size}", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"]
    if tls_offered:
        lines.append("STARTTLS")
    if auth_offered:
        lines.append("AUTH PLAIN LOGIN")
    lines.append("HELP")
    return Answer(250, tuple(lines))
