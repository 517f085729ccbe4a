"""Message content without a socket: the body text, sizes, line lengths, dot-stuffing, headers and envelopes."""

from __future__ import annotations

import email.policy
import random
import re
import time
from email.parser import BytesParser
from pathlib import Path

import pytest

from harness.mail import MESSAGE_ID, crlf, stuffed
from mailload import contract
from trafficgen.config import build
from trafficgen.content import BLOCK_SIZE, LINE_MAX, readable_block
from trafficgen.messages import Body, MessageFactory, dot_stuff, load_message_file


def lines_of(data: bytes) -> list[bytes]:
    assert data.endswith(b"\r\n")
    return data[:-2].split(b"\r\n")


class TestReadableBlock:
    """The text every body is cut from."""

    def test_lines(self):
        """CRLF line ends only, lines of at most 78 characters, printable ASCII words, paragraphs between."""
        block = readable_block(random.Random(3))
        assert len(block) >= BLOCK_SIZE
        assert block.count(b"\n") == block.count(b"\r") == block.count(b"\r\n")
        assert all(len(line) <= LINE_MAX for line in lines_of(block))
        assert re.fullmatch(rb"[A-Za-z .\r\n]+", block)
        assert b"\r\n\r\n" in block  # paragraphs

    def test_seeded(self):
        """The same seed gives the same text; another seed another text."""
        assert readable_block(random.Random(1), 2000) == readable_block(random.Random(1), 2000)
        assert readable_block(random.Random(1), 2000) != readable_block(random.Random(2), 2000)


@pytest.fixture(scope="module")
def body() -> Body:
    return Body(random.Random(5), 3 * 1024 * 1024)


class TestBody:
    """Body.get(size): at least `size` bytes, cut at the first line end at or after it."""

    @pytest.mark.parametrize(
        "size",
        [1, 77, 78, 1024, 60_000, BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 1, 1_048_576, 3 * 1024 * 1024],
        ids=lambda s: str(s),
    )
    def test_at_least_the_size_and_whole_lines(self, body, size):
        """Never shorter than asked, never a whole line longer, ends on CRLF, every line at most 78 characters."""
        text = bytes(body.get(size))
        assert size <= len(text) < size + LINE_MAX + 2
        assert all(len(line) <= LINE_MAX for line in lines_of(text))

    def test_block_multiples_are_exact(self, body):
        """A size that is a whole number of blocks ends exactly there (the block ends with CRLF)."""
        length = len(body.block)
        assert len(body.get(2 * length)) == 2 * length

    def test_zero(self, body):
        """Size 0 is an empty body."""
        assert len(body.get(0)) == 0


