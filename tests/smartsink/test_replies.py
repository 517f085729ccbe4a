"""Replies on the wire: multi-line from CRLF or LF, codes not doubled, lines within 512 octets, 7-bit safe."""

from __future__ import annotations

import re
import smtplib
import socket

import aiosmtplib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.policies import KUMO_POLICY, SHIPPED_POLICY, needs_kumo_policy
from harness.sink import running_sink
from harness.smtp import BODY, SENDER, close, connect, parse_replies, read_reply, transaction
from smartsink.policy import load_policy
from smartsink.policy.model import Reply
from smartsink.replies import MAX_LINE, render

RENDER = {
    "one-line": (Reply(250, "2.0.0 Ok"), b"250 2.0.0 Ok\r\n"),
    "crlf": (Reply(421, "4.7.0 one\r\n4.7.0 two"), b"421-4.7.0 one\r\n421 4.7.0 two\r\n"),
    "bare-lf": (Reply(550, "5.5.0 a\nb\nc"), b"550-5.5.0 a\r\n550-5.5.0 b\r\n550 5.5.0 c\r\n"),
    "bare-cr": (Reply(451, "4.3.0 a\rb"), b"451-4.3.0 a\r\n451 4.3.0 b\r\n"),
    "code-dash-already-there": (
        Reply(421, "421-4.7.0 one\r\n421-4.7.0 two\r\n421 4.7.0 three"),
        b"421-4.7.0 one\r\n421-4.7.0 two\r\n421 4.7.0 three\r\n",
    ),
    "kumomta-comma": (
        Reply(550, "550-5.1.1 The email account\r\n550,5.1.1 http://mail.google.com/ b11si4410389ana.36"),
        b"550-5.1.1 The email account\r\n550 5.1.1 http://mail.google.com/ b11si4410389ana.36\r\n",
    ),
    "code-after-lf-with-spaces": (
        Reply(451, "4.4.2 long message. \n451 second. \n 451 third."),
        b"451-4.4.2 long message.\r\n451-4.4.2 second.\r\n451 4.4.2 third.\r\n",
    ),
    "number-that-is-not-the-code": (Reply(451, "4510 messages queued"), b"451 4.0.0 4510 messages queued\r\n"),
    "failure-without-status-gets-one": (Reply(550, "MAILBOX NOT FOUND"), b"550 5.0.0 MAILBOX NOT FOUND\r\n"),
    "status-class-follows-the-code": (Reply(451, "5.7.1 busy\n5.7.1 later"), b"451-4.7.1 busy\r\n451 4.7.1 later\r\n"),
    "success-left-as-written": (Reply(250, "Ok"), b"250 Ok\r\n"),
    "blank-lines-dropped": (
        Reply(451, "4.3.0 a\r\n\r\n  \r\n4.3.0 b\r\n"),
        b"451-4.3.0 a\r\n451 4.3.0 b\r\n",
    ),
    "empty-text": (Reply(550, ""), b"550 5.0.0\r\n"),
    "empty-success": (Reply(250, ""), b"250\r\n"),
    "tabs-and-outer-spaces": (Reply(250, "\t2.0.0  Ok  "), b"250 2.0.0  Ok\r\n"),
    "non-ascii": (
        Reply(550, "5.1.1 d\u2019au moins un destinataire \u00e9"),
        b"550 5.1.1 d?au moins un destinataire ?\r\n",
    ),
    "control-characters": (Reply(451, "4.0.0 a\x00b\x1bc\x7fd"), b"451 4.0.0 a?b?c?d\r\n"),
}


