"""The fast engine checked against aiosmtpd, the reference: the same conversations, the same answers.

Each conversation is sent line by line over a raw socket to a sink running `--engine fast` and to one running
`--engine aiosmtpd`, with the same policy and seed; the reply codes must match step for step, and the
policy's answers (which both take from the same Session) must match to the letter. The few places where the
fast engine deliberately answers otherwise are listed in DIVERGENCES with the reason.
"""

from __future__ import annotations

import re
import socket

import pytest

from harness.sink import running_sink

POLICY = """
[default]
bounce = 0
defer = 0

[domain."gmail.com"]
bounce = 0
defer = 0

[[bounce."gmail.com"]]
code = 550
msg = "5.1.1 The email account that you tried to reach does not exist.\\n5.1.1 Please try again."

[[defer."gmail.com"]]
code = 450
msg = "4.2.1 The user you are trying to contact is receiving mail too fast"

[domain."unknown.test"]
unknown = 100

[[unknown."unknown.test"]]
code = 550
msg = "5.1.1 <{recipient}>: user unknown, from [{client_ip}]"

[domain."tls.test"]
require_tls = true

[domain."small.test"]
max_message_size = 10

[domain."strict.test"]
require_headers = ["Message-ID"]

[domain."weighted.test"]
defer = 100
reject_at = "rcpt"

[[defer."weighted.test"]]
code = 451
msg = "4.7.650 rarely"
weight = 0.001

[[defer."weighted.test"]]
code = 452
msg = "4.2.2 almost always"
weight = 1000
"""

BODY = ["Subject: hi", "", "hello", "..dot-stuffed line", "."]
TXN = ["MAIL FROM:<a@example.test>", "RCPT TO:<b@example.com>", "DATA", *BODY]

CONVERSATIONS = {
    "plain": ["EHLO client.test", *TXN, "QUIT"],
    "helo": ["HELO client.test", *TXN, "QUIT"],
    "two messages": ["EHLO client.test", *TXN, *TXN, "QUIT"],
    "permfail gmail": ["EHLO c", "MAIL FROM:<a@x.test>", "RCPT TO:<permfail@gmail.com>", "DATA", *BODY, "QUIT"],
    "tempfail suffixed": ["EHLO c", "MAIL FROM:<a@x.test>", "RCPT TO:<tempfail@gmail.com.sink.test>", "DATA", *BODY],
    "450- user": ["EHLO c", "MAIL FROM:<a@x.test>", "RCPT TO:<450-me@example.com>", "DATA", *BODY],
    "worst of two": [
        "EHLO c",
        "MAIL FROM:<a@x.test>",
        "RCPT TO:<ok@gmail.com>",
        "RCPT TO:<permfail@gmail.com>",
        "DATA",
        *BODY,
    ],
    "rset": ["EHLO c", "MAIL FROM:<a@x.test>", "RCPT TO:<b@example.com>", "RSET", *TXN],
    "noop vrfy help": ["EHLO c", "NOOP", "VRFY someone", "HELP"],
    "mail before helo": ["MAIL FROM:<a@x.test>", "EHLO c", "MAIL FROM:<a@x.test>"],
    "rcpt before mail": ["EHLO c", "RCPT TO:<b@example.com>"],
    "data before rcpt": ["EHLO c", "MAIL FROM:<a@x.test>", "DATA"],
    "nested mail": ["EHLO c", "MAIL FROM:<a@x.test>", "MAIL FROM:<a@x.test>"],
    "bad mail syntax": ["EHLO c", "MAIL TO:<a@x.test>", "MAIL FROM:"],
    "bad rcpt syntax": ["EHLO c", "MAIL FROM:<a@x.test>", "RCPT FROM:<b@example.com>", "RCPT TO:"],
    "size too big": ["EHLO c", "MAIL FROM:<a@x.test> SIZE=999999999999"],
    "size not a number": ["EHLO c", "MAIL FROM:<a@x.test> SIZE=abc"],
    "unknown command": ["EHLO c", "FOO bar", "NOOP"],
    "empty line": ["EHLO c", "", "NOOP"],
    "nul and bad utf-8": ["EHLO c", "NO\x00OP", "RCPT TO:<\udcff@x>", "NOOP"],
    "ehlo without name": ["EHLO", "HELO"],
    "data with argument": ["EHLO c", "MAIL FROM:<a@x.test>", "RCPT TO:<b@example.com>", "DATA now"],
    "long line": ["EHLO c", "NOOP " + "x" * 2000, "NOOP"],
    "null sender": ["EHLO c", "MAIL FROM:<>", "RCPT TO:<b@example.com>", "DATA", *BODY],
    "unknown user": ["EHLO c", "MAIL FROM:<a@x.test>", "RCPT TO:<who@unknown.test>", "RCPT TO:<b@example.com>"],
    "tls required": ["EHLO c", "MAIL FROM:<a@x.test>", "RCPT TO:<b@tls.test>", "RCPT TO:<b@example.com>"],
    "too big for the domain": ["EHLO c", "MAIL FROM:<a@x.test>", "RCPT TO:<b@small.test>", "DATA", *BODY],
    "header required": ["EHLO c", "MAIL FROM:<a@x.test>", "RCPT TO:<b@strict.test>", "DATA", *BODY],
    "weighted texts": ["EHLO c", "MAIL FROM:<a@x.test>", "RCPT TO:<b@weighted.test>"],
    "auth not offered": ["EHLO c", "AUTH PLAIN AGEAYg=="],
    # Where the engines once answered apart: aiosmtpd took RCPT TO:<>, the fast engine took QUIT and RSET with an
    # argument (RFC 5321 allows none).
    "empty recipient": ["EHLO c", "MAIL FROM:<a@x.test>", "RCPT TO:<>", "RCPT TO:<b@example.com>"],
    "quit with an argument": ["EHLO c", "QUIT now", "QUIT"],
    "rset with an argument": ["EHLO c", "MAIL FROM:<a@x.test>", "RSET now", "MAIL FROM:<a@x.test>", "RSET"],
}

