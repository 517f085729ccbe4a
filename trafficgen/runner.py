"""The run loop of one process: connection workers, message claims, stopping and force-stopping.

Each of `concurrency` workers opens its connection at its turn (--connect-rate spreads the first connections
out), then claims a message (waiting for the throttle's due time), sends, records the outcome, and reconnects
when the server closed (421), after --messages-per-connection, or after an error. A worker holds its
connection until the run is over, even when the throttle leaves it idle, as a real sender's connection pool
does. Without --keep-going the first error stops the run; with it, errors are counted and the worker
reconnects with backoff. Nothing here prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from mailload.cli import raise_open_files_limit
from trafficgen import inject
from trafficgen.config import ConfigError, RunConfig
from trafficgen.messages import Message, MessageFactory
from trafficgen.ratelimit import Throttle
from trafficgen.smtp.replies import ERROR
from trafficgen.smtp.session import ClientProtocol, Outcome, Refused, Session, SessionError, client_tls_context
from trafficgen.stats.recorder import Recorder

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
    error: str | None = None  # what stopped the run, without --keep-going
    interrupted: bool = False


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
        self.throttle = Throttle(config.throttle, shared=shared_throttle) if config.throttle else None
        self.tls = client_tls_context() if config.starttls else None
        self.protocols: set[ClientProtocol] = set()
        self.remaining = self.share.message_count
        self.claimed = 0
        self.deadline = float("inf")
        self.stopping = False  # an error (without --keep-going) or ^C: claimed messages are dropped
        self.exhausted = False  # the throttle's schedule reached the end of --duration
        self.error: str | None = None
        self.interrupted = False
        self.inflight: dict[int, Message] = {}
        self.outstanding = 0  # messages claimed and not yet given their outcome
        self.over = asyncio.Event()  # the run is over: --duration passed, every message answered, or a stop
        self.started = time.monotonic()
        self.http_pool: aiohttp.ClientSession | None = None

    # --- claims ---------------------------------------------------------------------------------------------

    def _claim_now(self) -> Message | None:
        """The next message if one is due now (never waits); None otherwise."""
        return self._take(only_if_due=True)

    async def _claim(self) -> Message | None:
        """The next message for a worker, once it is due; None when the run is over."""
        message = self._take(only_if_due=False)
        if message is not None:
            wait = message.intended - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                if self.stopping:
                    self.outstanding -= 1
                    return None
        return message

    def _claims_over(self) -> bool:
        """No message will be claimed any more in this process."""
        return (
            self.stopping
            or self.exhausted
            or self.over.is_set()
            or (self.remaining is not None and self.remaining <= 0)
            or time.monotonic() >= self.deadline
        )

    def _take(self, only_if_due: bool) -> Message | None:
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
        if self.throttle is not None:
            due = self.throttle.reserve(only_if_due)
            if due is None:
                return None
            if due >= self.deadline - 1e-6 * self.throttle.interval:  # (sums of intervals drift by an ulp)
                self.exhausted = True  # messages already claimed still go; no more are claimed
                return None
            intended = due
        if self.remaining is not None:
            self.remaining -= 1
        self.outstanding += 1
        # Unique within the run across processes, and across instances given --shard INDEX/COUNT.
        local = self.share.index + self.share.count * self.claimed
        seq = local * self.config.shard_count + self.config.shard_index
        self.claimed += 1
        return self.factory.build(seq, intended)

    # --- workers ------------------------------------------------------------------------------------------

    def _stop_on(self, text: str) -> None:
        if not self.config.keep_going and self.error is None:
            self.error = text
            self.stopping = True
            self.over.set()

    def _recorded(self, message: Message, outcome: Outcome) -> None:
        self.recorder.record(message, outcome)
        self.outstanding -= 1
        if self.remaining == 0 and self.outstanding == 0:
            self.over.set()  # every message of a --message-count run has its outcome: the run is over

    async def _backoff(self, attempt: int) -> None:
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2**attempt) * (0.5 + random.random() / 2)
        await asyncio.sleep(delay)

    async def _ramp(self, number: int) -> None:
        """Wait for this worker's turn to open its first connection: --connect-rate spreads them out, so
        20,000 connections do not arrive in one burst. Workers of all processes interleave on one schedule."""
        share = self.share
        slot = number * share.count + share.index
        due = self.started + slot / self.config.connect_rate
        wait = due - time.monotonic()
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.over.wait(), wait)

    async def _connect(self) -> Session | Outcome:
        """A new session, or the Outcome its failure gives the message that could not be sent over it."""
        config, recorder = self.config, self.recorder
        started = time.monotonic()
        if config.http:
            if self.http_pool is None:
                self.http_pool = inject.pool(self.share.concurrency or config.concurrency)
            return inject.HttpSession(self.http_pool, config.http_url, config)  # type: ignore[return-value]
        opening = asyncio.ensure_future(Session.open(config, self.tls, self.protocols))
        over = asyncio.ensure_future(self.over.wait())
        try:
            await asyncio.wait({opening, over}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            over.cancel()
        if not opening.done():  # the run ended while this connection was still being opened
            opening.cancel()
            with contextlib.suppress(asyncio.CancelledError, SessionError, Refused):
                await opening
            waited = time.monotonic() - started
            text = f"timeout: {config.target} sent no SMTP greeting in {waited:.1f} s, before the run ended"
            if not (recorder.connections_opened or recorder.connection_errors):
                # Not one connection of the run was greeted, and none failed otherwise: the target is silent.
                recorder.connection_failed(text)
                if not self.stopping and self.error is None:
                    self.error = f"{text} (is it an SMTP server?)"
            return Outcome.error(text, 0, started, time.monotonic())
        try:
            session = opening.result()
        except Refused as e:
            failure = Outcome.of_reply(e.reply, 0, started)
            recorder.connection_failed(f"{e.reply.code} {e.reply.one_line()}")
            if failure.kind == ERROR:  # not a refusal but a greeting that is not SMTP's
                self._stop_on(f"{config.target} answered {e}")
            return failure
        except SessionError as e:
            text = f"{e.kind}: {e.message}"
            recorder.connection_failed(text)
            where = "" if config.target in e.message else f" (talking to {config.target})"
            self._stop_on(f"{text}{where}")
            return Outcome.error(text, 0, started, time.monotonic())
        recorder.connection_opened(session.connect_s, session.banner_s, session.ehlo_s)
        return session

    async def _worker(self, number: int) -> None:
        """Open a connection (at this worker's turn), then send whatever is due over it, reconnecting when the
        server closes it; hold it open until the run is over."""
        config = self.config
        limit = config.messages_per_connection
        session: Session | None = None
        retry: Message | None = None  # sent ahead on a connection that closed: not attempted yet
        on_session = 0
        failures = 0
        opening = True  # the worker's first connection is opened and held even if it will send nothing
        await self._ramp(number)
        try:
            while not self.stopping:
                if session is None:
                    if self.over.is_set() or (retry is None and not opening and self.remaining == 0):
                        break  # every message of a --message-count run is on its way: no new connection
                    opened = await self._connect()
                    if isinstance(opened, Outcome):
                        # The failure is the outcome of the message that would have gone over this connection,
                        # so a --message-count run still ends however the target behaves.
                        message = retry or await self._claim()
                        retry = None
                        if message is None:
                            break
                        self.inflight[number] = message
                        self._recorded(message, opened.for_message(len(message.recipients)))
                        del self.inflight[number]
                        failures += 1
                        if not self.stopping:
                            await self._backoff(failures)
                        continue
                    session, on_session, opening = opened, 0, False
                message = retry or session.ahead or await self._claim()
                retry = None
                if message is None:
                    break
                if not session.usable and message is not session.ahead:
                    # The server closed the connection while it was idle (an idle timeout): not an error.
                    closing, session = session, None
                    await self._close(closing)
                    retry = message
                    continue
                self.inflight[number] = message
                last_here = limit is not None and on_session + 1 >= limit
                outcome = await session.send(message, None if last_here else self._claim_now)
                del self.inflight[number]
                self._recorded(message, outcome)
                on_session += 1
                if outcome.kind == ERROR:
                    self._stop_on(f"{outcome.text} (talking to {config.target})")
                    failures += 1
                else:
                    failures = 0
                if outcome.close or not session.usable or last_here:
                    retry = session.take_ahead()
                    closing, session = session, None
                    await self._close(closing)
                    if outcome.kind == ERROR and not self.stopping:
                        await self._backoff(failures)
            if retry is not None:
                self.outstanding -= 1  # claimed, never attempted: dropped like any claimed message at a stop
            if session is not None and session.usable and not self.stopping:
                await self.over.wait()  # hold the connection for the whole run, as a real sender's pool does
        except asyncio.CancelledError:
            # The end of the grace period: what was sent and not answered gets its one outcome.
            now = time.monotonic()
            for message in (self.inflight.pop(number, None), session.ahead if session is not None else None):
                if message is not None:
                    cut = Outcome.error("cut: the run ended before the reply", len(message.recipients), now, now)
                    self.recorder.record(message, cut)
            raise
        except Exception as e:  # a bug, not the server: never lose a worker silently
            log.exception("trafficgen worker %d failed", number)
            message = self.inflight.pop(number, None)
            if message is not None:
                now = time.monotonic()
                self.recorder.record(message, Outcome.error(f"internal: {e!r}", len(message.recipients), now, now))
            if self.error is None:
                self.error = f"internal error in a connection worker: {e!r}"
            self.stopping = True
            self.over.set()
        finally:
            if session is not None:
                closing, session = session, None
                await self._close(closing)

    async def _close(self, session: Session) -> None:
        if isinstance(session, Session):  # an HttpSession holds no connection of its own
            self.recorder.connection_closed()
            self.protocols.discard(session.protocol)
        await session.quit()

    async def _sweep(self) -> None:
        """Time out any reply wait longer than --timeout (once a second; no timer per read)."""
        timeout = self.config.timeout
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            now = time.monotonic()
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
        wall, started = time.time(), time.monotonic()
        self.started = started
        loop = asyncio.get_running_loop()
        if self.throttle is not None:
            # One schedule for every process: its start (the first process's) is the run's start for all.
            started = min(started, self.throttle.begin(started))
            self.started = started
        if config.duration is not None:
            self.deadline = started + config.duration
            loop.call_at(loop.time() + self.deadline - time.monotonic(), self.over.set)
        if self.remaining == 0:
            self.over.set()
        concurrency = self.share.concurrency or config.concurrency
        workers = [asyncio.create_task(self._worker(i)) for i in range(concurrency)]
        sweeper = asyncio.create_task(self._sweep())
        soft_wait = asyncio.create_task((soft or asyncio.Event()).wait())
        hard_wait = asyncio.create_task((hard or asyncio.Event()).wait())
        try:
            everything: asyncio.Future[Any] = asyncio.gather(*workers, return_exceptions=True)
            timeout = None if config.duration is None else config.duration + END_GRACE
            pending: set[asyncio.Future[Any]] = {everything, soft_wait, hard_wait}
            done, _ = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
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
            await inject.close_pool(self.http_pool)
        elapsed = time.monotonic() - started
        # The sending window of a --duration run is the duration, unless it was stopped early.
        window = elapsed
        if config.duration is not None:
            window = config.duration if not (self.interrupted or self.error) else min(elapsed, config.duration)
        return RunEnd(wall, elapsed, window, self.error, self.interrupted)
