"""Sink-wide state for several workers: the supervisor serves a SharedState on a Unix socket, each worker
reaches it through RemoteLimits, and the supervisor pushes each reloaded policy down the same socket.

Frames are a 4-byte length and a pickle (both ends are this program, same user, a private directory).
A worker's connection and transaction slots are given back when its channel closes, so a crashed worker
does not leak them. A call that gets no answer in CALL_TIMEOUT fails open (the message goes through) and
is logged: a sink must never hang its clients on its own bookkeeping.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import pickle
import struct
from collections import Counter
from collections.abc import Callable
from typing import Any

from smartsink.policy.model import Outcome, Policy, Rate
from smartsink.shared import Answered, LedgerEntry, RefusedAtRcpt, ReturnedInDsn, SharedState

log = logging.getLogger("smartsink.coordinator")

CALL_TIMEOUT = 5.0
_LENGTH = struct.Struct("!I")


class Channel(asyncio.Protocol):
    """A stream of pickled messages in length-prefixed frames."""

    def __init__(self, on_message: Callable[[Channel, Any], None], on_lost: Callable[[Channel], None]):
        self.on_message = on_message
        self.on_lost = on_lost
        self.transport: Any = None
        self.buf = bytearray()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 4:
            (size,) = _LENGTH.unpack_from(self.buf)
            if len(self.buf) < 4 + size:
                return
            message = pickle.loads(self.buf[4 : 4 + size])
            del self.buf[: 4 + size]
            self.on_message(self, message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_lost(self)

    def send(self, message: Any) -> None:
        if self.transport is not None and not self.transport.is_closing():
            payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
            self.transport.write(_LENGTH.pack(len(payload)) + payload)


class _Holdings:
    """What one worker holds in the shared state, to give back if it dies."""

    def __init__(self) -> None:
        self.connections = 0
        self.transactions: Counter[str] = Counter()


class Coordinator:
    """The supervisor's side: owns the SharedState, answers workers, broadcasts policies."""

    def __init__(self, state: SharedState, path: str, current: Callable[[], Policy]):
        self.state = state
        self.path = path
        self.current = current  # the policy in force, for a worker that started before the last reload
        self.channels: dict[Channel, _Holdings] = {}
        self.ready: dict[int, tuple[int, tuple[str, int]]] = {}  # worker index -> (pid, address)
        self.ready_event = asyncio.Event()
        self._pings: dict[int, asyncio.Future[None]] = {}
        self._ping_ids = itertools.count(1)
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_unix_server(lambda: Channel(self._handle, self._lost), self.path)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    def _lost(self, channel: Channel) -> None:
        holdings = self.channels.pop(channel, None)
        if holdings is None:
            return
        for _ in range(holdings.connections):
            self.state.close_connection()
        for domain, count in holdings.transactions.items():
            for _ in range(count):
                self.state.end_transaction(domain)

    def _handle(self, channel: Channel, message: tuple[Any, ...]) -> None:
        holdings = self.channels.setdefault(channel, _Holdings())
        op = message[0]
        state = self.state
        if op == "call":
            _, call_id, name, args = message
            if name == "open_connection":
                result = state.open_connection(*args)
                holdings.connections += result
            elif name == "begin_transaction":
                result = state.begin_transaction(*args)
                if result:
                    holdings.transactions[args[0]] += 1
            elif name == "take_rate":
                result = state.take_rate(*args)
            elif name == "greylist_passes":
                result = state.greylist_passes(*args)
            else:
                log.error("unknown call %r from a worker", name)
                result = True
            channel.send(("result", call_id, result))
        elif op == "opened":
            state.open_connection(None)
            holdings.connections += 1
        elif op == "close_connection":
            state.close_connection()
            holdings.connections = max(0, holdings.connections - 1)
        elif op == "end_transaction":
            state.end_transaction(message[1])
            holdings.transactions[message[1]] -= 1
        elif op == "records":
            for entry in message[1]:
                entry.apply(state)
        elif op == "pong":
            waiter = self._pings.pop(message[1], None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif op == "ready":
            _, index, pid, address = message
            self.ready[index] = (pid, address)
            self.ready_event.set()
            channel.send(("policy", self.current()))  # a reload during its start-up did not reach it

    def broadcast_policy(self, policy: Policy) -> None:
        for channel in list(self.channels):
            channel.send(("policy", policy))

    async def barrier(self) -> None:
        """Wait until every worker has sent all it recorded before now (a ping each, answered in order)."""
        loop = asyncio.get_running_loop()
        waiters = []
        for channel in list(self.channels):
            ping = next(self._ping_ids)
            self._pings[ping] = waiter = loop.create_future()
            waiters.append(waiter)
            channel.send(("ping", ping))
        if waiters:
            _, pending = await asyncio.wait(waiters, timeout=CALL_TIMEOUT)
            for waiter in pending:
                waiter.cancel()


class RemoteLimits:
    """A worker's side: the Limits of smartsink.session, answered by the supervisor's Coordinator."""

    def __init__(self, path: str, on_policy: Callable[[Policy], None], on_lost: Callable[[], None]):
        self.path = path
        self.on_policy = on_policy
        self.on_lost = on_lost
        self.channel: Channel | None = None
        self._calls: dict[int, asyncio.Future[bool]] = {}
        self._call_ids = itertools.count(1)
        self._records: list[LedgerEntry] = []
        self._flush_scheduled = False

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, channel = await loop.create_unix_connection(lambda: Channel(self._handle, self._lost), self.path)
        self.channel = channel

    def _lost(self, channel: Channel) -> None:
        for waiter in self._calls.values():
            if not waiter.done():
                waiter.set_result(True)
        self._calls.clear()
        self.on_lost()

    def _handle(self, channel: Channel, message: tuple[Any, ...]) -> None:
        op = message[0]
        if op == "result":
            waiter = self._calls.pop(message[1], None)
            if waiter is not None and not waiter.done():
                waiter.set_result(message[2])
        elif op == "ping":
            self._flush_records()
            channel.send(("pong", message[1]))
        elif op == "policy":
            self.on_policy(message[1])

    def send(self, message: tuple[Any, ...]) -> None:
        if self.channel is not None:
            self.channel.send(message)

    async def _call(self, name: str, *args: Any) -> bool:
        call_id = next(self._call_ids)
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = waiter
        self.send(("call", call_id, name, args))
        try:
            return await asyncio.wait_for(waiter, CALL_TIMEOUT)
        except TimeoutError:
            self._calls.pop(call_id, None)
            log.error("the supervisor did not answer %s in %.0f s; letting it through", name, CALL_TIMEOUT)
            return True

    async def open_connection(self, limit: int | None) -> bool:
        if limit is None:  # nothing to check: count it without waiting for an answer
            self.send(("opened",))
            return True
        return await self._call("open_connection", limit)

    def close_connection(self) -> None:
        self.send(("close_connection",))

    async def begin_transaction(self, domain: str, limit: int) -> bool:
        return await self._call("begin_transaction", domain, limit)

    def end_transaction(self, domain: str) -> None:
        self.send(("end_transaction", domain))

    async def take_rate(self, domain: str, rate: Rate) -> bool:
        return await self._call("take_rate", domain, rate)

    async def greylist_passes(self, key: str, delay: float) -> bool:
        return await self._call("greylist_passes", key, delay)

    def record(
        self, run_id: str, seq: int, outcome: Outcome, domain: str = "", transit_ms: int | None = None, rcpt: str = ""
    ) -> None:
        self._queue(Answered(run_id, seq, int(outcome), domain, transit_ms, rcpt))

    def record_dsn(self, run_id: str, seq: int, rcpt: str = "") -> None:
        self._queue(ReturnedInDsn(run_id, seq, rcpt))

    def refused_at_rcpt(self, rcpt: str, outcome: Outcome) -> None:
        self._queue(RefusedAtRcpt(rcpt, int(outcome)))

    def _queue(self, record: LedgerEntry) -> None:
        # Batched: one write per turn of the event loop, however many messages ended in it.
        self._records.append(record)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_records)

    def _flush_records(self) -> None:
        self._flush_scheduled = False
        if self._records:
            records, self._records = self._records, []
            self.send(("records", records))

    async def barrier(self) -> None:
        self._flush_records()