# (conversation, reply index) -> (fast engine's code, why it differs from aiosmtpd's there).
DIVERGENCES = {
    ("noop vrfy help", 4): ("214", "RFC 5321 4.2.2: HELP is answered 214; aiosmtpd answers 250"),
}


def talk(address: tuple[str, int], lines: list[str]) -> list[str]:
    """Send each line and read the full reply to it (none after DATA's content lines)."""
    replies: list[str] = []
    with socket.create_connection(address, timeout=10) as sock:
        reader = sock.makefile("rb")
        try:
            replies.append(_reply(reader))
            in_data = False
            for line in lines:
                sock.sendall(line.encode("utf-8", "surrogateescape") + b"\r\n")
                if in_data and line != ".":
                    continue
                reply = _reply(reader)
                replies.append(reply)
                in_data = reply.startswith("354")
                if not reply:
                    break
        finally:
            reader.close()
    return replies


def _reply(reader) -> str:  # type: ignore[no-untyped-def]
    lines = []
    while True:
        line = reader.readline()
        if not line:
            break
        lines.append(line.decode("ascii", "replace").rstrip("\r\n"))
        if len(line) < 4 or line[3:4] != b"-":
            break
    return "\n".join(lines)


@pytest.fixture(scope="module")
def sinks(tmp_path_factory):
    policy = tmp_path_factory.mktemp("engines") / "responses.toml"
    policy.write_text(POLICY)
    common = ("--policy", str(policy), "--seed", "1", "--hostname", "sink.test", "--max-message-size", "10MB")
    with running_sink(*common, "--engine", "fast") as fast, running_sink(*common, "--engine", "aiosmtpd") as ref:
        yield fast, ref


@pytest.mark.parametrize("name", list(CONVERSATIONS), ids=list(CONVERSATIONS))
def test_same_codes_as_aiosmtpd(sinks, name):
    """Both engines answer this conversation with the same reply codes, step by step."""
    fast, reference = sinks
    lines = CONVERSATIONS[name]
    got, expected = talk(fast.address, lines), talk(reference.address, lines)
    expected_codes = [r[:3] for r in expected]
    for (conversation, index), (code, _why) in DIVERGENCES.items():
        if conversation == name:
            expected_codes[index] = code
    assert [r[:3] for r in got] == expected_codes, f"fast: {got}\naiosmtpd: {expected}"


@pytest.mark.parametrize(
    ("name", "index"),
    [("unknown user", 3), ("tls required", 3), ("weighted texts", 3)],
    ids=["unknown-user", "tls-required", "weighted-texts"],
)
def test_rcpt_time_answers_are_identical(sinks, name, index):
    """The new RCPT-time answers are the same text on both engines: placeholders filled in, the weighted pick."""
    fast, reference = sinks
    got, expected = talk(fast.address, CONVERSATIONS[name])[index], talk(reference.address, CONVERSATIONS[name])[index]
    assert got == expected
    assert got[0] in "45"


