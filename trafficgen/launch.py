"""Starting a run: in this process, or split over --processes N (spawned), with progress and one report.

With several processes each runs its Share (connections and messages split exactly, interleaved sequence
numbers), all draw due times from one shared throttle schedule, and each sends its counts once a second
for the progress display and its whole Recorder state at the end, which the parent merges (histograms
included, so percentiles are those of all messages). A stop (^C, or an error without --keep-going) reaches
every process.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from climain import event_loop_factory
from trafficgen.config import RunConfig
from trafficgen.runner import RunEnd, Runner, Share, raise_file_limit
from trafficgen.stats import report
from trafficgen.stats.progress import Progress, Snapshot
from trafficgen.stats.recorder import Recorder

CHILD_REPORT_INTERVAL = 0.5


def domain_names(config: RunConfig) -> list[str]:
    if config.recipient:
        return [config.recipient.rpartition("@")[2]]
    return [d.name for d in config.domains]


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
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()


async def _run_here(config: RunConfig, interrupts: _Interrupts) -> tuple[Recorder, RunEnd]:
    raise_file_limit(config.concurrency)
    recorder = Recorder(domain_names(config), corrected=config.throttle is not None)
    runner = Runner(config, recorder)
    progress = asyncio.create_task(Progress(lambda: snapshot(recorder), config.quiet).run())
    try:
        end = await runner.run(interrupts.soft)
    finally:
        progress.cancel()
    return recorder, end


def _child(config: RunConfig, share: Share, throttle: Any, stop: Any, conn: Connection) -> None:
    """One process of a --processes run."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(_child_main(config, share, throttle, stop, conn))


async def _child_main(config: RunConfig, share: Share, throttle: Any, stop: Any, conn: Connection) -> None:
    raise_file_limit(share.concurrency or config.concurrency)
    recorder = Recorder(domain_names(config), corrected=config.throttle is not None)
    runner = Runner(config, recorder, share, shared_throttle=throttle)
    soft = asyncio.Event()

    async def relay() -> None:
        while True:
            await asyncio.sleep(CHILD_REPORT_INTERVAL)
            conn.send(("progress", share.index, tuple(snapshot(recorder))))
            if stop.is_set():
                runner.stopping = True
                soft.set()
            if runner.error:
                stop.set()

    relayer = asyncio.create_task(relay())
    try:
        end = await runner.run(soft)
    finally:
        relayer.cancel()
    if end.error:
        stop.set()
    conn.send(("done", share.index, recorder.state(), end))
    conn.close()


async def _run_processes(config: RunConfig, interrupts: _Interrupts) -> tuple[Recorder, RunEnd]:
    mp = multiprocessing.get_context("spawn")
    shares = Share.split(config)
    raise_file_limit(max(s.concurrency or 0 for s in shares))
    throttle = mp.Value("d", 0.0) if config.throttle else None
    stop = mp.Event()
    recorder = Recorder(domain_names(config), corrected=config.throttle is not None)
    latest: dict[int, Snapshot] = {}
    ends: dict[int, RunEnd] = {}
    loop = asyncio.get_running_loop()
    finished = asyncio.Event()
    processes, pipes = [], []
    started = time.time()
    for share in shares:
        parent_end, child_end = mp.Pipe(duplex=False)
        process = mp.Process(target=_child, args=(config, share, throttle, stop, child_end), daemon=True)
        process.start()
        child_end.close()
        processes.append(process)
        pipes.append(parent_end)

    def receive(conn: Connection) -> None:
        try:
            while conn.poll():
                message = conn.recv()
                if message[0] == "progress":
                    latest[message[1]] = Snapshot(*message[2])
                elif message[0] == "done":
                    recorder.merge(message[2])
                    ends[message[1]] = message[3]
                    latest.pop(message[1], None)
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

    progress = asyncio.create_task(Progress(combined, config.quiet).run())
    waits = {asyncio.create_task(finished.wait()), asyncio.create_task(interrupts.soft.wait())}
    try:
        while not finished.is_set():
            done, waits = await asyncio.wait(waits, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            if interrupts.soft.is_set():
                stop.set()
            if all(not p.is_alive() for p in processes):
                for conn in pipes:
                    if not conn.closed:
                        receive(conn)
                break
    finally:
        progress.cancel()
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
    if missing:
        error = error or f"process {missing[0]} of {len(shares)} died before it reported"
    elapsed = max((e.elapsed for e in ends.values()), default=time.time() - started)
    return recorder, RunEnd(started, elapsed, error, interrupts.count > 0)


async def run_async(config: RunConfig) -> Result:
    interrupts = _Interrupts()
    interrupts.install()
    if config.processes > 1:
        recorder, end = await _run_processes(config, interrupts)
    else:
        recorder, end = await _run_here(config, interrupts)
    stopped_by = f"error: {end.error}" if end.error else ("interrupted" if end.interrupted else None)
    document = report.build(
        recorder,
        run_id=config.run_id,
        target=config.target,
        started=end.started,
        elapsed=end.elapsed,
        config=config.public(),
        stopped_by=stopped_by,
    )
    return Result(document, end)


def run(config: RunConfig) -> Result:
    """Run to the end and return the report (the programmatic face of the trafficgen command)."""
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(run_async(config))
