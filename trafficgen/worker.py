"""One connection's loop, the per-message path of trafficgen read top to bottom: a Worker claims a message from the
run, hands it to its transport, and records the outcome the transport returns.

A worker opens its connection at its turn (--connect-rate spreads the first connections out), then claims a
message (waiting for the throttle's due time), sends, records the outcome, and reconnects when the server closed
(421), after --messages-per-connection, or after an error. It holds its connection until the run is over, even
when the throttle leaves it idle, as a real sender's connection pool does. An error on an open connection (lost, a
timeout, a protocol violation) ends that connection only: it is counted and the worker reconnects with backoff, as
KumoMTA's traffic-gen does. Whether a connection that cannot be opened ends the run is the run's to say (the Runner:
without --keep-going it does). The worker talks to the run through `Run` alone and asks its RunState whether to go
on; nothing here prints.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Protocol

from trafficgen.messages import Message
from trafficgen.outcome import ERROR, Outcome
from trafficgen.runstate import RunState, Stop
from trafficgen.transport import Transport

log = logging.getLogger("trafficgen")

BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0


class Run(Protocol):
    """What a worker may ask of the run it works in (the Runner is one)."""

    @property
    def state(self) -> RunState:
        """Whether to go on: the run over, stopped, no more claims, a --message-count run."""
        ...

    async def turn(self, number: int) -> None:
        """Until worker `number` may open its first connection (or the run is over)."""
        ...

    async def claim(self, source: int) -> Message | None:
        """The next message, once it is due; None when the run is over."""
        ...

    def claim_now(self, source: int) -> Message | None:
        """The next message if one is due now (never waits); None otherwise."""
        ...

    def record(self, message: Message, outcome: Outcome) -> None:
        """A claimed message's one outcome."""
        ...

    async def connect(self, source: int) -> Transport | Outcome:
        """A new transport, or the Outcome its failure gives the message that would have gone over it."""
        ...

    async def close(self, transport: Transport) -> None: ...


class Worker:
    """One connection's loop: open it at its turn, send what is due over it, reconnect when it closes, hold it
    until the run is over. The worker owns the messages it claimed: the one being sent, and the next (which
    the transport may pipeline behind it) or one to send again on a new connection."""

    def __init__(self, runner: Run, number: int, source: int = 0, per_connection: int | None = None):
        self.runner = runner
        self.state = runner.state
        self.number = number
        self.source = source  # the --source-address its connections come from
        self.per_connection = per_connection  # --messages-per-connection
        self.transport: Transport | None = None
        self.sending: Message | None = None  # sent, its outcome not recorded yet
        self.pending: Message | None = None  # claimed, not sent yet: the next one, or one to send again
        self.on_transport = 0
        self.failures = 0
        self.first = True  # the first connection is opened and held even if it will send nothing

    async def run(self) -> None:
        runner, state = self.runner, self.state
        await runner.turn(self.number)
        try:
            while not state.stopping:
                if self.transport is None and not await self._open():
                    if self._finished():
                        break
                    continue  # the failure was recorded (and waited for with backoff): try again
                message = self.pending or await runner.claim(self.source)
                self.pending = None
                if message is None:
                    break
                assert self.transport is not None
                if not self.transport.usable:
                    # The server closed the connection while it was idle (an idle timeout): not an error.
                    await self._drop_transport()
                    self.pending = message
                    continue
                await self._send(message)
            if self.pending is not None:
                state.drop()  # claimed, never sent: dropped like any claimed message at a stop
                self.pending = None
            if self.transport is not None and self.transport.usable and not state.stopping:
                await state.wait_over()  # hold the connection for the whole run, as a real sender's pool does
        except asyncio.CancelledError:
            self._cut()
            raise
        except Exception as bug:  # a bug, not the server: never lose a worker silently
            self._crashed(bug)
        finally:
            await self._drop_transport()

    async def _send(self, message: Message) -> None:
        """Claim -> transport.send -> outcome -> record: one message, the next one claimed if it is due."""
        runner = self.runner
        transport = self.transport
        assert transport is not None
        limit = self.per_connection
        last_here = limit is not None and self.on_transport + 1 >= limit
        self.pending = None if last_here else runner.claim_now(self.source)
        self.sending = message
        outcome = await transport.send(message, self.pending)
        self.sending = None
        runner.record(message, outcome)
        self.on_transport += 1
        failed = outcome.kind == ERROR  # that connection ends, not the run: the worker reconnects after a backoff
        self.failures = self.failures + 1 if failed else 0
        if failed or outcome.close or not transport.usable or last_here:
            # A message pipelined behind this one was not answered here: it goes over the next connection.
            await self._drop_transport()
            if failed and not self.state.stopping:
                await self._backoff()

    def _finished(self) -> bool:
        state = self.state
        return state.over or (self.pending is None and state.claims_over())

    async def _open(self) -> bool:
        """A transport for the next message; False when there is none (the failure is recorded)."""
        runner, state = self.runner, self.state
        if state.over:
            return False
        if self.pending is None and not self.first and state.counted:
            # A --message-count run reconnects for a message it holds, so no connection opens for nothing when
            # another worker takes the last one.
            self.pending = await runner.claim(self.source)
            if self.pending is None:
                return False
        opened = await runner.connect(self.source)
        if not isinstance(opened, Outcome):
            self.transport, self.on_transport, self.first = opened, 0, False
            return True
        if state.over:
            return False  # the run ended while connecting: no message of its failed
        # The failure is the outcome of the message that would have gone over this connection, so a
        # --message-count run still ends however the target behaves.
        message = self.pending or await runner.claim(self.source)
        self.pending = None
        if message is not None:
            runner.record(message, opened.for_message(len(message.recipients)))
            self.failures += 1
            if not state.stopping:
                await self._backoff()
        return False

    async def _backoff(self) -> None:
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2**self.failures) * (0.5 + random.random() / 2)
        await asyncio.sleep(delay)

    async def _drop_transport(self) -> None:
        transport, self.transport = self.transport, None
        if transport is not None:
            await self.runner.close(transport)

    def _cut(self) -> None:
        """The end of the grace period: what was sent and not answered gets its one outcome."""
        now = time.monotonic()
        for message in (self.sending, self.pending):
            if message is not None:
                cut = Outcome.error("cut: the run ended before the reply", len(message.recipients), now, now)
                self.runner.record(message, cut)
        self.sending = self.pending = None

    def _crashed(self, bug: Exception) -> None:
        log.exception("trafficgen worker %d failed", self.number)
        if self.sending is not None:
            now = time.monotonic()
            failed = Outcome.error(f"internal: {bug!r}", len(self.sending.recipients), now, now)
            self.runner.record(self.sending, failed)
            self.sending = None
        self.state.stop(Stop.ERROR, f"internal error in a connection worker: {bug!r}")
