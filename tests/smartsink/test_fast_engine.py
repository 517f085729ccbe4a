"""The fast engine's connections in this process: a real listener on a free port, real client sockets, and the
moments asyncio.Task would handle for it (smartsink.engines.fast drives each conversation itself, in no task)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from prometheus_client import REGISTRY

from mailload.runtime import event_loop_factory
from smartsink import metrics, tls
from smartsink.config import build
from smartsink.limits.local import LocalLimits
from smartsink.limits.state import SharedState
from smartsink.policy import parse_policy
from smartsink.responder import SinkContext
from smartsink.server import SMTPListener

HELD = '[default]\nbounce = 0\ndefer = 0\nlatency = "30s"\n'
MESSAGE = b"Subject: held\r\n\r\nhello\r\n.\r\n"
T = TypeVar("T")
DEADLINE = 10.0  # for what takes a few turns of the loop on an idle machine


def context() -> SinkContext:
    """One worker's context: the held-reply policy, its own state, seeded."""
    policy = parse_policy(HELD, "held.toml")
    return SinkContext(build(listen="127.0.0.1:0", seed=1), policy, LocalLimits(SharedState()))


def run(scene: Coroutine[Any, Any, T]) -> T:
    """Run on the loop the sink runs on (uvloop where installed)."""
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(scene)


def accepted() -> float:
    metrics.publish()
    return REGISTRY.get_sample_value("smartsink_messages_total", {"domain": "other", "outcome": "accepted"}) or 0.0


async def until(condition: object, what: str) -> None:
    async with asyncio.timeout(DEADLINE):
        # The engine's own state, which offers nothing to wait on: looked at every few milliseconds.
        while not condition():  # type: ignore[operator]  # noqa: ASYNC110
            await asyncio.sleep(0.005)
    assert condition(), what  # type: ignore[operator]


def test_a_stop_in_the_turn_a_held_reply_is_due_cancels_it() -> None:
    """The sink stops in the same turn of the loop in which the timer holding a reply fires, before the connection
    is stepped on: the conversation must end there (CancelledError where it waited, as a task's cancel() does), not
    go on to count the message accepted and queue a 250 for a client already told 421."""

    async def scene() -> tuple[bytes, float, bool]:
        listener = SMTPListener(context(), None)
        host, port = await listener.start()
        reader, writer = await asyncio.open_connection(host, port)
        try:
            assert (await reader.readline()).startswith(b"220")
            writer.write(b"EHLO t\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
            async with asyncio.timeout(DEADLINE):
                while not (await reader.readline()).startswith(b"354"):
                    pass
            before = accepted()
            writer.write(MESSAGE)
            (connection,) = listener.smtp.connections
            await until(lambda: connection.awaited is not None, "the reply to be held")
            connection.awaited.set_result(None)  # the hold's timer fires: the connection's step is due...
            listener.smtp.shutdown()  # ... and the sink stops before it runs
            async with asyncio.timeout(DEADLINE):
                said = await reader.readline()
            await until(lambda: connection.coroutine is None, "the conversation to end")
            return said, accepted() - before, not connection.transport.is_closing()
        finally:
            writer.close()
            await listener.stop()

    said, counted, still_open = run(scene())
    assert said.startswith(b"421 4.3.2"), said
    assert counted == 0  # the message was not counted accepted after the 421
    assert not still_open


def test_failed_tls_handshakes_leave_no_connection_behind(tmp_path) -> None:
    """Clients that say STARTTLS and then send anything but a TLS handshake (or hang up in it): each connection is
    closed and forgotten. asyncio's TLS layer does not tell the protocol its connection was lost when the handshake
    failed, so the engine must let it go itself, or every such client would stay in the listener's set (memory, and
    one more for the idle sweep to visit each second) until the sink stops."""
    cert, key = tls.self_signed("sink.test", str(tmp_path))

    async def scene() -> tuple[int, list[bytes]]:
        listener = SMTPListener(context(), tls.server_context(cert, key))
        host, port = await listener.start()
        said = []
        try:
            for garbage in (b"GET / HTTP/1.0\r\n\r\n", b"\x16\x03\x01\x00\x05hello", b""):
                reader, writer = await asyncio.open_connection(host, port)
                assert (await reader.readline()).startswith(b"220")
                writer.write(b"EHLO t\r\nSTARTTLS\r\n")
                async with asyncio.timeout(DEADLINE):
                    while not (line := await reader.readline()).startswith(b"220"):
                        assert line, "closed before STARTTLS was answered"
                    said.append(line)
                    writer.write(garbage)
                    if not garbage:
                        writer.close()  # a hang-up in the handshake
                    else:
                        await reader.read()  # the sink closes: EOF
                        writer.close()
            await until(lambda: not listener.smtp.connections, "every connection to be let go")
            return len(listener.smtp.connections), said
        finally:
            await listener.stop()

    left, said = run(scene())
    assert left == 0
    assert all(line.startswith(b"220 2.0.0") for line in said), said
