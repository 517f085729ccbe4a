"""Helpers for the sink tests: stdlib SMTP conversations, wire-reply parsing, /metrics lookups, processes.

Nothing here fakes the sink: every helper talks to a real smartsink over a real socket, or reads /proc.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import smtplib
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT, SinkProcess, start_sink

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


# --- /metrics -------------------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Metrics:
    """One scrape of /metrics."""

    samples: tuple[tuple[str, frozenset[tuple[str, str]], float], ...]
    text: str

    @classmethod
    def scrape(cls, sink: SinkProcess) -> Metrics:
        status, body = sink.get("/metrics")
        assert status == 200, body
        samples = []
        for line in body.splitlines():
            if line and not line.startswith("#"):
                m = _SAMPLE.match(line)
                assert m, f"not a Prometheus sample: {line!r}"
                labels = frozenset(_LABEL.findall(m["labels"] or ""))
                samples.append((m["name"], labels, float(m["value"])))
        return cls(tuple(samples), body)

    def value(self, name: str, **labels: str) -> float:
        """The sample with exactly these labels; 0 when the series does not exist (yet)."""
        wanted = frozenset(labels.items())
        found = [v for n, ls, v in self.samples if n == name and ls == wanted]
        assert len(found) <= 1, f"{name}{labels} appears {len(found)} times"
        return found[0] if found else 0.0

    def label_values(self, name: str, label: str) -> set[str]:
        return {dict(ls)[label] for n, ls, _ in self.samples if n == name and label in dict(ls)}

    def messages(self) -> dict[tuple[str, str], float]:
        """smartsink_messages_total as {(domain, outcome): count}."""
        out = {}
        for n, ls, v in self.samples:
            if n == "smartsink_messages_total":
                d = dict(ls)
                out[(d["domain"], d["outcome"])] = v
        return out


def delta(after: dict[tuple[str, str], float], before: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    """The series that changed between two scrapes, with how much."""
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


# --- statistics -----------------------------------------------------------------------------------------


def binomial_bounds(n: int, p: float, sigmas: float) -> tuple[float, float]:
    """The range n*p +- sigmas standard deviations of a Binomial(n, p) count."""
    mean = n * p
    sd = math.sqrt(n * p * (1 - p))
    return mean - sigmas * sd, mean + sigmas * sd


def assert_binomial(count: int, n: int, p: float, sigmas: float, what: str) -> None:
    low, high = binomial_bounds(n, p, sigmas)
    assert low <= count <= high, f"{what}: {count} of {n}, expected {n * p:g} +- {sigmas} sd ({low:.1f}..{high:.1f})"


# --- processes ------------------------------------------------------------------------------------------


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = CLI_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """`smartsink ARGS` to completion, as a user runs it (without the test run's SMARTSINK_* variables)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SMARTSINK_")}
    return subprocess.run(
        [sys.executable, "-m", "smartsink", *args],
        capture_output=True,
        text=True,
        env={**base, "PYTHONUNBUFFERED": "1", **(env or {})},
        cwd=cwd or ROOT,
        timeout=timeout,
    )


def start_sink_from_env(env: dict[str, str], *args: str, cwd: Path | None = None) -> SinkProcess:
    """Start smartsink configured by environment variables only (no --listen/--http added)."""
    return start_sink(*args, env=env, cwd=cwd, free_ports=False)


def children(pid: int) -> list[int]:
    """Child processes of `pid`: /proc/<pid>/task/*/children, else a scan of every /proc/<n>/stat's parent."""
    tasks = list(Path(f"/proc/{pid}/task").glob("*/children"))
    if tasks:
        found: list[int] = []
        for task in tasks:
            with contextlib.suppress(OSError):
                found += [int(c) for c in task.read_text().split()]
        return found
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                kids.append(int(stat.parent.name))
    return kids


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def worker_pids(supervisor: int) -> set[int]:
    """The supervisor's worker processes (multiprocessing 'spawn' children, not its resource tracker)."""
    return {pid for pid in children(supervisor) if b"spawn_main" in cmdline(pid)}


def gone(pid: int) -> bool:
    """The process no longer runs (absent, or a zombie waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def rss_mb(pid: int) -> float:
    """Resident memory of one process (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (a supervisor and its workers), in MiB."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, AssertionError):
            total += rss_mb(current)
            todo += children(current)
    return total


def tcp_queues() -> dict[tuple[int, int], tuple[int, int]]:
    """Every IPv4 TCP socket on 127.0.0.1 as {(local port, remote port): (send queue, receive queue)} in bytes,
    from /proc/net/tcp: bytes the socket's owner wrote that the peer has not taken, and bytes it has not read."""
    queues = {}
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        local, remote, (tx, _, rx) = fields[1], fields[2], fields[4].partition(":")
        if local.startswith("0100007F:") and remote.startswith("0100007F:"):
            queues[(int(local[9:], 16), int(remote[9:], 16))] = (int(tx, 16), int(rx, 16))
    return queues


def listening(address: tuple[str, int]) -> bool:
    """Something accepts TCP connections at this address."""
    with contextlib.suppress(OSError), socket.create_connection(address, timeout=2):
        return True
    return False


def listen_sockets(port: int) -> int:
    """How many sockets listen on 127.0.0.1:`port` (or the wildcard), from /proc/net/tcp."""
    count = 0
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = row.split()[1], row.split()[3]
        address, _, hex_port = local.partition(":")
        if int(hex_port, 16) == port and state == "0A" and address in ("0100007F", "00000000"):
            count += 1
    return count


def busy_port() -> tuple[socket.socket, int]:
    """A socket listening on a free 127.0.0.1 port (the caller closes it), so the port is in use."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock, sock.getsockname()[1]


def one_line(stderr: str) -> str:
    """The only line of stderr; fails with all of it otherwise."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    assert "Traceback" not in stderr
    return lines[0]


def swaks(sink: SinkProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """swaks (installed separately) against the sink; its transcript is on stdout."""
    return subprocess.run(
        [
            "swaks",
            "--server",
            sink.target,
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
