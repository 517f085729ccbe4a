"""SMTP replies on the wire: the one place a Reply becomes bytes, and the catalogue of the sink's own replies.

RFC 5321 4.2.1: a multi-line reply repeats the code on every line, with "-" after it on every line but
the last, which has a space. 4.5.3.1.5: a reply line is at most 512 octets including CRLF.
Policy texts come from people's files (KumoMTA's among them): they may hold CR LF or bare LF, lines that
already start with the code ("421-4.7.0 ..."), stray spaces, or characters that are not 7-bit text.
"""

from __future__ import annotations

import re
from functools import lru_cache

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


@lru_cache(maxsize=4096)
def render(reply: Reply) -> bytes:
    """The reply as it goes on the wire, CRLF-terminated, every line within 512 octets."""
    code = str(reply.code)
    lines = split_lines(reply)
    if not lines:
        return f"{code}\r\n".encode("ascii")
    last = len(lines) - 1
    return "".join(f"{code}{' ' if i == last else '-'}{text}\r\n" for i, text in enumerate(lines)).encode("ascii")


def render_text(code: int, text: str) -> bytes:
    """Shorthand for the sink's own fixed replies."""
    return render(Reply(code, text))


# --- the catalogue: every reply of the sink's own (the policy's come from its file and smartsink.policy.fallback) ---

OK = render_text(250, "2.0.0 Ok")
MAIL_OK = render_text(250, "2.1.0 Ok")
BYE = render_text(221, "2.0.0 Bye")
TIMEOUT = render_text(421, "4.4.2 Error: timeout exceeded")
SHUTDOWN = render_text(421, "4.3.2 Service shutting down, closing connection")
TOO_MANY_ERRORS = render_text(421, "4.7.0 Too many errors, closing connection")
INTERNAL = render_text(421, "4.3.0 Internal error, closing connection")
UNKNOWN = render_text(500, "5.5.2 Error: command not recognized")
LINE_TOO_LONG = render_text(500, "5.5.2 Error: line too long")
NEED_HELO = render_text(503, "5.5.1 Error: send HELO first")
NESTED_MAIL = render_text(503, "5.5.1 Error: nested MAIL command")
NEED_MAIL = render_text(503, "5.5.1 Error: need MAIL command")
NEED_RCPT = render_text(503, "5.5.1 Error: need RCPT command")
NO_VALID_RCPT = render_text(554, "5.5.1 Error: no valid recipients")
MAIL_SYNTAX = render_text(501, "5.5.4 Syntax: MAIL FROM:<address>")
RCPT_SYNTAX = render_text(501, "5.5.4 Syntax: RCPT TO:<address>")
BAD_RCPT = render_text(501, "5.1.3 Bad recipient address syntax")
PARAM_SYNTAX = render_text(501, "5.5.4 Syntax error in parameters")
PARAM_UNKNOWN = render_text(555, "5.5.4 Unsupported parameter")
SIZE_EXCEEDED = render(fallback.SIZE_EXCEEDED)
TOO_MANY_RCPTS = render_text(452, "4.5.3 Error: too many recipients")
DATA_SYNTAX = render_text(501, "5.5.4 Syntax: DATA")
# RFC 5321 4.1.1.5 and 4.1.1.10: RSET and QUIT take no argument (aiosmtpd's answer too).
RSET_SYNTAX = render_text(501, "5.5.4 Syntax: RSET")
QUIT_SYNTAX = render_text(501, "5.5.4 Syntax: QUIT")
ARG_SYNTAX = render_text(501, "5.5.4 Syntax error in arguments")
VRFY = render_text(252, "2.0.0 Cannot VRFY user, but will accept message and attempt delivery")
VRFY_SYNTAX = render_text(501, "5.5.4 Syntax: VRFY <address>")
EXPN = render_text(502, "5.5.1 Error: EXPN not implemented")
HELP = render_text(214, "2.0.0 Supported commands: AUTH DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET STARTTLS VRFY")
TLS_READY = render_text(220, "2.0.0 Ready to start TLS")
TLS_UNAVAILABLE = render_text(454, "4.7.0 TLS not available")
TLS_ACTIVE = render_text(503, "5.5.1 Error: TLS already active")
AUTH_DISABLED = render_text(502, "5.5.1 Error: authentication not enabled")
AUTH_DONE = render_text(503, "5.5.1 Error: already authenticated")
AUTH_IN_MAIL = render_text(503, "5.5.1 Error: AUTH not allowed during a mail transaction")
AUTH_MECH = render_text(504, "5.5.4 Unrecognized authentication type")
AUTH_OK = render_text(235, "2.7.0 Authentication successful")
AUTH_BAD = render_text(501, "5.5.2 Cannot decode response")
AUTH_CANCELLED = render_text(501, "5.7.0 Authentication cancelled")
AUTH_REQUIRED = render_text(530, "5.7.0 Authentication required")
AUTH_PLAIN = b"334 \r\n"
AUTH_USER = b"334 VXNlcm5hbWU6\r\n"  # "Username:"
AUTH_PASS = b"334 UGFzc3dvcmQ6\r\n"  # "Password:"
RCPT_OK = render_text(250, "2.1.5 Ok")
DATA_GO = render_text(354, "End data with <CR><LF>.<CR><LF>")


def banner(hostname: str) -> bytes:
    return render_text(220, f"{hostname} ESMTP smartsink")


def queued(queue_id: int) -> bytes:
    """The acceptance of one message; built without render(): it differs for every message."""
    return b"250 2.0.0 Ok: queued as %X\r\n" % queue_id


def helo(hostname: str) -> bytes:
    return render_text(250, hostname)


def helo_syntax(verb: str) -> bytes:
    return render_text(501, f"5.5.4 Syntax: {verb} hostname")


def ehlo(hostname: str, max_message_size: int, tls_offered: bool, auth_offered: bool) -> bytes:
    """The EHLO reply: the extensions the sink serves."""
    lines = [hostname, "PIPELINING", f"SIZE {max_message_size}", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"]
    if tls_offered:
        lines.append("STARTTLS")
    if auth_offered:
        lines.append("AUTH PLAIN LOGIN")
    lines.append("HELP")
    return "".join(f"250{'-' if i < len(lines) - 1 else ' '}{line}\r\n" for i, line in enumerate(lines)).encode()
