"""Helpers for the trafficgen tests: the real CLI in a subprocess, and a capture server built on aiosmtpd.

`run_trafficgen()` runs `python -m trafficgen` as a user would and returns what it printed; `run_report()`
adds `--json -` and parses the report. `CaptureServer` is an aiosmtpd SMTP server on 127.0.0.1 (port 0) in a
thread of its own that records every connection's raw client bytes as they arrived (so pipelining is
visible) and every message as aiosmtpd understood it. Nobody here wrote the SMTP side of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT = 120.0
START_TIMEOUT = 10.0
OUTCOMES = ("accepted", "tempfailed", "permfailed", "errors")
COUNTS = ("attempted", *OUTCOMES)
# RFC 5322 3.6.4: msg-id = "<" id-left "@" id-right ">", both dot-atom-text here.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
MESSAGE_ID = re.compile(rf"^<{_ATEXT}(?:\.{_ATEXT})*@{_ATEXT}(?:\.{_ATEXT})*>$")
# chi-square critical values at significance 0.001 (scipy.stats.chi2.ppf(0.999, df)), by degrees of freedom.
CHI2_CRITICAL_0_001 = {1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515, 6: 22.458, 7: 24.322}


# --- the CLI ------------------------------------------------------------------------------------------------


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without TRAFFICGEN_* variables (so none leak into a test), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAFFICGEN_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_trafficgen(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = RUN_TIMEOUT,
    argv0: Sequence[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`python -m trafficgen ARGS` to the end; a hang fails the test after `timeout` seconds."""
    command = [*(argv0 or (sys.executable, "-m", "trafficgen")), *args]
    return subprocess.run(
        command, capture_output=True, text=True, env=clean_env(env), cwd=ROOT, timeout=timeout, check=False
    )


def run_report(
    *args: str, env: dict[str, str] | None = None, expect: int = 0, timeout: float = RUN_TIMEOUT
) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    """A quiet run with `--json -`: the parsed report and the finished process (exit status checked)."""
    done = run_trafficgen("--quiet", "--json", "-", *args, env=env, timeout=timeout)
    assert done.returncode == expect, f"exit {done.returncode}, expected {expect}\nstderr:\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return json.loads(done.stdout), done


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.strip()]


def check_invariants(report: dict[str, Any]) -> None:
    """attempted = accepted + tempfailed + permfailed + errors, in total and for every domain; domains add up."""
    totals = report["totals"]
    assert totals["attempted"] == sum(totals[k] for k in OUTCOMES), totals
    for name, row in report["domains"].items():
        assert row["attempted"] == sum(row[k] for k in OUTCOMES), (name, row)
    for key in COUNTS:
        assert totals[key] == sum(row[key] for row in report["domains"].values()), key


def chi_square(observed: Sequence[int], weights: Sequence[float]) -> float:
    """Pearson's statistic of observed counts against the shares the weights ask for."""
    total, weight = sum(observed), sum(weights)
    statistic = 0.0
    for seen, w in zip(observed, weights, strict=True):
        expected = total * w / weight
        assert expected >= 5, "too few messages for a chi-square test"
        statistic += (seen - expected) ** 2 / expected
    assert math.isfinite(statistic)
    return statistic


