"""Ports and listeners: free, refused and busy ports, servers that greet and fall silent, /proc/net/tcp."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path


def tcp_queues() -> dict[tuple[int, int], tuple[int, int]]:
    """Every IPv4 TCP socket on 127.0.0.1 as {(local port, remote port): (send queue, receive queue)} in bytes,
    from /proc/net/tcp: bytes the socket's owner wrote that the peer has not taken, and bytes it has not read."""
    queues = {}
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        local, remote, (tx, _, rx) = fields[1], fields[2], fields[4].partition(":")
        if local.startswith("0100007F:") and remote.startswith("0100007F:"):
            queues[(int(local[9:], 16), int(remote[9:], 16))] = (int(tx, 16), int(rx, 16))
    return queues


def listening(address: tuple[str, int]) -> bool:
    """Something accepts TCP connections at this address."""
    with contextlib.suppress(OSError), socket.create_connection(address, timeout=2):
        return True
    return False


def listen_sockets(port: int) -> int:
    """How many sockets listen on 127.0.0.1:`port` (or the wildcard), from /proc/net/tcp."""
    count = 0
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = row.split()[1], row.split()[3]
        address, _, hex_port = local.partition(":")
        if int(hex_port, 16) == port and state == "0A" and address in ("0100007F", "00000000"):
            count += 1
    return count


def busy_port() -> tuple[socket.socket, int]:
    """A socket listening on a free 127.0.0.1 port (the caller closes it), so the port is in use."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock, sock.getsockname()[1]


def free_port() -> int:
    """A 127.0.0.1 port nothing listens on now (for a tool that must be told a port and cannot pick port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def refusing_port() -> socket.socket:
    """A socket bound to a port on 127.0.0.1 but not listening: connecting to it is refused, and no one
    else can take the port while the socket is open. The caller closes it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


class GreetOnly:
    """A TCP server on 127.0.0.1 that accepts connections, sends `greeting` (or nothing) and then stays silent:
    a dead server, or a service that is not SMTP. `with GreetOnly(b"...") as target:` gives HOST:PORT."""

    def __init__(self, greeting: bytes | None = None):
        self.greeting = greeting
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.clients: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.clients.append(client)
            if self.greeting:
                client.sendall(self.greeting)

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)
        for client in self.clients:
            client.close()
