"""The sink over real sockets: accepting, forced answers per domain (with suffixes), the worst of several
recipients, pipelining, size limits, STARTTLS, AUTH, and the percentages and seed over the wire."""

from __future__ import annotations

import re
import smtplib
import socket
import ssl
from collections import Counter

import aiosmtplib
import pytest
from cryptography import x509

from harness.metrics import Metrics
from harness.policies import KUMO_POLICY, PROVIDERS, needs_kumo_policy
from harness.sink import running_sink
from harness.smtp import (
    BODY,
    SENDER,
    body_of,
    close,
    connect,
    connected,
    needs_swaks,
    needs_swaks_tls,
    parse_replies,
    read_reply,
    read_until_closed,
    send,
    swaks,
    transaction,
)
from harness.stats import assert_binomial
from smartsink.policy import load_policy
from smartsink.replies import render

MAX_SIZE = 10_000
GMAIL_DEFER = (452, "4.2.2 gmail: over quota")
GMAIL_BOUNCE = (550, "5.1.1 gmail: no such user")
YAHOO_DEFER = (451, "4.7.0 yahoo: deferred")
YAHOO_BOUNCE = (554, "5.7.9 yahoo: policy")
FALLBACK_DEFER = (451, "4.3.0 Temporary local problem, please try again later")
FALLBACK_BOUNCE = (550, "5.1.1 The email account that you tried to reach does not exist")


