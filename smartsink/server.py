"""Starting, serving and stopping a sink: the SMTP listener (either engine) and, where this process owns
the sink, the admin listener and the policy watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from mailload import native
from mailload.runtime import raise_open_files_limit
from smartsink import admin, metrics, statefile, tls
from smartsink.config import SinkConfig
from smartsink.engines.fast import FastServer
from smartsink.ledger import RunLedger
from smartsink.limits import Limits
from smartsink.limits.local import LocalLimits
from smartsink.limits.state import SharedState
from smartsink.overrides import OverrideKeeper, Overrides
from smartsink.policy.loader import ACCEPT_ALL, accept_all
from smartsink.policy.watcher import PolicyStore
from smartsink.responder import SinkContext

log = logging.getLogger("smartsink")


class SinkStartError(Exception):
    """The sink cannot start (a port in use, a certificate that does not load); one line for the user."""


def tls_context(config: SinkConfig) -> ssl.SSLContext | None:
    """The STARTTLS context: None with --no-tls; the given certificate; else one made now (its files are removed
    once loaded: the context holds it)."""
    if not config.tls:
        return None
    if config.self_signed:
        with tempfile.TemporaryDirectory(prefix="smartsink-tls-") as folder:
            return tls.server_context(*tls.self_signed(config.hostname, folder))
    cert, key = config.tls_cert, config.tls_key
    assert cert
    assert key
    try:
        return tls.server_context(cert, key)
    except (ssl.SSLError, OSError) as e:
        raise SinkStartError(f"--tls-cert {cert} / --tls-key {key} do not load: {e}") from None


def policy_store(config: SinkConfig) -> PolicyStore:
    """The policy file, watched; with --accept-all, the black hole's, read from no file."""
    if config.accept_all:
        return PolicyStore(ACCEPT_ALL, on_reload, fixed=accept_all())
    return PolicyStore(config.policy_path, on_reload)


def load_state(config: SinkConfig, state: SharedState) -> int | None:
    """--state keep: the state the last clean stop wrote (the entries read); None with --state fresh."""
    if config.state != "keep":
        return None
    try:
        statefile.check_writable(config.state_file)
        return statefile.load(state, config.state_file)
    except statefile.StateFileError as e:
        raise SinkStartError(str(e)) from None


def save_state(config: SinkConfig, state: SharedState) -> None:
    if config.state == "keep":
        statefile.save(state, config.state_file)


def describe_state(config: SinkConfig, read: int | None) -> str:
    if config.state != "keep":
        return "state fresh"
    return f"state kept in {config.state_file} ({read or 0} entries read)"


def _describe_bind_error(e: OSError, what: str, host: str, port: int) -> SinkStartError:
    reason = {
        errno.EADDRINUSE: "address already in use",
        errno.EACCES: "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
        errno.EADDRNOTAVAIL: "no such local address",
    }.get(e.errno or 0, e.strerror or str(e))
    return SinkStartError(f"cannot listen for {what} on {host}:{port}: {reason}")


class SMTPListener:
    """One SMTP listening socket with the chosen engine behind it."""

    def __init__(self, ctx: SinkContext, context: ssl.SSLContext | None):
        self.ctx = ctx
        self.smtp = FastServer(ctx, context)
        self.server: asyncio.AbstractServer | None = None
        self.address: tuple[str, int] = ctx.config.listen

    async def start(self, reuse_port: bool = False) -> tuple[str, int]:
        raise_open_files_limit()  # one file per connection: take all the system allows
        loop = asyncio.get_running_loop()
        host, port = self.ctx.config.listen
        factory: Callable[[], Any]
        if self.ctx.config.engine == "aiosmtpd":
            from smartsink.engines.reference import aiosmtpd_factory

            factory = aiosmtpd_factory(self.ctx, self.smtp.tls_context)
        else:
            factory = self.smtp.protocol
        try:
            self.server = await loop.create_server(
                factory, host, port, reuse_address=True, reuse_port=reuse_port or None, backlog=4096
            )
        except OSError as e:  # socket.gaierror (an unknown host name) included
            raise _describe_bind_error(e, "SMTP", host, port) from None
        self.smtp.start()
        bound = self.server.sockets[0].getsockname()
        self.address = (bound[0], bound[1])
        return self.address

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        self.smtp.shutdown()
        if self.server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 2.0)


def on_terminal() -> bool:
    """Whether the sink runs on a terminal (stdin, stdout or stderr is one): there SIGHUP means the terminal went
    away, as it does for any foreground program; detached (a service, a container, nohup) it asks for a reload,
    as daemons take it."""
    return any(os.isatty(fd) for fd in (0, 1, 2))


