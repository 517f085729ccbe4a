"""Starting a run: in this process, or under a Supervisor of --processes N, then the reconciliation and the report.

`run(config)` is the programmatic face of the trafficgen command (also `trafficgen.run`).
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from dataclasses import dataclass

from mailload.runtime import event_loop_factory
from trafficgen.config import RunConfig
from trafficgen.observers import Observers, snapshot
from trafficgen.runner import RunEnd, Runner, new_recorder, raise_file_limit
from trafficgen.runstate import Stop
from trafficgen.stats import report
from trafficgen.stats.document import ReconcileFailure, Reconciliation, Report, json_value
from trafficgen.stats.recorder import Recorder
from trafficgen.supervisor import Supervisor


@dataclass
class Result:
    report: Report
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


async def _run_here(config: RunConfig, interrupts: _Interrupts) -> tuple[Recorder, RunEnd]:
    raise_file_limit(config.concurrency)
    recorder = new_recorder(config)
    runner = Runner(config, recorder)
    observers = Observers(
        config,
        lambda: snapshot(recorder),
        lambda: recorder,
        recorder.take_interval if config.hdr_log else None,
        recent=recorder.recent_latency,
        start=lambda: runner.started,
        stop=lambda: runner.state.stop(Stop.JUDGE),
    )
    await observers.start()
    try:
        end = await runner.run(interrupts.soft, interrupts.hard)
    finally:
        await observers.stop()
    end.aborted, end.stairs = observers.watch.aborted, observers.watch.stairs
    return recorder, end


def tune_gc() -> None:
    """Fewer collections on the hot path: a run allocates a few short-lived objects per message, none in cycles
    that matter, and the default threshold (700) collects every few dozen messages. Startup objects are frozen."""
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


async def reset_sinks(config: RunConfig) -> None:
    """--reset-sink: every sink forgets what earlier runs taught it, before anything is sent (ResetError when one
    cannot: the run does not start)."""
    from trafficgen import sinkstate  # aiohttp: only with --reset-sink

    forgotten = await sinkstate.reset(config.reset_sink, config.timeout)
    if not config.quiet:
        for line in sinkstate.describe(forgotten):
            print(line, file=sys.stderr)


async def run_async(config: RunConfig) -> Result:
    if config.reset_sink:
        await reset_sinks(config)
    tune_gc()
    interrupts = _Interrupts()
    interrupts.install()
    if config.processes > 1:
        recorder, end = await Supervisor(config, interrupts.soft, interrupts.hard).run()
    else:
        recorder, end = await _run_here(config, interrupts)
    if not interrupts.count and (end.aborted or (end.stairs and end.stairs["failed_per_s"] is not None)):
        end.interrupted = False  # the run was stopped by its own judge (trafficgen.watch), not by a person
    reconciliation = None
    if config.reconcile is not None and not interrupts.count:
        reconciliation = await _reconcile(config, recorder)
    stopped_by = f"error: {end.error}" if end.error else ("interrupted" if end.interrupted else None)
    if end.aborted and not stopped_by:
        stopped_by = f"threshold: {end.aborted['expression']} failed ({end.aborted['shown']})"
    document = report.build(
        recorder,
        run_id=config.run_id,
        target=config.target,
        started=end.started,
        elapsed=end.elapsed,
        window=end.window,
        config={key: json_value(value) for key, value in config.public().items()},
        stopped_by=stopped_by,
        plan=report.Plan.of(config),
        aborted=end.aborted,
        stairs=end.stairs,
        reconciliation=reconciliation,
    )
    return Result(document, end)


async def _reconcile(config: RunConfig, recorder: Recorder) -> Reconciliation | ReconcileFailure:
    """Ask the sinks what became of each recipient the target accepted, for up to --reconcile-wait seconds
    while the MTA may still be delivering, with live progress."""
    assert config.reconcile is not None
    if config.reconcile_wait and not config.quiet:
        print(
            f"trafficgen: asking the sink each second, for up to {config.reconcile_wait:g} s, until every recipient "
            "the target accepted has its final answer",
            file=sys.stderr,
        )
    ours = bytes(recorder.marks or b"")
    from trafficgen.reconcile import Asking, ask_sinks, encode_marks  # aiohttp: only with --reconcile
    from trafficgen.stats.progress import ReconcileProgress

    asking = Asking(
        config.reconcile,
        config.run_id,
        ours,
        per=config.marks_per_message,
        numbered=not config.recipient,
        shards=config.shard_count,
        shard=config.shard_index,
        mta_queue=config.mta_queue,
        wait_s=config.reconcile_wait,
        request_s=config.timeout,
    )
    progress = ReconcileProgress(config.quiet or not config.reconcile_wait)
    try:
        document = await ask_sinks(asking, progress.update)
    finally:
        progress.close()
    # What the target accepted, kept so that `trafficgen report reconcile` can ask again later.
    document["marks"] = encode_marks(ours)
    document["marks_per_message"] = asking.per
    return document


def run(config: RunConfig) -> Result:
    """Run to the end and return the report (the programmatic face of the trafficgen command)."""
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(run_async(config))
