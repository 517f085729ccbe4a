"""What trafficgen puts on the wire, seen by an aiosmtpd capture server: envelopes, headers, bodies, pipelining,
connection reuse, AUTH and STARTTLS (issue 3, "What goes on the wire")."""

from __future__ import annotations

import collections
import datetime
import email.policy
import email.utils
import re
from email.parser import BytesParser
from pathlib import Path

import pytest

from harness.capture import CaptureServer
from harness.mail import MESSAGE_ID, crlf, split_message, stuffed, transactions
from harness.stats import CHI2_CRITICAL_0_001, chi_square
from harness.trafficgen import check_invariants, error_lines, run_report, run_trafficgen
from smartsink.tls import self_signed, server_context

DEFAULT_DOMAINS = ("aol.com", "gmail.com", "hotmail.com", "yahoo.com")
LINE_MAX = 78
RECIPIENT = re.compile(rb"^user-(\d+)\.[a-z0-9_-]+@(.+)$")
AUTH_WARNING = "ignore:Requiring AUTH while not requiring TLS:UserWarning"


def send(server: CaptureServer, *args: str, count: int = 20, expect: int = 0) -> dict:
    report, _ = run_report("--target", server.target, "--message-count", str(count), *args, expect=expect)
    return report


def parse(content: bytes) -> email.message.EmailMessage:
    return BytesParser(policy=email.policy.default).parsebytes(content)  # type: ignore[return-value]


class TestEnvelope:
    """Senders, recipients and domains as the server sees them."""

    @pytest.mark.parametrize(
        ("args", "suffix"),
        [([], ".sink.test"), (["--domain-suffix", "mx.test"], ".mx.test"), (["--domain-suffix", ""], "")],
        ids=["default-suffix", "custom-suffix", "no-suffix"],
    )
    def test_generated_addresses_carry_the_suffix(self, args, suffix):
        """Recipients are user-<n>.<run>@<domain><suffix> and the sender noreply@ the same domain; '' drops the
        suffix."""
        with CaptureServer() as server:
            send(server, "--concurrency", "3", *args)
        assert len(server.messages) == 20
        for message in server.messages:
            (recipient,) = message.rcpt_tos
            local, _, domain = recipient.partition("@")
            assert re.fullmatch(r"user-\d+\.[0-9a-f]{12}", local), "numbered, and the run's tag (a random run id)"
            assert domain.removesuffix(suffix) in DEFAULT_DOMAINS
            assert domain.endswith(suffix)
            assert message.mail_from == f"noreply@{domain}"

    def test_recipients_are_unique_and_numbered_from_zero(self):
        """Every message gets a recipient of its own: user-0 .. user-(N-1), each exactly once."""
        with CaptureServer() as server:
            send(server, "--concurrency", "4", count=60)
        numbers = [int(RECIPIENT.match(m.rcpt_tos[0].encode())[1]) for m in server.messages]
        assert sorted(numbers) == list(range(60))

    def test_domain_weights_hold_by_chi_square(self):
        """Domains follow float weights: chi-square under the 0.001 critical value (fixed seed)."""
        # 3 degrees of freedom; the same test rejects uniform weights, so it can fail.
        weights = {"gmail.com": 67.4, "yahoo.com": 5.9, "hotmail.com": 8.8, "aol.com": 1.5}
        domains = [f"--domain={name}:{weight}" for name, weight in weights.items()]
        with CaptureServer() as server:
            report = send(server, "--concurrency", "8", "--seed", "11", "--body-size", "200", *domains, count=2000)
        seen = collections.Counter(m.rcpt_tos[0].split("@")[1].removesuffix(".sink.test") for m in server.messages)
        observed = [seen[name] for name in weights]
        assert sum(observed) == 2000
        assert chi_square(observed, list(weights.values())) < CHI2_CRITICAL_0_001[3]
        assert chi_square(observed, [1.0] * 4) > CHI2_CRITICAL_0_001[3]  # the check has the power to fail
        assert {name: row["accepted"] for name, row in report["domains"].items()} == dict(seen)

    def test_fixed_sender_and_recipient(self):
        """--sender and --recipient fix the envelope (no weights, no suffix)."""
        with CaptureServer() as server:
            report = send(server, "--sender", "bounces@lab.test", "--recipient", "inbox@mx.lab.test", count=5)
        assert [(m.mail_from, m.rcpt_tos) for m in server.messages] == [("bounces@lab.test", ["inbox@mx.lab.test"])] * 5
        assert list(report["domains"]) == ["mx.lab.test"]
        assert report["domains"]["mx.lab.test"]["accepted"] == 5

    def test_recipients_per_message(self):
        """--recipients-per-message 3 sends three RCPTs per transaction, to distinct recipients of one domain."""
        with CaptureServer() as server:
            report = send(server, "--recipients-per-message", "3", "--concurrency", "2", count=10)
        for t in server.all_transactions():
            assert sum(c.startswith(b"RCPT TO:") for c in t.commands) == 3
        everyone = [r for m in server.messages for r in m.rcpt_tos]
        assert len(everyone) == len(set(everyone)) == 30
        for message in server.messages:
            assert len({r.split("@")[1] for r in message.rcpt_tos}) == 1
            assert parse(message.content)["To"].addresses is not None
            assert [a.addr_spec for a in parse(message.content)["To"].addresses] == message.rcpt_tos
        assert report["recipients"]["accepted"] == 30

    def test_ehlo_name(self):
        """EHLO sends a generated name under the suffix by default, and --ehlo's name when given."""
        with CaptureServer() as server:
            send(server, "--concurrency", "1", count=2)
            send(server, "--ehlo", "mta-tester.lab.test", "--concurrency", "1", count=2)
        assert [m.helo for m in server.messages] == ["trafficgen.sink.test"] * 2 + ["mta-tester.lab.test"] * 2