class TestDotStuffing:
    """RFC 5321 4.5.2: a line that starts with '.' gets another one in front."""

    @pytest.mark.parametrize(
        ("data", "expected"),
        [
            (b"plain\r\n", b"plain\r\n"),
            (b".first\r\n", b"..first\r\n"),
            (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n"),
            (b"a\r\n..two\r\n", b"a\r\n...two\r\n"),
            (b"a.b\r\nc .\r\n", b"a.b\r\nc .\r\n"),
            (b".\r\n.\r\n", b"..\r\n..\r\n"),
            (b"", b""),
        ],
        ids=["plain", "first-line", "lone-dot", "two-dots", "dot-inside", "consecutive", "empty"],
    )
    def test_dot_stuff(self, data, expected):
        """Only dots at the start of a line are doubled."""
        assert dot_stuff(data) == expected == stuffed(data)

    def test_message_file(self, tmp_path: Path):
        """--body-file: LF, CR and CRLF all become CRLF, a final CRLF is added, then lines are dot-stuffed."""
        raw = b"Subject: x\n\n.dot\r..two\r\n.\nend"
        path = tmp_path / "m.eml"
        path.write_bytes(raw)
        assert load_message_file(str(path)) == stuffed(crlf(raw))
        assert load_message_file(str(path)) == b"Subject: x\r\n\r\n..dot\r\n...two\r\n..\r\nend\r\n"


class TestFactory:
    """MessageFactory.build(seq): the envelope and content of message `seq`."""

    def content(self, factory: MessageFactory, seq: int) -> bytes:
        return b"".join(bytes(part) for part in factory.build(seq, 0.0).content)

    def test_envelope(self):
        """Recipient user-<seq>.<run>@<domain>.<suffix>, sender noreply@ the same domain."""
        factory = MessageFactory(build(domains=["gmail.com"], run_id="f1"), random.Random(1))
        message = factory.build(17, 3.5)
        assert message.recipients == ("user-17.f1@gmail.com.sink.test",)
        assert message.sender == "noreply@gmail.com.sink.test"
        assert (message.seq, message.domain, message.intended) == (17, 0, 3.5)

    def test_several_recipients_are_distinct_across_messages(self):
        """With N recipients per message, message k holds user-(kN) .. user-(kN+N-1): never shared."""
        config = build(domains=["a.test"], recipients_per_message=3, run_id="r3")
        factory = MessageFactory(config, random.Random(1))
        everyone = [r for seq in range(50) for r in factory.build(seq, 0).recipients]
        assert len(set(everyone)) == 150
        assert factory.build(2, 0).recipients == tuple(f"user-{n}.r3@a.test.sink.test" for n in (6, 7, 8))

    def test_headers(self):
        """From, To, Subject, Date, Message-ID <run.seq@domain>, X-Trafficgen-Id, X-Mailer, extras; size counted."""
        config = build(domains=["yahoo.com"], run_id="hdr", headers=["X-Campaign: spring"])
        factory = MessageFactory(config, random.Random(1))
        message = factory.build(4, 0.0)
        data = self.content(factory, 4)
        assert message.size == len(data)
        parsed = BytesParser(policy=email.policy.default).parsebytes(data)
        assert parsed["From"] == "noreply@yahoo.com.sink.test"
        assert parsed["To"] == "user-4.hdr@yahoo.com.sink.test"
        assert parsed["Message-ID"] == "<hdr.4@yahoo.com.sink.test>"
        assert MESSAGE_ID.match(parsed["Message-ID"])
        trace = contract.trace_of(data)
        assert trace is not None
        assert (trace.run_id, trace.seq) == ("hdr", 4)
        assert trace.sent_ms is not None
        assert abs(trace.sent_ms / 1000 - time.time()) < 60
        assert parsed["X-Campaign"] == "spring"
        assert parsed["Subject"]
        assert parsed["Date"]
        assert parsed["X-Mailer"].startswith("trafficgen/")

    @pytest.mark.parametrize("count", [1, 2, 5, 20], ids=lambda n: f"{n}-recipients")
    def test_every_line_fits(self, count):
        """Header lines too stay within 78 characters: a long To is folded (RFC 5322 2.1.1, 3.2.2)."""
        factory = MessageFactory(build(domains=["hotmail.com"], recipients_per_message=count), random.Random(1))
        data = self.content(factory, 123456)
        assert all(len(line) <= LINE_MAX for line in lines_of(data))
        parsed = BytesParser(policy=email.policy.default).parsebytes(data)
        assert [a.addr_spec for a in parsed["To"].addresses] == list(factory.build(123456, 0).recipients)

    def test_size_range_draws_within_it(self):
        """--body-size 10kb..20kb: each body within the range (plus at most a line), seeded by the Random."""
        factory = MessageFactory(build(body_size="10kb..20kb"), random.Random(9))
        sizes = []
        for seq in range(200):
            _, body = factory.build(seq, 0).content
            sizes.append(len(body))
        assert all(10_000 <= s < 20_000 + LINE_MAX + 2 for s in sizes)
        assert min(sizes) < 11_000
        assert max(sizes) > 19_000

    def test_body_file_content(self, tmp_path: Path):
        """With --body-file the content is the trace header, the extras, then the file (CRLF, stuffed)."""
        path = tmp_path / "m.eml"
        path.write_bytes(b"Subject: file\n\n.hello\n")
        factory = MessageFactory(build(body_file=str(path), run_id="bf", headers=["X-A: 1"]), random.Random(1))
        content = self.content(factory, 2)
        assert re.fullmatch(
            rb"X-Trafficgen-Id: bf\.2; t=\d{13}\r\nX-A: 1\r\nSubject: file\r\n\r\n\.\.hello\r\n", content
        )

    def test_fixed_recipient(self):
        """--recipient fixes every RCPT (no suffix, no numbering); --sender the MAIL FROM."""
        config = build(recipient="sink@mx.lab.test", sender="from@lab.test", recipients_per_message=2)
        message = MessageFactory(config, random.Random(1)).build(9, 0)
        assert message.recipients == ("sink@mx.lab.test", "sink@mx.lab.test")
        assert message.sender == "from@lab.test"
