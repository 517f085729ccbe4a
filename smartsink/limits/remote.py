"""Sink-wide limits for several workers: the supervisor's Coordinator serves a SharedState on a Unix socket, each
worker reaches it through RemoteLimits, and the supervisor pushes each reloaded policy down the same socket.

Messages are typed values (the NamedTuples below), framed as a 4-byte length and a pickle (both ends are this
program, same user, a private directory). Requests carry a call id and are answered with an Answer; the rest
are one-way. A worker's connection and transaction slots are given back when its channel closes, so a crashed
worker does not leak them. A request that gets no answer in CALL_TIMEOUT fails open (the message goes through)
and is logged: a sink must never hang its clients on its own bookkeeping.

A new policy goes to each worker as what changed since the one it has: the domains whose rules are not the same
objects, in parts of POLICY_PART domains (each pickled and unpickled in a turn of its own loop), then the rest of
the policy and the domains gone. A reload that changes one domain of 100,000 sends one; neither loop stalls on a
big change. A channel reads at most FRAME_BUDGET seconds of messages before letting its loop do other work.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import pickle
import struct
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple

from smartsink.ledger import LedgerEntry
from smartsink.limits.state import SharedState
from smartsink.policy.model import DomainRules, Escalation, Policy, Rate

log = logging.getLogger("smartsink.coordinator")

CALL_TIMEOUT = 5.0
POLICY_PART = 2000  # domains a PolicyPart carries
FRAME_BUDGET = 0.005  # seconds of messages a channel reads in one turn of its loop
_LENGTH = struct.Struct("!I")


class _Holdings:
    """What one worker holds in the shared state, to give back if it dies."""

    def __init__(self) -> None:
        self.connections: Counter[tuple[str, str, str]] = Counter()  # by (scope, client, mx)
        self.transactions: Counter[str] = Counter()


# --- requests: a worker asks, the coordinator answers ------------------------------------------------------------


class OpenConnection(NamedTuple):
    call_id: int
    limit: int | None
    scope: str
    client: str = ""
    mx: str = ""

    def answer(self, state: SharedState, holdings: _Holdings) -> bool:
        opened = state.open_connection(self.limit, self.scope, self.client, self.mx)
        holdings.connections[self.scope, self.client, self.mx] += opened
        return opened


class BeginTransaction(NamedTuple):
    call_id: int
    key: str
    limit: int

    def answer(self, state: SharedState, holdings: _Holdings) -> bool:
        begun = state.begin_transaction(self.key, self.limit)
        if begun:
            holdings.transactions[self.key] += 1
        return begun


class TakeRate(NamedTuple):
    call_id: int
    key: str
    rate: Rate
    full: bool = True

    def answer(self, state: SharedState, holdings: _Holdings) -> bool:
        return state.take_rate(self.key, self.rate, self.full)


class Escalated(NamedTuple):
    call_id: int
    key: str

    def answer(self, state: SharedState, holdings: _Holdings) -> bool:
        return state.escalated(self.key)


class GreylistPasses(NamedTuple):
    call_id: int
    key: str
    delay: float

    def answer(self, state: SharedState, holdings: _Holdings) -> bool:
        return state.greylist_passes(self.key, self.delay)


Request = OpenConnection | BeginTransaction | TakeRate | GreylistPasses | Escalated


class Answer(NamedTuple):
    call_id: int
    result: bool


# --- one-way messages ---------------------------------------------------------------------------------------------


class Opened(NamedTuple):
    """A connection opened where no limit applies: counted without waiting for an answer."""

    scope: str
    client: str = ""
    mx: str = ""


class ConnectionClosed(NamedTuple):
    scope: str
    client: str = ""
    mx: str = ""


class TransactionEnded(NamedTuple):
    key: str


class Deferred(NamedTuple):
    """A domain deferred a client: counted towards its escalation."""

    key: str
    escalation: Escalation


class Records(NamedTuple):
    """Ledger entries, in the order they happened."""

    entries: list[LedgerEntry]


class Ping(NamedTuple):
    """Send everything recorded so far, then Pong."""

    ping_id: int


class Pong(NamedTuple):
    ping_id: int


class Ready(NamedTuple):
    """A worker serves: its number, pid, and the address it bound."""

    worker: int
    pid: int
    address: tuple[str, int]


class Heartbeat(NamedTuple):
    """A worker's loop still turns (sent every HEARTBEAT seconds): one that falls silent is stuck."""

    worker: int


class PolicyPart(NamedTuple):
    """Domains of the next policy whose rules changed (a PolicyUpdate follows the parts)."""

    domains: dict[str, DomainRules]


