"""SMTP conversations with clients nobody here wrote: smtplib, raw sockets, swaks; and wire replies parsed.

Nothing here fakes the sink: every helper talks to a real server over a real socket.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import smtplib
import socket
import subprocess
from collections.abc import Iterator, Sequence

import pytest

from harness.sink import SinkProcess

SENDER = "sender@client.test"
BODY = b"From: sender@client.test\r\nTo: someone@example.test\r\nSubject: test\r\n\r\nHello from the tests.\r\n"
CLI_TIMEOUT = 30.0

needs_swaks = pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed (apt-get install swaks)")


def swaks_supports(feature: str) -> bool:
    """Whether this swaks can do `feature` (its --support list: "=== TLS supported" or "*** TLS not available")."""
    if shutil.which("swaks") is None:
        return False
    result = subprocess.run(["swaks", "--support"], capture_output=True, text=True, timeout=CLI_TIMEOUT)
    return f"=== {feature} supported" in result.stdout + result.stderr


needs_swaks_tls = pytest.mark.skipif(
    not swaks_supports("TLS"),
    reason="swaks cannot do TLS here (apt-get install swaks libnet-ssleay-perl libio-socket-ssl-perl)",
)
needs_smtp_source = pytest.mark.skipif(
    shutil.which("smtp-source") is None,
    reason="Postfix's smtp-source is not installed (apt-get install postfix)",
)


# --- SMTP conversations ---------------------------------------------------------------------------------


def connect(sink: SinkProcess, timeout: float = 10.0) -> smtplib.SMTP:
    """An smtplib client that has said EHLO to the sink."""
    client = smtplib.SMTP(*sink.address, timeout=timeout)
    client.ehlo("client.test")
    return client


def close(client: smtplib.SMTP) -> None:
    """QUIT when the server still listens (it closes itself after a 421), then close the socket."""
    with contextlib.suppress(smtplib.SMTPException, OSError):
        client.quit()
    client.close()


@contextlib.contextmanager
def connected(sink: SinkProcess, timeout: float = 10.0) -> Iterator[smtplib.SMTP]:
    client = connect(sink, timeout)
    try:
        yield client
    finally:
        close(client)


def transaction(
    client: smtplib.SMTP,
    recipients: Sequence[str],
    body: bytes = BODY,
    sender: str = SENDER,
    mail_options: Sequence[str] = (),
) -> tuple[int, str]:
    """One MAIL/RCPT.../DATA on an open connection: the reply that decided it, as (code, text).

    The text keeps smtplib's joining of a multi-line reply's lines with "\\n".
    """
    code, msg = client.mail(sender, list(mail_options))
    if code != 250:
        client.rset()
        return code, msg.decode()
    for recipient in recipients:
        code, msg = client.rcpt(recipient)
        if code not in (250, 251):
            client.rset()
            return code, msg.decode()
    code, msg = client.data(body)
    return code, msg.decode()


def send(sink: SinkProcess, recipients: Sequence[str], body: bytes = BODY, **kw: object) -> tuple[int, str]:
    """One transaction on a fresh connection."""
    with connected(sink) as client:
        return transaction(client, recipients, body, **kw)  # type: ignore[arg-type]


def body_of(size: int) -> bytes:
    """A message of exactly `size` bytes (CRLF lines, no leading dots), as it travels between DATA and '.'."""
    out = bytearray(b"Subject: size test\r\n\r\n")
    assert size >= len(out) + 2
    while size - len(out) > 156:
        out += b"x" * 76 + b"\r\n"
    rest = size - len(out)
    for part in (rest,) if rest <= 78 else (rest // 2, rest - rest // 2):
        out += b"y" * (part - 2) + b"\r\n"
    assert len(out) == size
    return bytes(out)


def parse_replies(data: bytes) -> list[tuple[int, list[str]]]:
    """SMTP replies as they came off the wire: (code, [line texts]), a multi-line reply counted once."""
    replies: list[tuple[int, list[str]]] = []
    lines: list[str] = []
    for raw in data.split(b"\r\n")[:-1] if data.endswith(b"\r\n") else data.split(b"\r\n"):
        line = raw.decode("ascii")
        m = re.fullmatch(r"(\d{3})([ -])(.*)", line) or re.fullmatch(r"(\d{3})()()", line)
        assert m, f"not an SMTP reply line: {line!r}"
        lines.append(m[3])
        if m[2] != "-":
            replies.append((int(m[1]), lines))
            lines = []
    assert not lines, f"a multi-line reply never ended: {lines!r}"
    return replies


def read_until_closed(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    total = 0
    while total < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def read_reply(sock: socket.socket) -> bytes:
    """One complete (possibly multi-line) reply from a raw socket."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
        if data.endswith(b"\r\n") and re.match(rb"\d{3} ", data.rsplit(b"\r\n", 2)[-2]):
            return data


def swaks(sink: SinkProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """swaks (installed separately) against the sink; its transcript is on stdout."""
    return swaks_at(sink.target, *args)


def swaks_at(server: str, *args: str) -> subprocess.CompletedProcess[str]:
    """swaks against `server` (host:port), a sink this harness did not start (in a container, say)."""
    return subprocess.run(
        [
            "swaks",
            "--server",
            server,
            "--from",
            SENDER,
            "--helo",
            "client.test",
            "--timeout",
            "10",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )
