"""Starting a run: in this process, or split over --processes N (spawned), with its observers and one report.

With several processes each runs its Share (connections and messages split exactly, interleaved sequence
numbers), all draw due times from one shared throttle schedule, and each sends its counts twice a second (its
latency interval for --hdr-log, its whole state for --metrics) and its whole Recorder state at the end, which
the parent merges (histograms included, so percentiles are those of all messages). A stop (^C, or an error
without --keep-going) reaches every process. After the run, --reconcile asks the sink what it received.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from hdrh.histogram import HdrHistogram

from mailload.cli import event_loop_factory
from trafficgen.config import ConfigError, RunConfig
from trafficgen.reconcile import ask_sinks, encode_marks
from trafficgen.runner import RunEnd, Runner, Share, raise_file_limit
from trafficgen.stats import exporter, report
from trafficgen.stats.exporter import RunCollector
from trafficgen.stats.hdrlog import IntervalLog
from trafficgen.stats.progress import INTERVAL, Progress, Snapshot
from trafficgen.stats.recorder import Recorder, new_histogram

CHILD_REPORT_INTERVAL = 0.5
START_TOGETHER_TIMEOUT = 60.0  # how long a process waits for its siblings to be ready to start


def domain_names(config: RunConfig) -> list[str]:
    if config.recipient:
        return [config.recipient.rpartition("@")[2]]
    return [d.name for d in config.domains]


def new_recorder(config: RunConfig) -> Recorder:
    return Recorder(
        domain_names(config),
        corrected=config.throttle is not None,
        marks=config.reconcile is not None,
        shards=config.shard_count,
        intervals=config.hdr_log is not None,
    )


def snapshot(recorder: Recorder) -> Snapshot:
    t = recorder.totals()
    return Snapshot(t.attempted, t.accepted, t.tempfailed, t.permfailed, t.errors, recorder.connections_open)


@dataclass
class Result:
    report: dict[str, Any]
    end: RunEnd


class _Interrupts:
    """^C once: stop sending and let in-flight messages finish. ^C twice: stop now."""

    def __init__(self) -> None:
        self.soft = asyncio.Event()
        self.hard = asyncio.Event()
        self.count = 0

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.press)

    def press(self) -> None:
        self.count += 1
        self.soft.set()
        if self.count == 1:
            print("\ntrafficgen: stopping; in-flight messages finish (^C again to stop now)", file=sys.stderr)
        else:
            self.hard.set()


class Observers:
    """What watches a run as it goes: progress, the --hdr-log interval log, the --metrics exporter.

    `view` gives a Recorder with everything counted so far; `take_interval` the latency since its last call.
    """

    def __init__(
        self,
        config: RunConfig,
        read: Callable[[], Snapshot],
        view: Callable[[], Recorder],
        take_interval: Callable[[], HdrHistogram] | None,
    ):
        self.config = config
        self.read = read
        self.view = view
        self.take_interval = take_interval
        self.tasks: list[asyncio.Task[None]] = []
        self.log: IntervalLog | None = None
        self.exporter: Any = None

    async def start(self) -> None:
        config = self.config
        asked = config.throttle.per_second if config.throttle else None
        self.tasks.append(asyncio.create_task(Progress(self.read, config.quiet, asked=asked).run()))
        if config.hdr_log:
            try:
                self.log = IntervalLog(config.hdr_log)
            except OSError as e:
                raise ConfigError(f"--hdr-log {config.hdr_log}: cannot write: {e.strerror}") from None
            self.tasks.append(asyncio.create_task(self._log_intervals()))
        if config.metrics:
            collector = RunCollector(self.view, config.run_id, config.target)
            try:
                self.exporter = await exporter.serve(*config.metrics, collector)
            except OSError as e:
                raise ConfigError(f"--metrics {config.metrics[0]}:{config.metrics[1]}: {e.strerror}") from None

    async def _log_intervals(self) -> None:
        assert self.log is not None and self.take_interval is not None
        while True:
            await asyncio.sleep(INTERVAL)
            self.log.write(self.take_interval())

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.log is not None and self.take_interval is not None:
            self.log.write(self.take_interval())
            self.log.close()
        if self.exporter is not None:
            await self.exporter.cleanup()


async def _run_here(config: RunConfig, interrupts: _Interrupts) -> tuple[Recorder, RunEnd]:
    raise_file_limit(config.concurrency)
    recorder = new_recorder(config)
    runner = Runner(config, recorder)
    observers = Observers(
        config, lambda: snapshot(recorder), lambda: recorder, recorder.take_interval if config.hdr_log else None
    )
    await observers.start()
    try:
        end = await runner.run(interrupts.soft, interrupts.hard)
    finally:
        await observers.stop()
    return recorder, end


def _child(config: RunConfig, share: Share, throttle: Any, stop: Any, conn: Connection, ready: Any) -> None:
    """One process of a --processes run."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(_child_main(config, share, throttle, stop, conn, ready))