class PolicyUpdate(NamedTuple):
    """The policy now in force: `policy` without its domains, which are the worker's last ones with the parts sent
    since over them and `removed` left out."""

    policy: Policy
    removed: tuple[str, ...]


Message = (
    Request
    | Answer
    | Opened
    | ConnectionClosed
    | TransactionEnded
    | Deferred
    | Records
    | Ping
    | Pong
    | Ready
    | Heartbeat
    | PolicyPart
    | PolicyUpdate
)


class Channel(asyncio.Protocol):
    """A stream of messages in length-prefixed pickle frames."""

    def __init__(self, on_message: Callable[[Channel, Any], None], on_lost: Callable[[Channel], None]):
        self.on_message = on_message
        self.on_lost = on_lost
        self.transport: Any = None
        self.buf = bytearray()
        self.reading = False  # a turn of the loop is to read what is left
        self.consumed = 0  # bytes read as messages so far (received so far: this and what `buf` holds)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.reading:
            self._read()

    def _read(self) -> None:
        self.reading = False
        until = time.monotonic() + FRAME_BUDGET
        while len(self.buf) >= 4:
            (size,) = _LENGTH.unpack_from(self.buf)
            if len(self.buf) < 4 + size:
                return
            message = pickle.loads(self.buf[4 : 4 + size])
            del self.buf[: 4 + size]
            self.consumed += 4 + size
            self.on_message(self, message)
            if time.monotonic() > until and len(self.buf) >= 4:
                self.reading = True  # the rest in a later turn: the loop serves its connections in between
                asyncio.get_running_loop().call_soon(self._read)
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_lost(self)

    def send(self, message: Message) -> None:
        if self.transport is not None and not self.transport.is_closing():
            payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
            self.transport.write(_LENGTH.pack(len(payload)) + payload)


