"""Providers as they behave: limits per sending address (several loopback sources, one and two workers),
reputation that escalates, windows of changed rules from the schedule and the admin API, weighted texts,
per-domain requirements, texts that name the client and the recipient. How an escalation ends with time is pinned in
process, with an injected clock (test_responder.py)."""

from __future__ import annotations

import json
import random
import smtplib
import socket
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from harness.policies import ACCEPT_ALL
from harness.sink import run_smartsink, running_sink, wait_for
from harness.smtp import BODY, SENDER, read_reply
from smartsink.policy import decide
from smartsink.policy.model import Reply

SOURCES = ("127.0.0.2", "127.0.0.3")


def rcpt_code(sink, source: str, recipient: str, client: smtplib.SMTP | None = None) -> int:  # type: ignore[no-untyped-def]
    """The reply code to one RCPT from `source` (a fresh connection unless one is given)."""
    own = client is None
    if client is None:
        client = smtplib.SMTP(*sink.address, source_address=(source, 0), timeout=10)
        client.ehlo("client.test")
    try:
        client.mail(SENDER)
        code, _ = client.rcpt(recipient)
        client.rset()
        return code
    finally:
        if own:
            client.quit()


def held_transaction(sink, source: str, recipient: str) -> tuple[socket.socket, int]:  # type: ignore[no-untyped-def]
    """A connection from `source` with a transaction open to `recipient` (its RCPT's code), kept open."""
    sock = socket.create_connection(sink.address, timeout=10, source_address=(source, 0))
    read_reply(sock)
    sock.sendall(b"EHLO client.test\r\n")
    read_reply(sock)
    sock.sendall(f"MAIL FROM:<{SENDER}>\r\n".encode())
    read_reply(sock)
    sock.sendall(f"RCPT TO:<{recipient}>\r\n".encode())
    code = int(read_reply(sock)[:3])
    return sock, code


@pytest.mark.parametrize("workers", ["1", "2"], ids=["one-worker", "two-workers"])
class TestPerSendingAddress:
    """max_concurrency, rate and max_connections counted per client address, independently, across workers."""

    def test_concurrency_per_address(self, tmp_path, workers):
        """max_concurrency = 2 per address: a third transaction from 127.0.0.2 gets 421, while 127.0.0.3 still
        has its own two."""
        policy = '[domain."ip.test"]\nper = "ip"\nmax_concurrency = 2\n'
        with running_sink("--workers", workers, policy=policy, tmp=tmp_path) as sink:
            held = []
            try:
                for _ in range(2):
                    sock, code = held_transaction(sink, "127.0.0.2", "a@ip.test")
                    held.append(sock)
                    assert code == 250
                third, code = held_transaction(sink, "127.0.0.2", "a@ip.test")
                held.append(third)
                assert code == 421
                for _ in range(2):
                    sock, code = held_transaction(sink, "127.0.0.3", "a@ip.test")
                    held.append(sock)
                    assert code == 250
            finally:
                for sock in held:
                    sock.close()

    def test_rate_per_address(self, tmp_path, workers):
        """rate = 3/min per address: 127.0.0.2's fourth recipient is throttled, 127.0.0.3 gets its own three."""
        policy = (
            '[domain."rate.test"]\nper = "ip"\nreject_at = "rcpt"\nrate = "3/min"\n'
            '[[throttle."rate.test"]]\ncode = 451\nmsg = "4.7.28 slow down"\n'
        )
        with running_sink("--workers", workers, policy=policy, tmp=tmp_path) as sink:
            first = [rcpt_code(sink, "127.0.0.2", f"u{n}@rate.test") for n in range(4)]
            second = [rcpt_code(sink, "127.0.0.3", f"u{n}@rate.test") for n in range(3)]
        assert first == [250, 250, 250, 451]
        assert second == [250, 250, 250]

    def test_max_connections_per_address(self, tmp_path, workers):
        """[listener] max_connections = 2, per = "ip": 127.0.0.2's third connection gets 421, 127.0.0.3's 220."""
        policy = '[listener]\nmax_connections = 2\nper = "ip"\n'
        with running_sink("--workers", workers, policy=policy, tmp=tmp_path) as sink:
            held = [
                socket.create_connection(sink.address, timeout=10, source_address=("127.0.0.2", 0)) for _ in range(2)
            ]
            try:
                assert all(read_reply(s).startswith(b"220") for s in held)
                with socket.create_connection(sink.address, timeout=10, source_address=("127.0.0.2", 0)) as third:
                    assert read_reply(third).startswith(b"421")
                with socket.create_connection(sink.address, timeout=10, source_address=("127.0.0.3", 0)) as other:
                    assert read_reply(other).startswith(b"220")
            finally:
                for sock in held:
                    sock.close()