def check_well_formed(wire: bytes, code: int, texts_from_policies: bool = True) -> list[str]:
    """Each line: CODE, then '-' (all but the last) or ' ', 7-bit printable, <= 512 octets with CRLF."""
    assert wire.endswith(b"\r\n")
    lines = wire[:-2].split(b"\r\n")
    for i, line in enumerate(lines):
        assert len(line) + 2 <= MAX_LINE, len(line)
        assert re.fullmatch(rb"[\x20-\x7e]*", line), line
        sep = b" " if i == len(lines) - 1 else b"-"
        assert line[:3] == str(code).encode(), line
        assert line[3:4] == sep or (len(lines) == 1 and len(line) == 3), line
        if texts_from_policies:  # (an arbitrary text may itself start with "421-421-")
            assert not re.match(rb"%d[ ,-]|%d$" % (code, code), line[4:]), f"code prefixed twice: {line!r}"
    return [line[4:].decode() for line in lines]


class TestRender:
    @pytest.mark.parametrize(("reply", "wire"), RENDER.values(), ids=RENDER.keys())
    def test_render(self, reply, wire):
        """A reply's text becomes exactly these wire lines."""
        assert render(reply) == wire

    @pytest.mark.parametrize("length", [505, 506, 507, 1500], ids=["505", "506", "507", "1500"])
    def test_long_word_cut_at_512_octets(self, length):
        """A line without spaces is cut so that each line, code and CRLF included, is at most 512 octets."""
        text = "x" * length
        wire = render(Reply(250, text))
        lines = check_well_formed(wire, 250)
        assert "".join(lines) == text
        assert len(lines) == -(-length // 506)  # 506 octets of text fit a line: 512 - "250 " - CRLF

    def test_long_text_folded_at_spaces(self):
        """A long line of words is folded between words; no word is split and none is lost."""
        words = [f"word{i}" for i in range(400)]
        wire = render(Reply(421, "4.7.0 " + " ".join(words)))
        lines = check_well_formed(wire, 421)
        assert len(lines) > 1
        assert all(line.startswith("4.7.0 ") for line in lines)
        assert " ".join(line.removeprefix("4.7.0 ") for line in lines).split() == words

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(code=st.integers(200, 599), text=st.text(max_size=2000))
    def test_any_text_renders_well_formed(self, code, text):
        """Whatever a policy's msg holds, the reply is one well-formed SMTP reply."""
        wire = render(Reply(code, text))
        check_well_formed(wire, code, texts_from_policies=False)
        assert len(parse_replies(wire)) == 1

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(
        lines=st.lists(
            st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=80),
            min_size=1,
            max_size=8,
        ),
        prefix=st.sampled_from(["252-", "252 ", "252,", ""]),
        newline=st.sampled_from(["\r\n", "\n"]),
    )
    def test_lines_keep_their_text(self, lines, prefix, newline):
        """Each line keeps its text, in order, with a leading copy of the code removed once (never twice)."""
        wire = render(Reply(252, newline.join(prefix + line for line in lines)))  # 2xx: no status added
        got = check_well_formed(wire, 252, texts_from_policies=False)
        if prefix:
            assert got == lines
        else:
            once = [line[4:] if re.match(r"252([ ,-]|$)", line) else line for line in lines]
            assert got == [line for line in once if line]

    @pytest.mark.parametrize(
        "path",
        [
            pytest.param(KUMO_POLICY, marks=needs_kumo_policy(), id="kumomta"),
            pytest.param(SHIPPED_POLICY, id="shipped"),
        ],
    )
    def test_every_reply_of_a_real_policy_is_well_formed(self, path):
        """Every reply in KumoMTA's file and ours renders well-formed, without a doubled code."""
        policy = load_policy(path)
        rules = [policy.default, *policy.domains.values()]
        for reply in {r for rule in rules for r in (*rule.bounces, *rule.defers, *rule.throttles)}:
            check_well_formed(render(reply), reply.code)


# --- on the wire ----------------------------------------------------------------------------------------
KUMO_GMAIL_421 = (
    "421-4.7.0 [127.0.0.53] Our system has detected an unusual amount of\r\n"
    "421-4.7.0 unsolicited mail originating from your IP address. To protect our\r\n"
    "421-4.7.0 users from spam, mail sent from your IP address has been temporarily\r\n"
    "421-4.7.0 blocked. Please visit http://www.google.com/mail/help/bulk_mail.html\r\n"
    "421,4.7.0 to review our Bulk Email Senders Guidelines. 39si2626666ywh.98"
)
LF_TEXT = "4.4.2 first line \n451 second line \n 451 third line"
LONG_TEXT = "5.7.1 " + " ".join(f"reason{i}" for i in range(300))


