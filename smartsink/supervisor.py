"""--workers N: N processes serve one SMTP port (each binds it with SO_REUSEPORT), under a supervisor.

The supervisor's shape follows uvicorn's: a signal handler per signal (TERM/INT stop, HUP reloads), a
liveness check that restarts a dead worker, and a clean shutdown. Unlike uvicorn's workers, ours each bind
the port themselves; the supervisor holds a bound, non-listening socket so the port (even port 0) stays
theirs across restarts. The supervisor also owns what belongs to the sink as a whole: the policy file and
its watcher (new policies are pushed to workers), the shared limits (smartsink.limits.remote), and the admin
listener, whose /metrics sums every worker (prometheus-client's multiprocess files).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from multiprocessing.process import BaseProcess
from typing import Any

from mailload import native
from mailload.runtime import ExitStatus, event_loop_factory
from smartsink import admin, logs, metrics
from smartsink.config import SinkConfig
from smartsink.ledger import RunLedger
from smartsink.limits.local import LocalLimits
from smartsink.limits.remote import Coordinator, Heartbeat, Ready, RemoteLimits
from smartsink.limits.state import SharedState
from smartsink.overrides import OverrideKeeper, Overrides
from smartsink.policy.model import Policy
from smartsink.policy.watcher import PolicyStore
from smartsink.responder import SinkContext
from smartsink.server import (
    SinkStartError,
    SMTPListener,
    _describe_bind_error,
    announce,
    describe_state,
    install_signals,
    load_state,
    policy_store,
    save_state,
    start_dns,
    tls_context,
)

log = logging.getLogger("smartsink.supervisor")

CHECK_INTERVAL = 0.5
HEARTBEAT = 0.5  # seconds between a worker's heartbeats
STUCK_AFTER = 3.0  # a worker silent this long is stuck: /health says so (503)
REPLACE_AFTER = 10.0  # ... and this long, it is killed (SIGKILL) and started again
START_TIMEOUT = 60.0
STOP_TIMEOUT = 5.0
RESTART_BACKOFF_MAX = 10.0


def _reserve_port(host: str, port: int) -> socket.socket:
    """Bind (without listening) with SO_REUSEPORT: fixes port 0 to a real port and keeps it ours.

    An exclusive bind first: with SO_REUSEPORT alone, the kernel would let us share a port another sink of the
    same user already holds (and may even pick such a port for port 0), splitting mail between two sinks.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise _describe_bind_error(e, "SMTP", host, port) from None
        port = probe.getsockname()[1]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise _describe_bind_error(e, "SMTP", host, port) from None
    return sock