def test_net24_counts_a_whole_block(tmp_path):
    """per = "net24": 127.0.0.2 and 127.0.0.3 share one /24, so they share the limit."""
    policy = '[domain."net.test"]\nper = "net24"\nmax_concurrency = 1\n'
    with running_sink(policy=policy, tmp=tmp_path) as sink:
        first, code = held_transaction(sink, "127.0.0.2", "a@net.test")
        try:
            assert code == 250
            second, code = held_transaction(sink, "127.0.0.3", "a@net.test")
            second.close()
            assert code == 421
        finally:
            first.close()


def test_escalation_blocks_a_client_that_keeps_pushing(tmp_path):
    """After 3 deferrals within a minute, 127.0.0.2 gets the block list's 550 (S3150); 127.0.0.3 is untouched."""
    policy = (
        '[domain."ms.test"]\ndefer = 100\nreject_at = "rcpt"\n'
        'escalate = { after = 3, within = "1m", to = "block", for = "10m" }\n'
        '[[defer."ms.test"]]\ncode = 451\nmsg = "4.7.650 rate limited due to IP reputation (S775)"\n'
        '[[block."ms.test"]]\ncode = 550\nmsg = "5.7.1 messages from [{client_ip}] weren\'t sent (S3150)"\n'
    )
    with running_sink(policy=policy, tmp=tmp_path) as sink:
        codes = [rcpt_code(sink, "127.0.0.2", f"u{n}@ms.test") for n in range(5)]
        other = rcpt_code(sink, "127.0.0.3", "u@ms.test")
        with smtplib.SMTP(*sink.address, source_address=("127.0.0.2", 0), timeout=10) as client:
            client.ehlo("client.test")
            client.mail(SENDER)
            code, text = client.rcpt("x@ms.test")
        escalated = sink.metrics()['smartsink_escalated_total{domain="ms.test"}']
    assert codes == [451, 451, 451, 550, 550]
    assert other == 451
    assert code == 550
    assert b"[127.0.0.2]" in text
    assert b"S3150" in text
    assert escalated == 3