class TestConnections:
    """Connections are reused, and renewed after --messages-per-connection."""

    def test_connections_are_reused(self):
        """Forty messages over two connections open exactly two connections, each ending with QUIT."""
        with CaptureServer() as server:
            report = send(server, "--concurrency", "2", count=40)
        assert len(server.connections) == 2 == report["connections"]["opened"]
        assert all(c.stream.endswith(b"QUIT\r\n") for c in server.connections)

    @pytest.mark.parametrize(("per_connection", "expected"), [(1, [1] * 5), (3, [3, 2]), (5, [5])], ids=["1", "3", "5"])
    def test_messages_per_connection(self, per_connection, expected):
        """--messages-per-connection N: each connection carries at most N messages, then a new one opens."""
        with CaptureServer() as server:
            send(server, "--concurrency", "1", "--messages-per-connection", str(per_connection), count=5)
        assert [len(transactions(c.stream)) for c in server.connections] == expected
        assert len(server.messages) == 5


class TestPipelining:
    """RFC 2920: MAIL, RCPT and DATA leave together when the server offers PIPELINING, one by one otherwise."""

    def test_pipelined_when_offered(self):
        """Every MAIL arrives in the same packet as its RCPTs and DATA."""
        with CaptureServer(pipelining=True) as server:
            send(server, "--concurrency", "2", "--recipients-per-message", "2")
        mails = [c for conn in server.connections for c in conn.chunks if b"MAIL FROM:" in c]
        assert len(mails) > 0
        assert all(b"RCPT TO:" in c and b"\r\nDATA\r\n" in c for c in mails)
        assert sum(conn.grouped_chunks() for conn in server.connections) >= 20

    @pytest.mark.parametrize(
        ("offered", "args"),
        [(True, ["--no-pipelining"]), (False, [])],
        ids=["no-pipelining-flag", "not-offered"],
    )
    def test_one_command_at_a_time(self, offered, args):
        """With --no-pipelining, or when the server does not offer it, each command waits for its reply."""
        with CaptureServer(pipelining=offered) as server:
            report = send(server, "--concurrency", "2", "--recipients-per-message", "2", *args)
        assert report["totals"]["accepted"] == 20
        for connection in server.connections:
            assert connection.mixed_chunks() == 0
            commands = [c for c in connection.chunks if re.match(rb"^(MAIL|RCPT|DATA|EHLO|QUIT)", c)]
            assert all(c.count(b"\r\n") == 1 for c in commands), commands


