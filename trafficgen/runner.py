"""The run of one process: its workers, the claims they share, its connections, and how it ends.

The Runner builds the run's RunState (trafficgen.runstate: claims, outstanding outcomes, the one `stop(reason)`),
starts `concurrency` Workers (trafficgen.worker: the per-message path) and gives them what they ask through a
narrow face: a message claimed at its due time, an outcome recorded, a transport opened by the Connector it was
given (trafficgen.connector builds the run's: SMTP sessions or the inject API's; a test gives its own). A connection
that cannot be opened (refused, no greeting, failed TLS or AUTH) ends the run without --keep-going: there is no
target to test; with it, that too is counted and retried with backoff. At the end it waits for in-flight messages
(a grace period when stopped from outside, cut at a second ^C) and says how the run ended (RunEnd). Nothing here
prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass
from typing import Any

from mailload.runtime import raise_open_files_limit
from trafficgen.config import ConfigError, RunConfig
from trafficgen.connector import connector_for
from trafficgen.domains import spread
from trafficgen.messages import Message, MessageFactory
from trafficgen.outcome import Outcome
from trafficgen.profile import ProfileSchedule
from trafficgen.ratelimit import Throttle
from trafficgen.runstate import RunState, Stop
from trafficgen.stats.document import Aborted, StairsVerdict
from trafficgen.stats.recorder import Recorder
from trafficgen.transport import Connector, Transport, Unopened
from trafficgen.worker import Worker

END_GRACE = 10.0  # seconds in-flight messages get to finish once the run is stopped, or is past its --duration
FD_MARGIN = 64


@dataclass
class Share:
    """This process's part of a run: its connections, messages, and sequence numbers."""

    index: int = 0
    count: int = 1
    concurrency: int | None = None
    message_count: int | None = None

    @classmethod
    def split(cls, config: RunConfig) -> list[Share]:
        """Concurrency and message count divided exactly: the first processes take the remainders."""
        n = config.processes
        shares = []
        for i in range(n):
            conc = config.concurrency // n + (i < config.concurrency % n)
            count = None
            if config.message_count is not None:
                count = config.message_count // n + (i < config.message_count % n)
            shares.append(cls(i, n, conc, count))
        return shares


def new_recorder(config: RunConfig) -> Recorder:
    """A Recorder for this run's domains and options."""
    return Recorder(
        config.domain_names,
        corrected=config.scheduled,
        marks=config.reconcile is not None,
        shards=config.shard_count,
        marks_per_message=config.marks_per_message,
        intervals=config.hdr_log is not None,
        dimensions=config.dimensions,
        stages=config.profile is not None,
        connections=not config.http,
    )


def new_schedule(config: RunConfig, shared: Any = None) -> Throttle | ProfileSchedule | None:
    """The run's open-loop schedule (--throttle or --profile), drawn from `shared` memory with --processes."""
    if config.throttle is not None:
        return Throttle(config.throttle, shared=shared)
    if config.profile is not None:
        return ProfileSchedule(config.profile, shared=shared)
    return None


def shared_schedule(config: RunConfig, context: Any) -> Any:
    """The shared memory the processes' schedules draw from (a multiprocessing context's Value or Array)."""
    if config.throttle is not None:
        return context.Value("d", 0.0)
    if config.profile is not None:
        return context.Array("d", 3)
    return None


def raise_file_limit(connections: int) -> None:
    """Raise the open-files soft limit to the hard limit; ConfigError when `connections` cannot fit."""
    limit = raise_open_files_limit()
    if limit != -1 and connections + FD_MARGIN > limit:
        raise ConfigError(
            f"--concurrency needs {connections + FD_MARGIN} open files in one process but the limit is {limit}: "
            "raise the hard limit (ulimit -Hn) or use more --processes"
        )


@dataclass
class RunEnd:
    started: float  # time.time()
    elapsed: float  # until the last reply
    window: float  # the sending window: --duration, or the whole run with --message-count
    error: str | None = None  # what stopped the run: a connection that could not be opened, without --keep-going
    interrupted: bool = False
    aborted: Aborted | None = None  # the --fail-fast threshold that stopped the run (trafficgen.watch)
    stairs: StairsVerdict | None = None  # the stairs' verdict, with a --profile that has them