class Supervisor:
    def __init__(self, config: SinkConfig):
        self.config = config
        self.store: PolicyStore = policy_store(config)
        self.state = SharedState()
        self.state_read = load_state(config, self.state)
        self.workdir = tempfile.mkdtemp(prefix="smartsink-")
        self.overrides = Overrides()
        self.keeper = OverrideKeeper(self.overrides, lambda: self.store.policy, self._push, self._settled)
        self.spawned: dict[int, Policy] = {}  # the policy each worker was started with
        self.coordinator = Coordinator(
            self.state,
            os.path.join(self.workdir, "coordinator.sock"),
            lambda: self.keeper.in_force,
            lambda index: self.spawned[index],
        )
        self.ctx: SinkContext | None = None
        self.processes: dict[int, BaseProcess] = {}
        self.restarts: dict[int, int] = {}
        self.stopping = False
        self.mp = multiprocessing.get_context("spawn")
        self.worker_config = config
        self.http_address: tuple[str, int] | None = None

    def run(self) -> int:
        try:
            with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
                return runner.run(self._main())
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    async def _main(self) -> int:
        config = self.config
        reservation = _reserve_port(*config.listen)
        host, port = reservation.getsockname()[:2]
        worker_config = dataclasses.replace(config, listen=(host, port))
        if config.self_signed:  # one certificate for every worker
            from smartsink import tls

            cert, key = tls.self_signed(config.hostname, self.workdir)
            worker_config = dataclasses.replace(worker_config, tls_self_signed=False, tls_cert=cert, tls_key=key)
        tls_context(worker_config)  # a certificate that does not load stops us here, not in every worker
        self.worker_config = worker_config

        # The supervisor's own context answers the inject API with the same policy and shared limits.
        ctx = self.ctx = SinkContext(config, self.keeper.in_force, LocalLimits(self.state), worker=config.workers)
        self.store.listeners.append(self.keeper.reloaded)
        await self.coordinator.start()
        dns = await start_dns(config, self.store)  # one DNS for the sink, in the supervisor beside its policy
        runner = None
        if config.http is not None:
            source = admin.AdminSource(
                ctx,
                self.health,
                self.ledger,
                self.keeper,
                self.overrides.started,
                state=self.state,
                barrier=self.coordinator.barrier,
            )
            app = admin.make_app(source)
            try:
                runner, self.http_address = await admin.start(app, *config.http)
            except OSError as e:
                raise _describe_bind_error(e, "admin HTTP", *config.http) from None

        stop = asyncio.Event()
        install_signals(stop, lambda: self.store.request_reload("SIGHUP"))
        watcher = asyncio.get_running_loop().create_task(self.store.watch())
        keeper = asyncio.get_running_loop().create_task(self.keeper.run())
        try:
            for index in range(config.workers):
                self._spawn(index)
            if not await self._wait_ready(stop):
                return ExitStatus.USAGE
            state = describe_state(config, self.state_read)
            announce(config, (host, port), self.http_address, self.store, state, dns and dns.address)
            monitor = asyncio.get_running_loop().create_task(self._monitor())
            await stop.wait()
            monitor.cancel()
        finally:
            log.info("stopping %d workers", len(self.processes))
            self.stopping = True
            watcher.cancel()
            keeper.cancel()
            await self._stop_workers()
            self.coordinator.close()
            if dns is not None:
                await dns.stop()
            save_state(config, self.state)
            if runner is not None:
                await runner.cleanup()
            reservation.close()
        return ExitStatus.OK

    def _spawn(self, index: int) -> None:
        policy = self.spawned[index] = self.keeper.in_force
        process = self.mp.Process(
            target=worker_main,
            args=(self.worker_config, index, self.coordinator.path, policy),
            name=f"smartsink-worker-{index}",
            daemon=True,
        )
        process.start()
        self.processes[index] = process
        log.debug("worker %d started, pid %s", index, process.pid)

    async def _wait_ready(self, stop: asyncio.Event) -> bool:
        """Every worker has bound the port; False (after saying why) when one died or never came up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while len(self.coordinator.ready) < self.config.workers:
            dead = [i for i, p in self.processes.items() if not p.is_alive() and i not in self.coordinator.ready]
            if dead or stop.is_set() or loop.time() > deadline:
                reason = f"worker {dead[0]} exited at start" if dead else "workers did not start in time"
                print(f"smartsink: error: {reason} (see the log above)", file=sys.stderr)
                return False
            self.coordinator.ready_event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.coordinator.ready_event.wait(), CHECK_INTERVAL)
        return True

    def silent(self, index: int) -> float:
        """Seconds since a ready worker was last heard from (0 for one not ready: it is starting)."""
        if index not in self.coordinator.ready:
            return 0.0
        return time.monotonic() - self.coordinator.beats.get(index, time.monotonic())

    def _replace_stuck(self) -> None:
        """Kill a worker silent past REPLACE_AFTER (a frozen process: SIGSTOP, a loop that never yields); its
        death is then handled like any other: it is started again."""
        for index, process in self.processes.items():
            silent = self.silent(index)
            if process.is_alive() and process.pid and silent > REPLACE_AFTER:
                log.error("worker %d (pid %s) silent for %.1f s: stuck; replacing it", index, process.pid, silent)
                self.coordinator.ready.pop(index, None)
                os.kill(process.pid, signal.SIGKILL)

    async def _monitor(self) -> None:
        """Restart any worker that dies or is stuck, with a growing pause if it keeps dying."""
        while not self.stopping:
            await asyncio.sleep(CHECK_INTERVAL)
            self._replace_stuck()
            for index, process in list(self.processes.items()):
                if process.is_alive() or self.stopping:
                    continue
                metrics.process_exited(process.pid or 0)
                self.coordinator.ready.pop(index, None)
                count = self.restarts[index] = self.restarts.get(index, 0) + 1
                delay = min(RESTART_BACKOFF_MAX, 0.1 * 2 ** min(count, 10))
                log.error("worker %d (pid %s) died with exit code %s; restarting", index, process.pid, process.exitcode)
                await asyncio.sleep(delay)
                if not self.stopping:
                    self._spawn(index)

    async def _stop_workers(self) -> None:
        for process in self.processes.values():
            if process.is_alive() and process.pid:
                os.kill(process.pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_TIMEOUT
        for process in self.processes.values():
            await loop.run_in_executor(None, process.join, max(0.0, deadline - loop.time()))
            if process.is_alive():
                process.kill()
            process.join(1)
            metrics.process_exited(process.pid or 0)

    async def _settled(self) -> None:
        await self.coordinator.settled()

    def _push(self, policy: Policy) -> None:
        """The policy in force changed (a reload, a window of the schedule, the admin API): to everyone."""
        if self.ctx is not None:
            self.ctx.set_policy(policy)
        self.coordinator.broadcast_policy(policy)

    def health(self) -> dict[str, Any]:
        # A worker counts once it serves: a restarted one is alive a moment before it has bound the port; one
        # silent past STUCK_AFTER (frozen) is alive but does not serve.
        alive = [i for i, p in self.processes.items() if p.is_alive() and i in self.coordinator.ready]
        stuck = [i for i in alive if self.silent(i) > STUCK_AFTER]
        serving = len(alive) - len(stuck) == self.config.workers
        workers = {
            "configured": self.config.workers,
            "alive": len(alive),
            "stuck": stuck,
            "restarts": sum(self.restarts.values()),
        }
        return {
            "status": "degraded" if self.store.error or not serving else "ok",
            "serving": serving,
            "policy": self.store.health(),
            "workers": workers,
            "engine": self.config.engine,
            "build": native.running().kind,
            "overrides": [o.public(time.time()) for o in self.overrides.active()],
            "state": self.state.summary(),
        }

    async def ledger(self, run_id: str) -> RunLedger | None:
        await self.coordinator.barrier()
        return self.state.ledgers.run(run_id)


def worker_main(config: SinkConfig, index: int, coordinator_path: str, policy: Policy) -> None:
    """A worker process: serve SMTP on the shared port until SIGTERM or until the supervisor goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C reaches the whole group; the supervisor decides
    logs.configure(config.log_level, config.log_format, worker=index)
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(_serve_worker(config, index, coordinator_path, policy))
    except SinkStartError as e:
        print(f"smartsink: error: worker {index}: {e}", file=sys.stderr)
        sys.exit(ExitStatus.USAGE)


async def _serve_worker(config: SinkConfig, index: int, coordinator_path: str, policy: Policy) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # A hangup (its terminal closing) reaches the whole process group: the supervisor decides what it means.
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    limits = RemoteLimits(coordinator_path, on_policy=lambda p: None, on_lost=stop.set, policy=policy)
    await limits.connect()
    ctx = SinkContext(config, policy, limits, worker=index)
    limits.on_policy = ctx.set_policy
    listener = SMTPListener(ctx, tls_context(config))
    address = await listener.start(reuse_port=True)
    limits.send(Ready(index, os.getpid(), address))
    beating = loop.create_task(_heartbeats(limits, index))
    await stop.wait()
    beating.cancel()
    await listener.stop()
    await limits.barrier()  # send what the last sessions recorded
    metrics.publish()  # and what they counted (count() hands it over at the end of each turn)


async def _heartbeats(limits: RemoteLimits, index: int) -> None:
    """Tell the supervisor this worker's loop turns, every HEARTBEAT seconds, until cancelled."""
    while True:
        limits.send(Heartbeat(index))
        await asyncio.sleep(HEARTBEAT)