class TestWindows:
    """Windows of changed rules: the policy's schedule, and overrides through the admin API."""

    def test_scheduled_window_starts_and_ends_on_time(self, tmp_path):
        """[[schedule."win.test"]] start = "1s", length = "2s", defer = 100: answers change within a second of
        1 s after the sink's start, and back within a second of 3 s."""
        policy = '[[schedule."win.test"]]\nstart = "1s"\nlength = "2s"\ndefer = 100\nreject_at = "rcpt"\n'
        with running_sink(policy=policy, tmp=tmp_path) as sink:
            # The sink started no earlier than this: uptime_s counts from the moment the schedule counts from, and
            # is rounded to the millisecond.
            started = time.monotonic() - sink.health()["uptime_s"] - 0.0005
            changes = _watch_rcpt(sink, "u@win.test", until=4.5, started=started)
        assert [code for _, code in changes] == [250, 451, 250]
        deferring_from, accepting_again = changes[1][0], changes[2][0]
        assert 1.0 <= deferring_from < 2.0, changes
        assert 3.0 <= accepting_again < 4.0, changes

    @pytest.mark.parametrize("workers", ["1", "2"], ids=["one-worker", "two-workers"])
    def test_runtime_override(self, tmp_path, workers):
        """POST /policy/overrides: gmail.com defers everything at once (seen within 2 s, room for a loaded machine),
        for 2 s (never less, and over within 3.5 s), on every worker; it is listed, in /health and in the metrics;
        DELETE of another ends it at once."""
        with running_sink("--workers", workers, policy=ACCEPT_ALL, tmp=tmp_path) as sink:
            assert rcpt_code(sink, "127.0.0.2", "u@gmail.com") == 250
            asked = time.monotonic()  # before the request: the override cannot start earlier, so cannot end earlier
            override = _post(sink, {"domain": "gmail.com", "defer": 100, "reject_at": "rcpt", "length": "2s"})
            assert override["domain"] == "gmail.com"
            assert override["settings"]["defer"] == 100
            wait_for(lambda: rcpt_code(sink, "127.0.0.2", "u@gmail.com") == 451, timeout=2.0, what="the override")
            assert all(rcpt_code(sink, "127.0.0.3", f"u{n}@gmail.com") == 451 for n in range(4))  # any worker
            listed = json.loads(sink.get("/policy/overrides")[1])["overrides"]
            assert [o["id"] for o in listed] == [override["id"]]
            assert [o["id"] for o in sink.health()["overrides"]] == [override["id"]]
            assert sink.metrics()["smartsink_policy_overrides_active"] == 1
            wait_for(lambda: rcpt_code(sink, "127.0.0.2", "u@gmail.com") == 250, timeout=4.0, what="its end")
            assert 2.0 <= time.monotonic() - asked < 3.5
            second = _post(sink, {"domain": "yahoo.com", "bounce": 100, "reject_at": "rcpt"})
            assert rcpt_code(sink, "127.0.0.2", "u@yahoo.com") == 550
            request = urllib.request.Request(f"http://{sink.http}/policy/overrides/{second['id']}", method="DELETE")
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 204
            assert rcpt_code(sink, "127.0.0.2", "u@yahoo.com") == 250

    @pytest.mark.parametrize(
        ("body", "words"),
        [
            ({"defer": 100}, "domain must be"),
            ({"domain": "gmail.com"}, "changes nothing"),
            ({"domain": "gmail.com", "defer": 120}, "defer: must be from 0 to 100"),
            ({"domain": "gmail.com", "bogus": 1}, "bogus: unknown key"),
            ({"domain": "gmail.com", "defer": 5, "length": "soon"}, "duration"),
        ],
        ids=["no-domain", "nothing", "out-of-range", "unknown-key", "bad-length"],
    )
    def test_bad_override_is_refused(self, accept_all_sink, body, words):
        """A bad override is 400 with the problem named, and changes nothing."""
        request = urllib.request.Request(
            f"http://{accept_all_sink.http}/policy/overrides",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=10)
        assert caught.value.code == 400
        assert words in json.loads(caught.value.read())["error"]
        assert json.loads(accept_all_sink.get("/policy/overrides")[1])["overrides"] == []

    def test_override_survives_a_reload(self, tmp_path):
        """An override holds across a policy reload (the file's rules change; the override stays on top)."""
        with running_sink(policy=ACCEPT_ALL, tmp=tmp_path) as sink:
            _post(sink, {"domain": "keep.test", "defer": 100, "reject_at": "rcpt"})
            assert rcpt_code(sink, "127.0.0.2", "u@keep.test") == 451
            generation = sink.health()["policy"]["generation"]
            (tmp_path / "responses.toml").write_text("[default]\nbounce = 0\ndefer = 0\n# edited\n")
            wait_for(lambda: sink.health()["policy"]["generation"] > generation, timeout=10, what="the reload")
            assert rcpt_code(sink, "127.0.0.2", "u@keep.test") == 451


