"""One SMTP server for the tests, built on aiosmtpd (nobody here wrote it): CaptureServer.

It listens on 127.0.0.1 (port 0) in a thread with an event loop of its own and records every connection's raw
client bytes as they arrived (so pipelining is visible) and every message as aiosmtpd understood it. Its answers
come from a CaptureHandler: by default every message is taken (250 queued); a subclass answers otherwise the
aiosmtpd way, implementing the hooks it needs (a relay that loses mail, a server that hangs up after each message,
one that refuses chosen recipients).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from harness.mail import Transaction, transactions

START_TIMEOUT = 10.0


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


class CaptureHandler:
    """aiosmtpd hooks of a CaptureServer: PIPELINING advertised when the server offers it, each message recorded
    and queued. Subclasses override hooks to answer otherwise; `self.server` is the CaptureServer."""

    server: CaptureServer

    async def handle_EHLO(
        self, smtp: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.server.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_DATA(self, smtp: SMTP, session: Session, envelope: Envelope) -> str:
        self.record(smtp, session, envelope)
        return f"250 2.0.0 Ok: queued as C{len(self.server.messages):05d}"

    def record(self, smtp: SMTP, session: Session, envelope: Envelope) -> Received:
        """Keep the message in server.messages."""
        login = session.auth_data.login if isinstance(session.auth_data, LoginPassword) else None
        received = Received(
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
        self.server.messages.append(received)
        return received


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
    narrows them) and demands it, `tls_context` offers STARTTLS (`require_starttls` demands it). `handler`
    answers (a CaptureHandler, or a subclass); `hostname` is the name in its greeting.
    """

    def __init__(
        self,
        handler: CaptureHandler | None = None,
        *,
        hostname: str = "capture.test",
        pipelining: bool = True,
        credentials: tuple[str, str] | None = None,
        mechanisms: Sequence[str] | None = None,
        tls_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
        auth_require_tls: bool | None = None,
    ):
        self.handler = handler or CaptureHandler()
        self.handler.server = self
        self.hostname = hostname
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

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

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
            self.handler,
            hostname=self.hostname,
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
