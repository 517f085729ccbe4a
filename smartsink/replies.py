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


def split_lines(reply: Reply) -> list[str]:
    """The reply's text lines, without code prefixes, folded to fit one reply line each."""
    code = str(reply.code)
    lines: list[str] = []
    for raw in _LINE_BREAK.split(reply.text):
        line = _NOT_TEXT.sub("?", raw.replace("\t", " ")).strip()
        # A line that already carries this reply's code ("421-4.7.0", "421 ...", KumoMTA's "421,4.7.0")
        # must not be prefixed twice.
        if line.startswith(code) and (len(line) == 3 or line[3] in " -,"):
            line = line[4:].lstrip()
        if line:
            lines.extend(_fold(line))
    return lines


def _fold(line: str) -> list[str]:
    out = []
    while len(line) > _TEXT_MAX:
        cut = line.rfind(" ", 0, _TEXT_MAX + 1)
        if cut <= 0:
            cut = _TEXT_MAX
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
