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
from smartsink.policy.model import Escalation

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
