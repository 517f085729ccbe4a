"""--processes N: the run spread over N spawned processes, supervised by the one the user started.

Each process runs its Share (connections and messages split exactly, interleaved sequence numbers); all draw due
times from one shared throttle schedule and start together (a barrier). Each sends its counts twice a second
(Progress: its latency interval for --hdr-log, its whole state for --metrics) and its whole Recorder state at the
end (Done), which the supervisor merges (histograms included, so percentiles are those of all messages). A stop
(^C, or an error without --keep-going) reaches every process; a second ^C terminates them.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from hdrh.histogram import HdrHistogram

from mailload.runtime import event_loop_factory
from trafficgen.config import RunConfig
from trafficgen.observers import Observers, snapshot
from trafficgen.runner import RunEnd, Runner, Share, new_recorder, raise_file_limit, shared_schedule
from trafficgen.runstate import Stop
from trafficgen.stats.progress import Snapshot
from trafficgen.stats.recorder import Recorder, State, new_histogram

REPORT_INTERVAL = 0.5
START_TOGETHER_TIMEOUT = 60.0  # how long a process waits for its siblings to be ready to start


class Progress(NamedTuple):
    """A process's counts so far."""

    process: int
    counts: tuple[int, ...]
    interval: bytes | None  # its latency since the last Progress (--hdr-log)
    state: State | None  # everything it counted so far (--metrics)
    recent: bytes | None = None  # the latency of its last whole interval (the live view's p99)


def _encode(histogram: HdrHistogram | None) -> bytes | None:
    return None if histogram is None or not histogram.get_total_count() else histogram.encode()


class Done(NamedTuple):
    """A process's end: everything it counted, and how its run ended."""

    process: int
    state: State
    end: RunEnd


class Controls(NamedTuple):
    """What the processes of one run share."""

    throttle: Any  # shared memory of the schedule (--throttle: Value('d'), --profile: Array('d', 3)), or None
    stop: Any  # multiprocessing Event: stop sending
    ready: Any  # multiprocessing Barrier: start together