async def _child_main(config: RunConfig, share: Share, throttle: Any, stop: Any, conn: Connection, ready: Any) -> None:
    raise_file_limit(share.concurrency or config.concurrency)
    recorder = new_recorder(config)
    runner = Runner(config, recorder, share, shared_throttle=throttle)
    soft = asyncio.Event()

    def progress() -> tuple[Any, ...]:
        interval = recorder.take_interval().encode() if config.hdr_log else None
        state = recorder.state(marks=False) if config.metrics else None
        return ("progress", share.index, tuple(snapshot(recorder)), interval, state)

    async def relay() -> None:
        while True:
            await asyncio.sleep(CHILD_REPORT_INTERVAL)
            conn.send(progress())
            if stop.is_set():
                runner.stopping = True
                soft.set()
            if runner.error:
                stop.set()

    # Processes spawn one after another: they start their runs together, or one that started later would go on
    # past the others' --duration, drawing more due times from the shared --throttle schedule than the run allows.
    try:
        ready.wait(START_TOGETHER_TIMEOUT)  # nothing runs on this loop yet: blocking here delays nothing
    except threading.BrokenBarrierError:
        pass  # a sibling died before it was ready: run anyway (its absence is reported at the end)
    relayer = asyncio.create_task(relay())
    try:
        end = await runner.run(soft)
    finally:
        relayer.cancel()
    if end.error:
        stop.set()
    if config.hdr_log:
        conn.send(progress())  # the last interval
    conn.send(("done", share.index, recorder.state(), end))
    conn.close()


