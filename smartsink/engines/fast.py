"""The sink's fast SMTP engine: an asyncio.BufferedProtocol that reads the wire in bulk and answers pipelined
commands in one write.

Why not aiosmtpd on this path (measured in docs/performance.md): aiosmtpd reads DATA line by line through
a StreamReader and awaits a drain after every reply. Here each connection is one coroutine over a byte
buffer: commands are split from the buffer without copies beyond the line itself, the end of DATA is found
with one bytes.find per packet, a message body is never kept (only its first 16 KiB, for the trace header; a DSN
is read to its returned headers as it streams by), and replies are gathered and written once each time the input
runs dry (or every OUT_BATCH replies). A client that does not read its replies is answered no further, and not
read either, while WRITE_HIGH of them wait, so what any client can make the sink hold is bounded. aiosmtpd stays
as the reference engine (smartsink.engines.reference); tests drive the same conversations through both
and compare the answers.

The coroutine runs in no task: the protocol drives it (FastConnection.step). When it waits for input it yields to
the protocol, which resumes it from buffer_updated, so a command whose answer needs no wait is answered from the
callback that read it: no future, no task step, no turn of the loop between them (smtp-source waits for each reply:
four of them a message). What does need a wait (a policy's latency, the supervisor's answer with --workers, a
drain, a TLS handshake) is an asyncio future the coroutine awaits; its done callback steps the coroutine again, as a
task would. So nothing a conversation awaits may need a current task (asyncio.timeout, and wait_for from Python
3.12): smartsink.limits.remote times its questions with a timer on the future instead.

Two parts: FastConnection, here, owns the socket (buffers, waits, timeouts, flow control) and puts answers on the
wire (replies.wire); its Conversation (smartsink.engines.conversation) owns the SMTP state of one connection and
answers each verb. Neither decides what the policy says: they ask the connection's Responder.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Coroutine, Generator
from typing import Any

from mailload import contract
from smartsink import destination, metrics, replies
from smartsink.engines.conversation import COMMAND_LINE_MAX, LINE_LIMIT, TOO_LONG, Conversation
from smartsink.replies import Answer
from smartsink.responder import Responder, SinkContext

log = logging.getLogger("smartsink.smtp")

HEAD_MAX = contract.HEAD_BYTES  # bytes of a message kept to find its trace header, or a DSN's
# What one client can make the sink hold, whatever it sends (issue 17): its unparsed input, at most BUFFER_HIGH
# and one read of READ_SIZE, and the replies it has not taken, at most WRITE_HIGH and OUT_BATCH replies.
READ_SIZE = 64 * 1024  # bytes read from a client at a time, into one buffer all connections share
BUFFER_HIGH = 64 * 1024  # stop reading from a client that sends faster than we parse
WRITE_HIGH = 64 * 1024  # stop answering (and reading) a client that does not take our replies
LINGER_S = 2.0  # after our last reply and our FIN: how long what a client still sends is read and dropped
# Replies the kernel may hold for a client that does not read them. Linux grows a socket's send buffer to 4 MiB
# (tcp_wmem) however small the peer's window: a client that never reads made the kernel hold 2.8 MiB of replies each,
# outside the sink's own memory and out of every other socket's share of tcp_mem. SMTP replies are small: 64 KiB
# (the kernel doubles it) is thousands of pipelined answers.
SEND_BUFFER = 64 * 1024
OUT_BATCH = 64  # replies gathered before they are handed to the transport, however much input is pipelined
BODY_DISCARD = 64 * 1024  # a body's bytes beyond this are counted and dropped as they arrive


class _Timeout(Exception):
    pass


class _Input:
    """What a conversation awaits for more input: it yields itself to FastConnection.step, and the connection
    resumes the conversation when input (or EOF, loss, the idle timeout) comes."""

    def __await__(self) -> Generator[object, None, None]:
        yield self


_MORE_INPUT = _Input()


class FastConnection(asyncio.BufferedProtocol):
    """One SMTP connection of the sink: its buffers, waits and timeouts; the SMTP dialogue is its Conversation."""

    def __init__(self, ctx: SinkContext, server: FastServer):
        self.ctx = ctx
        self.server = server
        self.read_buffer = server.read_buffer
        self.loop = asyncio.get_running_loop()
        self.transport: Any = None
        self.buf = bytearray()
        self.pos = 0
        self.out: list[bytes] = []
        self.eof = False
        # The connection's coroutine (_run: the greeting, then its Conversation), which `step` runs until it waits
        # for input (waiting_input) or for a future (awaited).
        self.coroutine: Coroutine[Any, Any, None] | None = None
        self.waiting_input = False
        self.awaited: asyncio.Future[Any] | None = None
        self.cancelling = False  # the sink stops: CancelledError at the coroutine's next step (a Task's _must_cancel)
        self.reading_paused = False
        self.writing_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.last_active = self.loop.time()
        self.paused_at = 0.0
        self.tls_active = False
        self.closing = False
        self.lingering = False  # our last reply is sent and our side shut: input is read and dropped until close
        self.linger_timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol -------------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self.server.connections.add(self)
        self.coroutine = self._run()
        self.step()

    def get_buffer(self, sizehint: int) -> memoryview:
        # A buffer of our own size, not the loop's (uvloop reads 250 KB at a time): what one read may add to a
        # connection's input is READ_SIZE. Shared: buffer_updated() copies it out before the next read.
        return self.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self.lingering:
            return  # after our last reply: dropped
        self.buf += self.read_buffer[:nbytes]
        self.last_active = self.loop.time()
        if len(self.buf) - self.pos > BUFFER_HIGH and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        if self.waiting_input:
            self.step()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.closing = True
        if self.linger_timer is not None:
            self.linger_timer.cancel()
        self.server.connections.discard(self)
        if self.writing_paused:
            self.writing_paused = False
            metrics.CONNECTIONS_STALLED.dec()
        self._wake()
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)

    # A client that does not take our replies: rare (only slow or hostile readers), so counting it costs nothing
    # on the per-message path. The gauge tells an operator how many clients the --timeout cut is pending for.
    def pause_writing(self) -> None:
        self.writing_paused = True
        self.paused_at = self.loop.time()
        metrics.CONNECTIONS_STALLED.inc()

    def resume_writing(self) -> None:
        if self.writing_paused:
            metrics.CONNECTIONS_STALLED.dec()
        self.writing_paused = False
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)

    def _wake(self) -> None:
        if self.waiting_input:
            self.step()

    # --- the connection's coroutine ---------------------------------------------------------------------

    def step(self, exc: BaseException | None = None) -> None:
        """Run the connection's coroutine until it waits again (with `exc` raised where it waits)."""
        coroutine = self.coroutine
        if coroutine is None:
            return
        self.waiting_input = False
        if self.cancelling and exc is None:
            self.cancelling = False
            exc = asyncio.CancelledError()
        try:
            waits_for = coroutine.send(None) if exc is None else coroutine.throw(exc)
        except StopIteration:
            self.coroutine = None
            return
        except Exception:
            # _run answers and logs whatever goes wrong in a conversation: this came from its own closing. Kept
            # here, as a task keeps its exception: step() is called by the idle sweep and the sink's shutdown too.
            self.coroutine = None
            log.exception("error closing an SMTP session")
            self.transport.abort()
            return
        except BaseException:
            self.coroutine = None
            raise
        if waits_for is _MORE_INPUT:
            self.waiting_input = True
        elif isinstance(waits_for, asyncio.Future):
            # What `await future` yields to a task: take the task's part (asyncio.Task.__step) and resume the
            # coroutine when the future is done (the coroutine reads its result where it awaits it).
            waits_for._asyncio_future_blocking = False
            self.awaited = waits_for
            waits_for.add_done_callback(self._awaited_done)
            if self.cancelling and waits_for.cancel():  # stopped while it ran: what it awaits now is cancelled
                self.cancelling = False
        elif waits_for is None:  # a bare yield (asyncio.sleep(0)): step again at the next loop iteration
            self.loop.call_soon(self.step)
        else:  # nothing here awaits anything else: fail it where it waits, as a task would
            self.loop.call_soon(self.step, RuntimeError(f"the connection cannot wait for {waits_for!r}"))

    def _awaited_done(self, future: asyncio.Future[Any]) -> None:
        self.awaited = None
        self.step()

    def timed_out(self, now: float, timeout: float) -> bool:
        """Called by the server's sweep: fail the wait of a connection idle for longer than `timeout`."""
        if self.waiting_input and now - self.last_active > timeout:
            self.step(_Timeout())
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
            self.out.append(replies.wire(replies.SHUTDOWN))
            self.flush()
            self.transport.close()
        if self.coroutine is None:
            return
        if self.waiting_input:
            self.step(asyncio.CancelledError())
        elif self.awaited is None or not self.awaited.cancel():
            # Its step is due (the future it awaited is done, or it yielded to the loop): CancelledError is raised
            # there, so that it does not go on as if nothing happened (a 250 recorded for a message told 421).
            self.cancelling = True
        # (else: the cancelled future raises CancelledError where the coroutine awaits it, once its callback runs)

    # --- buffered I/O -----------------------------------------------------------------------------------

    def flush(self) -> None:
        if self.out:
            data = self.out[0] if len(self.out) == 1 else b"".join(self.out)
            self.out.clear()
            if not self.transport.is_closing():
                self.transport.write(data)

    async def _drain(self) -> None:
        """Send what is pending; while the client does not take it (the transport is above WRITE_HIGH), read
        nothing more from it and wait. The sweep cuts a client that stays so for --timeout; a lost connection
        ends the wait at once."""
        self.flush()
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
        await _MORE_INPUT

    async def readline(self, limit: int = LINE_LIMIT) -> bytes | object | None:
        """The next line without its CRLF; TOO_LONG for an over-long one (read and dropped); None at EOF."""
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
                    return TOO_LONG
                line = bytes(self.buf[start:end])
                return line[:-1] if line.endswith(b"\r") else line
            if self.eof:
                return None
            if len(self.buf) - self.pos > max(limit, COMMAND_LINE_MAX):
                discarding = True  # keep memory bounded: drop what we have, keep reading to the newline
                del self.buf[:]
                self.pos = 0
            await self._wait()
            if self.closing:
                return None

    async def read_body(self) -> tuple[int, bytes, contract.Returned | None] | None:
        """(size, first bytes, what it returns if it is a DSN) of a message up to CRLF.CRLF, not keeping the rest;
        None at EOF. A message whose first bytes may start a DSN is read to its returned headers as it streams by
        (contract.DsnReader, bounded memory) before its bytes are dropped."""
        dropped = 0
        head = b""
        reader: contract.DsnReader | None = None
        fed = 0  # bytes of the message, from its start, the DSN reader has read
        checked = 0  # bytes after self.pos already searched (offsets move when _wait() compacts the buffer)
        while True:
            buf, start = self.buf, self.pos
            if dropped == 0 and buf[start : start + 3] == b".\r\n":
                self.pos = start + 3
                return 0, b"", None
            found = buf.find(b"\r\n.\r\n", start + checked)
            if found >= 0:
                if not head:
                    head = bytes(buf[start : min(found + 2, start + HEAD_MAX)])
                    reader, fed = contract.dsn_reader(head, stuffed=True), len(head)
                if reader is not None and reader.wanted:
                    reader.feed(buf[start + fed - dropped : found + 2])
                self.pos = found + 5
                return dropped + found + 2 - start, head, reader.result() if reader is not None else None
            if self.eof:
                return None
            available = len(buf) - start
            if not head and available >= HEAD_MAX:
                head = bytes(buf[start : start + HEAD_MAX])
                reader, fed = contract.dsn_reader(head, stuffed=True), len(head)
            if available > BODY_DISCARD and head:
                drop = available - 4  # keep the tail: the terminator may straddle two packets
                if reader is not None and reader.wanted:
                    reader.feed(buf[start + fed - dropped : start + drop])
                    fed = dropped + drop
                dropped += drop
                del buf[: start + drop]
                self.pos = start = 0
            checked = max(0, len(buf) - start - 4)
            await self._wait()
            if self.closing:
                return None

    def send(self, answer: Answer | None) -> bool:
        """Queue an answer's reply, rendered here at the edge; close when it says so, cut the connection without a
        word for None. False when the connection is done."""
        if answer is None:
            self.flush()
            self.closing = True
            self.transport.abort()  # cut without a reply: no FIN-after-flush politeness
            return False
        self.out.append(replies.wire(answer))
        if answer.close:
            self.close_after_reply()
            return False
        return True

    def close_after_reply(self) -> None:
        """Close without losing the last reply. Closing a socket with input still unread makes the kernel answer
        with a reset, which can destroy the reply before the client reads it (a 421 after a flood of bad commands,
        say). So: flush, shut our side (the FIN follows the reply), read and drop what the client still sends
        until it closes too, and close after at most LINGER_S whatever it does."""
        self.flush()
        self.closing = True
        transport = self.transport
        if self.eof or self.tls_active or not transport.can_write_eof():
            transport.close()
            return
        try:
            transport.write_eof()
        except (OSError, RuntimeError):
            transport.close()
            return
        self.lingering = True
        self.buf.clear()
        self.pos = 0
        if self.reading_paused:
            self.reading_paused = False
            transport.resume_reading()
        self.linger_timer = self.loop.call_later(LINGER_S, transport.abort)

    # --- the connection's life -----------------------------------------------------------------------------

    async def _run(self) -> None:
        peer = self.transport.get_extra_info("peername")
        client = peer[0] if isinstance(peer, tuple) else "unix"
        meant = self._destination(client)
        responder = Responder(self.ctx, client, meant[0] if meant else "")
        try:
            if self.send(await responder.greet()):
                await Conversation(self, responder, self.server.tls_context).run()
        except _Timeout:
            self.out.append(replies.wire(replies.TIMEOUT))
        except (asyncio.CancelledError, ConnectionError):
            pass
        except Exception:  # a sink never dies on bad input: log, answer, close this one connection
            log.exception("error in SMTP session with %s", client)
            self.out.append(replies.wire(replies.INTERNAL))
        finally:
            responder.closed()
            if not self.transport.is_closing() and not self.lingering:
                self.close_after_reply()

    def _destination(self, client: str) -> tuple[str, int] | None:
        """Where the client meant to connect; a redirect is counted and logged."""
        meant, redirected = destination.of_transport(self.transport)
        if redirected and meant is not None:
            metrics.REDIRECTED.inc()
            log.info("redirected connection from %s: meant for %s:%d", client, meant[0], meant[1])
        return meant

    async def start_tls(self, context: ssl.SSLContext) -> bool:
        """Upgrade the connection (RFC 3207); False when the handshake failed (the connection is done)."""
        # Anything the client pipelined after STARTTLS must be discarded (RFC 3207 6).
        del self.buf[:]
        self.pos = 0
        try:
            # A client silent in the handshake is cut like any idle client: after --timeout (asyncio's own is 60 s).
            transport = await self.loop.start_tls(
                self.transport, self, context, server_side=True, ssl_handshake_timeout=self.server.ctx.config.timeout
            )
        except (OSError, ssl.SSLError, ConnectionError) as e:
            log.info("TLS handshake failed: %s", e)
            transport = None
        if transport is None:
            metrics.child(metrics.TLS_HANDSHAKES, "failed").inc()
            self.closing = True
            return False
        metrics.child(metrics.TLS_HANDSHAKES, "ok").inc()
        self.transport = transport
        self.tls_active = True
        return True


class FastServer:
    """The connections of one listener, their idle sweep, and the TLS context they may upgrade with."""

    def __init__(self, ctx: SinkContext, tls_context: ssl.SSLContext | None):
        self.ctx = ctx
        self.tls_context = tls_context
        self.connections: set[FastConnection] = set()
        self.read_buffer = memoryview(bytearray(READ_SIZE))
        self._sweeper: asyncio.Task[None] | None = None

    def protocol(self) -> FastConnection:
        return FastConnection(self.ctx, self)

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