def _post(sink, body: dict) -> dict:  # type: ignore[no-untyped-def, type-arg]
    request = urllib.request.Request(
        f"http://{sink.http}/policy/overrides",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201
        return json.loads(response.read())["override"]  # type: ignore[no-any-return]


def _watch_rcpt(sink, recipient: str, until: float, started: float) -> list[tuple[float, int]]:  # type: ignore[no-untyped-def]
    """The RCPT code over time, every 50 ms: the moments it changed, each as the seconds since `started` when the
    reply had come (the sink chose it by then)."""
    changes: list[tuple[float, int]] = []
    with smtplib.SMTP(*sink.address, timeout=10) as client:
        client.ehlo("client.test")
        while time.monotonic() - started < until:
            code = rcpt_code(sink, "", recipient, client)
            if not changes or changes[-1][1] != code:
                changes.append((time.monotonic() - started, code))
            time.sleep(0.05)  # the sampling period
    return changes


class TestWeightedTexts:
    def test_weights_give_the_shares(self):
        """Weights 1, 3 and 6 over 60,000 draws (seed 7): 10%, 30%, 60% within 4.5 standard deviations."""
        replies = (Reply(451, "a", 1.0), Reply(451, "b", 3.0), Reply(452, "c", 6.0))
        rng = random.Random(7)
        draws = 60_000
        seen = Counter(decide.pick(replies, rng).text for _ in range(draws))
        for text, share in (("a", 0.1), ("b", 0.3), ("c", 0.6)):
            sd = (draws * share * (1 - share)) ** 0.5
            assert abs(seen[text] - draws * share) < 4.5 * sd, (text, seen)

    def test_equal_weights_are_uniform(self):
        """Without weights each text comes out as often (the fast path), within 4.5 standard deviations."""
        replies = tuple(Reply(451, t) for t in "abcd")
        rng = random.Random(3)
        seen = Counter(decide.pick(replies, rng).text for _ in range(40_000))
        assert all(abs(n - 10_000) < 4.5 * (40_000 * 0.25 * 0.75) ** 0.5 for n in seen.values()), seen


class TestRequirements:
    """require_tls, max_message_size and require_headers, each off unless the domain sets it."""

    def test_require_tls(self, tmp_path):
        """RCPT without STARTTLS gets 530 5.7.0; after STARTTLS the recipient is taken."""
        policy = '[domain."tls.test"]\nrequire_tls = true\n'
        with running_sink("--tls-self-signed", policy=policy, tmp=tmp_path) as sink:
            with smtplib.SMTP(*sink.address, timeout=10) as client:
                client.ehlo("client.test")
                client.mail(SENDER)
                code, text = client.rcpt("u@tls.test")
                assert (code, text) == (530, b"5.7.0 Must issue a STARTTLS command first")
                assert client.rcpt("u@other.test")[0] == 250  # other domains do not ask
            with smtplib.SMTP(*sink.address, timeout=10) as client:
                client.starttls()
                client.ehlo("client.test")
                client.mail(SENDER)
                assert client.rcpt("u@tls.test")[0] == 250

    def test_max_message_size(self, tmp_path):
        """max_message_size = "1KB": a 2 KB message gets 552 5.3.4 at the end of DATA, a small one 250."""
        policy = '[domain."small.test"]\nmax_message_size = "1KB"\n'
        with running_sink(policy=policy, tmp=tmp_path) as sink, smtplib.SMTP(*sink.address, timeout=10) as client:
            client.ehlo("client.test")
            with pytest.raises(smtplib.SMTPDataError) as caught:
                client.sendmail(SENDER, ["u@small.test"], BODY + b"x" * 2000 + b"\r\n")
            assert caught.value.smtp_code == 552
            assert b"5.3.4" in caught.value.smtp_error
            assert client.sendmail(SENDER, ["u@small.test"], BODY) == {}

    def test_require_headers(self, tmp_path):
        """require_headers = ["Message-ID"]: a message without one gets 550 5.7.1 naming it; with one, 250."""
        policy = '[domain."strict.test"]\nrequire_headers = ["Message-ID", "Date"]\n'
        with running_sink(policy=policy, tmp=tmp_path) as sink, smtplib.SMTP(*sink.address, timeout=10) as client:
            client.ehlo("client.test")
            with pytest.raises(smtplib.SMTPDataError) as caught:
                client.sendmail(SENDER, ["u@strict.test"], BODY)
            assert caught.value.smtp_code == 550
            assert b"5.7.1 Messages missing a valid Message-ID header" in caught.value.smtp_error
            good = b"Message-ID: <1@client.test>\r\nDate: Wed, 02 Dec 2026 10:00:00 +0000\r\n" + BODY
            assert client.sendmail(SENDER, ["u@strict.test"], good) == {}


def test_texts_name_the_client_and_the_recipient(tmp_path):
    """{client_ip} and {recipient} in a text are the sending address and the recipient."""
    policy = (
        '[domain."named.test"]\nunknown = 100\n'
        '[[unknown."named.test"]]\ncode = 550\nmsg = "5.1.1 <{recipient}> unknown here, [{client_ip}]"\n'
    )
    with running_sink(policy=policy, tmp=tmp_path) as sink:
        with smtplib.SMTP(*sink.address, source_address=("127.0.0.3", 0), timeout=10) as client:
            client.ehlo("client.test")
            client.mail(SENDER)
            code, text = client.rcpt("Who@named.test")
        assert (code, text) == (550, b"5.1.1 <Who@named.test> unknown here, [127.0.0.3]")


def test_schedule_keys_are_checked(tmp_path: Path):
    """--check names a bad schedule entry with file and line."""
    path = tmp_path / "p.toml"
    path.write_text('[[schedule."x.test"]]\nstart = "2m"\nlength = "soon"\ndefer = 100\n')
    done = run_smartsink("--check", "--policy", str(path))
    assert done.returncode == 2
    assert f'{path}:1: [[schedule."x.test"]]' in done.stderr
    assert "duration" in done.stderr
