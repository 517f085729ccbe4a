"""Clients that stop reading the sink's replies (issue 17): while they stay they cost the sink a small fixed amount
of memory and are cut after --timeout; once they leave, even with the sink's replies to them backed up, their
connection slots come back at once. The fast engine, with one worker and with two.

Each client says EHLO and pipelines HELPs (15 times more reply than command) from a socket with a 4 KiB receive
buffer that it never reads and a 64 KiB send buffer, until the sink stops taking its input. Memory is the resident
set of the sink's whole process tree (supervisor and workers), read from /proc.
"""

from __future__ import annotations

import select
import socket
import struct
import time

import pytest

from harness.net import tcp_queues
from harness.policies import ACCEPT_ALL
from harness.processes import tree_rss_mb
from harness.sink import running_sink, wait_for
from harness.smtp import read_reply

# The sink's --timeout, seconds: longer than backing up 100 clients takes (every one of them must be held at once
# before the first is cut): 1-2 s on a quiet machine, up to 10 s seen at a load average of 11 on 2 cores.
TIMEOUT = 20
CAP = 40  # [listener] max_connections
POLICY = f"{ACCEPT_ALL}\n[listener]\nmax_connections = {CAP}\n"
HELPS = b"HELP\r\n" * 10_000  # sent again and again: 60 KB of commands, 920 KB of replies
STALL = 0.5  # s: a client that could not send for this long while the sink holds replies for it is backed up
# What 100 clients that never read may make the sink hold, in MiB of resident memory of its process tree. Each may
# leave 128 KiB of unparsed input (BUFFER_HIGH and one READ_SIZE read) and 70 KiB of replies (WRITE_HIGH and one
# batch) in the sink: 100 x 200 KiB = 20 MiB, plus the allocator's slack. Measured on the 2-core development
# machine: 15-19 MiB with one worker and with two; before issue 17 the sink held 114-177 MiB for them. Freed memory
# is mostly kept by the allocator (glibc) rather than given back to the system, so the bound is on growth: a second
# wave of 100 reuses what the first left, and the sink never holds more than this above where it started.
HELD_LIMIT_MB = 32
# And what the kernel may hold for each of them, outside the sink's memory: its send buffer of 64 KiB, which Linux
# doubles, and a little more it lets in (seen: 88-94 KiB). Linux grew it to 2.8 MiB a client before the sink set it.
KERNEL_HELD_LIMIT = 160 * 1024
# The sink's sweep looks for connections past --timeout once a second: a stalled client is cut between TIMEOUT and
# TIMEOUT + SWEEP after the sink stopped answering it. LAG is what a busy 2-core machine may add to that (the sink's
# loop and this test's polling both wait for a CPU): at most 0.6 s seen at a load average of 10.
SWEEP = 1.0
LAG = 3.0


def active(sink) -> float:  # type: ignore[no-untyped-def]
    return sink.metrics()["smartsink_connections_active"]


def stalled(sink) -> float:  # type: ignore[no-untyped-def]
    """Connections whose replies the sink holds back because their client takes none (its --timeout clock runs)."""
    return sink.metrics()["smartsink_connections_stalled"]


def backed_up_clients(sink, count: int) -> list[socket.socket]:  # type: ignore[no-untyped-def]
    """`count` connections that have said EHLO and pipelined HELPs without reading any reply, until the sink stopped
    taking their input (their send would block for STALL seconds) while its replies to them wait in its send queue."""
    clients: list[socket.socket] = []
    try:
        for _ in range(count):
            client = socket.socket()
            clients.append(client)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
            client.connect(sink.address)
            assert read_reply(client).startswith(b"220 ")
            client.sendall(b"EHLO c\r\n")
            client.setblocking(False)
        sent = dict.fromkeys(clients, 0)  # bytes of HELPS sent (modulo its length)
        progress = dict.fromkeys(clients, time.monotonic())
        pending = set(clients)
        deadline = time.monotonic() + 60
        while pending:
            # Backed up as the client sees it: it cannot send, and replies wait for it in the sink's socket. The sink
            # may see it later (a busy sink has not yet read what is queued): the tests wait for the sink's count.
            _, writable, _ = select.select([], list(pending), [], STALL / 5)
            now = time.monotonic()
            for client in writable:
                try:
                    sent[client] = (sent[client] + client.send(HELPS[sent[client] :])) % len(HELPS)
                except BlockingIOError:
                    continue
                progress[client] = now
            queues = tcp_queues()
            for client in [c for c in pending if now - progress[c] > STALL]:
                waiting_replies = queues.get((sink.port, client.getsockname()[1]), (0, 0))[0]
                if waiting_replies:
                    pending.discard(client)
            assert now < deadline, f"{len(pending)} clients never backed up"
    except BaseException:
        close_all(clients, reset=True)
        raise
    wait_for(
        lambda: stalled(sink) == count,
        timeout=60,
        interval=0.1,
        what=f"the sink to hold back its replies to {count} clients (smartsink_connections_stalled)",
    )
    return clients