def child_main(config: RunConfig, share: Share, controls: Controls, conn: Connection) -> None:
    """One process of a --processes run (the target of a spawned process)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(_child_run(config, share, controls, conn))


async def _child_run(config: RunConfig, share: Share, controls: Controls, conn: Connection) -> None:
    raise_file_limit(share.concurrency or config.concurrency)
    recorder = new_recorder(config)
    runner = Runner(config, recorder, share, shared_throttle=controls.throttle)

    def progress() -> Progress:
        interval = recorder.take_interval().encode() if config.hdr_log else None
        state = recorder.state(marks=False, timeline=False) if config.live_view else None
        recent = recorder.recent_latency() if not config.quiet else None
        return Progress(share.index, tuple(snapshot(recorder)), interval, state, _encode(recent))

    async def relay() -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL)
            conn.send(progress())
            if controls.stop.is_set():
                runner.state.stop(Stop.SUPERVISOR)
            if runner.state.error:
                controls.stop.set()

    # Processes spawn one after another: they start their runs together, or one that started later would go on
    # past the others' --duration, drawing more due times from the shared --throttle schedule than the run allows.
    # A sibling that died before it was ready breaks the barrier: run anyway (its absence is reported at the end).
    with contextlib.suppress(threading.BrokenBarrierError):
        controls.ready.wait(START_TOGETHER_TIMEOUT)  # nothing runs on this loop yet: blocking here delays nothing
    relayer = asyncio.create_task(relay())
    try:
        end = await runner.run()
    finally:
        relayer.cancel()
    if end.error:
        controls.stop.set()
    if config.hdr_log:
        conn.send(progress())  # the last interval
    conn.send(Done(share.index, recorder.state(), end))
    conn.close()


class Supervisor:
    """Starts the processes of a run, gathers what they count, stops them, and merges their results."""

    def __init__(self, config: RunConfig, soft: asyncio.Event, hard: asyncio.Event):
        self.config = config
        self.soft = soft  # ^C once: stop sending, let in-flight messages finish
        self.hard = hard  # ^C twice: terminate the processes
        self.shares = Share.split(config)
        self.recorder = new_recorder(config)  # what finished processes counted
        self.latest: dict[int, Snapshot] = {}  # what running ones counted so far
        self.states: dict[int, State] = {}
        self.recent: dict[int, bytes | None] = {}  # each running process's latency of its last whole interval
        self.interval = new_histogram()
        self.ends: dict[int, RunEnd] = {}
        self.finished = asyncio.Event()
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.pipes: list[Connection] = []
        self.controls: Controls | None = None
        self.started = time.monotonic()

    async def run(self) -> tuple[Recorder, RunEnd]:
        raise_file_limit(max(s.concurrency or 0 for s in self.shares))
        started = time.time()
        self.started = time.monotonic()
        controls = self.controls = self._start()
        observers = Observers(
            self.config,
            self.combined,
            self.view,
            self.take_interval if self.config.hdr_log else None,
            recent=self.recent_latency,
            start=self.schedule_start,
            stop=self.soft.set,
        )
        await observers.start()
        try:
            await self._watch(controls)
        finally:
            await observers.stop()
            self._reap()
        end = self._end(started)
        end.aborted, end.stairs = observers.watch.aborted, observers.watch.stairs
        return self.recorder, end

    def schedule_start(self) -> float | None:
        """When the run's schedule started (the processes share it); this process's start without a profile."""
        shared = self.controls.throttle if self.controls is not None else None
        if self.config.profile is not None and shared is not None:
            return float(shared[1]) if shared[0] else None
        return self.started

    def _start(self) -> Controls:
        mp = multiprocessing.get_context("spawn")
        controls = Controls(shared_schedule(self.config, mp), mp.Event(), mp.Barrier(len(self.shares)))
        loop = asyncio.get_running_loop()
        for share in self.shares:
            parent_end, child_end = mp.Pipe(duplex=False)
            process = mp.Process(target=child_main, args=(self.config, share, controls, child_end), daemon=True)
            process.start()
            child_end.close()
            self.processes.append(process)
            self.pipes.append(parent_end)
            loop.add_reader(parent_end.fileno(), self._receive, parent_end)
        return controls

    async def _watch(self, controls: Controls) -> None:
        waits = {asyncio.create_task(e.wait()) for e in (self.finished, self.soft, self.hard)}
        try:
            while not self.finished.is_set():
                _, waits = await asyncio.wait(waits, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                if self.soft.is_set():
                    controls.stop.set()
                if self.hard.is_set():  # ^C twice: the processes stop now, without their reports
                    for process in self.processes:
                        process.terminate()
                    return
                if all(not p.is_alive() for p in self.processes):
                    for conn in self.pipes:
                        if not conn.closed:
                            self._receive(conn)
                    return
        finally:
            for task in waits:
                task.cancel()

    def _receive(self, conn: Connection) -> None:
        try:
            # The event loop's reader made the pipe non-blocking; a message larger than the pipe's buffer arrives
            # in parts, and recv() must wait for the rest rather than fail half-way.
            os.set_blocking(conn.fileno(), True)
            while conn.poll():
                self._handle(conn.recv())
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(conn.fileno())
            conn.close()
        if len(self.ends) == len(self.shares) or all(not p.is_alive() for p in self.processes):
            self.finished.set()

    def _handle(self, message: Progress | Done) -> None:
        if isinstance(message, Progress):
            self.latest[message.process] = Snapshot(*message.counts)
            if message.interval is not None:
                self.interval.add(HdrHistogram.decode(message.interval))
            if message.state is not None:
                self.states[message.process] = message.state
            self.recent[message.process] = message.recent
        else:
            self.recorder.merge(message.state)
            self.ends[message.process] = message.end
            self.latest.pop(message.process, None)
            self.states.pop(message.process, None)
            self.recent.pop(message.process, None)

    def _reap(self) -> None:
        loop = asyncio.get_running_loop()
        for conn in self.pipes:
            if not conn.closed:
                loop.remove_reader(conn.fileno())
                conn.close()
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.kill()

    def _end(self, started: float) -> RunEnd:
        ends = self.ends
        missing = [s.index for s in self.shares if s.index not in ends]
        error = next((e.error for e in ends.values() if e.error), None)
        if missing and not self.hard.is_set():
            error = error or f"process {missing[0]} of {len(self.shares)} died before it reported"
        elapsed = max((e.elapsed for e in ends.values()), default=time.time() - started)
        window = max((e.window for e in ends.values()), default=elapsed)
        return RunEnd(started, elapsed, window, error, self.soft.is_set())

    # --- what the observers read ------------------------------------------------------------------------------

    def combined(self) -> Snapshot:
        own = snapshot(self.recorder)
        return Snapshot(*(sum(values) for values in zip(own, *self.latest.values(), strict=True)))

    def view(self) -> Recorder:
        merged = new_recorder(self.config)
        for state in (self.recorder.state(), *self.states.values()):
            merged.merge(state)
        return merged

    def recent_latency(self) -> HdrHistogram | None:
        """The processes' latency of their last whole interval, together."""
        merged = None
        for encoded in self.recent.values():
            if encoded:
                merged = merged or new_histogram(2)
                merged.add(HdrHistogram.decode(encoded))
        return merged

    def take_interval(self) -> HdrHistogram:
        taken, self.interval = self.interval, new_histogram()
        return taken