def refusing_port() -> socket.socket:
    """A socket bound to a port on 127.0.0.1 but not listening: connecting to it is refused, and no one
    else can take the port while the socket is open. The caller closes it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


# --- the capture server ------------------------------------------------------------------------------------


@dataclass
class Connection:
    """One client connection: the bytes the client sent, in the chunks they arrived in (plaintext after TLS)."""

    number: int
    chunks: list[bytes] = field(default_factory=list)
    tls: bool = False

    @property
    def stream(self) -> bytes:
        return b"".join(self.chunks)

    def grouped_chunks(self) -> int:
        """Chunks holding a whole MAIL, RCPT, DATA group: commands that arrived pipelined (RFC 2920)."""
        return sum(1 for c in self.chunks if b"MAIL FROM:" in c and b"RCPT TO:" in c and b"\r\nDATA\r\n" in c)

    def mixed_chunks(self) -> int:
        """Chunks holding MAIL and RCPT together: impossible without pipelining."""
        return sum(1 for c in self.chunks if b"MAIL FROM:" in c and b"RCPT TO:" in c)


@dataclass
class Transaction:
    """What a client stream held for one message: its commands and its raw (still dot-stuffed) content."""

    commands: list[bytes]
    content: bytes


def transactions(stream: bytes) -> list[Transaction]:
    """Split a client's byte stream into transactions: command lines, then the content after each DATA
    up to the lone dot (the content keeps its final CRLF, as RFC 5321 section 4.1.1 on DATA reads it)."""
    out: list[Transaction] = []
    commands: list[bytes] = []
    pos = 0
    while True:
        end = stream.find(b"\r\n", pos)
        if end < 0:
            break
        line = stream[pos:end]
        pos = end + 2
        commands.append(line)
        if line.upper() != b"DATA":
            continue
        if stream.startswith(b".\r\n", pos):
            content, pos = b"", pos + 3
        else:
            stop = stream.find(b"\r\n.\r\n", pos)
            if stop < 0:
                break
            content, pos = stream[pos : stop + 2], stop + 5
        out.append(Transaction(commands, content))
        commands = []
    return out


@dataclass
class Received:
    """One message as aiosmtpd received it (content with dot-stuffing undone)."""

    connection: int
    helo: str
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool
    auth_login: bytes | None
    peer: str = ""  # the client's address
    at: float = 0.0  # time.monotonic() when its content had arrived


class _Handler:
    def __init__(self, server: CaptureServer):
        self.server = server

    async def handle_EHLO(
        self, smtp: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.server.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_DATA(self, smtp: SMTP, session: Session, envelope: Envelope) -> str:
        login = session.auth_data.login if isinstance(session.auth_data, LoginPassword) else None
        self.server.messages.append(
            Received(
                connection=smtp._capture_number,  # type: ignore[attr-defined]
                helo=session.host_name,
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                content=bytes(envelope.content),  # type: ignore[arg-type]
                tls=session.ssl is not None,
                auth_login=login,
                peer=str(session.peer[0]) if isinstance(session.peer, tuple) else "",
                at=time.monotonic(),
            )
        )
        return f"250 2.0.0 Ok: queued as C{len(self.server.messages):05d}"


class _CaptureSMTP(SMTP):
    """aiosmtpd's SMTP, noting each connection and the raw chunks its client sends."""

    def __init__(self, server: CaptureServer, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._capture_server = server
        self._capture_number = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        starttls = self._original_transport is not None
        super().connection_made(transport)
        if starttls:  # aiosmtpd calls this again with the TLS transport
            self._capture_server.connections[self._capture_number].tls = True
            return
        with self._capture_server.lock:
            self._capture_number = len(self._capture_server.connections)
            self._capture_server.connections.append(Connection(self._capture_number))
        self._capture_server.protocols.add(self)

    def data_received(self, data: bytes) -> None:
        self._capture_server.connections[self._capture_number].chunks.append(bytes(data))
        super().data_received(data)

    def connection_lost(self, error: Exception | None) -> None:
        self._capture_server.protocols.discard(self)
        super().connection_lost(error)


class CaptureServer:
    """An aiosmtpd server on 127.0.0.1:<free port>, in its own thread, recording what arrives.

    Options mirror aiosmtpd's: `pipelining` adds PIPELINING to the EHLO answer (aiosmtpd handles pipelined
    commands but does not advertise it), `credentials` turns on AUTH (PLAIN and LOGIN unless `mechanisms`
    narrows them) and demands it, `tls_context` offers STARTTLS (`require_starttls` demands it).
    """

    def __init__(
        self,
        *,
        pipelining: bool = True,
        credentials: tuple[str, str] | None = None,
        mechanisms: Sequence[str] | None = None,
        tls_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
        auth_require_tls: bool | None = None,
    ):
        self.pipelining = pipelining
        self.credentials = credentials
        self.mechanisms = mechanisms
        self.tls_context = tls_context
        self.require_starttls = require_starttls
        # aiosmtpd offers AUTH (failing every login) unless told it needs TLS: without credentials, offer none.
        self.auth_require_tls = credentials is None if auth_require_tls is None else auth_require_tls
        self.connections: list[Connection] = []
        self.messages: list[Received] = []
        self.auth_attempts: list[tuple[str, bytes, bool]] = []  # (mechanism, login, accepted)
        self.protocols: set[_CaptureSMTP] = set()
        self.lock = threading.Lock()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="capture-server", daemon=True)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    # --- aiosmtpd's side ---

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert self.credentials is not None
        user, password = (c.encode() for c in self.credentials)
        ok = isinstance(data, LoginPassword) and data.login == user and data.password == password
        self.auth_attempts.append((mechanism, getattr(data, "login", b""), ok))
        return AuthResult(success=ok, handled=False, auth_data=data)

    def _factory(self) -> _CaptureSMTP:
        assert self._loop is not None
        excluded = None
        if self.mechanisms is not None:
            excluded = [m for m in ("PLAIN", "LOGIN") if m not in self.mechanisms]
        return _CaptureSMTP(
            self,
            _Handler(self),
            hostname="capture.test",
            ident="capture",
            loop=self._loop,
            tls_context=self.tls_context,
            require_starttls=self.require_starttls,
            auth_required=self.credentials is not None,
            auth_require_tls=self.auth_require_tls,
            authenticator=self._authenticate if self.credentials is not None else None,
            auth_exclude_mechanism=excluded,
        )

    def _serve(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            server = loop.run_until_complete(loop.create_server(self._factory, "127.0.0.1", 0))
            self.port = server.sockets[0].getsockname()[1]
            self._started.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown(server))
        except BaseException as e:  # reported to the test by start()
            self._error = e
            self._started.set()
        finally:
            loop.close()

    async def _shutdown(self, server: asyncio.Server) -> None:
        server.close()
        for protocol in list(self.protocols):
            if protocol.transport is not None:
                protocol.transport.close()
        await server.wait_closed()
        current = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.get_running_loop().shutdown_asyncgens()

    # --- the test's side ---

    def start(self) -> CaptureServer:
        self._thread.start()
        if not self._started.wait(START_TIMEOUT) or self._error is not None or not self.port:
            raise RuntimeError(f"the capture server did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(START_TIMEOUT)
        assert not self._thread.is_alive(), "the capture server did not stop"
        if self._error is not None:
            raise self._error

    def __enter__(self) -> CaptureServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def all_transactions(self) -> Iterator[Transaction]:
        for connection in self.connections:
            yield from transactions(connection.stream)


def crlf(data: bytes) -> bytes:
    """Every line ending made CRLF, and a final one added: what --body-file promises."""
    data = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def stuffed(data: bytes) -> bytes:
    """RFC 5321 4.5.2 written line by line (independently of trafficgen's own code)."""
    lines = data.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)


def split_message(content: bytes) -> tuple[list[bytes], bytes]:
    """(header lines, body) of CRLF message content."""
    head, _, body = content.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body


class GreetOnly:
    """A TCP server on 127.0.0.1 that accepts connections, sends `greeting` (or nothing) and then stays silent:
    a dead server, or a service that is not SMTP. `with GreetOnly(b"...") as target:` gives HOST:PORT."""

    def __init__(self, greeting: bytes | None = None):
        self.greeting = greeting
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.clients: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.clients.append(client)
            if self.greeting:
                client.sendall(self.greeting)

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)
        for client in self.clients:
            client.close()
