"""The client side of SMTP: reply parsing without sockets, and Session in the test's own loop against the capture
server (aiosmtpd) or raw servers (per-recipient outcomes, 421, refused greetings, protocol violations, lost
connections)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiosmtpd.smtp import Envelope
from aiosmtpd.smtp import Session as SMTPSession

from harness.capture import CaptureHandler, CaptureServer
from trafficgen.config import RunConfig, build
from trafficgen.messages import MessageFactory
from trafficgen.outcome import ACCEPTED, ERROR, PERMFAILED, TEMPFAILED
from trafficgen.smtp.replies import MAX_LINE, ProtocolError, Reply, ReplyParser
from trafficgen.smtp.session import Refused, Session, SessionError

DEADLINE = 5.0


def parse(*packets: bytes) -> list[tuple[int, str]]:
    parser = ReplyParser()
    out: list[Reply] = []
    for packet in packets:
        out.extend(parser.feed(packet, 0.0))
    return [(r.code, r.text) for r in out]


class TestReplyParser:
    """RFC 5321 4.2: replies are CODE-text lines ending with a CODE text line."""

    @pytest.mark.parametrize(
        ("data", "expected"),
        [
            (b"250 OK\r\n", [(250, "OK")]),
            (b"220\r\n", [(220, "")]),
            (b"250-mx.test\r\n250-PIPELINING\r\n250 SIZE 1000\r\n", [(250, "mx.test\nPIPELINING\nSIZE 1000")]),
            (b"250 a\r\n251 b\r\n354 go\r\n", [(250, "a"), (251, "b"), (354, "go")]),
            (b"421 4.7.0 bye\n", [(421, "4.7.0 bye")]),
            (b"550-5.1.1 first\r\n550 5.1.1 second\r\n", [(550, "5.1.1 first\n5.1.1 second")]),
            (b"250 caf\xc3\xa9\r\n", [(250, "caf\u00e9")]),
            (b"250-partial\r\n", []),
        ],
        ids=["one-line", "code-only", "multi-line", "pipelined-replies", "bare-lf", "enhanced", "utf8", "unfinished"],
    )
    def test_whole_packets(self, data, expected):
        """Complete replies come out in order; a multi-line reply is one reply with its lines joined by \\n."""
        assert parse(data) == expected

    @pytest.mark.parametrize(
        "data",
        [b"250-mx.test\r\n250-PIPELINING\r\n250 HELP\r\n", b"250 2.0.0 Ok: queued\r\n354 End data\r\n"],
        ids=["multi-line", "two-replies"],
    )
    def test_split_anywhere(self, data):
        """Bytes split at any point (even inside CRLF) give the same replies as one packet."""
        whole = parse(data)
        for cut in range(1, len(data)):
            assert parse(data[:cut], data[cut:]) == whole, cut
        assert parse(*(data[i : i + 1] for i in range(len(data)))) == whole

    @pytest.mark.parametrize(
        "data",
        [b"* OK IMAP4rev1 ready\r\n", b"25 short\r\n", b"250x nope\r\n", b"abc def\r\n", b"HTTP/1.1 400 Bad\r\n"],
        ids=["imap", "two-digits", "bad-separator", "letters", "http"],
    )
    def test_protocol_errors(self, data):
        """Anything that is not a reply line is a ProtocolError quoting it."""
        with pytest.raises(ProtocolError, match="not an SMTP reply"):
            parse(data)

    def test_endless_line(self):
        """A line longer than 64 KiB without an end is not SMTP."""
        parser = ReplyParser()
        parser.feed(b"250-" + b"x" * 1000, 0.0)
        with pytest.raises(ProtocolError, match="longer than"):
            parser.feed(b"x" * MAX_LINE, 0.0)

    @pytest.mark.parametrize(
        ("code", "kind"), [(250, ACCEPTED), (354, ACCEPTED), (421, TEMPFAILED), (451, TEMPFAILED), (550, PERMFAILED)]
    )
    def test_kind(self, code, kind):
        """2xx/3xx accepted, 4xx tempfailed, 5xx permfailed."""
        assert Reply(code, "", 0.0).kind == kind


# --- sessions against a real server ------------------------------------------------------------------------


class Rules(CaptureHandler):
    """Capture server hooks: RCPT answers by recipient number, MAIL answers fixed, everything else accepted."""

    def __init__(self, rcpt: dict[int, str] | None = None, mail: str | None = None, data: str | None = None):
        self.rcpt = rcpt or {}
        self.mail = mail
        self.data = data
        self.delivered: list[list[str]] = []

    async def handle_MAIL(self, server, session, envelope: Envelope, address, options):
        if self.mail:
            return self.mail
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope: Envelope, address: str, options):
        number = int(address.split("@")[0].split(".")[0].removeprefix("user-"))
        answer = self.rcpt.get(number)
        if answer:
            return answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session: SMTPSession, envelope: Envelope):
        if self.data:
            return self.data
        self.delivered.append(list(envelope.rcpt_tos))
        return "250 2.0.0 queued"


Raw = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def server(handler: Rules | None = None, raw: Raw | None = None) -> AsyncIterator[int]:
    """The capture server (aiosmtpd, PIPELINING offered) answering by `handler`'s rules, or a raw stream handler
    on 127.0.0.1:0 in this loop for a server that is not SMTP; closed with all its connections."""
    if raw is None:
        with CaptureServer(handler or Rules(), hostname="unit.test") as capture:
            yield capture.port
            # Every connection ends before the test goes on, and this loop runs the client's side of the close (its
            # connection_lost) at least once, even when the server's thread saw the close first.
            deadline = asyncio.get_running_loop().time() + DEADLINE
            await asyncio.sleep(0.01)
            while capture.protocols:
                assert asyncio.get_running_loop().time() < deadline, "a connection to the capture server stayed open"
                await asyncio.sleep(0.01)
        return
    writers: list[asyncio.StreamWriter] = []

    async def raw_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await raw(reader, writer)

    listener = await asyncio.start_server(raw_client, "127.0.0.1", 0)
    try:
        yield listener.sockets[0].getsockname()[1]
    finally:
        listener.close()
        for writer in writers:
            writer.close()
        await listener.wait_closed()
        for writer in writers:
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def config_for(port: int, **options: object) -> RunConfig:
    return build(target=f"127.0.0.1:{port}", domains=["unit.test"], timeout=5.0, run_id="unit", **options)


async def open_session(config: RunConfig) -> Session:
    return await Session.open(config, None, set())


@pytest.mark.asyncio
class TestSession:
    """One connection's transactions and the outcome each one gets."""

    @pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "stepwise"])
    async def test_accepted(self, pipelining):
        """A message the server takes is accepted, with its step times in order."""
        rules = Rules()
        async with server(rules) as port:
            config = config_for(port, pipelining=pipelining)
            session = await open_session(config)
            assert session.pipelining is pipelining
            assert "PIPELINING" in session.extensions
            message = MessageFactory(config, random.Random(1)).build(0, 0.0)
            outcome = await session.send(message)
            await session.quit()
        assert (outcome.kind, outcome.code, outcome.recipient_kinds) == (ACCEPTED, 250, (ACCEPTED,))
        assert outcome.started <= outcome.mail <= outcome.rcpt <= outcome.end
        assert rules.delivered == [["user-0.unit@unit.test.sink.test"]]

    @pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "stepwise"])
    async def test_rcpt_time_answers_per_recipient(self, pipelining):
        """Recipients refused at RCPT get their own outcome; the message still goes to the others."""
        rules = Rules(rcpt={1: "550 5.1.1 no such user", 2: "451 4.7.1 try later"})
        async with server(rules) as port:
            config = config_for(port, pipelining=pipelining, recipients_per_message=4)
            session = await open_session(config)
            message = MessageFactory(config, random.Random(1)).build(0, 0.0)  # user-0 .. user-3
            outcome = await session.send(message)
            second = await session.send(MessageFactory(config, random.Random(1)).build(1, 0.0))  # user-4 .. 7
            await session.quit()
        assert outcome.kind == ACCEPTED
        assert outcome.recipient_kinds == (ACCEPTED, PERMFAILED, TEMPFAILED, ACCEPTED)
        assert second.recipient_kinds == (ACCEPTED,) * 4
        assert rules.delivered[0] == ["user-0.unit@unit.test.sink.test", "user-3.unit@unit.test.sink.test"]

    @pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "stepwise"])
    @pytest.mark.parametrize(
        ("answers", "kind", "code"),
        [
            ({0: "550 5.1.1 no", 1: "550 5.1.1 no"}, PERMFAILED, 550),
            ({0: "550 5.1.1 no", 1: "452 4.2.2 full"}, TEMPFAILED, 452),
        ],
        ids=["all-permanent", "one-temporary"],
    )
    async def test_every_recipient_refused(self, pipelining, answers, kind, code):
        """All recipients refused: tempfailed if any may be retried, else permfailed; connection reused."""
        async with server(Rules(rcpt=answers)) as port:
            config = config_for(port, pipelining=pipelining, recipients_per_message=2)
            factory = MessageFactory(config, random.Random(1))
            session = await open_session(config)
            outcome = await session.send(factory.build(0, 0.0))
            after = await session.send(factory.build(1, 0.0))
            await session.quit()
        assert (outcome.kind, outcome.code, outcome.close) == (kind, code, False)
        assert after.kind == ACCEPTED

    @pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "stepwise"])
    async def test_421_closes(self, pipelining):
        """421 at MAIL: tempfailed, and the connection is closed (RFC 5321 3.8)."""
        async with server(Rules(mail="421 4.7.0 closing, too busy")) as port:
            config = config_for(port, pipelining=pipelining)
            session = await open_session(config)
            outcome = await session.send(MessageFactory(config, random.Random(1)).build(0, 0.0))
            await session.quit()
        assert (outcome.kind, outcome.code, outcome.close) == (TEMPFAILED, 421, True)
        assert not session.usable

    async def test_data_rejected(self):
        """A 554 to the end of DATA is permfailed for every recipient."""
        async with server(Rules(data="554 5.7.1 spam")) as port:
            config = config_for(port, recipients_per_message=2)
            session = await open_session(config)
            outcome = await session.send(MessageFactory(config, random.Random(1)).build(0, 0.0))
            await session.quit()
        assert (outcome.kind, outcome.code, outcome.recipient_kinds) == (PERMFAILED, 554, (PERMFAILED, PERMFAILED))

    @pytest.mark.parametrize(
        ("greeting", "code"), [(b"554 5.7.1 go away\r\n", 554), (b"421 4.7.0 too many connections\r\n", 421)]
    )
    async def test_refused_greeting(self, greeting, code):
        """A greeting other than 220 is Refused, carrying the reply."""

        async def greet(reader, writer):
            writer.write(greeting)
            await writer.drain()
            await reader.read()

        async with server(raw=greet) as port:
            with pytest.raises(Refused) as refused:
                await open_session(config_for(port))
        assert refused.value.reply.code == code

    async def test_not_smtp(self):
        """A server that is not SMTP: SessionError of kind 'protocol'."""

        async def imap(reader, writer):
            writer.write(b"* OK IMAP4rev1 ready\r\n")
            await writer.drain()
            await reader.read()

        async with server(raw=imap) as port:
            with pytest.raises(SessionError) as error:
                await open_session(config_for(port))
        assert error.value.kind == "protocol"

    async def test_lost_mid_transaction(self):
        """The server hangs up after MAIL: the message's outcome is an error, and the session is unusable."""

        async def hang_up(reader, writer):
            writer.write(b"220 raw.test ESMTP\r\n")
            await reader.readline()
            writer.write(b"250-raw.test\r\n250 PIPELINING\r\n")
            await reader.readline()  # MAIL
            writer.close()

        async with server(raw=hang_up) as port:
            config = config_for(port)
            session = await open_session(config)
            outcome = await session.send(MessageFactory(config, random.Random(1)).build(0, 0.0))
            await session.quit()
        assert outcome.kind == ERROR
        assert "closed the connection" in outcome.text
        assert outcome.recipient_kinds == (ERROR,)
        assert not session.usable


