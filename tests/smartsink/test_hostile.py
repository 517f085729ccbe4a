"""Hostile input: the sink survives, keeps serving and keeps its memory bounded, then a normal message still gets
250 and /health is OK. Real sockets, real bytes; the memory is the sink process's resident set (VmRSS)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import smtplib
import socket
import threading
import time

import pytest

from harness.policies import ACCEPT_ALL
from harness.processes import rss_mb
from harness.sink import running_sink, wait_for

MESSAGE = b"Subject: still here\r\n\r\nhello\r\n"


def still_serving(sink) -> None:  # type: ignore[no-untyped-def]
    """A normal message gets 250 and /health says ok."""
    with smtplib.SMTP(*sink.address, timeout=10) as client:
        assert client.sendmail("a@example.test", ["b@example.com"], MESSAGE) == {}
    assert sink.health()["status"] == "ok"


def recv_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the sink sends until it closes the connection (or the timeout)."""
    sock.settimeout(timeout)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except TimeoutError:
        pass
    return b"".join(chunks)


@pytest.fixture(scope="module")
def sink(tmp_path_factory):
    policy = tmp_path_factory.mktemp("hostile") / "responses.toml"
    policy.write_text(ACCEPT_ALL)
    with running_sink("--policy", str(policy), "--timeout", "3", "--max-message-size", "1MB") as running:
        yield running