class Runner:
    """One process's workers and what they share: the run's state, its messages, its connections."""

    def __init__(
        self,
        config: RunConfig,
        recorder: Recorder,
        share: Share | None = None,
        shared_throttle: Any = None,
        connector: Connector | None = None,
    ):
        self.config = config
        self.recorder = recorder
        self.share = share or Share(concurrency=config.concurrency, message_count=config.message_count)
        self.concurrency = self.share.concurrency or config.concurrency
        seed = None if config.seed is None else config.seed * 1000 + self.share.index
        self.factory = MessageFactory(config, random.Random(seed))
        self.state = RunState(self.share.message_count, new_schedule(config, shared_throttle))
        self.connector = connector or connector_for(config, self.concurrency)
        # Connections are spread over the --source-address values by weight, numbered across processes as the
        # ramp numbers them.
        self.assignment = spread([s.weight for s in config.source_address], config.concurrency)
        self.started = time.monotonic()

    # --- what a Worker asks (trafficgen.worker.Run) ---------------------------------------------------------

    async def turn(self, number: int) -> None:
        """Wait for worker `number`'s turn to open its first connection: --connect-rate spreads them out, so
        20,000 connections do not arrive in one burst. Workers of all processes interleave on one schedule."""
        share = self.share
        slot = number * share.count + share.index
        wait = self.started + slot / self.config.connect_rate - time.monotonic()
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.state.wait_over(), wait)

    async def claim(self, source: int) -> Message | None:
        """The next message for a worker, once it is due; None when the run is over."""
        message = self._take(only_if_due=False, source=source)
        if message is not None:
            wait = message.intended - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                if self.state.stopping:
                    self.state.drop()
                    return None
        return message

    def claim_now(self, source: int) -> Message | None:
        """The next message if one is due now (never waits); None otherwise."""
        return self._take(only_if_due=True, source=source)

    def _take(self, only_if_due: bool, source: int) -> Message | None:
        taken = self.state.take(only_if_due)
        if taken is None:
            return None
        number, intended, stage = taken
        # Unique within the run across processes, and across instances given --shard INDEX/COUNT.
        local = self.share.index + self.share.count * number
        seq = local * self.config.shard_count + self.config.shard_index
        return self.factory.build(seq, intended, source, stage)

    def record(self, message: Message, outcome: Outcome) -> None:
        self.recorder.record(message, outcome)
        self.state.settle()
        if outcome.connecting:  # --http: the endpoint cannot be reached, as an SMTP connect that fails
            self._unreachable(f"{outcome.text} (talking to {self.config.target})")

    async def connect(self, source: int) -> Transport | Outcome:
        """A new transport (from --source-address `source`), or the Outcome its failure gives the message that
        could not be sent over it."""
        started = time.monotonic()
        progress: list[str] = []
        opening = asyncio.ensure_future(self.connector.open(source, progress))
        over = asyncio.ensure_future(self.state.wait_over())
        try:
            await asyncio.wait({opening, over}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            over.cancel()
        if not opening.done():  # the run ended while this connection was still being opened
            return await self._abandon(opening, started, progress)
        try:
            transport = opening.result()
        except Unopened as unopened:
            self.recorder.connection_failed(unopened.text)
            if unopened.stops is not None:
                self._unreachable(unopened.stops)
            return unopened.outcome
        if transport.holds_connection:
            self.recorder.connection_opened(*transport.phases)
        return transport

    async def close(self, transport: Transport) -> None:
        if transport.holds_connection:
            self.recorder.connection_closed()
        await transport.quit()

    # --- connections ------------------------------------------------------------------------------------------

    def source_of(self, number: int) -> int:
        """The --source-address (index) of worker `number`'s connections."""
        if not self.config.source_address:
            return 0
        return self.assignment[(number * self.share.count + self.share.index) % len(self.assignment)]

    def _unreachable(self, text: str) -> None:
        """A target that cannot be reached: without --keep-going it ends the run."""
        if not self.config.keep_going:
            self.state.stop(Stop.ERROR, text)

    async def _abandon(self, opening: asyncio.Future[Transport], started: float, progress: list[str]) -> Outcome:
        opening.cancel()
        with contextlib.suppress(asyncio.CancelledError, Unopened):
            await opening
        waited = time.monotonic() - started
        greeted = len(progress) > 1  # then the server fell silent
        silence = f"greeted, then sent no reply to {progress[-1]}" if greeted else "sent no SMTP greeting"
        text = f"timeout: {self.config.target} {silence} in {waited:.1f} s, before the run ended"
        recorder = self.recorder
        if not (recorder.connections_opened or recorder.connection_errors):
            # Not one connection of the run was opened, and none failed otherwise: the target is silent.
            recorder.connection_failed(text)
            if not self.state.stopping:
                self.state.stop(Stop.ERROR, text if greeted else f"{text} (is it an SMTP server?)")
        return Outcome.error(text, 0, started, time.monotonic())

    async def _sweep(self) -> None:
        """Time out any reply wait longer than --timeout (once a second; no timer per read)."""
        while True:
            await asyncio.sleep(min(1.0, self.config.timeout / 4))
            now = time.monotonic()
            self.recorder.sample_connections(now)
            self.connector.sweep(now)

    # --- the run ------------------------------------------------------------------------------------------

    async def run(self, soft: asyncio.Event | None = None, hard: asyncio.Event | None = None) -> RunEnd:
        """Run to the end. `soft` (first ^C): claim no more, let in-flight messages finish within the grace
        period, as after any stop from outside (`state.stop`: the judge, the supervisor). `hard` (second ^C): cut
        them now (each gets its error outcome)."""
        config, state = self.config, self.state
        unreachable = await self.connector.check()  # before the clock starts: no schedule waits on it
        if unreachable is not None:
            state.stop(Stop.ERROR, unreachable)
            return RunEnd(time.time(), 0.0, 0.0, state.error, False)
        wall, started = time.time(), time.monotonic()
        if state.schedule is not None:
            # One schedule for every process: its start (the first process's) is the run's start for all.
            started = min(started, state.schedule.begin(started))
        self.started = started
        state.begin(started, config.effective_duration)
        workers = [
            asyncio.create_task(Worker(self, i, self.source_of(i), config.messages_per_connection).run())
            for i in range(self.concurrency)
        ]
        sweeper = asyncio.create_task(self._sweep())
        try:
            await self._until_done(workers, soft or asyncio.Event(), hard or asyncio.Event())
        finally:
            sweeper.cancel()
            await self.connector.close()
        elapsed = time.monotonic() - started
        return RunEnd(wall, elapsed, self._window(elapsed), state.error, state.interrupted)

    async def _until_done(self, workers: list[asyncio.Task[None]], soft: asyncio.Event, hard: asyncio.Event) -> None:
        """Until every worker is done: a stop from outside gives them END_GRACE, a --duration run gets END_GRACE
        past its duration, a second ^C (`hard`) cuts them now."""
        state = self.state
        soft_wait = asyncio.create_task(soft.wait())
        hard_wait = asyncio.create_task(hard.wait())
        outside = asyncio.create_task(state.wait_outside())
        try:
            everything: asyncio.Future[Any] = asyncio.gather(*workers, return_exceptions=True)
            timeout = None if self.config.effective_duration is None else self.config.effective_duration + END_GRACE
            pending: set[asyncio.Future[Any]] = {everything, soft_wait, hard_wait, outside}
            done, _ = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if done and everything not in done:  # stopped from outside
                if soft_wait in done or hard_wait in done:
                    state.stop(Stop.INTERRUPTED)
                if hard_wait not in done:
                    pending = {everything, hard_wait}
                    done, _ = await asyncio.wait(pending, timeout=END_GRACE, return_when=asyncio.FIRST_COMPLETED)
            if everything not in done:
                for task in workers:
                    task.cancel()
                await asyncio.wait({everything}, timeout=END_GRACE)
        finally:
            soft_wait.cancel()
            hard_wait.cancel()
            outside.cancel()

    def _window(self, elapsed: float) -> float:
        """The sending window of a run that took `elapsed` seconds: a --duration run's is the duration, unless it
        was stopped early or sent its --message-count sooner; one stopped from outside ends where it was stopped."""
        config, state = self.config, self.state
        window = elapsed
        stopped = state.stopped_at
        if stopped is not None:  # the sending window ends where sending was stopped, not at the last reply
            window = min(elapsed, stopped - self.started)
        # A --message-count run that sent its count before --duration ran out: the window is what the run took.
        counted_out = state.counted_out and elapsed < (config.effective_duration or 0)
        if config.effective_duration is not None:
            early = stopped is not None or state.error or counted_out
            window = min(window, config.effective_duration) if early else config.effective_duration
        return window
