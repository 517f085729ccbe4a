"""Reply texts with what identifies a person, a host or a message masked, so a policy can carry them (pure).

An address becomes `{recipient}` and an IP address `{client_ip}` (smartsink fills both in when it answers, as the
providers name them); a token that looks like an id (8 characters or more with a digit, or 6 digits or more, such
as a queue id, a timestamp, a session hash) becomes `<id>`. Runs of spaces become one, so texts that differ only
in those are counted as one.
"""

from __future__ import annotations

import re

_ADDRESS = re.compile(r"""[^\s<>()\[\],;:"'@]+@[A-Za-z0-9_.-]+""")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_TOKEN = re.compile(r"[A-Za-z0-9]+")
_SPACE = re.compile(r"\s+")
MAX_TEXT = 400  # characters kept of a reply text

RECIPIENT = "{recipient}"
CLIENT_IP = "{client_ip}"
ID = "<id>"


def _id(m: re.Match[str]) -> str:
    token = m.group(0)
    if (len(token) >= 8 and any(c.isdigit() for c in token)) or (len(token) >= 6 and token.isdigit()):
        return ID
    return token


def _ipv6(m: re.Match[str]) -> str:
    token = m.group(0)
    # A time (12:30:45) is not an address: an IPv6 address has "::" or seven colons.
    return CLIENT_IP if "::" in token or token.count(":") == 7 else token


def mask(text: str) -> str:
    """The text with addresses, IP addresses and ids masked, whitespace collapsed, at most MAX_TEXT characters."""
    text = _SPACE.sub(" ", text).strip()
    text = _ADDRESS.sub(RECIPIENT, text)
    text = _IPV4.sub(CLIENT_IP, text)
    if ":" in text:
        text = _IPV6.sub(_ipv6, text)
    text = _TOKEN.sub(_id, text)
    return text[:MAX_TEXT]
