"""What the bench runs: the receiving servers (Postfix's smtp-sink, smartsink) started on free ports of 127.0.0.1
and stopped after, and the sending commands (Postfix's smtp-source, trafficgen with all its features on).

Nothing is installed here: `find_tool` says whether Postfix's tools are present.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
ACCEPT_ALL = "[default]\nbounce = 0\ndefer = 0\n"
READY = re.compile(r"listening on smtp://\S+:(\d+) ")
ADMIN = re.compile(r"admin http://([^ ,]+)")
# trafficgen's features in every bench run: weighted domains (real providers' shares), unique recipients, real
# headers, HDR recording of every transaction and step, per-domain and per-reply accounting.
DOMAINS = ("gmail.com:67.4", "yahoo.com:5.9", "hotmail.com:8.8", "aol.com:1.5", "outlook.com:1.2")


def find_tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running receiver: its top process (a whole tree for smartsink --workers N) and where it listens."""

    process: subprocess.Popen[str]
    port: int
    admin: str | None = None  # smartsink's admin listener (HOST:PORT), when asked for
    log: list[str] = field(default_factory=list)  # what it said on stderr (smartsink)

    @property
    def pid(self) -> int:
        return self.process.pid

    def metrics(self) -> dict[str, float]:
        """smartsink's /metrics, each metric summed over its labels (and over the workers: the sink sums them)."""
        assert self.admin, "start smartsink with admin=True"
        return metric_sums(self.admin)

    def stop(self) -> None:
        stop(self.process)


def metric_sums(admin: str, accepted: bool = False) -> dict[str, float]:
    """smartsink's /metrics at `admin` (HOST:PORT), each metric summed over its labels; with `accepted`, the
    accepted messages too, as "accepted"."""
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=10) as response:
        text = response.read().decode()
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            sample, _, value = line.rpartition(" ")
            name = sample.partition("{")[0]
            sums[name] = sums.get(name, 0.0) + float(value)
            if accepted and name == "smartsink_messages_total" and 'outcome="accepted"' in sample:
                sums["accepted"] = sums.get("accepted", 0.0) + float(value)
    return sums


def stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 15 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@contextmanager
def smtp_sink() -> Iterator[Server]:
    """Postfix's smtp-sink on a free port (accepts everything, advertises PIPELINING); one process."""
    port = free_port()
    tool = find_tool("smtp-sink")
    assert tool
    process = subprocess.Popen([tool, "-u", "nobody", f"{HOST}:{port}", "1000"], stderr=subprocess.DEVNULL, text=True)
    server = Server(process, port)
    try:
        _wait_port(port)
        yield server
    finally:
        server.stop()


@contextmanager
def smartsink(workers: int, policy: Path, *, admin: bool = False, extra: Sequence[str] = ()) -> Iterator[Server]:
    """smartsink (fast engine) with `workers` processes on a free port; its admin listener too when asked."""
    argv = [sys.executable, "-m", "smartsink", "--listen", f"{HOST}:0", "--http", f"{HOST}:0" if admin else "off"]
    argv += ["--policy", str(policy), "--workers", str(workers), "--log-level", "warning", *extra]
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert process.stderr is not None
    server = None
    try:
        for line in process.stderr:
            m = READY.search(line)
            if m:
                listener = ADMIN.search(line)
                server = Server(process, int(m[1]), listener[1] if listener else None)
                break
        if server is None:
            raise RuntimeError(f"smartsink did not start: {' '.join(argv)}")
        threading.Thread(target=_drain, args=(process, server.log), daemon=True).start()
        yield server
    finally:
        (server or Server(process, 0)).stop()


def _drain(process: subprocess.Popen[str], log: list[str]) -> None:
    """Keep a server's stderr flowing (a full pipe would stall it), and keep what it says."""
    assert process.stderr is not None
    log.extend(process.stderr)


def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {HOST}:{port}")


def smtp_source(port: int, messages: int, size: int, sessions: int = 50) -> list[str]:
    """Postfix's smtp-source reusing its connections (-d): one message at a time on each, no pipelining."""
    tool = find_tool("smtp-source")
    assert tool
    return [
        tool,
        "-d",
        "-s",
        str(sessions),
        "-m",
        str(messages),
        "-l",
        str(size),
        "-f",
        "bench@example.test",
        "-t",
        "user@gmail.com.sink.test",
        f"{HOST}:{port}",
    ]


def trafficgen(
    port: int,
    messages: int | None,
    size: int,
    sessions: int = 50,
    processes: int = 1,
    extra: Sequence[str] = (),
    report: str = os.devnull,
) -> list[str]:
    """trafficgen with every feature on; `messages` None for a run shaped by `extra` (--duration, --throttle)."""
    count = ["--message-count", str(messages)] if messages is not None else []
    return [
        sys.executable,
        "-m",
        "trafficgen",
        "--target",
        f"{HOST}:{port}",
        *count,
        "--concurrency",
        str(sessions),
        "--body-size",
        str(size),
        "--processes",
        str(processes),
        "--quiet",
        *[arg for domain in DOMAINS for arg in ("--domain", domain)],
        *extra,
        "--json",
        report,
    ]
