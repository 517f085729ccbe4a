"""The supervisor's coordinator of several workers, over its real Unix socket, spoken to as workers speak: each
worker's channel in order, and a question about a client's reputation answered after every deferral another
worker had sent before it (with two workers, the fourth try after three deferrals met the block list, not a 451)."""

from __future__ import annotations

import asyncio
import pickle
import socket
from pathlib import Path

import pytest

from smartsink.limits import remote
from smartsink.limits.remote import _LENGTH, Answer, Coordinator, Deferred, Escalated, Heartbeat
from smartsink.limits.state import SharedState
from smartsink.policy.model import Escalation, Rate

KEY = "blocked.test|127.0.0.1"
THREE_IN_A_MINUTE = Escalation(after=3, within=60.0, to="block", lasts=600.0)


def frame(message: object) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(payload)) + payload


def no_policy(*_: object) -> object:
    raise AssertionError("no policy is asked for here")


async def answer_of(sock: socket.socket) -> Answer:
    loop = asyncio.get_running_loop()
    data = b""
    async with asyncio.timeout(10):  # the coordinator answers in a few turns of its loop
        while len(data) < 4 or len(data) < 4 + _LENGTH.unpack_from(data)[0]:
            data += await loop.sock_recv(sock, 65536)
    answer = pickle.loads(data[4:])
    assert isinstance(answer, Answer)
    return answer


def test_a_reputation_question_waits_for_deferrals_already_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker A sends a backlog (heartbeats the coordinator reads over several turns of its loop) and then three
    deferrals of a client; worker B, after all of it, asks whether that client is blocked: yes."""
    # A channel reads FRAME_BUDGET seconds of messages a turn: none at all here, so that A's backlog takes a turn a
    # message on any machine, however fast (on a busy one a backlog of a few milliseconds does the same).
    monkeypatch.setattr(remote, "FRAME_BUDGET", 0.0)

    async def scene() -> bool:
        coordinator = Coordinator(SharedState(), str(tmp_path / "coordinator.sock"), no_policy, no_policy)  # type: ignore[arg-type]
        await coordinator.start()
        loop = asyncio.get_running_loop()
        a, b = socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX)
        try:
            for sock in (a, b):
                sock.setblocking(False)
                await loop.sock_connect(sock, coordinator.path)
            backlog = frame(Heartbeat(0)) * 200 + frame(Deferred(KEY, THREE_IN_A_MINUTE)) * 3
            assert len(backlog) < 150_000  # in the kernel's buffer at once: one read of the coordinator takes it all
            # Both written before the coordinator's loop turns again: A's backlog first, then B's question.
            a.sendall(backlog)
            b.sendall(frame(Escalated(1, KEY)))
            answer = await answer_of(b)
            # All of A's was read when B had its answer (B's channel read its one question).
            assert sorted(link.consumed for link in coordinator.links) == [len(frame(Escalated(1, KEY))), len(backlog)]
            return answer.result
        finally:
            a.close()
            b.close()
            coordinator.close()

    assert asyncio.run(scene()) is True


def test_a_question_the_supervisor_never_answers_lets_the_mail_through_without_a_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker whose supervisor reads its questions and never answers: after CALL_TIMEOUT each question gets its
    default (a rate lets the mail through, an escalation check says "not blocked"), says so in the log, and forgets
    the call. Asked as the fast engine asks, from a coroutine driven by callbacks with no task around it (asyncio's
    wait_for and timeout need one from Python 3.12)."""
    monkeypatch.setattr(remote, "CALL_TIMEOUT", 0.2)
    path = str(tmp_path / "silent.sock")

    async def scene() -> tuple[list[bool], float, int, int]:
        loop = asyncio.get_running_loop()
        heard = bytearray()
        gone = asyncio.Event()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):  # reads every question, answers none
                heard.extend(data)
            writer.close()
            await writer.wait_closed()
            gone.set()

        server = await asyncio.start_unix_server(silent, path)
        limits = remote.RemoteLimits(path, no_policy, lambda: None, None)  # type: ignore[arg-type]
        await limits.connect()
        answers: list[bool] = []
        done = loop.create_future()
        started = loop.time()

        def drive(coroutine: object, then: list[object]) -> None:
            # What smartsink.engines.fast's FastConnection.step does: send, and step again when the future is done.
            def step(_: object = None) -> None:
                assert asyncio.current_task() is None
                try:
                    waits_for = coroutine.send(None)  # type: ignore[attr-defined]
                except StopIteration as end:
                    answers.append(end.value)
                    if then:
                        drive(then[0], then[1:])
                    else:
                        done.set_result(None)
                    return
                waits_for._asyncio_future_blocking = False
                waits_for.add_done_callback(step)

            loop.call_soon(step)

        drive(limits.take_rate("rated.test", Rate(1, 1.0)), [limits.escalated(KEY)])
        try:
            async with asyncio.timeout(10):  # two questions of 0.2 s each
                await done
        finally:
            limits.channel.transport.close()  # type: ignore[union-attr]
            async with asyncio.timeout(10):
                await gone.wait()
            server.close()
            await server.wait_closed()
        return answers, loop.time() - started, len(limits._calls), len(heard)

    answers, took, waiting, heard = asyncio.run(scene())
    assert answers == [True, False]
    assert 0.4 <= took < 5  # each question waited its CALL_TIMEOUT, and no longer
    assert waiting == 0  # no call left waiting for an answer
    assert heard > 0
    assert caplog.text.count("did not answer") == 2