def install_signals(stop: asyncio.Event, reload: Callable[[], object] | None) -> None:
    """SIGTERM and SIGINT stop the sink; SIGHUP reloads the policy, or stops the sink when it runs on a terminal
    (closing the terminal must not leave it running, holding its port)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, stop.set if on_terminal() else reload)


def announce(
    config: SinkConfig,
    smtp: tuple[str, int],
    http: tuple[str, int] | None,
    store: PolicyStore,
    state: str,
    dns: tuple[str, int] | None = None,
) -> None:
    """The one line that says the sink is ready (tests and scripts wait for it): what listens where, which
    policy file is served, STARTTLS, AUTH and the state."""
    admin_part = f"admin http://{http[0]}:{http[1]} (/health /metrics /state /api/inject/v1)" if http else "admin off"
    if dns is not None:
        admin_part += f", dns {dns[0]}:{dns[1]} (udp, tcp; MX addresses in {config.dns_network})"
    workers = f"{config.workers} worker{'s' if config.workers > 1 else ''}"
    if store.fixed:
        served = f"policy none ({store.path}: every recipient 250)"
    else:
        served = f"policy {store.path} ({len(store.policy.domains)} domains)"
    tls_part = "off" if not config.tls else ("self-signed" if config.self_signed else config.tls_cert)
    build = native.running()
    built = "pure Python" if build.kind == "pure" else build.kind
    print(
        f"smartsink: listening on smtp://{smtp[0]}:{smtp[1]} ({config.engine} engine, {workers}, {built}), "
        f"{admin_part}, {served}, STARTTLS {tls_part}, AUTH {config.auth}, {state}",
        file=sys.stderr,
        flush=True,
    )
    if build.stale:
        print(f"smartsink: warning: build {build.describe()}", file=sys.stderr, flush=True)
    if on_terminal():
        print(
            "smartsink: on a terminal: SIGHUP (the terminal closing) stops the sink; the policy reloads when its file "
            "is saved (detached, SIGHUP reloads it)",
            file=sys.stderr,
            flush=True,
        )


def on_reload(result: str) -> None:
    metrics.RELOADS.labels(result).inc()


async def start_dns(config: SinkConfig, store: PolicyStore) -> Any:
    """The DNS listeners of --dns (None without it), their zone following the policy's reloads."""
    if config.dns is None:
        return None
    from smartsink.dns.server import DnsServer, SinkZone  # dnspython is loaded only by a sink that serves DNS

    zone = SinkZone(config, store.policy)
    store.listeners.append(zone.update)
    server = DnsServer(zone, config.dns_rate)
    try:
        await server.start(*config.dns)
    except OSError as e:  # socket.gaierror (an unknown host name) included
        raise _describe_bind_error(e, "DNS", *config.dns) from None
    return server


class Sink:
    """A whole sink in this one process: SMTP, admin, policy watcher, limits (--workers 1)."""

    def __init__(self, config: SinkConfig):
        self.config = config
        self.store = policy_store(config)
        self.state = SharedState()
        self.state_read = load_state(config, self.state)
        self.limits: Limits = LocalLimits(self.state)
        self.ctx = SinkContext(config, self.store.policy, self.limits)
        self.overrides = Overrides()
        self.keeper = OverrideKeeper(self.overrides, lambda: self.store.policy, self.ctx.set_policy)
        self.store.listeners.append(self.keeper.reloaded)
        self.listener = SMTPListener(self.ctx, tls_context(config))
        self.runner: Any = None
        self.http_address: tuple[str, int] | None = None
        self.dns: Any = None
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def smtp_address(self) -> tuple[str, int]:
        return self.listener.address

    def health(self) -> dict[str, Any]:
        return {
            "status": "degraded" if self.store.error else "ok",
            "serving": True,  # the admin listener starts after SMTP's, in the same loop
            "policy": self.store.health(),
            "workers": {"configured": 1, "alive": 1},
            "engine": self.config.engine,
            "build": native.running().kind,
            "overrides": [o.public(time.time()) for o in self.overrides.active()],
            "state": self.state.summary(),
        }

    async def ledger(self, run_id: str) -> RunLedger | None:
        await self.limits.barrier()
        return self.state.ledgers.run(run_id)

    async def start(self) -> None:
        await self.listener.start()
        try:
            self.dns = await start_dns(self.config, self.store)
        except SinkStartError:
            await self.listener.stop()
            raise
        if self.config.http is not None:
            # /health's uptime counts from the moment the schedule's windows count from
            source = admin.AdminSource(
                self.ctx,
                self.health,
                self.ledger,
                self.keeper,
                self.overrides.started,
                state=self.state,
                barrier=self.limits.barrier,
            )
            app = admin.make_app(source)
            try:
                self.runner, self.http_address = await admin.start(app, *self.config.http)
            except OSError as e:
                await self.stop()
                raise _describe_bind_error(e, "admin HTTP", *self.config.http) from None
        self._tasks.append(asyncio.get_running_loop().create_task(self.store.watch()))
        self._tasks.append(asyncio.get_running_loop().create_task(self.keeper.run()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.listener.stop()
        if self.dns is not None:
            await self.dns.stop()
        if self.runner is not None:
            await self.runner.cleanup()
        save_state(self.config, self.state)

    async def serve(self) -> None:
        """Run until SIGTERM or SIGINT; SIGHUP reloads the policy."""
        stop = asyncio.Event()
        install_signals(stop, lambda: self.store.request_reload("SIGHUP"))
        await self.start()
        state = describe_state(self.config, self.state_read)
        announce(self.config, self.smtp_address, self.http_address, self.store, state, self.dns and self.dns.address)
        await stop.wait()
        log.info("stopping")
        await self.stop()