async def _run_processes(config: RunConfig, interrupts: _Interrupts) -> tuple[Recorder, RunEnd]:
    mp = multiprocessing.get_context("spawn")
    shares = Share.split(config)
    raise_file_limit(max(s.concurrency or 0 for s in shares))
    throttle = mp.Value("d", 0.0) if config.throttle else None
    stop = mp.Event()
    ready = mp.Barrier(len(shares))
    recorder = new_recorder(config)  # what finished processes counted
    latest: dict[int, Snapshot] = {}  # what running ones counted so far
    states: dict[int, dict[str, Any]] = {}
    intervals = [new_histogram()]
    ends: dict[int, RunEnd] = {}
    loop = asyncio.get_running_loop()
    finished = asyncio.Event()
    processes, pipes = [], []
    started = time.time()
    for share in shares:
        parent_end, child_end = mp.Pipe(duplex=False)
        process = mp.Process(target=_child, args=(config, share, throttle, stop, child_end, ready), daemon=True)
        process.start()
        child_end.close()
        processes.append(process)
        pipes.append(parent_end)

    def receive(conn: Connection) -> None:
        try:
            # The event loop's reader made the pipe non-blocking; a message larger than the pipe's buffer arrives
            # in parts, and recv() must wait for the rest rather than fail half-way.
            os.set_blocking(conn.fileno(), True)
            while conn.poll():
                message = conn.recv()
                if message[0] == "progress":
                    _, index, counts, interval, state = message
                    latest[index] = Snapshot(*counts)
                    if interval is not None:
                        intervals[0].add(HdrHistogram.decode(interval))
                    if state is not None:
                        states[index] = state
                elif message[0] == "done":
                    recorder.merge(message[2])
                    ends[message[1]] = message[3]
                    latest.pop(message[1], None)
                    states.pop(message[1], None)
        except (EOFError, OSError):
            loop.remove_reader(conn.fileno())
            conn.close()
        if len(ends) == len(shares) or all(not p.is_alive() for p in processes):
            finished.set()

    for conn in pipes:
        loop.add_reader(conn.fileno(), receive, conn)

    def combined() -> Snapshot:
        own = snapshot(recorder)
        return Snapshot(*(sum(values) for values in zip(own, *latest.values(), strict=True)))

    def view() -> Recorder:
        merged = new_recorder(config)
        for state in (recorder.state(), *states.values()):
            merged.merge(state)
        return merged

    def take_interval() -> HdrHistogram:
        taken, intervals[0] = intervals[0], new_histogram()
        return taken

    observers = Observers(config, combined, view, take_interval if config.hdr_log else None)
    await observers.start()
    waits = {asyncio.create_task(finished.wait()), asyncio.create_task(interrupts.soft.wait())}
    waits.add(asyncio.create_task(interrupts.hard.wait()))
    try:
        while not finished.is_set():
            done, waits = await asyncio.wait(waits, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            if interrupts.soft.is_set():
                stop.set()
            if interrupts.hard.is_set():  # ^C twice: the processes stop now, without their reports
                for process in processes:
                    process.terminate()
                break
            if all(not p.is_alive() for p in processes):
                for conn in pipes:
                    if not conn.closed:
                        receive(conn)
                break
    finally:
        await observers.stop()
        for task in waits:
            task.cancel()
        for conn in pipes:
            if not conn.closed:
                loop.remove_reader(conn.fileno())
                conn.close()
        for process in processes:
            process.join(5)
            if process.is_alive():
                process.kill()
    missing = [s.index for s in shares if s.index not in ends]
    error = next((e.error for e in ends.values() if e.error), None)
    if missing and not interrupts.hard.is_set():
        error = error or f"process {missing[0]} of {len(shares)} died before it reported"
    elapsed = max((e.elapsed for e in ends.values()), default=time.time() - started)
    window = max((e.window for e in ends.values()), default=elapsed)
    return recorder, RunEnd(started, elapsed, window, error, interrupts.count > 0)


def tune_gc() -> None:
    """Fewer collections on the hot path: a run allocates a few short-lived objects per message, none in cycles
    that matter, and the default threshold (700) collects every few dozen messages. Startup objects are frozen."""
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


async def run_async(config: RunConfig) -> Result:
    tune_gc()
    interrupts = _Interrupts()
    interrupts.install()
    if config.processes > 1:
        recorder, end = await _run_processes(config, interrupts)
    else:
        recorder, end = await _run_here(config, interrupts)
    reconciliation = None
    if config.reconcile is not None and not interrupts.count:
        reconciliation = await _reconcile(config, recorder)
    stopped_by = f"error: {end.error}" if end.error else ("interrupted" if end.interrupted else None)
    document = report.build(
        recorder,
        run_id=config.run_id,
        target=config.target,
        started=end.started,
        elapsed=end.elapsed,
        window=end.window,
        config=config.public(),
        stopped_by=stopped_by,
    )
    if reconciliation is not None:
        document["reconciliation"] = reconciliation
    return Result(document, end)


async def _reconcile(config: RunConfig, recorder: Recorder) -> dict[str, Any]:
    """Ask the sinks what became of each message the target accepted, for up to --reconcile-wait seconds
    while the MTA may still be delivering."""
    assert config.reconcile is not None
    if config.reconcile_wait and not config.quiet:
        print(
            f"trafficgen: asking the sink each second, for up to {config.reconcile_wait:g} s, until every message "
            "the target accepted has its final answer",
            file=sys.stderr,
        )
    ours = bytes(recorder.marks or b"")
    document = await ask_sinks(
        config.reconcile,
        config.run_id,
        ours,
        shards=config.shard_count,
        shard=config.shard_index,
        wait_s=config.reconcile_wait,
        request_s=config.timeout,
    )
    # What the target accepted, kept so that `trafficgen report reconcile` can ask again later.
    document["marks"] = encode_marks(ours)
    return document


def run(config: RunConfig) -> Result:
    """Run to the end and return the report (the programmatic face of the trafficgen command)."""
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(run_async(config))
