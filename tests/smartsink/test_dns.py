"""The sink's DNS (--dns) over real sockets, asked by clients nobody here wrote: Debian's `dig` and dnspython's
resolver, for every kind of record; the zone follows a policy reload; addresses are the same after a restart and
with workers. Then hostile input, each kind counted and dropped while SMTP keeps answering: garbage, truncated and
oversized datagrams, responses, TCP length lies, a pipelined flood over the rate, a flood of datagrams, more TCP
connections than the cap."""

from __future__ import annotations

import ipaddress
import re
import shutil
import smtplib
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.resolver
import pytest

from harness.metrics import Metrics
from harness.sink import SinkProcess, one_line, run_smartsink, running_sink, wait_for, write_policy
from smartsink.config import DEFAULT_DNS_NETWORK
from smartsink.dns.server import MAX_QUERY, MAX_TCP, PARTIAL_TIMEOUT
from smartsink.dns.table import shipped

NETWORK = ipaddress.ip_network(DEFAULT_DNS_NETWORK)
NETWORK6 = ipaddress.ip_network("2001:db8:25::/64")
POLICY = """
[default]
bounce = 0
defer = 0

[domain."example.com"]
mx = ["5 mx1.example.net", "20 mx2.example.net"]

[domain."hotmail.com"]
mx = ["10 mx.hotmail.example"]
"""
KUMO_DOMAINS = ("aol.com", "bellsouth.net", "comcast.net", "gmail.com", "hotmail.com", "icloud.com", "live.com")
KUMO_DOMAINS += ("me.com", "msn.com", "orange.fr", "outlook.com", "sbcglobal.net", "yahoo.com")

needs_dig = pytest.mark.skipif(
    shutil.which("dig") is None, reason="dig is not installed (apt-get install bind9-dnsutils)"
)


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SinkProcess]:
    tmp = tmp_path_factory.mktemp("dns")
    args = ("--dns", "127.0.0.1:0", "--dns-network6", str(NETWORK6))
    with running_sink(*args, policy=POLICY, tmp=tmp) as started:
        assert started.dns is not None
        yield started


def resolver(sink: SinkProcess) -> dns.resolver.Resolver:
    asked = dns.resolver.Resolver(configure=False)
    assert sink.dns is not None
    asked.nameservers, asked.port = [sink.dns[0]], sink.dns[1]
    asked.timeout = asked.lifetime = 10.0
    return asked


