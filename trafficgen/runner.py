"""The run loop of one process: connection workers, message claims, stopping and force-stopping.

Each of `concurrency` workers opens its connection at its turn (--connect-rate spreads the first connections
out), then claims a message (waiting for the throttle's due time), sends, records the outcome, and reconnects
when the server closed (421), after --messages-per-connection, or after an error. A worker holds its
connection until the run is over, even when the throttle leaves it idle, as a real sender's connection pool
does. An error on an open connection (lost, a timeout, a protocol violation) ends that connection only: it is
counted and the worker reconnects with backoff, as KumoMTA's traffic-gen does. A connection that cannot be opened
(refused, no greeting, failed TLS or AUTH) ends the run without --keep-going: there is no target to test; with
it, that too is counted and retried with backoff. Nothing here prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mailload.runtime import raise_open_files_limit
from trafficgen.config import ConfigError, RunConfig
from trafficgen.domains import spread
from trafficgen.messages import Message, MessageFactory
from trafficgen.outcome import ERROR, Outcome
from trafficgen.profile import ProfileSchedule
from trafficgen.ratelimit import Throttle
from trafficgen.smtp.session import ClientProtocol, Refused, Session, SessionError, client_tls_context
from trafficgen.stats.document import Aborted, StairsVerdict
from trafficgen.stats.recorder import Recorder
from trafficgen.transport import Transport

if TYPE_CHECKING:  # aiohttp (a quarter of a second to import) only for --http
    import aiohttp

log = logging.getLogger("trafficgen")

END_GRACE = 10.0  # seconds in-flight messages get to finish once the run is over
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0
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
    """One process's workers and the claims they share."""

    def __init__(
        self,
        config: RunConfig,
        recorder: Recorder,
        share: Share | None = None,
        shared_throttle: Any = None,
    ):
        self.config = config
        self.recorder = recorder
        self.share = share or Share(concurrency=config.concurrency, message_count=config.message_count)
        seed = None if config.seed is None else config.seed * 1000 + self.share.index
        self.factory = MessageFactory(config, random.Random(seed))
        self.throttle = new_schedule(config, shared_throttle)
        # Connections are spread over the --source-address values by weight, numbered across processes as the
        # ramp numbers them.
        self.sources = [s.name for s in config.source_address]
        self.assignment = spread([s.weight for s in config.source_address], config.concurrency)
        self.tls = client_tls_context() if config.starttls else None
        self.protocols: set[ClientProtocol] = set()
        self.remaining = self.share.message_count
        self.claimed = 0
        self.deadline = float("inf")
        self.stopping = False  # an error (without --keep-going) or ^C: claimed messages are dropped
        self.exhausted = False  # the throttle's schedule reached the end of --duration
        self.error: str | None = None
        self.interrupted = False
        self.outstanding = 0  # messages claimed and not yet given their outcome
        self.over = asyncio.Event()  # the run is over: --duration passed, every message answered, or a stop
        self.started = time.monotonic()
        self.http_pool: aiohttp.ClientSession | None = None
        if config.http:  # imported now, not on the first connection: an import blocks the loop a fifth of a second
            from trafficgen import inject  # noqa: F401

    # --- claims ---------------------------------------------------------------------------------------------

    def source_of(self, number: int) -> int:
        """The --source-address (index) of worker `number`'s connections."""
        if not self.sources:
            return 0
        return self.assignment[(number * self.share.count + self.share.index) % len(self.assignment)]

    def claim_now(self, source: int = 0) -> Message | None:
        """The next message if one is due now (never waits); None otherwise."""
        return self._take(only_if_due=True, source=source)

    async def claim(self, source: int = 0) -> Message | None:
        """The next message for a worker, once it is due; None when the run is over."""
        message = self._take(only_if_due=False, source=source)
        if message is not None:
            wait = message.intended - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                if self.stopping:
                    self.outstanding -= 1
                    return None
        return message

    def claims_over(self) -> bool:
        """No message will be claimed any more in this process."""
        return (
            self.stopping
            or self.exhausted
            or self.over.is_set()
            or (self.remaining is not None and self.remaining <= 0)
            or time.monotonic() >= self.deadline
        )

    def _take(self, only_if_due: bool, source: int = 0) -> Message | None:
        if (
            self.stopping
            or self.exhausted
            or self.over.is_set()
            or (self.remaining is not None and self.remaining <= 0)
        ):
            return None
        now = time.monotonic()
        if now >= self.deadline:
            return None
        intended = now
        stage = 0
        schedule = self.throttle
        if schedule is not None:
            due = schedule.reserve(only_if_due)
            if due is None:
                return None
            if due >= self.deadline - schedule.slack:
                self.exhausted = True  # messages already claimed still go; no more are claimed
                return None
            intended, stage = due, schedule.last_stage
        if self.remaining is not None:
            self.remaining -= 1
        self.outstanding += 1
        # Unique within the run across processes, and across instances given --shard INDEX/COUNT.
        local = self.share.index + self.share.count * self.claimed
        seq = local * self.config.shard_count + self.config.shard_index
        self.claimed += 1
        return self.factory.build(seq, intended, source, stage)

    # --- workers ------------------------------------------------------------------------------------------

    def stop_on(self, text: str) -> None:
        """A connection that could not be opened: without --keep-going it ends the run."""
        if not self.config.keep_going and self.error is None:
            self.error = text
            self.stopping = True
            self.over.set()

    def recorded(self, message: Message, outcome: Outcome) -> None:
        self.recorder.record(message, outcome)
        self.outstanding -= 1
        if self.remaining == 0 and self.outstanding == 0:
            self.over.set()  # every message of a --message-count run has its outcome: the run is over

    def dropped(self) -> None:
        """A claimed message that will never be sent (the run stopped)."""
        self.outstanding -= 1

    async def ramp(self, number: int) -> None:
        """Wait for this worker's turn to open its first connection: --connect-rate spreads them out, so
        20,000 connections do not arrive in one burst. Workers of all processes interleave on one schedule."""
        share = self.share
        slot = number * share.count + share.index
        wait = self.started + slot / self.config.connect_rate - time.monotonic()
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.over.wait(), wait)

    async def connect(self, source: int = 0) -> Transport | Outcome:
        """A new transport (from --source-address `source`), or the Outcome its failure gives the message that
        could not be sent over it."""
        config = self.config
        if config.http:
            from trafficgen import inject

            if self.http_pool is None:
                self.http_pool = inject.pool(self.share.concurrency or config.concurrency)
            return inject.HttpSession(self.http_pool, config.http_url, config)
        started = time.monotonic()
        local = self.sources[source] if self.sources else None
        progress: list[str] = []
        opening = asyncio.ensure_future(Session.open(config, self.tls, self.protocols, local, progress))
        over = asyncio.ensure_future(self.over.wait())
        try:
            await asyncio.wait({opening, over}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            over.cancel()
        if not opening.done():  # the run ended while this connection was still being opened
            return await self._abandon(opening, started, progress)
        try:
            session = opening.result()
        except Refused as e:
            self.recorder.connection_failed(f"{e.reply.code} {e.reply.one_line()}")
            failure = Outcome.refused(e.reply.code, e.reply.one_line(), 0, started, e.reply.at)
            if failure.kind == ERROR:  # not a refusal but a greeting that is not SMTP's
                self.stop_on(f"{config.target} answered {e}")
            return failure
        except SessionError as e:
            text = f"{e.kind}: {e.message}"
            self.recorder.connection_failed(text)
            where = "" if config.target in e.message else f" (talking to {config.target})"
            self.stop_on(f"{text}{where}")
            return Outcome.error(text, 0, started, time.monotonic())
        self.recorder.connection_opened(session.connect_s, session.banner_s, session.ehlo_s)
        return session

    def _window(self, elapsed: float, stopped: float) -> float:
        """The sending window of a run that took `elapsed` seconds (`stopped`: when the run was stopped, if it
        was): a --duration run's is the duration, unless it was stopped early or sent its --message-count sooner."""
        config = self.config
        window = elapsed
        if self.interrupted:  # the sending window ends where sending was stopped, not at the last reply
            window = min(elapsed, stopped)
        # A --message-count run that sent its count before --duration ran out: the window is what the run took.
        counted_out = self.remaining is not None and self.remaining <= 0 and elapsed < (config.effective_duration or 0)
        if config.effective_duration is not None:
            early = self.interrupted or self.error or counted_out
            window = min(window, config.effective_duration) if early else config.effective_duration
        return window

    async def _resolves(self) -> bool:
        """Whether the target's name resolves, asked once before any connection: a name that does not is the
        run's one error, not a failure of every connection (each of whose lookups would be cancelled with the run
        and leave asyncio's "exception was never retrieved" behind)."""
        host, port = self.config.host, self.config.port
        try:
            await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as e:
            self.error = f"--target {self.config.target}: cannot resolve {host} ({getattr(e, 'strerror', None) or e})"
            return False
        return True

    async def _abandon(self, opening: asyncio.Future[Session], started: float, progress: list[str]) -> Outcome:
        opening.cancel()
        with contextlib.suppress(asyncio.CancelledError, SessionError, Refused):
            await opening
        waited = time.monotonic() - started
        greeted = len(progress) > 1  # then the server fell silent
        silence = f"greeted, then sent no reply to {progress[-1]}" if greeted else "sent no SMTP greeting"
        text = f"timeout: {self.config.target} {silence} in {waited:.1f} s, before the run ended"
        recorder = self.recorder
        if not (recorder.connections_opened or recorder.connection_errors):
            # Not one connection of the run was opened, and none failed otherwise: the target is silent.
            recorder.connection_failed(text)
            if not self.stopping and self.error is None:
                self.error = text if greeted else f"{text} (is it an SMTP server?)"
        return Outcome.error(text, 0, started, time.monotonic())

    async def close(self, transport: Transport) -> None:
        if transport.holds_connection:
            self.recorder.connection_closed()
        await transport.quit()

    async def _sweep(self) -> None:
        """Time out any reply wait longer than --timeout (once a second; no timer per read)."""
        timeout = self.config.timeout
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            now = time.monotonic()
            self.recorder.sample_connections(now)
            for protocol in list(self.protocols):
                if protocol.closed:
                    self.protocols.discard(protocol)
                else:
                    protocol.timed_out(now, timeout)

    # --- the run ------------------------------------------------------------------------------------------

    async def run(self, soft: asyncio.Event | None = None, hard: asyncio.Event | None = None) -> RunEnd:
        """Run to the end. `soft` (first ^C): claim no more, let in-flight messages finish within the grace
        period. `hard` (second ^C): cut them now (each gets its error outcome)."""
        config = self.config
        if not config.http and not await self._resolves():  # before the clock starts: no schedule waits on it
            return RunEnd(time.time(), 0.0, 0.0, self.error, False)
        wall, started = time.time(), time.monotonic()
        self.started = started
        loop = asyncio.get_running_loop()
        if self.throttle is not None:
            # One schedule for every process: its start (the first process's) is the run's start for all.
            started = min(started, self.throttle.begin(started))
            self.started = started
        if config.effective_duration is not None:
            self.deadline = started + config.effective_duration
            loop.call_at(loop.time() + self.deadline - time.monotonic(), self.over.set)
        if self.remaining == 0:
            self.over.set()
        concurrency = self.share.concurrency or config.concurrency
        workers = [asyncio.create_task(Worker(self, i).run()) for i in range(concurrency)]
        sweeper = asyncio.create_task(self._sweep())
        soft_wait = asyncio.create_task((soft or asyncio.Event()).wait())
        hard_wait = asyncio.create_task((hard or asyncio.Event()).wait())
        try:
            everything: asyncio.Future[Any] = asyncio.gather(*workers, return_exceptions=True)
            timeout = None if config.effective_duration is None else config.effective_duration + END_GRACE
            pending: set[asyncio.Future[Any]] = {everything, soft_wait, hard_wait}
            done, _ = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            stopped = time.monotonic()
            if (soft_wait in done or hard_wait in done) and everything not in done:
                self.stopping = self.interrupted = True
                self.over.set()
                if hard_wait not in done:
                    pending = {everything, hard_wait}
                    done, _ = await asyncio.wait(pending, timeout=END_GRACE, return_when=asyncio.FIRST_COMPLETED)
            if everything not in done:
                for task in workers:
                    task.cancel()
                await asyncio.wait({everything}, timeout=END_GRACE)
        finally:
            sweeper.cancel()
            soft_wait.cancel()
            hard_wait.cancel()
            if self.http_pool is not None:
                from trafficgen import inject

                await inject.close_pool(self.http_pool)
        elapsed = time.monotonic() - started
        window = self._window(elapsed, stopped - started)
        return RunEnd(wall, elapsed, window, self.error, self.interrupted)


class Worker:
    """One connection's loop: open it at its turn, send what is due over it, reconnect when it closes, hold it
    until the run is over. The worker owns the messages it claimed: the one being sent, and the next (which
    the transport may pipeline behind it) or one to send again on a new connection."""

    def __init__(self, runner: Runner, number: int):
        self.runner = runner
        self.number = number
        self.transport: Transport | None = None
        self.sending: Message | None = None  # sent, its outcome not recorded yet
        self.pending: Message | None = None  # claimed, not sent yet: the next one, or one to send again
        self.on_transport = 0
        self.failures = 0
        self.first = True  # the first connection is opened and held even if it will send nothing
        self.source = runner.source_of(number)  # the --source-address its connections come from

    async def run(self) -> None:
        runner = self.runner
        await runner.ramp(self.number)
        try:
            while not runner.stopping:
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
                runner.dropped()  # claimed, never sent: dropped like any claimed message at a stop
                self.pending = None
            if self.transport is not None and self.transport.usable and not runner.stopping:
                await runner.over.wait()  # hold the connection for the whole run, as a real sender's pool does
        except asyncio.CancelledError:
            self._cut()
            raise
        except Exception as e:  # a bug, not the server: never lose a worker silently
            self._crashed(e)
        finally:
            await self._drop_transport()

    def _finished(self) -> bool:
        runner = self.runner
        return runner.stopping or runner.over.is_set() or (self.pending is None and runner.claims_over())

    async def _open(self) -> bool:
        """A transport for the next message; False when there is none (the failure is recorded)."""
        runner = self.runner
        if runner.over.is_set():
            return False
        if self.pending is None and not self.first and runner.remaining is not None:
            # A --message-count run reconnects for a message it holds, so no connection opens for nothing when
            # another worker takes the last one.
            self.pending = await runner.claim(self.source)
            if self.pending is None:
                return False
        opened = await runner.connect(self.source)
        if not isinstance(opened, Outcome):
            self.transport, self.on_transport, self.first = opened, 0, False
            return True
        if runner.over.is_set():
            return False  # the run ended while connecting: no message of its failed
        # The failure is the outcome of the message that would have gone over this connection, so a
        # --message-count run still ends however the target behaves.
        message = self.pending or await runner.claim(self.source)
        self.pending = None
        if message is not None:
            runner.recorded(message, opened.for_message(len(message.recipients)))
            self.failures += 1
            if not runner.stopping:
                await self._backoff()
        return False

    async def _send(self, message: Message) -> None:
        runner = self.runner
        transport = self.transport
        assert transport is not None
        limit = runner.config.messages_per_connection
        last_here = limit is not None and self.on_transport + 1 >= limit
        self.pending = None if last_here else runner.claim_now(self.source)
        self.sending = message
        outcome = await transport.send(message, self.pending)
        self.sending = None
        runner.recorded(message, outcome)
        self.on_transport += 1
        if outcome.kind == ERROR:  # that connection ends, not the run: the worker reconnects after a backoff
            self.failures += 1
            if outcome.connecting:  # --http: the endpoint cannot be reached, as an SMTP connect that fails
                runner.stop_on(f"{outcome.text} (talking to {runner.config.target})")
        else:
            self.failures = 0
        if outcome.kind == ERROR or outcome.close or not transport.usable or last_here:
            # A message pipelined behind this one was not answered here: it goes over the next connection.
            await self._drop_transport()
            if outcome.kind == ERROR and not runner.stopping:
                await self._backoff()

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
                self.runner.recorder.record(message, cut)
        self.sending = self.pending = None

    def _crashed(self, e: Exception) -> None:
        runner = self.runner
        log.exception("trafficgen worker %d failed", self.number)
        if self.sending is not None:
            now = time.monotonic()
            failed = Outcome.error(f"internal: {e!r}", len(self.sending.recipients), now, now)
            runner.recorder.record(self.sending, failed)
            self.sending = None
        if runner.error is None:
            runner.error = f"internal error in a connection worker: {e!r}"
        runner.stopping = True
        runner.over.set()