def _toml(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n").replace('"', '\\"')


WIRE_POLICY = f"""
[default]
bounce = 0
defer = 0

[domain."gmail.com"]
tempfail_closes = true   # tempfail@ gets the 421 (which closes), as this policy says

[[defer."gmail.com"]]
code = 421
msg = "{_toml(KUMO_GMAIL_421)}"

[[defer."lf.test"]]
code = 451
msg = "{_toml(LF_TEXT)}"

[[bounce."long.test"]]
code = 554
msg = "{_toml(LONG_TEXT)}"
"""


@pytest.fixture(scope="module")
def sink(tmp_path_factory):
    with running_sink(policy=WIRE_POLICY, tmp=tmp_path_factory.mktemp("replies")) as running:
        yield running


def expected_lines(reply: Reply) -> list[str]:
    return [line[4:].decode() for line in render(reply)[:-2].split(b"\r\n")]


class TestOnTheWire:
    def test_smtplib_sees_one_multi_line_reply_then_the_connection_goes_on(self, sink):
        """smtplib reads a multi-line 451 as one reply with every line, and the next command gets its own."""
        client = connect(sink)
        try:
            code, text = transaction(client, ["tempfail@lf.test"])
            assert code == 451
            assert text.split("\n") == ["4.4.2 first line", "4.4.2 second line", "4.4.2 third line"]
            assert client.noop()[0] == 250
        finally:
            close(client)

    def test_kumomta_multi_line_421_is_not_prefixed_twice(self, sink):
        """KumoMTA's gmail 421 (lines already carrying 421- and 421,) reaches smtplib as its five lines."""
        client = connect(sink)
        try:
            code, text = transaction(client, ["tempfail@gmail.com"])
            assert code == 421
            assert text.split("\n") == expected_lines(Reply(421, KUMO_GMAIL_421))
            assert len(text.split("\n")) == 5
            assert not any(line.startswith("421") for line in text.split("\n"))
            # RFC 5321 3.8: after a 421 the server closes the connection
            with pytest.raises(smtplib.SMTPServerDisconnected):
                client.noop()
        finally:
            close(client)

    def test_raw_bytes_are_exactly_the_rendered_reply(self, sink):
        """The octets after the end of DATA are the rendered reply, each line within 512 octets."""
        with socket.create_connection(sink.address, timeout=10) as sock:
            read_reply(sock)
            sock.sendall(b"EHLO client.test\r\n")
            read_reply(sock)
            sock.sendall(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<permfail@long.test>\r\nDATA\r\n".encode())
            replies = b""
            while replies.count(b"\r\n") < 3:
                replies += sock.recv(65536)
            assert [code for code, _ in parse_replies(replies)] == [250, 250, 354]
            sock.sendall(BODY + b".\r\n")
            wire = read_reply(sock)
            sock.sendall(b"QUIT\r\n")
            read_reply(sock)
        assert wire == render(Reply(554, LONG_TEXT))
        assert len(check_well_formed(wire, 554)) > 1

    @pytest.mark.asyncio
    async def test_aiosmtplib_sees_one_multi_line_reply(self, sink):
        """aiosmtplib, too, reads the multi-line reply as one response with the right code and lines."""
        client = aiosmtplib.SMTP(hostname=sink.host, port=sink.port, timeout=10, start_tls=False)
        await client.connect()
        try:
            await client.ehlo(hostname="client.test")
            await client.mail(SENDER)
            await client.rcpt("tempfail@lf.test")
            with pytest.raises(aiosmtplib.SMTPDataError) as caught:
                await client.data(BODY)
            assert caught.value.code == 451
            assert caught.value.message.split("\n") == ["4.4.2 first line", "4.4.2 second line", "4.4.2 third line"]
            assert (await client.noop()).code == 250
        finally:
            await client.quit()
