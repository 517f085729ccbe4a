"""The transports of a run, opened: SMTP sessions (from --source-address, with STARTTLS and AUTH as asked, their
reply waits timed out by a sweep), or KumoMTA's inject API over one request pool (--http).

A Connector (trafficgen.transport) is given to the Runner; `connector_for(config)` is the one a run builds. It
opens transports and turns a failure into Unopened with the words the run reports; it never records anything or
decides whether the run goes on: the Runner does.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import TYPE_CHECKING

from trafficgen.config import RunConfig
from trafficgen.outcome import ERROR, Outcome
from trafficgen.smtp.session import ClientProtocol, Refused, Session, SessionError, client_tls_context
from trafficgen.transport import Connector, Transport, Unopened

if TYPE_CHECKING:  # aiohttp (a quarter of a second to import) only for --http
    import aiohttp


def connector_for(config: RunConfig, concurrency: int) -> Connector:
    """The run's Connector: the inject API's with --http (a pool of `concurrency` connections), else SMTP's."""
    if config.http:
        return HttpConnector(config, concurrency)
    return SmtpConnector(config)


class SmtpConnector:
    """SMTP sessions to --target, from the --source-address values."""

    def __init__(self, config: RunConfig):
        self.config = config
        self.sources = [s.name for s in config.source_address]
        self.tls = client_tls_context() if config.starttls else None
        self.protocols: set[ClientProtocol] = set()  # the open connections, for the sweep

    async def check(self) -> str | None:
        """Whether the target's name resolves, asked once before any connection: a name that does not is the
        run's one error, not a failure of every connection (each of whose lookups would be cancelled with the run
        and leave asyncio's "exception was never retrieved" behind)."""
        config = self.config
        host, port = config.host, config.port
        try:
            await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as unresolved:
            why = getattr(unresolved, "strerror", None) or unresolved
            return f"--target {config.target}: cannot resolve {host} ({why})"
        return None

    async def open(self, source: int, progress: list[str]) -> Transport:
        config = self.config
        started = time.monotonic()
        local = self.sources[source] if self.sources else None
        try:
            return await Session.open(config, self.tls, self.protocols, local, progress)
        except Refused as refused:
            reply = refused.reply
            failure = Outcome.refused(reply.code, reply.one_line(), 0, started, reply.at)
            # A refusal is the target's answer; a greeting that is not SMTP's is not.
            stops = f"{config.target} answered {refused}" if failure.kind == ERROR else None
            raise Unopened(f"{reply.code} {reply.one_line()}", failure, stops) from None
        except SessionError as failed:
            text = f"{failed.kind}: {failed.message}"
            where = "" if config.target in failed.message else f" (talking to {config.target})"
            raise Unopened(text, Outcome.error(text, 0, started, time.monotonic()), f"{text}{where}") from None

    def sweep(self, now: float) -> None:
        timeout = self.config.timeout
        for protocol in list(self.protocols):
            if protocol.closed:
                self.protocols.discard(protocol)
            else:
                protocol.timed_out(now, timeout)

    async def close(self) -> None:
        """Nothing shared: each session closes with its worker."""


class HttpConnector:
    """Requests to KumoMTA's inject API over one pool of `concurrency` connections, made at the first one."""

    def __init__(self, config: RunConfig, concurrency: int):
        # Imported now, not at the first connection: an import blocks the loop a fifth of a second.
        from trafficgen import inject  # noqa: F401

        self.config = config
        self.concurrency = concurrency
        self.pool: aiohttp.ClientSession | None = None

    async def check(self) -> None:
        """Nothing to ask first: a request that cannot connect is an error outcome that stops the run."""

    async def open(self, source: int, progress: list[str]) -> Transport:
        from trafficgen import inject

        if self.pool is None:
            self.pool = inject.pool(self.concurrency)
        return inject.HttpSession(self.pool, self.config.http_url, self.config)

    def sweep(self, now: float) -> None:
        """aiohttp times out its own requests."""

    async def close(self) -> None:
        from trafficgen import inject

        await inject.close_pool(self.pool)