class TestOneClient:
    def test_random_bytes(self, sink):
        """64 KiB of random bytes: answered with errors and closed, never a crash."""
        with socket.create_connection(sink.address) as s:
            s.recv(512)
            s.sendall(random.Random(1).randbytes(65536))
            answer = recv_all(s)
        assert answer.startswith(b"5")
        assert b"421 4.7.0 Too many errors" in answer
        still_serving(sink)

    @pytest.mark.parametrize("attempt", range(5))
    def test_the_last_reply_survives_input_still_arriving(self, sink, attempt):
        """A client that floods bad commands and goes on sending after the sink's 421: it reads the 421 and then a
        clean end of stream. Closing with input unread makes the kernel send a reset, which can destroy the reply
        before the client reads it: the sink shuts its side, drops what still comes, and closes after. (A race:
        five attempts, of which one or more got a reset before the sink lingered.)"""
        with socket.create_connection(sink.address) as s:
            s.recv(512)
            stop = threading.Event()

            def flood() -> None:
                chunk = b"NOT A COMMAND\r\n" * 5000
                with contextlib.suppress(OSError):
                    while not stop.is_set():
                        s.sendall(chunk)

            sender = threading.Thread(target=flood, daemon=True)
            sender.start()
            s.settimeout(10)
            received = []
            try:
                while chunk := s.recv(65536):  # a reset raises ConnectionResetError here
                    received.append(chunk)
            finally:
                stop.set()
            sender.join(10)
        assert b"421 4.7.0 Too many errors" in b"".join(received)
        still_serving(sink)

    def test_200_kb_command_line(self, sink):
        """A 200 KB command line gets one 500 and the session goes on."""
        with socket.create_connection(sink.address) as s:
            s.recv(512)
            s.sendall(b"EHLO " + b"x" * 200_000 + b"\r\nNOOP\r\nQUIT\r\n")
            answer = recv_all(s)
        assert answer.split(b"\r\n")[:3] == [b"500 5.5.2 Error: line too long", b"250 2.0.0 Ok", b"221 2.0.0 Bye"]
        still_serving(sink)

    def test_nul_and_invalid_utf8(self, sink):
        """NUL bytes and invalid UTF-8 in commands and addresses are refused in the protocol, not crashes."""
        with socket.create_connection(sink.address) as s:
            s.recv(512)
            s.sendall(b"EHLO c\r\nNO\x00OP\r\nMAIL FROM:<\xff\xfe@x>\r\nRCPT TO:<\xc3\x28@\x00.com>\r\nDATA\r\n")
            s.sendall(b"\xff\xfe\x00body\r\n.\r\nQUIT\r\n")
            answer = recv_all(s)
        codes = [line[:3] for line in answer.split(b"\r\n") if line[3:4] == b" "]
        assert codes == [b"250", b"500", b"250", b"250", b"354", b"250", b"221"]
        still_serving(sink)

    @pytest.mark.parametrize(
        ("size", "code"),
        [
            (b"99999999999999999999999999", b"501"),
            (b"-1", b"501"),
            (b"abc", b"501"),
            (b"", b"501"),
            (b"1e9", b"501"),
            (b"2000000", b"552"),
            (b"1000", b"250"),
        ],
        ids=["absurd", "negative", "letters", "empty", "exponent", "over-limit", "fine"],
    )
    def test_size_parameter(self, sink, size, code):
        """SIZE= absurdities get 501, a size over the limit 552, a real one 250."""
        with socket.create_connection(sink.address) as s:
            s.recv(512)
            s.sendall(b"EHLO c\r\nMAIL FROM:<a@x.test> SIZE=" + size + b"\r\nQUIT\r\n")
            answer = recv_all(s)
        assert answer.split(b"\r\n")[-3][:3] == code

    def test_body_over_the_size_limit(self, sink):
        """A 3 MB body over a 1 MB limit is read, dropped as it arrives, and answered 552."""
        before = rss_mb(sink.process.pid)
        with socket.create_connection(sink.address) as s:
            s.recv(512)
            s.sendall(b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
            line = b"x" * 998 + b"\r\n"
            for _ in range(3000):
                s.sendall(line)
            s.sendall(b".\r\nQUIT\r\n")
            answer = recv_all(s)
        assert b"552 5.3.4" in answer
        assert answer.endswith(b"221 2.0.0 Bye\r\n")
        assert rss_mb(sink.process.pid) - before < 20
        still_serving(sink)

    def test_data_that_never_ends_times_out(self, sink):
        """DATA that never ends: memory stays bounded and the idle timeout (--timeout 3) closes it with 421."""
        before = rss_mb(sink.process.pid)
        with socket.create_connection(sink.address) as s:
            s.recv(512)
            s.sendall(b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
            chunk = b"no end in sight " * 4096
            for _ in range(300):  # 20 MB
                s.sendall(chunk)
            answer = recv_all(s, timeout=15)
        assert answer.endswith(b"421 4.4.2 Error: timeout exceeded\r\n")
        assert rss_mb(sink.process.pid) - before < 20
        still_serving(sink)

    def test_one_byte_and_wait(self, sink):
        """A client that sends one byte and waits is timed out, not kept forever."""
        started = time.monotonic()
        with socket.create_connection(sink.address) as s:
            s.recv(512)
            s.sendall(b"E")
            answer = recv_all(s, timeout=15)
        assert answer == b"421 4.4.2 Error: timeout exceeded\r\n"
        assert 2.5 < time.monotonic() - started < 10
        still_serving(sink)

    def test_silent_in_the_tls_handshake(self, sink):
        """STARTTLS, then nothing (or plaintext pipelined after it, which RFC 3207 says to discard): the handshake
        waits no longer than --timeout (3 s), not asyncio's 60 s."""
        started = time.monotonic()
        with socket.create_connection(sink.address) as s:
            s.recv(512)
            s.sendall(b"EHLO c\r\nSTARTTLS\r\nAUTH PLAIN !!\r\n")  # one segment: the AUTH line is discarded
            answer = recv_all(s, timeout=30)
        assert answer.endswith(b"220 2.0.0 Ready to start TLS\r\n")
        assert 2.5 < time.monotonic() - started < 10  # --timeout 3, the sweep once a second, a busy machine
        still_serving(sink)

    def test_vanishing_mid_data(self, sink):
        """Clients that vanish mid-DATA leave nothing behind: the active-connection gauge returns to zero."""
        for _ in range(20):
            with socket.create_connection(sink.address) as s:
                s.recv(512)
                s.sendall(b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nhalf a mess")
        wait_for(lambda: sink.metrics()["smartsink_connections_active"] == 0, what="connections to be released")
        still_serving(sink)


async def _hostile_client(address: tuple[str, int], kind: int, rng: random.Random) -> None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), 30)
    except (OSError, TimeoutError):
        return
    try:
        await asyncio.wait_for(reader.readline(), 30)
        if kind == 0:
            writer.write(rng.randbytes(4096))
        elif kind == 1:
            writer.write(b"EHLO " + b"y" * 20_000 + b"\r\n")
        elif kind == 2:
            writer.write(b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nhalf")
        elif kind == 3:
            writer.write(b"H")
        else:
            writer.write(b"RCPT TO:<x@y>\r\nDATA\r\nMAIL FROM:<\x00>\r\nSTARTTLS\r\nAUTH PLAIN !!\r\n")
        await writer.drain()
        await asyncio.sleep(rng.random() * 0.5)
    except (OSError, TimeoutError):
        pass
    finally:
        writer.close()


@pytest.mark.slow
def test_thousands_at_once(tmp_path):
    """2,000 hostile clients at once: the sink keeps serving, releases every connection, memory stays bounded."""
    with running_sink("--timeout", "5", policy=ACCEPT_ALL, tmp=tmp_path) as sink:
        before = rss_mb(sink.process.pid)
        rng = random.Random(7)

        async def crowd() -> None:
            await asyncio.gather(*(_hostile_client(sink.address, i % 5, rng) for i in range(2000)))

        asyncio.run(crowd())
        still_serving(sink)
        wait_for(lambda: sink.metrics()["smartsink_connections_active"] == 0, timeout=30, what="connections released")
        assert rss_mb(sink.process.pid) - before < 60
        assert sink.metrics()["smartsink_connections_total"] >= 2001


class TestEdges:
    def test_client_that_stops_reading_is_cut(self, sink):
        """A client that pipelines commands and never reads the replies is cut after --timeout, not kept forever."""
        s = socket.create_connection(sink.address)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(b"EHLO c\r\n" + b"HELP\r\n" * 20000)  # 20,000 replies of ~90 bytes: far more than the buffers
            wait_for(
                lambda: sink.metrics()["smartsink_connections_active"] == 0,
                timeout=20,
                what="the sink to cut a client that does not read",
            )
        finally:
            s.close()
        still_serving(sink)

    @pytest.mark.parametrize(("length", "code"), [(590, b"250"), (1100, b"500")], ids=["590", "1100"])
    def test_long_mail_command(self, sink, length, code):
        """MAIL may be longer than other commands (its parameters): 1024 octets, then 500."""
        address = "a" * (length - 40) + "@x.test"
        command = f"MAIL FROM:<{address}> SIZE=100".encode()
        with socket.create_connection(sink.address) as s:
            s.recv(512)
            s.sendall(b"EHLO c\r\n" + command + b"\r\nQUIT\r\n")
            answer = recv_all(s)
        assert answer.split(b"\r\n")[-3][:3] == code