class TestContent:
    """Headers and bodies: what an MTA reads."""

    def test_headers(self):
        """From, To, Subject, Date, Message-ID (<id@host>, unique), X-Mailer, X-Trafficgen-Id and --header extras."""
        now = datetime.datetime.now(datetime.UTC)
        with CaptureServer() as server:
            send(
                server,
                "--run-id",
                "wire1",
                "--header",
                "X-Campaign: spring sale",
                "--header",
                "X-Priority:3",
                count=10,
            )
        ids = set()
        for received in server.messages:
            message = parse(received.content)
            number = int(RECIPIENT.match(received.rcpt_tos[0].encode())[1])
            assert message["From"] == received.mail_from
            assert message["To"] == received.rcpt_tos[0]
            assert message["Subject"].strip()
            date = email.utils.parsedate_to_datetime(message["Date"])
            assert date.tzinfo is not None, "RFC 5322 3.3: -0000 means the zone is unknown"
            assert abs((date - now).total_seconds()) < 300
            assert MESSAGE_ID.match(str(message["Message-ID"])), message["Message-ID"]
            ids.add(str(message["Message-ID"]))
            assert message["X-Mailer"].startswith("trafficgen/")
            assert re.fullmatch(rf"wire1\.{number}; t=\d{{13}}", message["X-Trafficgen-Id"])
            assert message["X-Campaign"] == "spring sale"
            assert message["X-Priority"] == "3"
        assert len(ids) == 10

    @pytest.mark.parametrize(
        ("size", "least"), [("1024", 1024), ("60kb", 60_000), ("1MiB", 1_048_576)], ids=["1024", "60kb", "1MiB"]
    )
    def test_body_is_at_least_the_size(self, size, least):
        """The body holds at least the asked bytes and at most one line more."""
        with CaptureServer() as server:
            send(server, "--body-size", size, count=3)
        for message in server.messages:
            _, body = split_message(message.content)
            assert least <= len(body) < least + LINE_MAX + 2

    def test_body_size_range(self):
        """--body-size 10kb..200kb: every body within the range (plus at most a line), and sizes spread over it."""
        with CaptureServer() as server:
            send(server, "--body-size", "10kb..200kb", "--seed", "5", count=30)
        sizes = [len(split_message(m.content)[1]) for m in server.messages]
        assert all(10_000 <= s < 200_000 + LINE_MAX + 2 for s in sizes), sizes
        assert max(sizes) - min(sizes) > 100_000
        assert len(set(sizes)) == 30

    @pytest.mark.parametrize(
        "args",
        [[], ["--recipients-per-message", "5"], ["--body-size", "10kb..20kb"]],
        ids=["default", "five-recipients", "size-range"],
    )
    def test_lines_are_crlf_and_short(self, args):
        """On the wire every content line ends in CRLF (no bare CR or LF) and has at most 78 characters."""
        with CaptureServer() as server:
            send(server, "--concurrency", "2", *args, count=10)
        contents = [t.content for t in server.all_transactions()]
        assert len(contents) == 10
        for content in contents:
            assert content.endswith(b"\r\n")
            assert content.count(b"\n") == content.count(b"\r") == content.count(b"\r\n")
            long = [line for line in content.split(b"\r\n") if len(line) > LINE_MAX]
            assert not long, long[:3]

    def test_body_is_readable_text(self):
        """The generated body is plain words and sentences in printable ASCII."""
        with CaptureServer() as server:
            send(server, "--body-size", "4kb", count=2)
        for message in server.messages:
            _, body = split_message(message.content)
            assert re.fullmatch(rb"[A-Za-z .\r\n]+", body)
            assert len(body.split()) > 400

    def test_body_file_is_sent_dot_stuffed(self, tmp_path: Path):
        """--body-file is dot-stuffed on the wire and arrives exactly, made CRLF."""
        # a lone '.' line must not end DATA early; the trace header and --header extras come first.
        text = (
            b"From: file@lab.test\nTo: someone@lab.test\nSubject: dots\r\n\n"
            b".leading dot\n..two dots\n.\nmiddle . dot\r.\r\nlast line without an end"
        )
        path = tmp_path / "message.eml"
        path.write_bytes(text)
        with CaptureServer() as server:
            send(server, "--body-file", str(path), "--run-id", "dots", "--header", "X-Extra: 1", count=1)
        (message,) = server.messages
        trace = re.match(rb"X-Trafficgen-Id: dots\.0; t=\d{13}\r\n", message.content)
        assert trace is not None
        head = trace.group() + b"X-Extra: 1\r\n"
        assert message.content == head + crlf(text)
        (transaction,) = list(server.all_transactions())
        assert transaction.content == head + stuffed(crlf(text))
        assert b"\r\n..\r\n" in transaction.content
        assert b"\r\n...two dots" in transaction.content