def answering(replies: dict[bytes, bytes], pipelining: bool) -> Raw:
    """A raw server that greets, answers EHLO, and answers each command by its verb from `replies` (a message's
    content lines get nothing until its ending dot)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 raw.test ESMTP\r\n")
        in_data = False
        while line := await reader.readline():
            if in_data:
                if line == b".\r\n":
                    in_data = False
                    writer.write(replies.get(b".", b"250 2.0.0 queued\r\n"))
                continue
            verb = line.split(b" ", 1)[0].split(b":", 1)[0].strip().upper()
            if verb == b"EHLO" and verb not in replies:
                writer.write(b"250-raw.test\r\n250 PIPELINING\r\n" if pipelining else b"250 raw.test\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
            else:
                answer = replies.get(verb, b"250 ok\r\n")
                in_data = verb == b"DATA" and answer.startswith(b"354")
                writer.write(answer)
            await writer.drain()

    return serve


@pytest.mark.asyncio
class TestUnexpectedReplies:
    """A reply that answers nothing (354 to MAIL FROM, 250 to DATA, 354 to a message's end) is an error that names
    the command and the reply, not the reply's text alone ("go", "ok")."""

    @pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "stepwise"])
    @pytest.mark.parametrize(
        ("replies", "words"),
        [
            ({b"MAIL": b"354 go\r\n"}, "unexpected reply 354 go to MAIL FROM"),
            ({b"DATA": b"250 ok\r\n"}, "unexpected reply 250 ok to DATA"),
            ({b"DATA": b"354 go on\r\n", b".": b"354 more\r\n"}, "unexpected reply 354 more to the end of DATA"),
        ],
        ids=["354-to-mail", "250-to-data", "354-to-the-end"],
    )
    async def test_names_the_command_and_the_reply(self, replies, words, pipelining):
        """The outcome is an error whose text says which command got which reply."""
        async with server(raw=answering(replies, pipelining)) as port:
            config = config_for(port, pipelining=pipelining)
            session = await open_session(config)
            outcome = await session.send(MessageFactory(config, random.Random(1)).build(0, 0.0))
            await session.quit()
        assert outcome.kind == ERROR
        assert outcome.text == words

    async def test_a_silent_ehlo_is_named(self):
        """A server that greets and never answers EHLO times out naming EHLO, not the greeting."""
        async with server(raw=answering({b"EHLO": b""}, True)) as port:
            registry: set = set()
            opening = asyncio.ensure_future(Session.open(config_for(port), None, registry))
            deadline = time.monotonic() + DEADLINE
            while not opening.done():  # the run's sweep, as if the timeout had passed
                assert time.monotonic() < deadline, "the opening never timed out"
                for protocol in registry:
                    protocol.timed_out(time.monotonic() + 10.0, 5.0)
                await asyncio.sleep(0.05)
            with pytest.raises(SessionError, match="no reply to EHLO in 5 s"):
                opening.result()
