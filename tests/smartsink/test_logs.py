"""The sink says what it does: the ready line names STARTTLS and AUTH, --log-level debug traces each connection and
transaction (rate-limited), --log-format json writes one object a line, TLS handshakes and AUTH are counted."""

from __future__ import annotations

import json
import re
import smtplib
import socket

import pytest

from harness.sink import running_sink, wait_for, write_policy
from harness.smtp import BODY, SENDER
from mailload import native

POLICY = '[default]\nbounce = 0\ndefer = 0\n[domain."no.test"]\nbounce = 100\n'


def json_lines(log: str) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def test_ready_line_names_starttls_and_auth(tmp_path):
    """The ready line says whether STARTTLS (and with which certificate) and AUTH are on."""
    with running_sink("--no-tls", policy=POLICY, tmp=tmp_path) as plain:
        assert "STARTTLS off, AUTH off" in plain.log()
    with running_sink("--auth", "any", policy=POLICY, tmp=tmp_path) as secure:
        assert "STARTTLS self-signed, AUTH any" in secure.log()


def test_ready_line_says_what_listens_where(tmp_path):
    """One line names the SMTP listener, the admin listener with its endpoints, the policy file served and the
    state mode, so a user sees at once which port is which and which file answers."""
    policy = write_policy(tmp_path, POLICY)
    with running_sink("--policy", str(policy), "--workers", "2") as sink:
        (line,) = [line for line in sink.lines if "listening on" in line]
    build = native.build().kind
    built = "pure Python" if build == "pure" else build
    assert line.startswith(
        f"smartsink: listening on smtp://{sink.host}:{sink.port} (fast engine, 2 workers, {built}), "
    )
    assert f"admin http://{sink.http} (/health /metrics /state /api/inject/v1), " in line
    assert f"policy {policy} (" in line
    assert line.rstrip().endswith("state fresh")


@pytest.mark.parametrize("workers", ["1", "2"], ids=["one-worker", "two-workers"])
def test_debug_traces_connections_and_transactions_as_json(tmp_path, workers):
    """--log-level debug --log-format json: a JSON line for the connection, each message (client, domain, sender,
    outcome, reply) and the close; nothing at the default level."""
    args = ("--log-level", "debug", "--log-format", "json", "--workers", workers)
    with running_sink(*args, policy=POLICY, tmp=tmp_path) as sink:
        with smtplib.SMTP(*sink.address, timeout=10) as client:
            client.ehlo("client.test")
            client.sendmail(SENDER, ["a@ok.test"], BODY)
            with pytest.raises(smtplib.SMTPDataError):
                client.sendmail(SENDER, ["b@no.test"], BODY)
        wait_for(lambda: any(e.get("event") == "closed" for e in json_lines(sink.log())), what="the close traced")
        events = [e for e in json_lines(sink.log()) if e["logger"] == "smartsink.trace"]
    kinds = [e["event"] for e in events]
    assert kinds == ["connection", "message", "message", "closed"], kinds
    accepted, refused = events[1], events[2]
    assert (accepted["client"], accepted["domain"], accepted["sender"], accepted["outcome"]) == (
        "127.0.0.1",
        "other",
        SENDER,
        "accepted",
    )
    assert (refused["domain"], refused["outcome"]) == ("no.test", "permfailed")
    assert refused["reply"].startswith("550 5.")
    assert all(("worker" in e) == (workers == "2") for e in events)


def test_nothing_traced_at_info(tmp_path):
    """At the default level no connection or transaction is logged."""
    with running_sink(policy=POLICY, tmp=tmp_path) as sink:
        with smtplib.SMTP(*sink.address, timeout=10) as client:
            client.ehlo("client.test")
            client.sendmail(SENDER, ["a@ok.test"], BODY)
        assert "smartsink.trace" not in sink.log()


def test_trace_is_rate_limited(tmp_path):
    """600 refused recipients in well under a second: at most 200 trace lines a second, then a line saying how many
    were left out."""
    with running_sink("--log-level", "debug", policy=POLICY, tmp=tmp_path) as sink:
        sock = socket.create_connection(sink.address, timeout=10)
        sock.recv(512)
        messages = b"".join(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<u%d@no.test>\r\nDATA\r\n.\r\n" % n for n in range(600))
        sock.sendall(b"EHLO c\r\n" + messages + b"QUIT\r\n")
        while sock.recv(65536):
            pass
        sock.close()

        def summary_written() -> bool:
            # The count of lines left out is written with the first trace line of a later second: make one.
            with socket.create_connection(sink.address, timeout=10) as poke:
                poke.recv(512)
            return "trace lines left out" in sink.log()

        wait_for(summary_written, timeout=5, interval=0.2, what="the summary of dropped lines")
        lines = sink.log().splitlines()
        traced = [line for line in lines if "smartsink.trace" in line and "message permfailed" in line]
        dropped = int(re.search(r"(\d+) trace lines left out", sink.log()).group(1))  # type: ignore[union-attr]
    # At least 602 lines asked for in that second (the connection, 600 messages, the close, and any of the pokes
    # that came within it): 200 written, every other one counted.
    assert 195 <= len(traced) <= 200
    assert dropped >= 602 - 200


def test_tls_handshakes_and_auth_are_counted(tmp_path):
    """smartsink_tls_handshakes_total and smartsink_auth_total count what happened, by result."""
    with running_sink("--tls-self-signed", "--auth", "any", policy=POLICY, tmp=tmp_path) as sink:
        with smtplib.SMTP(*sink.address, timeout=10) as client:
            client.starttls()
            client.login("user", "secret")
        with socket.create_connection(sink.address, timeout=10) as sock:
            sock.recv(512)
            sock.sendall(b"EHLO c\r\nAUTH PLAIN !!notbase64\r\nQUIT\r\n")
            while sock.recv(4096):
                pass
        samples = sink.metrics()
    assert samples['smartsink_tls_handshakes_total{result="ok"}'] == 1
    assert samples['smartsink_auth_total{result="ok"}'] == 1
    assert samples['smartsink_auth_total{result="failed"}'] == 1
