"""The sink's SMTP engine: an asyncio.BufferedProtocol that reads the wire in bulk and answers pipelined
commands in one write.

Why not aiosmtpd on this path (measured in docs/performance.md): aiosmtpd reads DATA line by line through
a StreamReader and awaits a drain after every reply. Here each connection is one coroutine over a byte
buffer: commands are split from the buffer without copies beyond the line itself, the end of DATA is found
with one bytes.find per packet, a message body is never kept (only its first 8 KiB, for the trace header),
and replies are gathered and written once each time the input runs dry (or every OUT_BATCH replies). A client
that does not read its replies is answered no further, and not read either, while WRITE_HIGH of them wait, so
what any client can make the sink hold is bounded. aiosmtpd stays as the reference engine (smartsink.handler);
tests drive the same conversations through both and compare the answers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import socket
import ssl
import struct
from typing import Any

from mailload import contract
from smartsink import metrics
from smartsink.replies import render_text
from smartsink.session import Action, Session, SinkContext

log = logging.getLogger("smartsink.smtp")

HEAD_MAX = contract.HEAD_BYTES  # bytes of a message kept to find its trace header, or a DSN's
# What one client can make the sink hold, whatever it sends (issue 17): its unparsed input, at most BUFFER_HIGH
# and one read of READ_SIZE, and the replies it has not taken, at most WRITE_HIGH and OUT_BATCH replies.
READ_SIZE = 64 * 1024  # bytes read from a client at a time, into one buffer all connections share
BUFFER_HIGH = 64 * 1024  # stop reading from a client that sends faster than we parse
WRITE_HIGH = 64 * 1024  # stop answering (and reading) a client that does not take our replies
OUT_BATCH = 64  # replies gathered before they are handed to the transport, however much input is pipelined
BODY_DISCARD = 64 * 1024  # a body's bytes beyond this are counted and dropped as they arrive
LINE_LIMITS = {b"MAIL": 1024, b"AUTH": 12288}
LINE_LIMIT = 512  # RFC 5321 4.5.3.1.4, including CRLF
COMMAND_LINE_MAX = max(LINE_LIMITS.values())
MAX_ERRORS = 20  # like Postfix's smtpd_hard_error_limit
SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h (and IP6T_SO_ORIGINAL_DST)


class _Timeout(Exception):
    pass


_TOO_LONG = object()
_R = render_text
R_OK = _R(250, "2.0.0 Ok")
R_MAIL_OK = _R(250, "2.1.0 Ok")
R_BYE = _R(221, "2.0.0 Bye")
R_TIMEOUT = _R(421, "4.4.2 Error: timeout exceeded")
R_SHUTDOWN = _R(421, "4.3.2 Service shutting down, closing connection")
R_TOO_MANY_ERRORS = _R(421, "4.7.0 Too many errors, closing connection")
R_INTERNAL = _R(421, "4.3.0 Internal error, closing connection")
R_UNKNOWN = _R(500, "5.5.2 Error: command not recognized")
R_LINE_TOO_LONG = _R(500, "5.5.2 Error: line too long")
R_NEED_HELO = _R(503, "5.5.1 Error: send HELO first")
R_NESTED_MAIL = _R(503, "5.5.1 Error: nested MAIL command")
R_NEED_MAIL = _R(503, "5.5.1 Error: need MAIL command")
R_NEED_RCPT = _R(503, "5.5.1 Error: need RCPT command")
R_NO_VALID_RCPT = _R(554, "5.5.1 Error: no valid recipients")
R_MAIL_SYNTAX = _R(501, "5.5.4 Syntax: MAIL FROM:<address>")
R_RCPT_SYNTAX = _R(501, "5.5.4 Syntax: RCPT TO:<address>")
R_BAD_RCPT = _R(501, "5.1.3 Bad recipient address syntax")
R_PARAM_SYNTAX = _R(501, "5.5.4 Syntax error in parameters")
R_PARAM_UNKNOWN = _R(555, "5.5.4 Unsupported parameter")
R_SIZE_EXCEEDED = _R(552, "5.3.4 Message size exceeds fixed maximum message size")
R_TOO_MANY_RCPTS = _R(452, "4.5.3 Error: too many recipients")
R_DATA_SYNTAX = _R(501, "5.5.4 Syntax: DATA")
R_ARG_SYNTAX = _R(501, "5.5.4 Syntax error in arguments")
R_VRFY = _R(252, "2.0.0 Cannot VRFY user, but will accept message and attempt delivery")
R_VRFY_SYNTAX = _R(501, "5.5.4 Syntax: VRFY <address>")
R_EXPN = _R(502, "5.5.1 Error: EXPN not implemented")
R_HELP = _R(214, "2.0.0 Supported commands: AUTH DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET STARTTLS VRFY")
R_TLS_READY = _R(220, "2.0.0 Ready to start TLS")
R_TLS_UNAVAILABLE = _R(454, "4.7.0 TLS not available")
R_TLS_ACTIVE = _R(503, "5.5.1 Error: TLS already active")
R_AUTH_DISABLED = _R(502, "5.5.1 Error: authentication not enabled")
R_AUTH_DONE = _R(503, "5.5.1 Error: already authenticated")
R_AUTH_IN_MAIL = _R(503, "5.5.1 Error: AUTH not allowed during a mail transaction")
R_AUTH_MECH = _R(504, "5.5.4 Unrecognized authentication type")
R_AUTH_OK = _R(235, "2.7.0 Authentication successful")
R_AUTH_BAD = _R(501, "5.5.2 Cannot decode response")
R_AUTH_CANCELLED = _R(501, "5.7.0 Authentication cancelled")
R_AUTH_REQUIRED = _R(530, "5.7.0 Authentication required")
R_AUTH_PLAIN = b"334 \r\n"
R_AUTH_USER = b"334 VXNlcm5hbWU6\r\n"  # "Username:"
R_AUTH_PASS = b"334 UGFzc3dvcmQ6\r\n"  # "Password:"


def ehlo_reply(ctx: SinkContext, tls_offered: bool) -> bytes:
    lines = [ctx.config.hostname, "PIPELINING", f"SIZE {ctx.config.max_message_size}", "8BITMIME", "SMTPUTF8"]
    lines.append("ENHANCEDSTATUSCODES")
    if tls_offered:
        lines.append("STARTTLS")
    if ctx.config.auth != "off":
        lines.append("AUTH PLAIN LOGIN")
    lines.append("HELP")
    return "".join(f"250{'-' if i < len(lines) - 1 else ' '}{line}\r\n" for i, line in enumerate(lines)).encode()


def original_destination(sock: socket.socket | None) -> tuple[str, int] | None:
    """Where the client meant to connect, when netfilter rewrote it (an iptables DNAT/REDIRECT)."""
    if sock is None:
        return None
    try:
        if sock.family == socket.AF_INET:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port = struct.unpack_from("!H", raw, 2)[0]
            return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
            port = struct.unpack_from("!H", raw, 2)[0]
            return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    except OSError:
        return None  # no conntrack entry: not a NATed connection
    return None


def _parse_path(arg: bytes, keyword: bytes) -> tuple[str, list[bytes]] | None:
    """("address", [params]) from b'FROM:<a@b> SIZE=10', or None when it is not that shape."""
    if arg[: len(keyword)].upper() != keyword:
        return None
    rest = arg[len(keyword) :].lstrip()
    if rest.startswith(b"<"):
        end = rest.find(b">")
        if end < 0:
            return None
        address, params = rest[1:end], rest[end + 1 :].split()
    else:
        parts = rest.split()
        if not parts:
            return None
        address, params = parts[0], parts[1:]
    if b"<" in address or b">" in address or b" " in address:
        return None
    # RFC 5321 4.1.2: a source route (@a,@b:user@host) is accepted and ignored.
    if address.startswith(b"@") and b":" in address:
        address = address.split(b":", 1)[1]
    return address.decode("utf-8", "replace"), params


class SMTPProtocol(asyncio.BufferedProtocol):
    """One SMTP connection of the sink."""

    def __init__(self, ctx: SinkContext, server: SMTPServer):
        self.ctx = ctx
        self.server = server
        self.read_buffer = server.read_buffer
        self.loop = asyncio.get_running_loop()
        self.transport: Any = None
        self.buf = bytearray()
        self.pos = 0
        self.out: list[bytes] = []
        self.eof = False
        self.waiter: asyncio.Future[None] | None = None
        self.reading_paused = False
        self.writing_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.last_active = self.loop.time()
        self.paused_at = 0.0
        self.task: asyncio.Task[None] | None = None
        self.tls_active = False
        self.closing = False

    # --- asyncio.Protocol -------------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH)
        self.server.connections.add(self)
        self.task = self.loop.create_task(self._run())

    def get_buffer(self, sizehint: int) -> memoryview:
        # A buffer of our own size, not the loop's (uvloop reads 250 KB at a time): what one read may add to a
        # connection's input is READ_SIZE. Shared: buffer_updated() copies it out before the next read.
        return self.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.buf += self.read_buffer[:nbytes]
        self.last_active = self.loop.time()
        if len(self.buf) - self.pos > BUFFER_HIGH and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.closing = True
        self.server.connections.discard(self)
        self._wake()
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.paused_at = self.loop.time()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def timed_out(self, now: float, timeout: float) -> bool:
        """Called by the server's sweep: fail the wait of a connection idle for longer than `timeout`."""
        waiter = self.waiter
        if waiter is not None and not waiter.done() and now - self.last_active > timeout:
            waiter.set_exception(_Timeout())
            return True
        drain = self.drain_waiter
        if drain is not None and not drain.done() and now - self.paused_at > timeout:
            # A client that stops reading our replies: nothing more can be said to it.
            self.closing = True
            self.transport.abort()
            drain.set_exception(_Timeout())
            return True
        return False

    def shutdown(self) -> None:
        """The sink is stopping: say so and close."""
        if not self.closing:
            self.closing = True
            self.out.append(R_SHUTDOWN)
            self._flush()
            self.transport.close()
        if self.task is not None:
            self.task.cancel()

    # --- buffered I/O -----------------------------------------------------------------------------------

    def _flush(self) -> None:
        if self.out:
            data = self.out[0] if len(self.out) == 1 else b"".join(self.out)
            self.out.clear()
            if not self.transport.is_closing():
                self.transport.write(data)

    async def _drain(self) -> None:
        """Send what is pending; while the client does not take it (the transport is above WRITE_HIGH), read
        nothing more from it and wait. The sweep cuts a client that stays so for --timeout; a lost connection
        ends the wait at once."""
        self._flush()
        if not self.writing_paused or self.closing:
            return
        paused_here = not self.reading_paused
        if paused_here:
            self.reading_paused = True
            self.transport.pause_reading()
        while self.writing_paused and not self.closing:
            self.drain_waiter = self.loop.create_future()
            await self.drain_waiter
        if paused_here and not self.closing:
            self.reading_paused = False
            self.transport.resume_reading()

    async def _wait(self) -> None:
        """Send what is pending, then wait for more input (or the idle timeout); at once when the peer is gone."""
        await self._drain()
        if self.closing:
            return  # connection_lost came while we waited for the drain: no input will ever come
        if self.pos:
            del self.buf[: self.pos]
            self.pos = 0
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()
        if self.eof:
            return
        self.waiter = self.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    async def _readline(self, limit: int = LINE_LIMIT) -> bytes | object | None:
        """The next line without its CRLF; _TOO_LONG for an over-long one (read and dropped); None at EOF."""
        discarding = False
        while True:
            end = self.buf.find(b"\n", self.pos)
            if end >= 0:
                if len(self.out) >= OUT_BATCH:
                    # A long pipeline: answer what was asked so far before parsing more (the drain keeps the
                    # buffer's offsets: only _wait and _read_body move them).
                    await self._drain()
                    if self.closing:
                        return None
                start, self.pos = self.pos, end + 1
                if discarding or end + 1 - start > limit:
                    return _TOO_LONG
                line = bytes(self.buf[start:end])
                return line[:-1] if line.endswith(b"\r") else line
            if self.eof:
                return None
            if len(self.buf) - self.pos > max(limit, max(LINE_LIMITS.values())):
                discarding = True  # keep memory bounded: drop what we have, keep reading to the newline
                del self.buf[:]
                self.pos = 0
            await self._wait()
            if self.closing:
                return None

    async def _read_body(self) -> tuple[int, bytes] | None:
        """(size, first bytes) of a message up to CRLF.CRLF, not keeping the rest; None at EOF."""
        dropped = 0
        head = b""
        checked = 0  # bytes after self.pos already searched (offsets move when _wait() compacts the buffer)
        while True:
            buf, start = self.buf, self.pos
            if dropped == 0 and buf[start : start + 3] == b".\r\n":
                self.pos = start + 3
                return 0, b""
            found = buf.find(b"\r\n.\r\n", start + checked)
            if found >= 0:
                if not head:
                    head = bytes(buf[start : min(found + 2, start + HEAD_MAX)])
                self.pos = found + 5
                return dropped + found + 2 - start, head
            if self.eof:
                return None
            available = len(buf) - start
            if not head and available >= HEAD_MAX:
                head = bytes(buf[start : start + HEAD_MAX])
            if available > BODY_DISCARD and head:
                drop = available - 4  # keep the tail: the terminator may straddle two packets
                dropped += drop
                del buf[: start + drop]
                self.pos = start = 0
            checked = max(0, len(buf) - start - 4)
            await self._wait()
            if self.closing:
                return None

    def _send(self, action: Action) -> bool:
        """Queue an action's reply; close when it says so. False when the connection is done."""
        if action.reply is not None:
            self.out.append(action.reply)
        if action.close:
            self._flush()
            self.closing = True
            if action.reply is None:
                self.transport.abort()  # cut without a reply: no FIN-after-flush politeness
            else:
                self.transport.close()
            return False
        return True

    # --- the conversation -------------------------------------------------------------------------------

    async def _run(self) -> None:
        peer = self.transport.get_extra_info("peername")
        client = peer[0] if isinstance(peer, tuple) else "unix"
        self._check_redirect(client)
        session = Session(self.ctx, client)
        try:
            if self._send(await session.greet()):
                await self._conversation(session)
        except _Timeout:
            self.out.append(R_TIMEOUT)
        except (asyncio.CancelledError, ConnectionError):
            pass
        except Exception:  # a sink never dies on bad input: log, answer, close this one connection
            log.exception("error in SMTP session with %s", client)
            self.out.append(R_INTERNAL)
        finally:
            session.closed()
            if not self.transport.is_closing():
                self._flush()
                self.transport.close()

    def _check_redirect(self, client: str) -> None:
        original = original_destination(self.transport.get_extra_info("socket"))
        if original is None:
            return
        local = self.transport.get_extra_info("sockname")
        if isinstance(local, tuple) and (original[0], original[1]) != (local[0], local[1]):
            metrics.REDIRECTED.inc()
            log.info("redirected connection from %s: meant for %s:%d", client, original[0], original[1])

    async def _conversation(self, session: Session) -> None:
        ctx = self.ctx
        config = ctx.config
        helo = False
        authenticated = config.auth != "required"
        auth_done = False
        in_mail = False
        recipients = tried = 0
        errors = 0
        while not self.closing:
            line = await self._readline(COMMAND_LINE_MAX)  # each verb's own limit is checked below
            if line is None:
                return
            if line is _TOO_LONG:
                self.out.append(R_LINE_TOO_LONG)
                errors += 1
                if errors >= MAX_ERRORS:
                    self._send(Action(R_TOO_MANY_ERRORS, True))
                    return
                continue
            assert isinstance(line, bytes)
            verb = line[:4].upper()
            arg = line[5:]
            if len(line) > 4 and line[4:5] != b" ":
                # Every verb has four letters but STARTTLS (RFC 3207).
                word, _, arg = line.partition(b" ")
                verb = b"STARTTLS" if word.upper() == b"STARTTLS" else b""
            if len(line) > LINE_LIMITS.get(verb, LINE_LIMIT) - 2:
                self.out.append(R_LINE_TOO_LONG)
                continue

            if verb == b"MAIL":
                if not helo:
                    reply = R_NEED_HELO
                elif not authenticated:
                    reply = R_AUTH_REQUIRED
                elif in_mail:
                    reply = R_NESTED_MAIL
                else:
                    reply = self._mail(session, arg)
                    in_mail = reply is R_MAIL_OK
                    recipients = tried = 0
                self.out.append(reply)
            elif verb == b"RCPT":
                if not in_mail:
                    self.out.append(R_NEED_MAIL)
                    continue
                path = _parse_path(arg, b"TO:")
                if path is None:
                    self.out.append(R_RCPT_SYNTAX)
                elif "@" not in path[0] or path[0].startswith("@") or path[0].endswith("@"):
                    self.out.append(R_BAD_RCPT)
                elif recipients >= config.max_recipients:
                    self.out.append(R_TOO_MANY_RCPTS)
                else:
                    tried += 1
                    action = await session.rcpt(path[0])
                    if not self._send(action):
                        return
                    if action.reply is ctx.ok_rcpt:
                        recipients += 1
            elif verb == b"DATA":
                if arg:
                    self.out.append(R_DATA_SYNTAX)
                elif not in_mail:
                    self.out.append(R_NEED_MAIL)
                elif not session.recipients:
                    # RFC 2920 3.1: when every RCPT of a pipelined group failed, DATA gets 554.
                    self.out.append(R_NO_VALID_RCPT if tried else R_NEED_RCPT)
                else:
                    if not await self._data(session):
                        return
                    in_mail = False
            elif verb == b"RSET":
                session.reset()
                in_mail = False
                self.out.append(R_OK)
            elif verb == b"EHLO" or verb == b"HELO":
                if not arg.strip():
                    self.out.append(_R(501, f"5.5.4 Syntax: {verb.decode()} hostname"))
                    continue
                session.reset()
                helo, in_mail = True, False
                offer_tls = self.server.tls_context is not None and not self.tls_active
                self.out.append(ehlo_reply(ctx, offer_tls) if verb == b"EHLO" else _R(250, config.hostname))
            elif verb == b"NOOP":
                self.out.append(R_OK)
            elif verb == b"QUIT":
                self._send(Action(R_BYE, True))
                return
            elif verb == b"STARTTLS":
                if not await self._starttls(arg):
                    continue
                helo, in_mail = False, False
                session.reset()
            elif verb == b"AUTH":
                if config.auth == "off":
                    self.out.append(R_AUTH_DISABLED)
                elif auth_done:
                    self.out.append(R_AUTH_DONE)
                elif in_mail:
                    self.out.append(R_AUTH_IN_MAIL)
                else:
                    result = await self._auth(arg)
                    if result is None:
                        return
                    auth_done = authenticated = result or authenticated
            elif verb == b"VRFY":
                self.out.append(R_VRFY if arg.strip() else R_VRFY_SYNTAX)
            elif verb == b"EXPN":
                self.out.append(R_EXPN)
            elif verb == b"HELP":
                self.out.append(R_HELP)
            else:
                errors += 1
                if errors >= MAX_ERRORS:
                    self._send(Action(R_TOO_MANY_ERRORS, True))
                    return
                self.out.append(R_UNKNOWN)

    def _mail(self, session: Session, arg: bytes) -> bytes:
        path = _parse_path(arg, b"FROM:")
        if path is None:
            return R_MAIL_SYNTAX
        sender, params = path
        for param in params:
            key, _, value = param.partition(b"=")
            key = key.upper()
            if key == b"SIZE":
                if not value.isdigit() or len(value) > 20:
                    return R_PARAM_SYNTAX
                if int(value) > self.ctx.config.max_message_size:
                    return R_SIZE_EXCEEDED
            elif key == b"BODY":
                if value.upper() not in (b"7BIT", b"8BITMIME"):
                    return R_PARAM_SYNTAX
            elif key not in (b"SMTPUTF8", b"AUTH", b"RET", b"ENVID"):
                return R_PARAM_UNKNOWN
        session.mail(sender)
        return R_MAIL_OK

    async def _data(self, session: Session) -> bool:
        """DATA: 354, the body, the policy's answer. False when the connection is done."""
        drop = session.data()
        if drop is not None:
            self._send(drop)
            return False
        self.out.append(self.ctx.ok_data)
        body = await self._read_body()
        if body is None:
            return False
        size, head = body
        self._flush()  # earlier pipelined replies go out before any latency the policy adds
        too_big = size > self.ctx.config.max_message_size
        action = await session.data_end(size, head, too_big)
        return self._send(action)

    async def _starttls(self, arg: bytes) -> bool:
        """STARTTLS; True when the connection is now encrypted."""
        context: ssl.SSLContext | None = self.server.tls_context
        if arg.strip():
            self.out.append(R_ARG_SYNTAX)
            return False
        if context is None:
            self.out.append(R_TLS_UNAVAILABLE)
            return False
        if self.tls_active:
            self.out.append(R_TLS_ACTIVE)
            return False
        self.out.append(R_TLS_READY)
        self._flush()
        # RFC 3207 6: anything the client pipelined after STARTTLS must be discarded.
        del self.buf[:]
        self.pos = 0
        try:
            transport = await self.loop.start_tls(self.transport, self, context, server_side=True)
        except (OSError, ssl.SSLError, ConnectionError) as e:
            log.info("TLS handshake failed: %s", e)
            self.closing = True
            return False
        if transport is None:
            self.closing = True
            return False
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH)
        self.tls_active = True
        return True

    async def _auth(self, arg: bytes) -> bool | None:
        """AUTH PLAIN or LOGIN with any credentials; True when authenticated, None when the client left."""
        mechanism, _, initial = arg.strip().partition(b" ")
        mechanism = mechanism.upper()
        if mechanism == b"PLAIN":
            response = initial.strip()
            if not response:
                self.out.append(R_AUTH_PLAIN)
                line = await self._readline(LINE_LIMITS[b"AUTH"])
                if line is None:
                    return None
                response = line if isinstance(line, bytes) else b"!"
            if response == b"*":
                self.out.append(R_AUTH_CANCELLED)
                return False
            decoded = _b64(response)
            if decoded is None or decoded.count(b"\x00") != 2:
                self.out.append(R_AUTH_BAD)
                return False
        elif mechanism == b"LOGIN":
            answers = [initial.strip()] if initial.strip() else []
            prompts = [R_AUTH_USER, R_AUTH_PASS][len(answers) :]
            for prompt in prompts:
                self.out.append(prompt)
                line = await self._readline(LINE_LIMITS[b"AUTH"])
                if line is None:
                    return None
                answers.append(line if isinstance(line, bytes) else b"!")
            if b"*" in answers:
                self.out.append(R_AUTH_CANCELLED)
                return False
            if any(_b64(a) is None for a in answers):
                self.out.append(R_AUTH_BAD)
                return False
        else:
            self.out.append(R_AUTH_MECH)
            return False
        self.out.append(R_AUTH_OK)
        return True


def _b64(data: bytes) -> bytes | None:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


class SMTPServer:
    """The connections of one listener, their idle sweep, and the TLS context they may upgrade with."""

    def __init__(self, ctx: SinkContext, tls_context: ssl.SSLContext | None):
        self.ctx = ctx
        self.tls_context = tls_context
        self.connections: set[SMTPProtocol] = set()
        self.read_buffer = memoryview(bytearray(READ_SIZE))
        self._sweeper: asyncio.Task[None] | None = None

    def protocol(self) -> SMTPProtocol:
        return SMTPProtocol(self.ctx, self)

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        """Once a second, time out connections idle for longer than the timeout (no timer per read)."""
        loop = asyncio.get_running_loop()
        timeout = self.ctx.config.timeout
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            now = loop.time()
            for protocol in list(self.connections):
                protocol.timed_out(now, timeout)

    def shutdown(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for protocol in list(self.connections):
            protocol.shutdown()
