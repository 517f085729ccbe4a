"""Rendering SMTP replies to the wire: the one place a Reply becomes bytes.

RFC 5321 4.2.1: a multi-line reply repeats the code on every line, with "-" after it on every line but
the last, which has a space. 4.5.3.1.5: a reply line is at most 512 octets including CRLF.
Policy texts come from people's files (KumoMTA's among them): they may hold CR LF or bare LF, lines that
already start with the code ("421-4.7.0 ..."), stray spaces, or characters that are not 7-bit text.
"""

from __future__ import annotations

import re
from functools import lru_cache

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