def test_placeholders_filled_in(sinks):
    """{recipient} and {client_ip} are the recipient and the client's address, on the reference engine too."""
    _, reference = sinks
    answer = talk(reference.address, CONVERSATIONS["unknown user"])[3]
    assert answer == "550 5.1.1 <who@unknown.test>: user unknown, from [127.0.0.1]"


@pytest.mark.parametrize("name", ["permfail gmail", "tempfail suffixed", "450- user", "worst of two"])
def test_policy_answers_are_identical(sinks, name):
    """Answers decided by the policy are the same text on both engines (they come from one Session)."""
    fast, reference = sinks
    lines = CONVERSATIONS[name]
    end_of_data = lines.index("DATA") + 2  # replies: the greeting, one per command, then the end of DATA
    got, expected = talk(fast.address, lines)[end_of_data], talk(reference.address, lines)[end_of_data]
    assert got == expected
    assert got[0] in "45"


def _pipelined(address: tuple[str, int], data: bytes, wait: float = 3.0) -> bytes:
    """Write everything at once (after the greeting), then read until the server closes (or `wait` seconds of
    silence: then the client vanishes)."""
    with socket.create_connection(address, timeout=wait) as sock:
        sock.recv(512)
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def _codes(wire: bytes) -> list[bytes]:
    return [line[:3] for line in wire.split(b"\r\n") if line[3:4] in (b" ", b"")]


def test_pipelined_conversation_same_codes(sinks):
    """Two transactions, a refused recipient, RSET and QUIT in one write: the same replies from both engines."""
    body = b"Subject: x\r\n\r\n..dot\r\n.\r\n"
    data = (
        b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
        + body
        + b"MAIL FROM:<a@x.test>\r\nRCPT TO:<permfail@gmail.com>\r\nDATA\r\n"
        + body
        + b"RSET\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:\r\nNOOP\r\nQUIT\r\n"
    )
    fast, reference = sinks
    assert _codes(_pipelined(fast.address, data)) == _codes(_pipelined(reference.address, data))


@pytest.mark.parametrize(
    "hostile",
    [
        b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nno end in sight " * 50,
        b"EHLO " + b"x" * 100_000 + b"\r\nNOOP\r\nQUIT\r\n",
        b"\x00\xff\xfe\r\n" * 3 + b"QUIT\r\n",
    ],
    ids=["data-then-vanish", "huge-line", "binary"],
)
def test_hostile_input_same_codes_and_both_survive(sinks, hostile):
    """The same hostile input gets the same reply codes from both engines, and both still take a normal message."""
    fast, reference = sinks
    assert _codes(_pipelined(fast.address, hostile)) == _codes(_pipelined(reference.address, hostile))
    lines = CONVERSATIONS["plain"]
    assert [r[:3] for r in talk(fast.address, lines)] == [r[:3] for r in talk(reference.address, lines)]
    assert talk(fast.address, lines)[-2].startswith("250")


@pytest.mark.parametrize("name", list(CONVERSATIONS), ids=list(CONVERSATIONS))
def test_every_failure_carries_an_enhanced_code_on_both_engines(sinks, name):
    """ENHANCEDSTATUSCODES is advertised, so every 4xx and 5xx line carries one (RFC 2034): aiosmtpd's own replies
    too, which the reference engine completes."""
    for sink in sinks:
        for reply in talk(sink.address, CONVERSATIONS[name]):
            for line in reply.splitlines():
                if line[:1] in "45":
                    assert re.match(r"^[45]\d\d[ -][45]\.\d{1,3}\.\d{1,3}( |$)", line), (sink.address, line)


def test_no_auth_offered_with_auth_off(sinks):
    """--auth off (the default): neither engine offers AUTH in its EHLO reply, and both refuse AUTH alike."""
    for sink in sinks:
        replies = talk(sink.address, CONVERSATIONS["auth not offered"])
        assert "AUTH" not in replies[1], replies[1]
        assert replies[2].startswith("502 5.5.1"), replies[2]


@pytest.mark.parametrize("engine", ["fast", "aiosmtpd"])
def test_idle_client_gets_421_before_the_close(tmp_path, engine):
    """A client silent past --timeout is told so: 421 4.4.2, then the close (aiosmtpd alone closes silently)."""
    policy = "[default]\nbounce = 0\n"
    with (
        running_sink("--engine", engine, "--timeout", "1", policy=policy, tmp=tmp_path) as sink,
        socket.create_connection(sink.address, timeout=10) as sock,
    ):
        greeting = sock.recv(512)
        rest = b""
        while chunk := sock.recv(512):
            rest += chunk
    assert greeting.startswith(b"220")
    assert rest.startswith(b"421 4.4.2"), rest
