"""The sink's DNS listeners (--dns): one UDP socket and one TCP listener on the same address, answering from the
zone in force (smartsink.dns.zone) with dnspython's wire format.

Everything a client sends is hostile until parsed: a query longer than MAX_QUERY, one that does not parse (cut short
or garbage), a message that is itself a response, a client over its --dns-rate, a TCP length prefix the bytes never
catch up with, a TCP connection beyond MAX_TCP: each is dropped unanswered and counted
(`smartsink_dns_dropped_total{reason}`). What a client can make the sink hold is bounded (one query in a TCP buffer,
the answers it has not read up to the transport's high-water mark), and a pipelined TCP flood is answered BATCH
queries at a time, so the SMTP listener in the same process keeps its turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.rcode

from smartsink import metrics
from smartsink.config import SinkConfig
from smartsink.dns import table as mx_table
from smartsink.dns import zone as zones
from smartsink.dns.addresses import Addressing
from smartsink.dns.ratelimit import ClientRates
from smartsink.policy.model import Policy, Rate

log = logging.getLogger("smartsink.dns")

MAX_QUERY = 512  # bytes: a query (one question, EDNS, a cookie) is a fraction of this; more is not a query
UDP_PLAIN = 512  # RFC 1035 4.2.1: the most a UDP answer may hold without EDNS
MAX_TCP = 256  # TCP connections at once; more are closed at once
PARTIAL_TIMEOUT = 2.0  # seconds a TCP query may take to arrive once its length has
IDLE_TIMEOUT = 10.0  # seconds a TCP connection may wait between queries (RFC 7766 6.2.3 asks for seconds)
BATCH = 64  # pipelined TCP queries answered before the event loop gets a turn
_LENGTH = struct.Struct("!H")
_PAD = bytes(MAX_QUERY)


def _dropped(reason: str) -> None:
    metrics.child(metrics.DNS_DROPPED, reason).inc()


def _unparsable(wire: bytes, error: Exception) -> str:
    """Why a query did not parse: cut short ("truncated": it parses once the bytes it promised are there), or
    anything else ("malformed")."""
    if isinstance(error, dns.message.ShortHeader):
        return "truncated"
    try:
        dns.message.from_wire(wire + _PAD, ignore_trailing=True)
    except Exception:
        return "malformed"
    return "truncated"


class DnsServer:
    """UDP and TCP on one address, answering from `zone()` (the zone in force; it changes with the policy)."""

    def __init__(self, zone: Callable[[], zones.Zone], rate: Rate | None):
        self.zone = zone
        self.rates = ClientRates(rate) if rate is not None else None
        self.udp: asyncio.DatagramTransport | None = None
        self.tcp: asyncio.AbstractServer | None = None
        self.tcp_open = 0
        self.address: tuple[str, int] = ("", 0)

    # --- one query -------------------------------------------------------------------------------------------

    def respond(self, wire: bytes, client: str, tcp: bool) -> bytes | None:
        """The answer to one query as it goes on the wire, or None when the query is dropped (and counted)."""
        if len(wire) > MAX_QUERY:
            _dropped("oversized")
            return None
        if self.rates is not None and not self.rates.allow(client):
            _dropped("rate")
            return None
        try:
            query = dns.message.from_wire(wire)
        except Exception as e:  # dnspython raises many kinds on hostile bytes: none of them may reach the loop
            _dropped(_unparsable(wire, e))
            return None
        if query.flags & dns.flags.QR:
            _dropped("response")  # never answer an answer: two servers would bounce it forever
            return None
        try:
            response = zones.answer(query, self.zone())
        except Exception:
            log.exception("DNS: no answer for %s from %s", query.question, client)
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL)
        question = query.question[0].rdtype if query.question else None
        label = zones.type_label(question) if question is not None else "other"
        metrics.child(metrics.DNS_QUERIES, label, dns.rcode.to_text(response.rcode())).inc()
        return self._wire(query, response, tcp)

    def _wire(self, query: dns.message.Message, response: dns.message.Message, tcp: bool) -> bytes:
        limit = 65535
        if not tcp:
            limit = max(UDP_PLAIN, min(query.payload, zones.PAYLOAD)) if query.edns >= 0 else UDP_PLAIN
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            # RFC 2181 9: too big for UDP: the header and question with TC set, so the client asks over TCP
            truncated = dns.message.make_response(query, our_payload=zones.PAYLOAD)
            truncated.flags |= dns.flags.AA | dns.flags.TC
            truncated.set_rcode(response.rcode())
            return truncated.to_wire(max_size=limit)

    # --- the listeners ---------------------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Bind UDP, then TCP on the same port (port 0: the first free port both can have)."""
        loop = asyncio.get_running_loop()
        family, _, _, _, address = (await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM))[0]
        for _ in range(20 if port == 0 else 1):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind(address)  # bound here, not by the loop: an error keeps its errno ("address already in use")
            except OSError:
                sock.close()
                raise
            self.udp, _protocol = await loop.create_datagram_endpoint(lambda: _Datagrams(self), sock=sock)
            bound = sock.getsockname()
            try:
                self.tcp = await loop.create_server(lambda: _Stream(self), host, bound[1], reuse_address=True)
            except OSError as e:
                self.udp.close()
                if e.errno != errno.EADDRINUSE or port != 0:
                    raise
                continue
            self.address = (bound[0], bound[1])
            return self.address
        raise OSError(errno.EADDRINUSE, "no port free for both UDP and TCP")

    async def stop(self) -> None:
        if self.udp is not None:
            self.udp.close()
        if self.tcp is not None:
            self.tcp.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.tcp.wait_closed(), 2.0)