def dig(sink: SinkProcess, name: str, rdtype: str, *options: str) -> tuple[str, set[str], list[str]]:
    """(status, header flags, answer records as "TYPE DATA") of `dig` asking the sink."""
    assert sink.dns is not None
    host, port = sink.dns
    done = subprocess.run(
        [
            "dig",
            "+noall",
            "+comments",
            "+answer",
            "+time=5",
            "+tries=2",
            "-p",
            str(port),
            f"@{host}",
            name,
            rdtype,
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    status = re.search(r"status: (\w+)", done.stdout)
    flags = re.search(r";; flags: ([a-z ]+);", done.stdout)
    assert status, done.stdout
    assert flags, done.stdout
    answers = [" ".join(line.split()[3:]) for line in done.stdout.splitlines() if line and not line.startswith(";")]
    return status[1], set(flags[1].split()), answers


@needs_dig
class TestDig:
    @pytest.mark.parametrize("transport", ["+notcp", "+tcp"])
    def test_mx_of_a_provider(self, sink, transport):
        """MX of gmail.com.sink.test over UDP and TCP: Gmail's five hosts under the suffix, authoritative, no
        recursion offered."""
        status, flags, answers = dig(sink, "gmail.com.sink.test", "MX", transport)
        assert status == "NOERROR"
        assert "aa" in flags
        assert "ra" not in flags
        assert sorted(answers) == sorted(
            f"MX {e.preference} {e.host}.sink.test." for e in shipped().exchanges("gmail.com")
        )

    def test_a_and_aaaa_of_an_mx_host(self, sink):
        """A in --dns-network and AAAA in --dns-network6, one each, the same for the host under KumoMTA's suffix."""
        _, _, a = dig(sink, "mx01.mail.icloud.com.sink.test", "A")
        _, _, aaaa = dig(sink, "mx01.mail.icloud.com.sink.test", "AAAA")
        assert len(a) == len(aaaa) == 1
        assert ipaddress.ip_address(a[0].split()[1]) in NETWORK
        assert ipaddress.ip_address(aaaa[0].split()[1]) in NETWORK6
        assert dig(sink, "mx01.mail.icloud.com.mx-sink.wezfurlong.org", "A")[2] == a

    @pytest.mark.parametrize(
        ("name", "rdtype"),
        [("_mta-sts.gmail.com.sink.test", "TXT"), ("_25._tcp.mx01.mail.icloud.com.sink.test", "TLSA")],
    )
    def test_no_mta_sts_and_no_dane(self, sink, name, rdtype):
        """The MTA-STS TXT and the TLSA record an MTA looks for do not exist."""
        status, flags, answers = dig(sink, name, rdtype)
        assert (status, answers) == ("NXDOMAIN", [])
        assert "aa" in flags

    def test_soa_ns_and_any(self, sink):
        """The suffix has SOA and NS; ANY of a domain gives its MX."""
        assert dig(sink, "sink.test", "SOA")[2][0].startswith("SOA ns.sink.test. hostmaster.sink.test. ")
        assert dig(sink, "sink.test", "NS")[2] == ["NS ns.sink.test."]
        assert sorted(dig(sink, "me.com.sink.test", "ANY")[2]) == [
            "MX 10 mx01.mail.icloud.com.sink.test.",
            "MX 10 mx02.mail.icloud.com.sink.test.",
        ]

    @pytest.mark.parametrize("name", ["gmail.com", "example.org", "sink.test.example"])
    def test_outside_the_zone_is_refused(self, sink, name):
        """A name outside the suffixes: REFUSED, even with recursion asked for; the sink never forwards."""
        status, flags, answers = dig(sink, name, "MX", "+recurse")
        assert (status, answers) == ("REFUSED", [])
        assert "ra" not in flags


class TestResolver:
    def test_kumomtas_domains_and_their_hosts_resolve(self, sink):
        """dnspython's resolver finds each KumoMTA example domain's MX set, and an address for every host; hosts
        of different sets have different addresses, a shared set gives the same hosts and addresses."""
        asked = resolver(sink)
        hosts_of = {}
        for domain in KUMO_DOMAINS:
            answer = asked.resolve(f"{domain}.sink.test", "MX")
            hosts_of[domain] = {(r.preference, r.exchange.to_text()) for r in answer}
        expected = {e for e in shipped().exchanges("sbcglobal.net")}
        assert (
            hosts_of["sbcglobal.net"]
            == hosts_of["bellsouth.net"]
            == {(e.preference, f"{e.host}.sink.test.") for e in expected}
        )
        assert hosts_of["icloud.com"] == hosts_of["me.com"]
        addresses = {}
        for host in {h for hosts in hosts_of.values() for _, h in hosts}:
            found = [r.address for r in asked.resolve(host, "A")]
            assert len(found) == 1
            addresses[host] = found[0]
        assert len(set(addresses.values())) == len(addresses), "one address per host"
        assert all(ipaddress.ip_address(a) in NETWORK for a in addresses.values())

    def test_the_policy_adds_and_overrides_mx_sets(self, sink):
        """`mx = [...]` in the policy: example.com gets its own set, hotmail.com's is replaced."""
        asked = resolver(sink)
        assert sorted(r.to_text() for r in asked.resolve("example.com.sink.test", "MX")) == [
            "20 mx2.example.net.sink.test.",
            "5 mx1.example.net.sink.test.",
        ]
        assert [r.to_text() for r in asked.resolve("hotmail.com.sink.test", "MX", tcp=True)] == [
            "10 mx.hotmail.example.sink.test."
        ]
        assert len(asked.resolve("mx1.example.net.sink.test", "A")) == 1

    def test_a_domain_nobody_listed_still_resolves(self, sink):
        """Any generated domain is deliverable: its MX is itself, with an address."""
        asked = resolver(sink)
        assert [r.to_text() for r in asked.resolve("unlisted-domain.example.sink.test", "MX")] == [
            "10 unlisted-domain.example.sink.test."
        ]
        assert ipaddress.ip_address(asked.resolve("unlisted-domain.example.sink.test", "A")[0].address) in NETWORK

    def test_nxdomain_and_refused_reach_the_resolver(self, sink):
        """The resolver sees NXDOMAIN for MTA-STS's name, and gives up on a name outside the zone (REFUSED)."""
        asked = resolver(sink)
        with pytest.raises(dns.resolver.NXDOMAIN):
            asked.resolve("_mta-sts.gmail.com.sink.test", "TXT")
        with pytest.raises(dns.resolver.NoNameservers):
            asked.resolve("gmail.com", "MX")


def test_the_zone_follows_a_reload(tmp_path):
    """A saved policy with a new `mx` is served within the reload's 2 seconds (plus room on a loaded machine)."""
    path = write_policy(tmp_path, "[default]\nbounce = 0\n")
    with running_sink("--dns", "127.0.0.1:0", "--policy", str(path)) as sink:
        asked = resolver(sink)
        assert [r.to_text() for r in asked.resolve("reload.example.sink.test", "MX")] == [
            "10 reload.example.sink.test."
        ]
        path.write_text('[default]\nbounce = 0\n[domain."reload.example"]\nmx = ["7 mx.reload.example"]\n')

        def served() -> bool:
            return [r.to_text() for r in asked.resolve("reload.example.sink.test", "MX")] == [
                "7 mx.reload.example.sink.test."
            ]

        wait_for(served, timeout=10, what="the reloaded MX set")


@pytest.mark.slow
def test_addresses_are_the_same_after_a_restart_and_with_workers(tmp_path):
    """Every MX host has the same address from a new sink with two workers as from the first."""
    path = write_policy(tmp_path, POLICY)
    hosts = sorted(shipped().hosts)

    def addresses(*args: str) -> list[str]:
        with running_sink("--dns", "127.0.0.1:0", "--policy", str(path), *args) as sink:
            asked = resolver(sink)
            return [asked.resolve(f"{h}.sink.test", "A")[0].address for h in hosts]

    first = addresses()
    assert addresses("--workers", "2") == first
    assert len(set(first)) == len(hosts)


class TestBadOptions:
    def test_a_busy_dns_port_is_one_line(self):
        """--dns on a port another socket holds: one line naming it, exit status 2, no traceback."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
            holder.bind(("127.0.0.1", 0))
            port = holder.getsockname()[1]
            done = run_smartsink("--listen", "127.0.0.1:0", "--http", "off", "--dns", f"127.0.0.1:{port}")
        assert done.returncode == 2
        assert (
            one_line(done.stderr)
            == f"smartsink: error: cannot listen for DNS on 127.0.0.1:{port}: address already in use"
        )

    @pytest.mark.parametrize(
        ("args", "fragment"),
        [
            (("--dns-network", "2001:db8::/64"), "--dns-network '2001:db8::/64' must be an IPv4 network"),
            (("--dns-network6", "127.0.0.0/8"), "--dns-network6 '127.0.0.0/8' must be an IPv6 network"),
            (("--dns-network", "nowhere"), "--dns-network 'nowhere' is not a network"),
            (("--dns-rate", "fast"), "--dns-rate: rate 'fast' needs a unit"),
            (("--dns", "53"), "--dns '53' must look like HOST:PORT"),
        ],
    )
    def test_bad_dns_options_are_one_line(self, args, fragment):
        """A DNS option that cannot be used: one line naming it, exit status 2."""
        done = run_smartsink(*args)
        assert done.returncode == 2
        assert fragment in one_line(done.stderr)


# --- hostile input -------------------------------------------------------------------------------------------------


def query(name: str = "gmail.com.sink.test", rdtype: str = "MX", ident: int | None = None) -> bytes:
    message = dns.message.make_query(name, rdtype)
    if ident is not None:
        message.id = ident
    return message.to_wire()


def dropped(sink: SinkProcess) -> dict[str, float]:
    metrics = Metrics.scrape(sink)
    return {r: metrics.value("smartsink_dns_dropped_total", reason=r) for r in sorted(metrics.label_values(
        "smartsink_dns_dropped_total", "reason"))}  # fmt: skip


def answered(sink: SinkProcess) -> float:
    return sum(v for n, _, v in Metrics.scrape(sink).samples if n == "smartsink_dns_queries_total")


RATE = 50  # queries a second per client for the hostile tests: a flood outruns it even on a loaded machine


@pytest.fixture
def hostile_sink(tmp_path: Path) -> Iterator[SinkProcess]:
    with running_sink("--dns", "127.0.0.1:0", "--dns-rate", f"{RATE}/s", policy=POLICY, tmp=tmp_path) as started:
        yield started


class TestHostileInput:
    def test_bad_datagrams_are_counted_and_dropped(self, hostile_sink):
        """Garbage, cut-short queries, oversized datagrams and responses get no answer, each counted by kind;
        the good query after them is answered (and is the only answer)."""
        sink = hostile_sink
        assert sink.dns is not None
        good = query(ident=4242)
        looping = (
            struct.pack("!6H", 1, 0, 1, 0, 0, 0) + b"\xc0\x0c" + struct.pack("!2H", 15, 1)
        )  # a name pointing at itself
        bad = {
            "malformed": [b"GET / HTTP/1.0\r\n\r\n", b"\x16\x03\x01\x02\x00" + bytes(range(60)), looping],
            "truncated": [good[:5], good[:20], good[:-3]],
            "oversized": [good + bytes(MAX_QUERY), bytes(MAX_QUERY + 1)],
            "response": [dns.message.make_response(dns.message.from_wire(good)).to_wire()],
        }
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            for datagrams in bad.values():
                for datagram in datagrams:
                    client.sendto(datagram, sink.dns)
            client.sendto(good, sink.dns)  # one socket, one server loop: answered after every datagram above
            reply = dns.message.from_wire(client.recv(4096))
            assert reply.id == 4242
            assert reply.rcode() == dns.rcode.NOERROR
            client.settimeout(0.5)
            with pytest.raises(TimeoutError):
                client.recv(4096)  # nothing else was answered
        counts = dropped(sink)
        assert {kind: counts[kind] for kind in bad} == {kind: len(datagrams) for kind, datagrams in bad.items()}

    def test_tcp_length_lies_are_counted_and_closed(self, hostile_sink):
        """A length the bytes never reach (the client ends its side, or stalls), a zero length, a length past
        MAX_QUERY: the connection is closed and counted; queries before a lie are answered."""
        sink = hostile_sink
        assert sink.dns is not None

        def conversation(data: bytes, shut: bool) -> tuple[bytes, float]:
            with socket.create_connection(sink.dns, timeout=PARTIAL_TIMEOUT + 20) as s:
                s.sendall(data)
                if shut:
                    s.shutdown(socket.SHUT_WR)
                started, received = time.monotonic(), b""
                while chunk := s.recv(65536):
                    received += chunk
                return received, time.monotonic() - started

        good = query()
        framed = struct.pack("!H", len(good)) + good
        received, _ = conversation(framed * 2 + struct.pack("!H", 300) + b"x" * 10, shut=True)
        assert len(dns.message.from_wire(received[2 : 2 + struct.unpack("!H", received[:2])[0]]).answer) == 1
        assert received.count(b"\x00\x01\x00\x05") == 2, "both queries answered (one question, five MX)"
        _, waited = conversation(struct.pack("!H", 100) + b"y" * 5, shut=False)
        assert waited < PARTIAL_TIMEOUT + 10, "a stalled query is given up after PARTIAL_TIMEOUT"
        assert conversation(struct.pack("!H", 0), shut=False)[0] == b""
        assert conversation(struct.pack("!H", MAX_QUERY + 1) + bytes(MAX_QUERY + 1), shut=False)[0] == b""
        counts = dropped(sink)
        assert counts["length_lie"] == 2
        assert counts["malformed"] == 1
        assert counts["oversized"] == 1

    @pytest.mark.slow
    def test_a_pipelined_flood_over_the_rate_is_dropped_and_smtp_answers(self, hostile_sink):
        """3,000 queries pipelined on one TCP connection at --dns-rate 50/s: at most a second's worth plus the rate
        for the time it took are answered, the rest counted as dropped, exactly 3,000 in all; an SMTP session beside
        it gets every reply in time."""
        sink = hostile_sink
        assert sink.dns is not None
        total, rate = 3000, RATE
        before = answered(sink)
        frames = b"".join(struct.pack("!H", len(q)) + q for q in (query(ident=n % 65536) for n in range(total)))
        replies, smtp_latencies = [], []

        def smtp_beside() -> None:
            with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
                for _ in range(20):
                    started = time.monotonic()
                    assert client.noop()[0] == 250
                    smtp_latencies.append(time.monotonic() - started)
                assert client.sendmail("a@example.test", ["b@gmail.com.sink.test"], b"Subject: x\r\n\r\nx\r\n") == {}

        smtp = threading.Thread(target=smtp_beside)
        with socket.create_connection(sink.dns, timeout=30) as s:
            started = time.monotonic()
            smtp.start()
            s.sendall(frames)
            s.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := s.recv(1 << 16):
                data += chunk
            elapsed = time.monotonic() - started
        smtp.join(60)
        while data:
            size = struct.unpack("!H", data[:2])[0]
            replies.append(data[2 : 2 + size])
            data = data[2 + size :]
        allowed = rate + rate * elapsed + 1  # a second's worth at once, then the rate, for as long as it took
        assert len(replies) <= allowed
        assert dropped(sink)["rate"] + len(replies) == total
        assert dropped(sink)["rate"] >= total - allowed
        assert answered(sink) - before == len(replies)
        assert len(smtp_latencies) == 20, "the SMTP session went through"
        assert max(smtp_latencies) < 5.0

    @pytest.mark.slow
    def test_floods_of_datagrams_and_connections_leave_dns_and_smtp_serving(self, hostile_sink):
        """20,000 datagrams (garbage and queries) as fast as one socket sends, then MAX_TCP + 20 connections held
        open: whatever the sink read is counted (answered or dropped, never more than was sent), the connections
        over the cap are counted busy; SMTP answers throughout, and another client's query is answered after."""
        sink = hostile_sink
        assert sink.dns is not None
        before_answered, before_dropped = answered(sink), sum(dropped(sink).values())
        sent = 0
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flood,
            smtplib.SMTP(sink.host, sink.port, timeout=10) as smtp,
        ):
            flood.setblocking(False)
            good = query()
            for n in range(20_000):
                try:
                    flood.sendto(good if n % 2 else b"\xff" * 40, sink.dns)
                    sent += 1
                except BlockingIOError:
                    pass
                if n % 5000 == 0:
                    assert smtp.noop()[0] == 250
            assert smtp.noop()[0] == 250
            # One receiving socket, one queue: once a query sent after the flood is answered (from another client
            # address, with an allowance of its own), the sink has read all the kernel kept of the flood.
            asked = marker(sink)
            read = answered(sink) - before_answered + sum(dropped(sink).values()) - before_dropped
            assert 0 < read <= sent + asked

            held: list[socket.socket] = []
            try:
                held.extend(socket.create_connection(sink.dns, timeout=10) for _ in range(MAX_TCP + 20))
                wait_for(lambda: dropped(sink)["busy"] == 20, timeout=20, what="20 connections counted busy")
                assert smtp.noop()[0] == 250
            finally:
                for s in held:
                    s.close()
            assert smtp.sendmail("a@example.test", ["b@yahoo.com.sink.test"], b"Subject: x\r\n\r\nx\r\n") == {}

        marker(sink)  # answered, now the flood is over
        assert len(resolver(sink).resolve("gmail.com.sink.test", "MX", tcp=True)) == 5


def marker(sink: SinkProcess, deadline: float = 30.0) -> int:
    """Ask from 127.0.0.2 (a client apart from the flood's, which has used up its allowance) until answered, as a
    resolver retries: while the flood fills the sink's socket buffer the kernel drops what arrives. How many were
    sent."""
    assert sink.dns is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.2", 0))
        s.settimeout(1.0)
        give_up = time.monotonic() + deadline
        for attempt in range(1, 10_000):
            s.sendto(query(ident=attempt), sink.dns)
            try:
                if dns.message.from_wire(s.recv(4096)).id <= attempt:
                    return attempt
            except TimeoutError:
                assert time.monotonic() < give_up, f"no answer in {deadline:g} s"
    raise AssertionError("unreachable")