@pytest.mark.filterwarnings(AUTH_WARNING)
class TestAuth:
    """AUTH PLAIN and LOGIN against a server that demands them."""

    @pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
    def test_right_credentials_pass(self, mechanism):
        """With the right user and password every connection authenticates with the one mechanism offered."""
        with CaptureServer(credentials=("loadtester", "s3cret pass"), mechanisms=[mechanism]) as server:
            report = send(
                server, "--auth-user", "loadtester", "--auth-password", "s3cret pass", "--concurrency", "2", count=6
            )
        assert report["totals"]["accepted"] == 6
        assert server.auth_attempts == [(mechanism, b"loadtester", True)] * 2
        assert {m.auth_login for m in server.messages} == {b"loadtester"}

    def test_wrong_password_stops_with_one_line(self):
        """A refused AUTH ends the run: exit 1 and one line saying authentication failed, with the reply."""
        with CaptureServer(credentials=("loadtester", "right")) as server:
            done = run_trafficgen(
                "--target", server.target, "--message-count", "5", "--auth-user", "loadtester",
                "--auth-password", "wrong", "--concurrency", "1",
            )  # fmt: skip
        assert done.returncode == 1
        (line,) = error_lines(done)
        assert line.startswith("trafficgen: error:")
        assert "authentication failed: 535" in line
        assert server.messages == []

    def test_server_without_auth(self):
        """--auth-user against a server that offers no AUTH: exit 1 and one line saying so."""
        with CaptureServer() as server:
            done = run_trafficgen(
                "--target", server.target, "--message-count", "2", "--auth-user", "u", "--auth-password", "p", "-q"
            )
        assert done.returncode == 1
        (line,) = error_lines(done)
        assert "offers neither AUTH PLAIN nor AUTH LOGIN" in line

    def test_without_credentials_mail_is_refused(self):
        """Without --auth-user, a server that demands AUTH refuses each MAIL with 530: permfailed, counted."""
        with CaptureServer(credentials=("u", "p")) as server:
            report = send(server, count=4)
        assert report["totals"]["permfailed"] == 4
        assert {r["code"] for r in report["replies"]} == {530}
        assert server.messages == []


class TestStartTLS:
    """STARTTLS before the mail, against a server with a self-signed certificate."""

    @pytest.fixture
    def tls(self, tmp_path):
        return server_context(*self_signed("capture.test", str(tmp_path)))

    def test_starttls_encrypts_the_mail(self, tls):
        """--starttls: each connection upgrades before MAIL, and every message arrives over TLS."""
        with CaptureServer(tls_context=tls, require_starttls=True) as server:
            report = send(server, "--starttls", "--concurrency", "2", count=6)
        assert report["totals"]["accepted"] == 6
        assert all(m.tls for m in server.messages)
        assert all(c.tls for c in server.connections)
        for connection in server.connections:
            plain = connection.stream.split(b"STARTTLS\r\n")[0]
            assert b"MAIL FROM" not in plain

    def test_without_starttls_the_server_refuses(self, tls):
        """Without --starttls, a server that requires it answers 530 to MAIL: permfailed, never sent in clear."""
        with CaptureServer(tls_context=tls, require_starttls=True) as server:
            report = send(server, count=3)
        assert report["totals"]["permfailed"] == 3
        assert server.messages == []

    def test_auth_after_starttls(self, tls):
        """AUTH offered only over TLS: --starttls with credentials upgrades, then authenticates."""
        with CaptureServer(tls_context=tls, credentials=("tls-user", "pw"), auth_require_tls=True) as server:
            report = send(server, "--starttls", "--auth-user", "tls-user", "--auth-password", "pw", count=3)
        assert report["totals"]["accepted"] == 3
        assert all(m.tls and m.auth_login == b"tls-user" for m in server.messages)

    def test_starttls_not_offered_goes_on_in_clear(self):
        """--starttls uses STARTTLS when offered: a server without it still gets the mail, unencrypted."""
        with CaptureServer() as server:
            report = send(server, "--starttls", count=2)
        check_invariants(report)
        assert report["totals"]["accepted"] == 2
        assert not any(m.tls for m in server.messages)
