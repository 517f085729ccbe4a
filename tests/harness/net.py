"""Ports and listeners: free, refused and busy ports, servers that greet and fall silent, /proc/net/tcp; network
namespaces the tests create (and always delete), for what must not touch the host's own network."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
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


def free_port_outside_ephemeral() -> int:
    """A free 127.0.0.1 port below the kernel's ephemeral range, for a tool told a port long before it binds it (a
    compose file that builds an image first): bind(0) never hands such a port to anyone meanwhile, as it might one
    of free_port()'s on a busy machine."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.SystemRandom().sample(range(10_000, low), 200):
        with socket.socket() as tcp, socket.socket(type=socket.SOCK_DGRAM) as udp:  # free for both (a DNS port)
            try:
                tcp.bind(("127.0.0.1", port))
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port between 10000 and {low}")


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


# --- network namespaces -------------------------------------------------------------------------------------------

NETNS_TOOLS = (("ip", "iproute2"), ("iptables", "iptables"))
_namespaces = itertools.count()


def netns_unusable() -> str | None:
    """Why this machine cannot give a test a network namespace of its own, or None when it can."""
    if os.geteuid() != 0:
        return "needs root to create a network namespace (ip netns add)"
    for tool, package in NETNS_TOOLS:
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {package})"
    return None


@dataclass(frozen=True)
class Namespace:
    """A network namespace a test made: its name, and commands run inside it."""

    name: str

    @property
    def prefix(self) -> list[str]:
        """What runs a command inside: `ip netns exec NAME` (which also puts /etc/netns/NAME/* over /etc/*)."""
        return ["ip", "netns", "exec", self.name]

    def run(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.prefix, *command], capture_output=True, text=True, timeout=timeout)

    def check(self, *command: str) -> str:
        """Run a command inside that must succeed (setting up routes, rules); its output."""
        done = self.run(*command)
        assert done.returncode == 0, f"{' '.join(command)} failed in {self.name}: {done.stderr.strip()}"
        return done.stdout


@contextlib.contextmanager
def namespace(resolv_conf: str | None = None) -> Iterator[Namespace]:
    """A fresh network namespace with loopback up, deleted (its processes killed) at the end. `resolv_conf`: the
    text of /etc/netns/NAME/resolv.conf, the resolver configuration `ip netns exec` gives what runs inside."""
    name = f"tgtest{os.getpid()}n{next(_namespaces)}"
    etc = Path("/etc/netns") / name
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        if resolv_conf is not None:
            etc.mkdir(parents=True)
            (etc / "resolv.conf").write_text(resolv_conf)
        ns = Namespace(name)
        ns.check("ip", "link", "set", "lo", "up")
        yield ns
    finally:
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            subprocess.run(["kill", "-9", pid], check=False)
        subprocess.run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(etc, ignore_errors=True)
