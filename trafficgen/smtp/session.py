"""The client side of one SMTP connection: connect, greeting, EHLO, STARTTLS, AUTH, then `send(message)`.

Why not aiosmtplib (docs/performance.md): its send path awaits each command's reply separately and builds
per-message objects, which held a plain sendmail loop to about a fifth of smtp-source's rate. Here the
connection is an asyncio.Protocol that parses replies as bytes arrive, and with PIPELINING (RFC 2920)
MAIL, every RCPT and DATA leave in one write and their replies are read together: two round trips a
message instead of four.

A Session never decides what to do next: the run loop hands it each message (and the one after, which it may
pipeline), and it reports an Outcome and whether the connection is still usable. It is a Transport
(trafficgen.transport).
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
from collections import deque
from time import monotonic
from typing import Any

from trafficgen.messages import Message
from trafficgen.outcome import ACCEPTED, ERROR, PERMFAILED, TEMPFAILED, Outcome
from trafficgen.smtp.replies import ProtocolError, Reply, ReplyParser


class SessionError(Exception):
    """The connection failed: refused, timed out, lost, not SMTP, or TLS/AUTH could not be set up."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


class Refused(Exception):
    """The server answered the greeting or EHLO with a failure (for example 421 at connection N+1)."""

    def __init__(self, reply: Reply):
        super().__init__(f"{reply.code} {reply.one_line()}")
        self.reply = reply


class ClientProtocol(asyncio.Protocol):
    """Bytes in, replies out: a queue of parsed replies and one waiter."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: Any = None
        self.parser = ReplyParser()
        self.replies: deque[Reply] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.failure: SessionError | None = None
        self.closed = False
        self.waiting_since = 0.0
        self.awaiting = "the greeting"  # what the reply being waited for answers, for the words of a timeout
        self.progress: list[str] | None = None  # the opening's steps, while it opens
        self.made_at = 0.0  # when the connection was made: the end of the connect phase, the banner's start

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.made_at = monotonic()

    def data_received(self, data: bytes) -> None:
        try:
            self.replies.extend(self.parser.feed(data, monotonic()))
        except ProtocolError as e:
            self.failure = SessionError("protocol", str(e))
            self.transport.abort()
        self._wake()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()

    def write(self, *parts: bytes | memoryview) -> None:
        """Send, or raise SessionError when the connection is gone (uvloop raises RuntimeError otherwise)."""
        if self.closed or self.transport.is_closing():
            raise self.failure or SessionError("lost", "the server closed the connection")
        if len(parts) == 1:
            self.transport.write(parts[0])
        else:
            self.transport.writelines(parts)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def timed_out(self, now: float, timeout: float) -> None:
        """Called by the run's once-a-second sweep: fail a wait longer than `timeout` (no timer per read)."""
        waiter = self.waiter
        if waiter is not None and not waiter.done() and now - self.waiting_since > timeout:
            waiter.set_exception(SessionError("timeout", f"no reply to {self.awaiting} in {timeout:g} s"))

    async def reply(self) -> Reply:
        while not self.replies:
            if self.failure is not None:
                raise self.failure
            if self.closed:
                raise SessionError("lost", "the server closed the connection")
            self.waiter = self.loop.create_future()
            self.waiting_since = monotonic()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.replies.popleft()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