class _Datagrams(asyncio.DatagramProtocol):
    """UDP: one datagram, one query, one answer to where it came from."""

    def __init__(self, server: DnsServer):
        self.server = server
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        reply = self.server.respond(data, addr[0], tcp=False)
        if reply is not None:
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for an earlier answer (the client went away): nothing to do


class _Stream(asyncio.Protocol):
    """TCP (RFC 7766): queries framed by a two-byte length, answered in order, pipelining allowed."""

    def __init__(self, server: DnsServer):
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: Any = None
        self.client = ""
        self.buf = bytearray()
        self.timer: asyncio.TimerHandle | None = None
        self.counted = False
        self.paused = False  # reading paused: a batch is waiting for its turn, or the client does not read
        self.writing_blocked = False
        self.draining = False  # a batch of queued queries waits for the loop's next turn
        self.eof = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if self.server.tcp_open >= MAX_TCP:
            _dropped("busy")
            transport.abort()
            return
        self.server.tcp_open += 1
        self.counted = True
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if isinstance(peer, tuple) else "unix"
        self._arm(IDLE_TIMEOUT)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._drain()

    def _next_query(self) -> bytes | None:
        """The next complete query of the buffer, taken out of it; None when none is complete (or the length is
        one no query has: the connection is then cut, and that counted)."""
        if self.transport.is_closing() or len(self.buf) < 2:
            return None
        (size,) = _LENGTH.unpack_from(self.buf)
        if size == 0 or size > MAX_QUERY:
            _dropped("oversized" if size else "malformed")
            self.buf.clear()
            self.transport.abort()
            return None
        if len(self.buf) < 2 + size:
            return None
        wire = bytes(self.buf[2 : 2 + size])
        del self.buf[: 2 + size]
        return wire

    def _drain(self) -> None:
        """Answer the complete queries in the buffer, BATCH at a time; a flood yields to the loop in between."""
        self.draining = False
        for _ in range(BATCH):
            wire = self._next_query()
            if wire is None:
                break
            reply = self.server.respond(wire, self.client, tcp=True)
            if reply is not None:
                self.transport.write(_LENGTH.pack(len(reply)) + reply)
        else:
            if len(self.buf) >= 2 and not self.transport.is_closing():
                self.draining = True
                self.loop.call_soon(self._drain)  # more queued: answer them on the loop's next turn
        if self.transport.is_closing():
            return
        self._flow()
        if self.eof and not self.draining:
            self._finish()
        else:
            # A query begun and not complete must arrive within PARTIAL_TIMEOUT: a length the bytes never catch up
            # with is a lie. Between queries, the connection may idle for IDLE_TIMEOUT.
            self._arm(PARTIAL_TIMEOUT if self.buf else IDLE_TIMEOUT)

    def _flow(self) -> None:
        """Read while answers are taken and no batch waits; the buffer then holds at most one query and a read."""
        pause = self.draining or self.writing_blocked
        if pause != self.paused and not self.transport.is_closing():
            self.paused = pause
            (self.transport.pause_reading if pause else self.transport.resume_reading)()

    def pause_writing(self) -> None:
        self.writing_blocked = True
        self._flow()

    def resume_writing(self) -> None:
        self.writing_blocked = False
        self._flow()

    def eof_received(self) -> bool:
        self.eof = True
        if not self.draining:
            self._finish()
        return True  # we close our side ourselves, once the answers to what it sent are written

    def _finish(self) -> None:
        """The client has ended its side: what is left in the buffer is a query it never completed."""
        if self.buf:
            _dropped("length_lie")
            self.buf.clear()
        self.transport.close()

    def _arm(self, seconds: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(seconds, self._timed_out)

    def _timed_out(self) -> None:
        if self.draining:
            self._arm(PARTIAL_TIMEOUT)
            return
        if self.buf:
            _dropped("length_lie")
        self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.counted:
            self.counted = False
            self.server.tcp_open -= 1


class SinkZone:
    """The zone a sink serves, from its options and the policy in force: rebuilt when a reload brings new `mx` keys
    or suffixes (`update` is a PolicyStore listener); calling it gives the zone now."""

    def __init__(self, config: SinkConfig, policy: Policy):
        self.config = config
        self.zone = self._build(policy)

    def _build(self, policy: Policy) -> zones.Zone:
        config = self.config
        table = mx_table.for_policy(policy)
        v6 = Addressing.of(config.dns_network6, table.hosts) if config.dns_network6 is not None else None
        return zones.Zone.of(
            (*config.domain_suffixes, *policy.suffixes),
            table,
            Addressing.of(config.dns_network, table.hosts),
            v6,
            listen_host=config.dns[0] if config.dns else None,
        )

    def update(self, policy: Policy) -> None:
        self.zone = self._build(policy)

    def __call__(self) -> zones.Zone:
        return self.zone
