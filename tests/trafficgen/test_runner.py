"""The run loop as a unit: a Runner given a Connector of the test's own, which opens real SMTP sessions (the run's
own SmtpConnector) to real servers (aiosmtpd's, by way of the capture server; smartsink) and notes what went over
each: it claims each message once, reconnects after a dropped connection, ends the run when the target cannot be
reached (unless --keep-going), and stops on each reason of its RunState; the RunState alone, on an injected clock."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from harness.capture import CaptureHandler, CaptureServer
from harness.policies import ACCEPT_ALL
from harness.sink import running_sink
from trafficgen.config import RunConfig, build
from trafficgen.connector import SmtpConnector
from trafficgen.messages import Message
from trafficgen.outcome import ERROR, Outcome
from trafficgen.ratelimit import Throttle
from trafficgen.runner import RunEnd, Runner, new_recorder
from trafficgen.runstate import RunState, Stop
from trafficgen.stats.recorder import Recorder
from trafficgen.transport import Transport

RUN_BOUND = 60.0  # a bound on a hang of the whole run, far above the seconds a run here takes on a busy machine


class Peer(CaptureHandler):
    """aiosmtpd's answers: every message queued, except that the server hangs up at the DATA numbers (counted
    across connections from 0) in `drop`, and never answers DATA from number `hang` on (calling `hanging` with
    how many wait, from the server's thread)."""

    def __init__(self, drop: frozenset[int] = frozenset(), hang: int | None = None):
        self.drop = drop
        self.hang = hang
        self.hanging: Callable[[int], None] = lambda waiting: None
        self.datas = 0
        self.waiting = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        number = self.datas
        self.datas += 1
        if number in self.drop:
            assert server.transport is not None
            server.transport.close()  # the client sees its connection lost, no reply
            return "451 4.3.0 never sent"
        if self.hang is not None and number >= self.hang:
            self.waiting += 1
            self.hanging(self.waiting)
            await asyncio.Event().wait()  # cancelled when the server stops
        self.record(server, session, envelope)
        return "250 2.0.0 Ok: queued"


class Line:
    """A real Session, noted: the sequence numbers sent over it (and, to the connector, any whose sending began
    after an abrupt stop, and each answer)."""

    def __init__(self, session: Transport, connector: Noting):
        self.session = session
        self.connector = connector
        self.sent: list[int] = []
        self.kinds: list[str] = []  # each message's outcome, in order
        self.holds_connection = session.holds_connection
        self.phases = session.phases

    @property
    def usable(self) -> bool:
        return self.session.usable

    async def send(self, message: Message, following: Message | None = None) -> Outcome:
        connector = self.connector
        if connector.runner is not None and connector.runner.state.stopping:
            connector.after_stop.append(message.seq)
        self.sent.append(message.seq)
        connector.before(message)
        outcome = await self.session.send(message, following)
        self.kinds.append(outcome.kind)
        connector.answers += 1
        connector.answered(connector)
        return outcome

    async def quit(self) -> None:
        await self.session.quit()


class Noting:
    """The test's Connector: the run's own SmtpConnector to `config`'s target, its first `refused` openings to
    `refused_config`'s target instead (a port nobody listens on), each transport noted (Line)."""

    def __init__(self, config: RunConfig, refused_config: RunConfig | None = None, refused: int = 0):
        self.real = SmtpConnector(config)
        self.refuser = SmtpConnector(refused_config) if refused_config is not None else None
        self.refused = refused
        self.attempts = 0
        self.lines: list[Line] = []
        self.answers = 0
        self.after_stop: list[int] = []  # messages whose sending began after an abrupt stop
        self.closed = False
        self.runner: Runner | None = None
        self.before: Callable[[Message], None] = lambda message: None
        self.answered: Callable[[Noting], None] = lambda connector: None

    async def check(self) -> str | None:
        return await self.real.check()

    async def open(self, source: int, progress: list[str]) -> Transport:
        self.attempts += 1
        if self.refuser is not None and self.attempts <= self.refused:
            return await self.refuser.open(source, progress)
        line = Line(await self.real.open(source, progress), self)
        self.lines.append(line)
        return line

    def sweep(self, now: float) -> None:
        self.real.sweep(now)

    async def close(self) -> None:
        self.closed = True
        await self.real.close()

    def sent(self) -> list[int]:
        return sorted(seq for line in self.lines for seq in line.sent)


@contextmanager
def closed_port() -> Iterator[str]:
    """A target on 127.0.0.1 that refuses connections: a port bound (so nobody else takes it) but not listening."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{held.getsockname()[1]}"


def config(target: str, **options: object) -> RunConfig:
    """The run's options; every worker's turn to connect comes within microseconds (--connect-rate), so each one
    connects before the others can finish the run without it."""
    return build(target=target, seed=1, connect_rate="1000000/s", **options)  # type: ignore[arg-type]


def run(
    connector: Noting, options: RunConfig, soft: asyncio.Event | None = None, hard: asyncio.Event | None = None
) -> tuple[Runner, Recorder, RunEnd]:
    """The Runner run to its end with `connector`, in an event loop of its own."""

    async def go() -> tuple[Runner, Recorder, RunEnd]:
        recorder = new_recorder(options)
        runner = Runner(options, recorder, connector=connector)
        connector.runner = runner
        end = await asyncio.wait_for(runner.run(soft, hard), RUN_BOUND)
        return runner, recorder, end

    return asyncio.run(go())


def test_the_runner_uses_the_connector_it_is_given():
    """The Runner opens every transport through the Connector given, none of its own: with a connector whose
    openings all go to a port nobody listens on, the run's --target (a live server) gets no connection."""
    with CaptureServer(Peer()) as server, closed_port() as nobody:
        connector = Noting(config(nobody))
        runner, recorder, end = run(connector, config(server.target, message_count=5, concurrency=2))
    assert server.connections == []
    assert runner.state.reason is Stop.ERROR
    assert end.error is not None
    assert nobody in end.error
    assert recorder.totals().attempted == 0


class TestClaims:
    def test_each_message_claimed_and_recorded_once(self):
        """--message-count 50 over 4 connections: each sequence number sent once, each outcome recorded once, the
        server got 50 messages over the four connections, all opened and closed; the count ends the run."""
        with CaptureServer(Peer()) as server:
            options = config(server.target, message_count=50, concurrency=4)
            connector = Noting(options)
            runner, recorder, end = run(connector, options)
        assert connector.sent() == list(range(50))
        totals = recorder.totals()
        assert totals.attempted == totals.accepted == 50
        assert len(server.messages) == 50
        assert runner.state.reason is Stop.COUNT
        assert (end.error, end.interrupted) == (None, False)
        assert len(connector.lines) == recorder.connections_opened == len(server.connections) == 4
        assert recorder.connections_open == 0
        assert connector.closed

    def test_messages_per_connection_opens_only_what_is_needed(self):
        """--message-count 12 --messages-per-connection 3: four connections of three."""
        with CaptureServer(Peer()) as server:
            options = config(server.target, message_count=12, concurrency=1, messages_per_connection=3)
            connector = Noting(options)
            _, recorder, _ = run(connector, options)
        assert [len(line.sent) for line in connector.lines] == [3, 3, 3, 3]
        assert recorder.connections_opened == len(server.connections) == 4
        assert connector.sent() == list(range(12))


class TestConnections:
    def test_a_dropped_connection_ends_that_connection_not_the_run(self):
        """Without --keep-going, the server hangs up at two messages' DATA: each is an error, its worker opens a
        new connection (never sending over the dropped one), every message is sent once, the count ends it."""
        with CaptureServer(Peer(drop=frozenset({5, 17})), pipelining=False) as server:
            options = config(server.target, message_count=40, concurrency=3)
            connector = Noting(options)
            runner, recorder, end = run(connector, options)
        assert runner.state.reason is Stop.COUNT
        assert end.error is None
        assert connector.sent() == list(range(40))
        totals = recorder.totals()
        assert (totals.attempted, totals.accepted, totals.errors) == (40, 38, 2)
        assert len(server.messages) == 38
        assert sum(recorder.errors.values()) == 2
        assert all("closed the connection" in text for text in recorder.errors), dict(recorder.errors)
        assert len(connector.lines) == len(server.connections) == 3 + 2  # a new connection after each drop
        for line in connector.lines:
            assert ERROR not in line.kinds[:-1], "a drop is the last message of its connection"
        assert sum(line.kinds[-1] == ERROR for line in connector.lines) == 2

    def test_a_target_that_cannot_be_reached_ends_the_run(self):
        """Without --keep-going, a connection that cannot be opened (refused) ends the run with its words; no
        message of the run failed for it (the run ended while connecting)."""
        with closed_port() as nobody:
            options = config(nobody, message_count=10, concurrency=3)
            connector = Noting(options)
            runner, recorder, end = run(connector, options)
        assert runner.state.reason is Stop.ERROR
        assert end.error is not None
        assert end.error.startswith("refused")
        assert nobody in end.error
        assert sum(recorder.connection_errors.values()) >= 1
        assert all(text.startswith("refused") for text in recorder.connection_errors)
        assert recorder.totals().attempted == 0
        assert connector.lines == []

    def test_with_keep_going_it_is_retried(self):
        """--keep-going: the first two openings are refused; each failure is the outcome of a message, counted,
        then the worker tries again (with backoff) and the run sends the rest to the server."""
        with CaptureServer(Peer()) as server, closed_port() as nobody:
            options = config(server.target, message_count=10, concurrency=1, keep_going=True)
            connector = Noting(options, config(nobody), refused=2)
            runner, recorder, end = run(connector, options)
        assert runner.state.reason is Stop.COUNT
        assert end.error is None
        assert sum(recorder.connection_errors.values()) == 2
        totals = recorder.totals()
        assert (totals.attempted, totals.accepted, totals.errors) == (10, 8, 2)
        assert len(server.messages) == 8
        assert sum(recorder.errors.values()) == 2
        assert connector.attempts == 3

    def test_a_refusal_does_not_end_the_run(self, tmp_path: Path):
        """smartsink with max_connections = 1 answers the second connection 421 at the greeting: the target
        answered, so that is counted (a tempfail of the message that would have gone over it), not an error of the
        run, even without --keep-going; the count ends the run."""
        policy = f"{ACCEPT_ALL}\n[listener]\nmax_connections = 1\n"
        with running_sink(policy=policy, tmp=tmp_path) as sink:
            options = config(sink.target, message_count=10, concurrency=2)
            connector = Noting(options)
            runner, recorder, end = run(connector, options)
        assert runner.state.reason is Stop.COUNT
        assert end.error is None
        totals = recorder.totals()
        assert totals.attempted == totals.accepted + totals.tempfailed == 10
        assert totals.tempfailed >= 1
        assert totals.accepted >= 1
        assert all(text.startswith("421") for text in recorder.connection_errors), dict(recorder.connection_errors)
        assert sum(recorder.connection_errors.values()) == totals.tempfailed


class TestStops:
    """Every reason the run can end for, given to the one RunState; after an abrupt stop no message is sent."""

    def test_duration(self):
        """--duration 0.3 --throttle 50/s: the duration ends it, nothing due at or past the end is claimed, the
        window is the duration."""
        with CaptureServer(Peer()) as server:
            options = config(server.target, duration=0.3, throttle="50/s", concurrency=2)
            connector = Noting(options)
            runner, recorder, end = run(connector, options)
        assert runner.state.reason is Stop.DURATION
        assert (end.error, end.interrupted, end.window) == (None, False, 0.3)
        # Due at 0, 20, ..., 280 ms: at most 15 (fewer when a busy machine delays the claims past the end).
        assert 1 <= recorder.totals().attempted == len(connector.sent()) <= 15
        assert len(server.messages) == recorder.totals().accepted

    @pytest.mark.parametrize(
        ("reason", "interrupted"),
        [(Stop.JUDGE, False), (Stop.SUPERVISOR, True)],
        ids=["judge", "supervisor"],
    )
    def test_stopped_from_outside(self, reason, interrupted):
        """The judge (trafficgen.watch) or the supervisor stops the run at the 10th answer: in-flight messages
        finish, no message is sent after, the sending window ends at the stop; only the supervisor's stop (^C
        or a sibling's error, for all it knows) says interrupted."""
        stopped: list[float] = []  # just before the stop and just after

        def answered(connector: Noting) -> None:
            if connector.answers == 10 and connector.runner is not None:
                stopped.append(time.monotonic())
                connector.runner.state.stop(reason)
                stopped.append(time.monotonic())

        with CaptureServer(Peer()) as server:
            options = config(server.target, message_count=1000, concurrency=3)
            connector = Noting(options)
            connector.answered = answered
            runner, recorder, end = run(connector, options)
        assert runner.state.reason is reason
        assert (end.error, end.interrupted) == (None, interrupted)
        assert connector.after_stop == []
        sent = len(connector.sent())
        assert 10 <= recorder.totals().attempted == sent <= 10 + 2  # the other two workers' in flight
        before, after = stopped
        assert before - runner.started <= end.window <= after - runner.started

    def test_interrupted(self):
        """^C (`soft`) at the 10th answer: the run stops claiming, in-flight messages finish, it says interrupted."""
        soft = asyncio.Event()

        def answered(connector: Noting) -> None:
            if connector.answers == 10:
                soft.set()

        with CaptureServer(Peer()) as server:
            options = config(server.target, message_count=1000, concurrency=3)
            connector = Noting(options)
            connector.answered = answered
            runner, recorder, end = run(connector, options, soft)
        assert runner.state.reason is Stop.INTERRUPTED
        assert (end.error, end.interrupted) == (None, True)
        assert connector.after_stop == []
        assert 10 <= recorder.totals().attempted == len(connector.sent()) < 1000

    def test_second_interrupt_cuts_what_is_in_flight(self):
        """^C twice while every connection waits for a DATA reply that never comes: each message in flight gets its
        one outcome ("cut"), now, not after the grace period (10 s) nor --timeout (30 s)."""
        soft, hard = asyncio.Event(), asyncio.Event()
        loop: list[asyncio.AbstractEventLoop] = []
        peer = Peer(hang=0)

        def hanging(waiting: int) -> None:  # in the server's thread
            if waiting == 3:
                loop[0].call_soon_threadsafe(soft.set)
                loop[0].call_soon_threadsafe(hard.set)

        peer.hanging = hanging

        def before(message: Message) -> None:
            if not loop:
                loop.append(asyncio.get_running_loop())

        with CaptureServer(peer, pipelining=False) as server:
            options = config(server.target, message_count=100, concurrency=3, timeout=30)
            connector = Noting(options)
            connector.before = before
            began = time.monotonic()
            runner, recorder, end = run(connector, options, soft, hard)
            took = time.monotonic() - began
        assert took < 8, f"{took:.1f} s: the grace period or the timeout was waited for"
        assert runner.state.reason is Stop.INTERRUPTED
        assert end.interrupted
        totals = recorder.totals()
        assert totals.attempted == totals.errors >= 3  # the three in flight, and any claimed behind them
        assert set(recorder.errors) == {"cut: the run ended before the reply"}
        assert server.messages == []

    def test_error_of_a_worker(self):
        """A bug in a worker (its transport raised) ends the run as an error naming it; the message it was sending
        gets an internal error outcome; nothing is sent after."""

        def before(message: Message) -> None:
            if message.seq == 3:
                raise RuntimeError("boom")

        with CaptureServer(Peer()) as server:
            options = config(server.target, message_count=100, concurrency=1)
            connector = Noting(options)
            connector.before = before
            runner, recorder, end = run(connector, options)
        assert runner.state.reason is Stop.ERROR
        assert end.error == "internal error in a connection worker: RuntimeError('boom')"
        assert recorder.totals().errors == 1
        assert recorder.totals().accepted == len(server.messages) == 3
        assert list(recorder.errors) == ["internal: RuntimeError('boom')"]
        assert connector.after_stop == []


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TestRunState:
    """The one state every part asks, on an injected clock."""

    def test_claims_end_with_the_count(self):
        state = RunState(count=2, clock=Clock())
        assert [state.take(False), state.take(False)] == [(0, 100.0, 0), (1, 100.0, 0)]
        assert state.take(False) is None
        assert state.claims_over()
        assert state.counted_out
        assert not state.over, "claimed is not answered"
        state.settle()
        state.settle()
        assert (state.over, state.reason, state.stopping) == (True, Stop.COUNT, False)

    def test_claims_end_at_the_schedule_end(self):
        """--throttle 10/s over 1 s: due times 0.0 ... 0.9; the next is past the end: no more claims."""
        clock = Clock()
        state = RunState(schedule=Throttle(build(throttle="10/s").throttle, clock=clock), clock=clock)

        async def claim_all() -> list[float]:
            state.begin(clock.now, 1.0)
            return [taken[1] for taken in iter(lambda: state.take(False), None)]

        dues = asyncio.run(claim_all())
        assert dues == pytest.approx([100.0 + k / 10 for k in range(10)])
        assert state.claims_over()
        assert not state.over, "the run goes on until its duration"

    def test_claims_end_at_the_deadline(self):
        clock = Clock()
        state = RunState(clock=clock)

        async def begin() -> None:
            state.begin(clock.now, 2.0)

        asyncio.run(begin())
        assert not state.claims_over()
        clock.now += 2.0
        assert state.claims_over()
        assert state.take(False) is None

    def test_an_abrupt_stop_is_the_reason_over_a_natural_end(self):
        """The count was done, then ^C during the end: the run says interrupted; the first error is kept."""
        clock = Clock()
        state = RunState(clock=clock)
        state.stop(Stop.COUNT)
        assert (state.reason, state.stopping, state.stopped_at) == (Stop.COUNT, False, None)
        clock.now = 101.0
        state.stop(Stop.INTERRUPTED)
        state.stop(Stop.ERROR, "first")
        state.stop(Stop.ERROR, "second")
        assert (state.reason, state.stopping, state.interrupted) == (Stop.INTERRUPTED, True, True)
        assert state.error == "first"
        assert state.stopped_at == 101.0
        assert state.claims_over()

    @pytest.mark.parametrize(
        ("reason", "abrupt", "outside", "interrupted"),
        [
            (Stop.DURATION, False, False, False),
            (Stop.COUNT, False, False, False),
            (Stop.INTERRUPTED, True, True, True),
            (Stop.JUDGE, True, True, False),
            (Stop.SUPERVISOR, True, True, True),
            (Stop.ERROR, True, False, False),
        ],
        ids=lambda v: v.name.lower() if isinstance(v, Stop) else None,
    )
    def test_each_reason(self, reason, abrupt, outside, interrupted):
        state = RunState(count=5, clock=Clock())
        state.stop(reason)
        assert state.over
        assert state.claims_over()
        assert (state.reason, state.stopping, state.interrupted) == (reason, abrupt, interrupted)
        assert (state.stopped_at is not None) == outside
        assert state.take(False) is None