class Session:
    """One open, greeted SMTP connection that messages can be sent on."""

    holds_connection = True

    def __init__(self, protocol: ClientProtocol, pipelining: bool):
        self.protocol = protocol
        self.pipelining = pipelining
        self.extensions: dict[str, str] = {}
        self.needs_rset = False
        self.rset_sent = False
        self.too_many = False  # a reply of this transaction said 451 4.5.3: reconnect after it
        self.content_sent = False  # this transaction got as far as sending its content
        self._ahead: Message | None = None  # its envelope is on the wire, behind the previous message's content
        self._ahead_sent = 0.0
        self.last_end = 0.0
        self.connect_s = self.banner_s = self.ehlo_s = 0.0

    @property
    def usable(self) -> bool:
        return not self.protocol.closed and self.protocol.failure is None

    @property
    def phases(self) -> tuple[float, float, float]:
        return self.connect_s, self.banner_s, self.ehlo_s

    # --- opening ----------------------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        config: Any,
        tls: ssl.SSLContext | None,
        registry: set[ClientProtocol],
        source: str | None = None,
        progress: list[str] | None = None,
    ) -> Session:
        """Connect (from the local address `source`, when given), read the greeting, EHLO (then STARTTLS and
        EHLO again, AUTH) as the config asks. `progress`, when given, gets what the opening waits for as it goes
        ("the greeting", then "EHLO"...): what a caller that gives up says was never answered.

        Raises SessionError for network and setup failures, Refused for a greeting or EHLO that says no.
        """
        progress = [] if progress is None else progress
        loop = asyncio.get_running_loop()
        started = monotonic()
        local = (source, 0) if source else None
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation that meets a connect
            # just made (the run's end would then wait on a worker that goes on sending).
            async with asyncio.timeout(config.timeout):
                transport, protocol = await loop.create_connection(
                    ClientProtocol, config.host, config.port, local_addr=local
                )
        except TimeoutError:
            raise SessionError(
                "timeout", f"connecting to {config.target} took more than {config.timeout:g} s"
            ) from None
        except ConnectionRefusedError:
            raise SessionError("refused", f"{config.target} does not accept connections") from None
        except OSError as e:
            raise SessionError("connect", f"cannot connect to {config.target}: {e.strerror or e}") from None
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        registry.add(protocol)
        protocol.progress = progress
        progress.append("the greeting")
        session = cls(protocol, config.pipelining)
        # The phases part where the connection was made, not where this coroutine resumed after it (later on a
        # busy machine: the banner's wait would look shorter than the server made it).
        connected = protocol.made_at
        session.connect_s = connected - started
        try:
            banner = await protocol.reply()
            session.banner_s = banner.at - connected
            if banner.code != 220:
                raise Refused(banner)
            await session._greet(config.ehlo)
            if config.starttls and "STARTTLS" in session.extensions:
                await session._starttls(tls, config.ehlo)
            if config.auth_user:
                await session._auth(config.auth_user, config.auth_password)
            protocol.progress = None
        except BaseException:
            transport.abort()
            registry.discard(protocol)
            raise
        return session

    async def _command(self, line: str) -> Reply:
        protocol = self.protocol
        protocol.awaiting = line.split(" ", 1)[0] if not line.startswith(("MAIL", "RCPT")) else line.split(":")[0]
        if protocol.progress is not None:
            protocol.progress.append(protocol.awaiting)
        protocol.write(line.encode("utf-8") + b"\r\n")
        return await protocol.reply()

    async def _greet(self, name: str) -> None:
        sent = monotonic()
        reply = await self._command(f"EHLO {name}")
        if reply.code == 250:
            lines = reply.text.split("\n")[1:]
            self.extensions = {}
            for line in lines:
                keyword, _, params = line.strip().partition(" ")
                self.extensions[keyword.upper()] = params
        else:
            if reply.code == 421:
                raise Refused(reply)
            reply = await self._command(f"HELO {name}")
            if reply.code != 250:
                raise Refused(reply)
            self.extensions = {}
        self.ehlo_s = reply.at - sent
        self.pipelining = self.pipelining and "PIPELINING" in self.extensions

    async def _starttls(self, context: ssl.SSLContext | None, name: str) -> None:
        reply = await self._command("STARTTLS")
        if reply.code != 220:
            raise SessionError("tls", f"STARTTLS refused: {reply.code} {reply.one_line()}")
        protocol = self.protocol
        try:
            transport = await protocol.loop.start_tls(protocol.transport, protocol, context or client_tls_context())
        except (ssl.SSLError, OSError, ConnectionError) as e:
            raise SessionError("tls", f"TLS handshake failed: {e}") from None
        protocol.transport = transport
        await self._greet(name)

    async def _auth(self, user: str, password: str | None) -> None:
        offered = self.extensions.get("AUTH", "").upper().split()
        password = password or ""
        if "PLAIN" in offered:
            reply = await self._command("AUTH PLAIN " + _b64(f"\0{user}\0{password}"))
        elif "LOGIN" in offered:
            reply = await self._command("AUTH LOGIN")
            for answer in (user, password):
                if reply.code != 334:
                    break
                reply = await self._command(_b64(answer))
        else:
            raise SessionError("auth", "the server offers neither AUTH PLAIN nor AUTH LOGIN")
        if reply.code != 235:
            raise SessionError("auth", f"authentication failed: {reply.code} {reply.one_line()}")

    # --- sending ------------------------------------------------------------------------------------------

    async def send(self, message: Message, following: Message | None = None) -> Outcome:
        """One transaction. Never raises for the server's answers; an Outcome of kind ERROR for failures.

        With pipelining, `following` (the next message the run loop will send here, already due) has its MAIL,
        RCPT and DATA written in the same write as this message's content (RFC 2920 3.1 lets message content
        start a group). That halves the writes and reads of a busy connection on both sides.
        """
        count = len(message.recipients)
        self.content_sent = False
        written = 0.0  # when this message's envelope went out, if it went out ahead of it
        if message is self._ahead:
            # Its envelope left with the previous message's content; the server starts on it once it has
            # answered that one.
            written = self._ahead_sent
            started = max(self._ahead_sent, self.last_end)
            self._ahead = None
        else:
            self._ahead = None
            started = monotonic()
            if self.pipelining:
                try:
                    self.protocol.write(b"".join(self._envelope(message)))
                except SessionError as e:
                    return Outcome.error(f"{e.kind}: {e.message}", count, started, monotonic())
        try:
            if self.pipelining:
                outcome = await self._send_pipelined(message, started, following)
            else:
                outcome = await self._send_stepwise(message, started)
        except SessionError as e:
            return Outcome.error(f"{e.kind}: {e.message}", count, started, monotonic())
        if written and not self.content_sent:
            # Refused before its content: its replies may have come in the same read as the previous message's
            # last one. It could start when its envelope was written, so it is timed from there: never less
            # than the round trip it took.
            outcome.started = written
        if self.too_many:
            # 451 4.5.3 to a recipient or the message: this connection is full. The run loop QUITs and
            # reconnects, as KumoMTA's traffic-gen does.
            self.too_many = False
            outcome.close = True
        return outcome

    def _envelope(self, message: Message) -> list[bytes]:
        lines = [b"RSET\r\n"] if self.needs_rset else []
        self.rset_sent = self.needs_rset
        self.needs_rset = False
        lines.append(b"MAIL FROM:<%s>\r\n" % message.sender.encode("utf-8"))
        lines.extend(b"RCPT TO:<%s>\r\n" % r.encode("utf-8") for r in message.recipients)
        lines.append(b"DATA\r\n")
        return lines

    async def _send_pipelined(self, message: Message, started: float, following: Message | None) -> Outcome:
        reply = self.protocol.reply
        if self.rset_sent:
            self.rset_sent = False
            answer = await reply()
            if answer.code == 421:
                return self._closed_by(answer, message, started)
        mail = await reply()
        if mail.code == 421:
            return self._closed_by(mail, message, started)
        rcpts = []
        for _ in message.recipients:
            answer = await reply()
            if answer.code == 421:
                return self._closed_by(answer, message, started)
            self.too_many = self.too_many or answer.too_many_recipients
            rcpts.append(answer)
        data = await reply()
        return await self._after_data(message, started, mail, rcpts, data, following)

    async def _send_stepwise(self, message: Message, started: float) -> Outcome:
        protocol = self.protocol
        if self.needs_rset:
            self.needs_rset = False
            answer = await self._command("RSET")
            if answer.code == 421:
                return self._closed_by(answer, message, started)
        mail = await self._command(f"MAIL FROM:<{message.sender}>")
        self.too_many = self.too_many or mail.too_many_recipients
        if mail.code != 250:
            return self._rejected(mail, message, started, mail_reply=mail, command="MAIL FROM")
        rcpts = []
        for recipient in message.recipients:
            answer = await self._command(f"RCPT TO:<{recipient}>")
            if answer.code == 421:
                return self._closed_by(answer, message, started)
            self.too_many = self.too_many or answer.too_many_recipients
            rcpts.append(answer)
        if not any(r.code // 100 == 2 for r in rcpts):
            self.needs_rset = True
            return self._all_refused(rcpts, message, started, mail)
        protocol.write(b"DATA\r\n")
        data = await protocol.reply()
        return await self._after_data(message, started, mail, rcpts, data, None)

    async def _after_data(
        self,
        message: Message,
        started: float,
        mail: Reply,
        rcpts: list[Reply],
        data: Reply,
        following: Message | None,
    ) -> Outcome:
        protocol = self.protocol
        accepted = [r.code // 100 == 2 for r in rcpts]
        if mail.code // 100 != 2:
            self.needs_rset = True
            if data.code == 354:
                await self._abort_data()
            return self._rejected(mail, message, started, mail_reply=mail, command="MAIL FROM")
        self.too_many = self.too_many or mail.too_many_recipients or data.too_many_recipients
        if data.code != 354:
            self.needs_rset = True  # the server may still hold the MAIL transaction
            if data.code == 421:
                return self._closed_by(data, message, started)
            if not any(accepted):
                return self._all_refused(rcpts, message, started, mail, data.at)
            return self._rejected(data, message, started, mail_reply=mail, rcpts=rcpts, command="DATA")
        if not any(accepted):
            # RFC 2920 3.1: a server may say 354 even though every recipient failed; end the empty message.
            await self._abort_data()
            return self._all_refused(rcpts, message, started, mail, data.at)
        self.content_sent = True
        if following is None:
            protocol.write(*message.content, b".\r\n")
        else:
            # Timed before the write: a process preempted between the two would make the reply seem early.
            self._ahead, self._ahead_sent = following, monotonic()
            protocol.write(*message.content, b".\r\n", *self._envelope(following))
        final = await protocol.reply()
        self.last_end = final.at
        self.too_many = self.too_many or final.too_many_recipients
        if final.code // 100 not in (2, 4, 5):  # not an answer to a message's end at all
            return self._rejected(final, message, started, mail_reply=mail, command="the end of DATA")
        kind = final.kind
        kinds = tuple(kind if ok else r.kind for ok, r in zip(accepted, rcpts, strict=True))
        if final.code == 421:
            protocol.transport.close()
        return Outcome(kind, final.code, final.text, kinds, final.code == 421, started, mail.at, rcpts[-1].at, final.at)

    async def _abort_data(self) -> None:
        self.protocol.write(b".\r\n")
        await self.protocol.reply()

    def _closed_by(self, reply: Reply, message: Message, started: float) -> Outcome:
        """421: the server is closing the connection (RFC 5321 3.8)."""
        self.protocol.transport.close()
        return Outcome.refused(reply.code, reply.text, len(message.recipients), started, reply.at)

    def _rejected(
        self,
        reply: Reply,
        message: Message,
        started: float,
        mail_reply: Reply,
        rcpts: list[Reply] | None = None,
        command: str = "",
    ) -> Outcome:
        """The message refused by `reply` to `command`; a reply that is not a refusal (354 to MAIL FROM, 250 to
        DATA) is an error that says which command got which reply."""
        self.needs_rset = True
        kind = reply.kind if reply.kind != ACCEPTED else ERROR
        text = reply.text
        if kind == ERROR:
            text = f"unexpected reply {reply.code} {reply.one_line()} to {command}".replace("  ", " ")
        if rcpts:
            kinds = tuple(r.kind if r.code // 100 != 2 else kind for r in rcpts)
        else:
            kinds = (kind,) * len(message.recipients)
        return Outcome(kind, reply.code, text, kinds, reply.code == 421, started, mail_reply.at, end=reply.at)

    def _all_refused(
        self, rcpts: list[Reply], message: Message, started: float, mail: Reply, end: float = 0.0
    ) -> Outcome:
        """Every recipient failed: temporary if any of them may be retried, else permanent."""
        self.needs_rset = True
        deciding = next((r for r in rcpts if r.kind == TEMPFAILED), None) or next(
            (r for r in rcpts if r.kind == PERMFAILED), rcpts[0]
        )
        kind = deciding.kind if deciding.kind != ACCEPTED else ERROR
        return Outcome(
            kind,
            deciding.code,
            deciding.text,
            tuple(r.kind for r in rcpts),
            False,
            started,
            mail.at,
            rcpts[-1].at,
            end=end or rcpts[-1].at,
        )

    async def quit(self) -> None:
        """QUIT politely but briefly; the connection is closed either way."""
        protocol = self.protocol
        if self.usable:
            try:
                protocol.write(b"QUIT\r\n")
                async with asyncio.timeout(2.0):
                    await protocol.reply()
            except (SessionError, TimeoutError):
                pass
        protocol.transport.close()


def client_tls_context() -> ssl.SSLContext:
    """STARTTLS as load tests use it: encrypted, certificates not verified (the sink's are self-signed)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