class Coordinator:
    """The supervisor's side: owns the SharedState, answers workers, broadcasts policies."""

    def __init__(self, state: SharedState, path: str, current: Callable[[], Policy], spawned: Callable[[int], Policy]):
        self.state = state
        self.path = path
        self.current = current  # the policy in force, for a worker that started before the last reload
        self.spawned = spawned  # the policy worker N was started with
        self.channels: dict[Channel, _Holdings] = {}
        self.links: set[Channel] = set()  # every connected channel, from its first byte on (for Escalated's marks)
        self.sent: dict[Channel, Policy] = {}  # the policy each ready worker has
        self._pushed = asyncio.Event()
        self._pusher: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()  # set when every channel has been sent the policy pushed last
        self._idle.set()
        self.ready: dict[int, tuple[int, tuple[str, int]]] = {}  # worker index -> (pid, address)
        self.beats: dict[int, float] = {}  # worker index -> when it was last heard from (time.monotonic())
        self.ready_event = asyncio.Event()
        self._pings: dict[int, asyncio.Future[None]] = {}
        self._ping_ids = itertools.count(1)
        self.server: asyncio.AbstractServer | None = None
        self._handlers: dict[type, Callable[[Channel, _Holdings, Any], None]] = {
            Opened: self._opened,
            ConnectionClosed: self._connection_closed,
            TransactionEnded: self._transaction_ended,
            Deferred: self._deferred,
            Records: self._records,
            Pong: self._pong,
            Ready: self._ready,
            Heartbeat: self._heartbeat,
        }

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_unix_server(self._link, self.path)

    def _link(self) -> Channel:
        channel = Channel(self._handle, self._lost)
        self.links.add(channel)
        return channel

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if self._pusher is not None:
            self._pusher.cancel()

    def _lost(self, channel: Channel) -> None:
        self.links.discard(channel)
        self.sent.pop(channel, None)
        holdings = self.channels.pop(channel, None)
        if holdings is None:
            return
        for (scope, client, mx), count in holdings.connections.items():
            for _ in range(count):
                self.state.close_connection(scope, client, mx)
        for key, count in holdings.transactions.items():
            for _ in range(count):
                self.state.end_transaction(key)

    def _handle(self, channel: Channel, message: Message) -> None:
        holdings = self.channels.setdefault(channel, _Holdings())
        if isinstance(message, Escalated):
            # A deferral another worker noted before this client asked (it wrote its Deferred before its 451 went
            # to the client) may wait unread on that worker's channel: in the same turn of the loop, or behind a
            # backlog a channel reads over several turns (FRAME_BUDGET). The answer waits until every channel has
            # read what it had received by now: the third deferral's block is in force for the client's fourth try.
            # The marks are taken a turn later, when whatever the same select() returned has been received.
            asyncio.get_running_loop().call_soon(self._answer_after, None, channel, message, holdings)
            return
        if isinstance(message, OpenConnection | BeginTransaction | TakeRate | GreylistPasses):
            self._answer(channel, message, holdings)
            return
        handler = self._handlers.get(type(message))
        if handler is None:
            log.error("unknown message %r from a worker", type(message).__name__)
            return
        handler(channel, holdings, message)

    def _answer(self, channel: Channel, message: Request, holdings: _Holdings) -> None:
        channel.send(Answer(message.call_id, message.answer(self.state, holdings)))

    def _answer_after(
        self, marks: dict[Channel, int] | None, channel: Channel, message: Request, holdings: _Holdings
    ) -> None:
        """Answer once each channel has read the messages it had received at `marks` (taken at the first call; a
        channel that is gone, or holds only part of a frame, has nothing more to read); else look a turn later."""
        if marks is None:
            marks = {other: other.consumed + len(other.buf) for other in self.links}
        behind = [c for c, mark in marks.items() if c in self.links and c.reading and c.consumed < mark]
        if behind:
            asyncio.get_running_loop().call_soon(self._answer_after, marks, channel, message, holdings)
        else:
            self._answer(channel, message, holdings)

    def _opened(self, channel: Channel, holdings: _Holdings, message: Opened) -> None:
        self.state.open_connection(None, message.scope, message.client, message.mx)
        holdings.connections[message.scope, message.client, message.mx] += 1

    def _connection_closed(self, channel: Channel, holdings: _Holdings, message: ConnectionClosed) -> None:
        self.state.close_connection(message.scope, message.client, message.mx)
        held = (message.scope, message.client, message.mx)
        holdings.connections[held] = max(0, holdings.connections[held] - 1)

    def _transaction_ended(self, channel: Channel, holdings: _Holdings, message: TransactionEnded) -> None:
        self.state.end_transaction(message.key)
        holdings.transactions[message.key] -= 1

    def _deferred(self, channel: Channel, holdings: _Holdings, message: Deferred) -> None:
        self.state.deferred(message.key, message.escalation)

    def _records(self, channel: Channel, holdings: _Holdings, message: Records) -> None:
        for entry in message.entries:
            entry.apply(self.state.ledgers)

    def _pong(self, channel: Channel, holdings: _Holdings, message: Pong) -> None:
        waiter = self._pings.pop(message.ping_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _ready(self, channel: Channel, holdings: _Holdings, message: Ready) -> None:
        self.ready[message.worker] = (message.pid, message.address)
        self.beats[message.worker] = time.monotonic()
        self.ready_event.set()
        self.sent[channel] = self.spawned(message.worker)
        self.broadcast_policy(self.current())  # a reload during its start-up did not reach it

    def _heartbeat(self, channel: Channel, holdings: _Holdings, message: Heartbeat) -> None:
        self.beats[message.worker] = time.monotonic()

    def broadcast_policy(self, policy: Policy) -> None:
        """Bring every ready worker to `policy` (soon, in parts: see the module's docstring)."""
        self._pushed.set()
        self._idle.clear()
        if self._pusher is None or self._pusher.done():
            self._pusher = asyncio.get_running_loop().create_task(self._push_policies())

    async def _push_policies(self) -> None:
        while True:
            await self._pushed.wait()
            self._pushed.clear()
            policy = self.current()
            for channel, sent in list(self.sent.items()):
                if sent is not policy and channel in self.sent:
                    await _send_policy(channel, sent, policy)
                    self.sent[channel] = policy
            if not self._pushed.is_set():
                self._idle.set()

    async def settled(self) -> None:
        """Wait until every ready worker serves the policy pushed last: the pushes sent, then a ping each (a worker
        answers in order, so its answer comes after it has taken the policy). Bounded by CALL_TIMEOUT each."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), CALL_TIMEOUT)
        await self.barrier()

    async def barrier(self) -> None:
        """Wait until every worker has sent all it recorded before now (a ping each, answered in order)."""
        loop = asyncio.get_running_loop()
        waiters = []
        for channel in list(self.channels):
            ping = next(self._ping_ids)
            self._pings[ping] = waiter = loop.create_future()
            waiters.append(waiter)
            channel.send(Ping(ping))
        if waiters:
            _, pending = await asyncio.wait(waiters, timeout=CALL_TIMEOUT)
            for waiter in pending:
                waiter.cancel()


async def _send_policy(channel: Channel, old: Policy, new: Policy) -> None:
    """`new` as a change to `old`: the domains whose rules are other objects, in parts, then the rest."""
    part: dict[str, DomainRules] = {}
    for count, (name, rules) in enumerate(new.domains.items(), start=1):
        if old.domains.get(name) is not rules:
            part[name] = rules
        if len(part) >= POLICY_PART or not count % (POLICY_PART * 10):
            if part:
                channel.send(PolicyPart(part))
                part = {}
            await asyncio.sleep(0)  # the loop's other work between parts
    if part:
        channel.send(PolicyPart(part))
    removed = tuple(old.domains.keys() - new.domains.keys())
    channel.send(PolicyUpdate(dataclasses.replace(new, domains={}), removed))


class RemoteLimits:
    """A worker's side: the Limits of smartsink.limits, answered by the supervisor's Coordinator."""

    def __init__(self, path: str, on_policy: Callable[[Policy], None], on_lost: Callable[[], None], policy: Policy):
        self.path = path
        self.on_policy = on_policy
        self.on_lost = on_lost
        self.policy = policy  # the policy in force here, which the supervisor's changes apply to
        self._parts: dict[str, DomainRules] = {}
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
                waiter.set_result(True)  # let the mail through (an escalation check then refuses it: rare)
        self._calls.clear()
        self.on_lost()

    def _handle(self, channel: Channel, message: Message) -> None:
        if isinstance(message, Answer):
            waiter = self._calls.pop(message.call_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(message.result)
        elif isinstance(message, Ping):
            self._flush_records()
            channel.send(Pong(message.ping_id))
        elif isinstance(message, PolicyPart):
            self._parts.update(message.domains)
        elif isinstance(message, PolicyUpdate):
            domains = dict(self.policy.domains)
            domains.update(self._parts)
            for name in message.removed:
                domains.pop(name, None)
            self._parts = {}
            self.policy = dataclasses.replace(message.policy, domains=domains)
            self.on_policy(self.policy)

    def send(self, message: Message) -> None:
        if self.channel is not None:
            self.channel.send(message)

    async def _ask(self, request: Callable[[int], Request], unanswered: bool = True) -> bool:
        """The coordinator's answer; `unanswered` (letting the mail through) when none comes in time."""
        call_id = next(self._call_ids)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._calls[call_id] = waiter
        message = request(call_id)
        self.send(message)
        # A timer on the waiter itself, not asyncio.wait_for: the fast engine runs its conversations in no task
        # (smartsink.engines.fast), and wait_for needs one from Python 3.12.
        timer = loop.call_later(CALL_TIMEOUT, _expire, waiter)
        try:
            return await waiter
        except TimeoutError:
            self._calls.pop(call_id, None)
            name = type(message).__name__
            log.error("the supervisor did not answer %s in %.0f s; letting it through", name, CALL_TIMEOUT)
            return unanswered
        finally:
            timer.cancel()

    async def open_connection(self, limit: int | None, scope: str = "", client: str = "", mx: str = "") -> bool:
        if limit is None:  # nothing to check: count it without waiting for an answer
            self.send(Opened(scope, client, mx))
            return True
        return await self._ask(lambda call_id: OpenConnection(call_id, limit, scope, client, mx))

    def close_connection(self, scope: str = "", client: str = "", mx: str = "") -> None:
        self.send(ConnectionClosed(scope, client, mx))

    async def begin_transaction(self, key: str, limit: int) -> bool:
        return await self._ask(lambda call_id: BeginTransaction(call_id, key, limit))

    def end_transaction(self, key: str) -> None:
        self.send(TransactionEnded(key))

    async def take_rate(self, key: str, rate: Rate, full: bool = True) -> bool:
        return await self._ask(lambda call_id: TakeRate(call_id, key, rate, full))

    async def escalated(self, key: str) -> bool:
        return await self._ask(lambda call_id: Escalated(call_id, key), unanswered=False)

    def deferred(self, key: str, escalation: Escalation) -> None:
        self.send(Deferred(key, escalation))

    async def greylist_passes(self, key: str, delay: float) -> bool:
        return await self._ask(lambda call_id: GreylistPasses(call_id, key, delay))

    def report(self, entry: LedgerEntry) -> None:
        # Batched: one write per turn of the event loop, however many messages ended in it.
        self._records.append(entry)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_records)

    def _flush_records(self) -> None:
        self._flush_scheduled = False
        if self._records:
            records, self._records = self._records, []
            self.send(Records(records))

    async def barrier(self) -> None:
        self._flush_records()


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