def close_all(clients: list[socket.socket], reset: bool) -> None:
    for client in clients:
        if reset:  # SO_LINGER 0: close() sends RST
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()


def greeted(sink) -> bytes:  # type: ignore[no-untyped-def]
    """The first reply a new client gets."""
    with socket.create_connection(sink.address, timeout=10) as client:
        return read_reply(client)


WORKERS = pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])


@WORKERS
@pytest.mark.parametrize("reset", [True, False], ids=["reset", "close"])
def test_clients_that_leave_backed_up_give_their_slots_back(tmp_path, workers, reset):
    """40 clients whose replies are backed up take every slot of max_connections = 40, then leave (RST or a plain
    close): the active gauge returns to 0 at once (not by the --timeout cut) and a new client gets 220."""
    with running_sink("--timeout", str(TIMEOUT), "--workers", str(workers), policy=POLICY, tmp=tmp_path) as sink:
        clients = backed_up_clients(sink, CAP)
        try:
            assert active(sink) == CAP
            assert greeted(sink).startswith(b"421 4.7.0 Too many connections")
        finally:
            close_all(clients, reset)
        closed = time.monotonic()
        # The sink's own cut would come TIMEOUT s after it held back the replies (all of them were held back before
        # the close): within half of that, the close itself ended the connections.
        wait_for(lambda: active(sink) == 0, timeout=TIMEOUT / 2, what="the connections of clients that left")
        assert stalled(sink) == 0
        released = time.monotonic() - closed
        assert released < TIMEOUT / 2, f"released {released:.1f} s after the clients left"
        assert greeted(sink).startswith(b"220 ")


@pytest.mark.slow
@WORKERS
def test_clients_that_never_read_cost_little_and_are_cut(tmp_path, workers):
    """Two waves of 100 clients that never read (the first leaves, the sink cuts the second after --timeout): the
    sink's memory never grows more than HELD_LIMIT_MB above where it started, and a new client then gets 220."""
    with running_sink("--timeout", str(TIMEOUT), "--workers", str(workers), policy=ACCEPT_ALL, tmp=tmp_path) as sink:
        for _ in range(4):  # the first connections of a worker allocate what all later ones reuse
            assert greeted(sink).startswith(b"220 ")
        before = tree_rss_mb(sink.process.pid)
        start = time.monotonic()
        clients = backed_up_clients(sink, 100)
        backing_up = time.monotonic() - start
        try:
            queues = tcp_queues()
            kernel = max(queues[(sink.port, client.getsockname()[1])][0] for client in clients)
            assert kernel <= KERNEL_HELD_LIMIT, f"the kernel holds {kernel:,} bytes of replies for one client"
            first = tree_rss_mb(sink.process.pid)
            assert first - before < HELD_LIMIT_MB, f"{first - before:.1f} MiB for 100 clients that never read"
            assert active(sink) == 100
        finally:
            close_all(clients, reset=True)
        wait_for(lambda: active(sink) == 0, timeout=TIMEOUT / 2, what="the first wave to be released by its close")
        left = tree_rss_mb(sink.process.pid)

        clients = backed_up_clients(sink, 100)
        try:
            backed_up = time.monotonic()  # every one of them stalled in the sink's eyes at this moment or before
            second = tree_rss_mb(sink.process.pid)
            assert active(sink) == 100
            wait_for(
                lambda: active(sink) == 0,
                timeout=TIMEOUT + SWEEP + LAG,
                interval=0.2,
                what="the sink to cut clients that stopped reading",
            )
            cut = time.monotonic() - backed_up
            assert stalled(sink) == 0
        finally:
            close_all(clients, reset=False)
        after = tree_rss_mb(sink.process.pid)
        print(
            f"sink memory (MiB): {before:.1f} at the start; {first:.1f} holding 100 clients that never read, {left:.1f}"
            f" after they left; {second:.1f} holding 100 more, {after:.1f} after the sink cut them ({cut:.1f} s after"
            f" all were held back; backing up 100 took {backing_up:.1f} s)"
        )
        assert max(first, left, second, after) - before < HELD_LIMIT_MB
        assert greeted(sink).startswith(b"220 ")