@pytest.fixture(scope="module")
def sink(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smtp")
    with running_sink("--seed", "3", "--max-message-size", f"{MAX_SIZE}B", policy=PROVIDERS, tmp=tmp) as running:
        yield running


@pytest.fixture(scope="module")
def suffix_sink(tmp_path_factory):
    policy = 'domain_suffix = "relay.test"\n' + PROVIDERS
    tmp = tmp_path_factory.mktemp("suffix")
    with running_sink("--domain-suffix", "mx.example.net", policy=policy, tmp=tmp) as running:
        yield running


@pytest.fixture(scope="module")
def tls_sink(tmp_path_factory):
    """A sink started without any TLS option: it offers STARTTLS with a certificate made at start."""
    tmp = tmp_path_factory.mktemp("tls")
    with running_sink(policy=PROVIDERS, tmp=tmp) as running:
        yield running


@pytest.fixture(scope="module")
def any_sink(tmp_path_factory):
    with running_sink("--auth", "any", policy=PROVIDERS, tmp=tmp_path_factory.mktemp("auth-any")) as running:
        yield running


@pytest.fixture(scope="module")
def required_sink(tmp_path_factory):
    with running_sink("--auth", "required", policy=PROVIDERS, tmp=tmp_path_factory.mktemp("auth-req")) as running:
        yield running


def accepted(reply: tuple[int, str]) -> bool:
    return reply[0] == 250 and reply[1].startswith("2.0.0 Ok: queued as ")


class TestAccepted:
    def test_smtplib(self, sink):
        """smtplib's sendmail goes through: no recipient refused, the DATA reply is 250 queued."""
        with connected(sink) as client:
            assert client.sendmail(SENDER, ["user@gmail.com"], BODY) == {}
            assert accepted(transaction(client, ["user@gmail.com", "other@example.org"]))

    def test_many_messages_on_one_connection(self, sink):
        """A connection carries transaction after transaction, each accepted."""
        with connected(sink) as client:
            replies = [transaction(client, [f"user{i}@gmail.com"]) for i in range(50)]
        assert all(accepted(r) for r in replies), replies

    @pytest.mark.asyncio
    async def test_aiosmtplib(self, sink):
        """aiosmtplib's sendmail goes through with a 250."""
        async with aiosmtplib.SMTP(hostname=sink.host, port=sink.port, timeout=10, start_tls=False) as client:
            errors, response = await client.sendmail(SENDER, ["user@yahoo.com"], BODY)
        assert errors == {}
        assert response.startswith("2.0.0 Ok: queued as ")

    @needs_swaks
    def test_swaks(self, sink):
        """swaks delivers with exit 0 and sees 250 queued after its DATA."""
        result = swaks(sink, "--to", "user@gmail.com")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "<-  250 2.0.0 Ok: queued as " in result.stdout


FORCED = {
    "tempfail-gmail": ("tempfail@gmail.com", GMAIL_DEFER),
    "permfail-gmail": ("permfail@gmail.com", GMAIL_BOUNCE),
    "tempfail-yahoo": ("tempfail@yahoo.com", YAHOO_DEFER),
    "permfail-yahoo": ("permfail@yahoo.com", YAHOO_BOUNCE),
    "tempfail-default-suffix": ("tempfail@gmail.com.sink.test", GMAIL_DEFER),
    "permfail-default-suffix-upper-case": ("permfail@GMAIL.COM.SINK.TEST", GMAIL_BOUNCE),
    "tempfail-unknown-domain": ("tempfail@example.org", FALLBACK_DEFER),
    "permfail-unknown-domain": ("permfail@example.org", FALLBACK_BOUNCE),
    "450-echo": ("450-hello@gmail.com", (450, "4.0.0 you said 450-hello")),
    "bounce-100": ("someone@bounceall.test", FALLBACK_BOUNCE),
}


class TestForcedRecipients:
    @pytest.mark.parametrize(("recipient", "reply"), FORCED.values(), ids=FORCED.keys())
    def test_forced_answer(self, sink, recipient, reply):
        """The user part forces the answer at the end of DATA, from the recipient domain's own lists."""
        assert send(sink, [recipient]) == reply

    def test_250_dash_accepted_at_100_percent_bounce(self, sink):
        """250-... is accepted by a domain that bounces 100% of everyone else."""
        assert send(sink, ["someone@bounceall.test"])[0] == 550
        assert accepted(send(sink, ["250-fine@bounceall.test"]))

    @needs_swaks
    def test_swaks_sees_the_domains_deferral(self, sink):
        """swaks fails the DATA step with gmail's own 452 text."""
        result = swaks(sink, "--to", "tempfail@gmail.com.sink.test")
        assert result.returncode != 0
        assert "<** 452 4.2.2 gmail: over quota" in result.stdout


SUFFIXED = {
    "cli-suffix": ("tempfail@gmail.com.mx.example.net", GMAIL_DEFER),
    "cli-suffix-upper-case": ("permfail@Yahoo.Com.MX.Example.NET", YAHOO_BOUNCE),
    "policy-file-suffix": ("tempfail@yahoo.com.relay.test", YAHOO_DEFER),
    "default-suffix-replaced": ("tempfail@gmail.com.sink.test", FALLBACK_DEFER),
    "no-suffix": ("permfail@gmail.com", GMAIL_BOUNCE),
}


class TestDomainSuffix:
    @pytest.mark.parametrize(("recipient", "reply"), SUFFIXED.values(), ids=SUFFIXED.keys())
    def test_suffix_from_option_and_policy(self, suffix_sink, recipient, reply):
        """--domain-suffix (replacing the default sink.test) and the policy's domain_suffix both strip."""
        assert send(suffix_sink, [recipient]) == reply


WORST = {
    "all-accepted": (["a@gmail.com", "b@yahoo.com", "c@example.org"], None),
    "temp-over-accept": (["a@gmail.com", "tempfail@gmail.com"], GMAIL_DEFER),
    "perm-over-temp": (["tempfail@gmail.com", "permfail@yahoo.com"], YAHOO_BOUNCE),
    "perm-first-over-temp": (["permfail@gmail.com", "tempfail@yahoo.com"], GMAIL_BOUNCE),
    "first-of-two-temps": (["tempfail@yahoo.com", "tempfail@gmail.com"], YAHOO_DEFER),
    "450-among-accepts": (["a@example.org", "450-x@gmail.com", "b@gmail.com"], (450, "4.0.0 you said 450-x")),
    "forced-accept-does-not-save-others": (["250-x@bounceall.test", "permfail@gmail.com"], GMAIL_BOUNCE),
}


class TestSeveralRecipients:
    @pytest.mark.parametrize(("recipients", "reply"), WORST.values(), ids=WORST.keys())
    def test_worst_outcome_wins(self, sink, recipients, reply):
        """With several recipients, each RCPT gets 250 and DATA the worst answer (perm > temp > accept)."""
        with connected(sink) as client:
            assert client.mail(SENDER)[0] == 250
            assert [client.rcpt(r)[0] for r in recipients] == [250] * len(recipients)
            code, text = client.data(BODY)
        if reply is None:
            assert accepted((code, text.decode()))
        else:
            assert (code, text.decode()) == reply


class TestPipelining:
    def test_pipelined_transactions_in_one_write_get_every_reply(self, sink):
        """Two transactions, RSET, NOOP and QUIT written at once get every reply, in order."""
        with socket.create_connection(sink.address, timeout=10) as sock:
            assert read_reply(sock).startswith(b"220 ")
            sock.sendall(b"EHLO client.test\r\n")
            assert b"250-PIPELINING\r\n" in read_reply(sock)
            sock.sendall(
                f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<a@gmail.com>\r\n".encode()
                + b"RCPT TO:<tempfail@gmail.com>\r\nDATA\r\n"
                + BODY
                + f".\r\nMAIL FROM:<{SENDER}>\r\nRCPT TO:<b@yahoo.com>\r\nDATA\r\n".encode()
                + BODY
                + b".\r\nRSET\r\nNOOP\r\nQUIT\r\n"
            )
            replies = parse_replies(read_until_closed(sock))
        assert [code for code, _ in replies] == [250, 250, 250, 354, 452, 250, 250, 354, 250, 250, 250, 221]
        assert replies[4][1] == ["4.2.2 gmail: over quota"]
        assert replies[8][1][0].startswith("2.0.0 Ok: queued as ")


class TestSize:
    def test_size_advertised(self, sink):
        """EHLO advertises the --max-message-size limit."""
        with connected(sink) as client:
            assert client.esmtp_features["size"] == str(MAX_SIZE)

    @pytest.mark.parametrize(
        ("size", "code"),
        [(MAX_SIZE, 250), (MAX_SIZE + 1, 552), (3 * MAX_SIZE, 552)],
        ids=["at", "over-by-1", "3x"],
    )
    def test_message_over_the_limit_gets_552(self, sink, size, code):
        """A message (sent without SIZE=) over the limit gets 552 after DATA; the connection goes on."""
        with connected(sink) as client:
            got = transaction(client, ["user@gmail.com"], body_of(size))
            assert got[0] == code, got
            assert client.noop()[0] == 250
            assert accepted(transaction(client, ["user@gmail.com"]))

    @pytest.mark.parametrize(("size", "code"), [(MAX_SIZE, 250), (MAX_SIZE + 1, 552)], ids=["at", "over"])
    def test_size_parameter_checked_at_mail(self, sink, size, code):
        """MAIL FROM with SIZE= over the limit gets 552 at once."""
        with connected(sink) as client:
            assert client.mail(SENDER, [f"SIZE={size}"])[0] == code

    def test_smtplib_sendmail_of_a_big_message_is_refused_at_mail(self, sink):
        """smtplib declares SIZE itself, so a big message is refused before its data is sent."""
        with connected(sink) as client, pytest.raises(smtplib.SMTPSenderRefused) as caught:
            client.sendmail(SENDER, ["user@gmail.com"], body_of(2 * MAX_SIZE))
        assert caught.value.smtp_code == 552


def unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class TestStartTLS:
    def test_smtplib_starttls_then_a_message(self, tls_sink):
        """STARTTLS is offered, the handshake succeeds, and mail goes through encrypted."""
        with connected(tls_sink) as client:
            assert client.has_extn("starttls")
            assert client.starttls(context=unverified())[0] == 220
            assert client.sock.version().startswith("TLS")
            client.ehlo("client.test")
            assert not client.has_extn("starttls")
            assert accepted(transaction(client, ["user@gmail.com"]))
            assert transaction(client, ["tempfail@gmail.com"]) == GMAIL_DEFER

    @pytest.mark.asyncio
    async def test_aiosmtplib_starttls(self, tls_sink):
        """aiosmtplib upgrades with STARTTLS and sends."""
        client = aiosmtplib.SMTP(hostname=tls_sink.host, port=tls_sink.port, timeout=10, start_tls=False)
        async with client:
            await client.starttls(validate_certs=False)
            assert client.get_transport_info("sslcontext") is not None
            errors, _ = await client.sendmail(SENDER, ["user@gmail.com"], BODY)
        assert errors == {}

    @needs_swaks_tls
    def test_swaks_tls(self, tls_sink):
        """swaks --tls negotiates STARTTLS and delivers."""
        result = swaks(tls_sink, "--to", "user@gmail.com", "--tls")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "=== TLS started with cipher" in result.stdout

    def test_starttls_by_default_with_a_certificate_made_at_start(self, tls_sink):
        """Without any TLS option the sink offers STARTTLS, as real providers do, and presents a self-signed
        certificate for its --hostname, made at start."""
        with connected(tls_sink) as client:
            assert client.has_extn("starttls")
            assert client.starttls(context=unverified())[0] == 220
            certificate = x509.load_der_x509_certificate(client.sock.getpeercert(binary_form=True))
        assert certificate.issuer == certificate.subject
        assert "self-signed" in tls_sink.log()

    def test_no_tls_offers_no_starttls(self, tmp_path):
        """--no-tls: no STARTTLS in the EHLO reply, and the command is answered 454."""
        with running_sink("--no-tls", policy=PROVIDERS, tmp=tmp_path) as plain, connected(plain) as client:
            assert not client.has_extn("starttls")
            assert client.docmd("STARTTLS")[0] == 454


class TestAuth:
    @pytest.mark.parametrize(
        ("user", "password"), [("anyone", "whatever"), ("", "x"), ("me@example.org", "p@ss word")], ids=str
    )
    def test_login_with_any_credentials(self, any_sink, user, password):
        """--auth any: smtplib.login succeeds whatever the credentials, then mail goes through."""
        with connected(any_sink) as client:
            assert "PLAIN" in client.esmtp_features["auth"]
            assert "LOGIN" in client.esmtp_features["auth"]
            assert client.login(user, password)[0] == 235
            assert accepted(transaction(client, ["user@gmail.com"]))

    @pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
    def test_each_mechanism(self, any_sink, mechanism):
        """AUTH PLAIN and AUTH LOGIN each succeed."""
        with connected(any_sink) as client:
            client.user, client.password = "user", "secret"
            assert client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))[0] == 235

    def test_any_does_not_demand_it(self, any_sink):
        """--auth any accepts mail without AUTH too."""
        assert accepted(send(any_sink, ["user@gmail.com"]))

    def test_required_refuses_mail_before_login(self, required_sink):
        """--auth required: MAIL before AUTH gets 530; after a login it is accepted."""
        with connected(required_sink) as client:
            code, text = client.mail(SENDER)
            assert (code, text.decode()) == (530, "5.7.0 Authentication required")
            assert client.login("anyone", "anything")[0] == 235
            assert accepted(transaction(client, ["user@gmail.com"]))

    @needs_swaks
    def test_swaks_auth_login(self, required_sink):
        """swaks with AUTH LOGIN delivers to a sink that requires authentication."""
        result = swaks(
            required_sink,
            "--to",
            "user@gmail.com",
            "--auth",
            "LOGIN",
            "--auth-user",
            "u",
            "--auth-password",
            "p",
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def test_no_auth_unless_asked(self, sink):
        """Without --auth, AUTH is neither offered nor accepted."""
        with connected(sink) as client:
            assert not client.has_extn("auth")
            assert client.docmd("AUTH", "PLAIN AHUAcA==")[0] == 502


# --- percentages and seed over the wire -----------------------------------------------------------------
RATE_POLICY = """
[default]
bounce = 0
defer = 0

[domain."gmail.com"]
bounce = 10
defer = 5

[[bounce."gmail.com"]]
code = 554
msg = "5.0.0 rolled bounce"

[[defer."gmail.com"]]
code = 452
msg = "4.0.0 rolled defer"
"""
MESSAGES = 2000
SIGMAS = 4.5  # counts within 4.5 binomial standard deviations (n=2000: 200 +- 60 bounces, 100 +- 44 defers)


def codes_of(sink, count: int, recipient: str = "user{i}@gmail.com") -> list[tuple[int, str]]:
    """Answers to `count` sequential one-recipient messages on one connection."""
    client = connect(sink)
    try:
        return [transaction(client, [recipient.format(i=i)]) for i in range(count)]
    finally:
        close(client)


class TestPercentagesOverTheWire:
    def test_bounce_10_defer_5_over_2000_messages(self, tmp_path):
        """Over 2000 messages gmail.com's 10% bounces and 5% deferrals come within 4.5 sd; /metrics agrees."""
        with running_sink("--seed", "42", policy=RATE_POLICY, tmp=tmp_path) as sink:
            answers = Counter(code for code, _ in codes_of(sink, MESSAGES))
            metrics = Metrics.scrape(sink)
        assert set(answers) <= {250, 554, 452}, answers
        assert_binomial(answers[554], MESSAGES, 0.10, SIGMAS, "bounces")
        assert_binomial(answers[452], MESSAGES, 0.05, SIGMAS, "deferrals")
        assert metrics.messages() == {
            ("gmail.com", "accepted"): answers[250],
            ("gmail.com", "permfailed"): answers[554],
            ("gmail.com", "tempfailed"): answers[452],
        }

    def test_same_seed_same_answers(self, tmp_path):
        """Two sinks with the same --seed answer one sequential client identically; another seed does not."""
        policy = RATE_POLICY.replace("bounce = 10", "bounce = 30").replace("defer = 5", "defer = 30")

        def run(seed: str) -> list[tuple[int, str]]:
            with running_sink("--seed", seed, policy=policy, tmp=tmp_path) as sink:
                return codes_of(sink, 200)

        first, again, other = run("1234"), run("1234"), run("1235")
        assert len({code for code, _ in first}) == 3
        assert first == again
        assert [c for c, _ in first] != [c for c, _ in other]


# --- KumoMTA's own policy file --------------------------------------------------------------------------


def rendered(replies) -> set[tuple[int, str]]:
    """(code, text) as smtplib reports each reply: the rendered lines' texts joined by newlines."""
    return {(r.code, "\n".join(line[4:].decode() for line in render(r)[:-2].split(b"\r\n"))) for r in replies}


@pytest.fixture(scope="module")
def kumo_sink():
    with running_sink("--seed", "9", policy=KUMO_POLICY) as running:
        yield running


@needs_kumo_policy()
class TestKumoPolicy:
    def test_starts_and_logs_its_warning(self, kumo_sink):
        """KumoMTA's file starts a sink unchanged; its 550-in-a-defer-list warning is logged at file:line."""
        assert re.search(
            rf"policy warning: {re.escape(str(KUMO_POLICY))}:\d+: \[\[defer\.\"yahoo\.ca\"\]\]",
            kumo_sink.log(),
        )
        assert kumo_sink.health()["policy"]["domains"] == len(load_policy(KUMO_POLICY).domains)

    @pytest.mark.parametrize(
        ("recipient", "domain", "kind", "low", "high"),
        [
            ("tempfail@gmail.com", "gmail.com", "defers", 400, 500),
            ("permfail@gmail.com.sink.test", "gmail.com", "bounces", 500, 600),
            ("permfail@yahoo.com", "yahoo.com", "bounces", 500, 600),
            ("tempfail@yahoo.ca", "yahoo.ca", "defers", 400, 500),
        ],
        ids=[
            "tempfail-gmail",
            "permfail-gmail-suffixed",
            "permfail-yahoo",
            "tempfail-yahoo.ca-never-its-550",
        ],
    )
    def test_forced_answers_come_from_that_domains_lists(self, kumo_sink, recipient, domain, kind, low, high):
        """Over 40 tries, every answer is one of that domain's own replies of the right class, rendered."""
        rules = load_policy(KUMO_POLICY).domains[domain]
        allowed = rendered(r for r in getattr(rules, kind) if low <= r.code < high)
        got = {send(kumo_sink, [recipient]) for _ in range(40)}
        assert got <= allowed
        assert len(got) > 1  # not a fixed text, unlike KumoMTA's own sink

    @pytest.mark.parametrize("domain", ["aol.com", "gmail.com"], ids=["aol-421s-only", "gmail-mixed"])
    def test_forced_tempfail_keeps_the_connection_open(self, kumo_sink, domain):
        """KumoMTA's sink answers tempfail@ and keeps the connection; so does this one, with the domain's own words:
        never a 421 (which closes), so ten forced tempfails go over one connection. aol.com's deferrals in
        KumoMTA's file are all 421s: their words come with 451."""
        rules = load_policy(KUMO_POLICY).domains[domain]
        words = {text for _, text in rendered(r for r in rules.defers if 400 <= r.code < 500)}
        with connected(kumo_sink) as client:
            for _ in range(10):
                code, text = transaction(client, [f"tempfail@{domain}"])
                assert 400 <= code < 500
                assert code != 421
                assert text in words
            assert client.noop()[0] == 250

    def test_250_dash_accepted(self, kumo_sink):
        """250-... is accepted under KumoMTA's percentages."""
        assert all(accepted(send(kumo_sink, ["250-x@gmail.com"])) for _ in range(20))


class TestAcceptAll:
    def test_a_black_hole_without_a_policy(self, tmp_path):
        """--accept-all reads no policy (the --policy given does not even exist) and takes everything at once:
        every recipient, tempfail@ and permfail@ too; the ready line says no policy is served, and reloads
        change nothing."""
        missing = tmp_path / "no-such-policy.toml"
        with running_sink("--accept-all", "--policy", str(missing)) as sink:
            assert "policy none (--accept-all: every recipient 250)" in sink.log()
            with connected(sink) as client:
                for recipients in (["a@gmail.com"], ["tempfail@yahoo.com", "permfail@hotmail.com"], ["450-x@aol.com"]):
                    assert accepted(transaction(client, recipients))
            health = sink.health()
        assert health["policy"]["path"] == "--accept-all"
        assert health["policy"]["domains"] == 0
