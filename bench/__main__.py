"""`make bench`: trafficgen and smartsink side by side with Postfix's smtp-source and smtp-sink, in one run.

Each pair is run alternately (A B A B ...), each side's rate is the median of its runs, and the ratio B/A is
what counts: absolute rates move with the machine, ratios taken side by side do not (much). Rates are
messages / wall-clock seconds of the sending command, start-up included, for both sides alike.

Everything runs on 127.0.0.1. Nothing is installed: a missing tool is named with the command that installs it.

    python -m bench                 # all pairs, 3 rounds
    python -m bench --rounds 5 --messages 300000
    python -m bench --only sink     # pairs whose name contains "sink"
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
ACCEPT_ALL = "[default]\nbounce = 0\ndefer = 0\n"
READY = re.compile(r"listening on smtp://\S+:(\d+) ")


def find_tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@contextmanager
def smtp_sink() -> Iterator[int]:
    """Postfix's smtp-sink on a free port (accepts everything, advertises PIPELINING)."""
    port = free_port()
    tool = find_tool("smtp-sink")
    assert tool
    process = subprocess.Popen([tool, "-u", "nobody", f"{HOST}:{port}", "1000"], stderr=subprocess.DEVNULL)
    try:
        _wait_port(port)
        yield port
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def smartsink(workers: int, policy: Path) -> Iterator[int]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "smartsink",
            "--listen",
            f"{HOST}:0",
            "--http",
            "off",
            "--policy",
            str(policy),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        port = 0
        for line in process.stderr:
            m = READY.search(line)
            if m:
                port = int(m.group(1))
                break
        if not port:
            raise RuntimeError("smartsink did not start")
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)


def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {HOST}:{port}")


def smtp_source(port: int, messages: int, size: int, sessions: int = 50) -> list[str]:
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


def trafficgen(port: int, messages: int, size: int, sessions: int = 50, processes: int = 1) -> list[str]:
    return [
        sys.executable,
        "-m",
        "trafficgen",
        "--target",
        f"{HOST}:{port}",
        "--message-count",
        str(messages),
        "--concurrency",
        str(sessions),
        "--body-size",
        str(size),
        "--processes",
        str(processes),
        "--quiet",
        "--domain",
        "gmail.com:67.4",
        "--domain",
        "yahoo.com:5.9",
        "--domain",
        "hotmail.com:8.8",
        "--domain",
        "aol.com:1.5",
        "--domain",
        "outlook.com:1.2",
        "--json",
        os.devnull,
    ]


def timed(command: list[str], messages: int) -> float:
    """Messages per second of one run of `command` (wall clock, start-up included)."""
    started = time.perf_counter()
    result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()[-500:]}")
    return messages / elapsed


@dataclass
class Side:
    label: str
    server: Callable[[], AbstractContextManager[int]]  # starts the receiving server, yields its port
    command: Callable[[int], list[str]]  # the sending command for that port
    messages: int
    rates: list[float] = field(default_factory=list)

    def run_once(self) -> str:
        with self.server() as port:
            command = self.command(port)
            self.rates.append(timed(command, self.messages))
        return " ".join(command)


@dataclass
class Pair:
    name: str
    a: Side
    b: Side
    target: float | None = None
    commands: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return statistics.median(self.b.rates) / statistics.median(self.a.rates)

    def run(self, rounds: int) -> None:
        for _ in range(rounds):
            commands = [
                f"A ({self.a.label}): {self.a.run_once()}",
                f"B ({self.b.label}): {self.b.run_once()}",
            ]
            self.commands = self.commands or commands
            print(
                f"  {self.name}: A {self.a.rates[-1]:,.0f}/s  B {self.b.rates[-1]:,.0f}/s",
                file=sys.stderr,
                flush=True,
            )


def pairs(m: int, policy: Path, cpus: int) -> list[Pair]:
    kib, hundred_kib, big = 1024, 100 * 1024, max(2000, m // 20)

    def source(messages: int, size: int) -> Callable[[int], list[str]]:
        return lambda port: smtp_source(port, messages, size)

    def generator(messages: int, size: int) -> Callable[[int], list[str]]:
        return lambda port: trafficgen(port, messages, size)

    def sink(workers: int) -> Callable[[], AbstractContextManager[int]]:
        return lambda: smartsink(workers, policy)

    return [
        Pair(
            "trafficgen vs smtp-source -d: 1 KiB, 50 connections, into smtp-sink",
            Side("smtp-source -d", smtp_sink, source(m, kib), m),
            Side("trafficgen", smtp_sink, generator(m, kib), m),
            1.0,
        ),
        Pair(
            "trafficgen vs smtp-source -d: 100 KiB, 50 connections, into smtp-sink",
            Side("smtp-source -d", smtp_sink, source(big, hundred_kib), big),
            Side("trafficgen", smtp_sink, generator(big, hundred_kib), big),
        ),
        Pair(
            f"smartsink --workers {cpus} vs smtp-sink: fed by smtp-source -d, 1 KiB, 50 connections",
            Side("smtp-sink", smtp_sink, source(m, kib), m),
            Side(f"smartsink --workers {cpus}", sink(cpus), source(m, kib), m),
            0.5,
        ),
        Pair(
            "smartsink --workers 1 vs smtp-sink: fed by smtp-source -d, 1 KiB",
            Side("smtp-sink", smtp_sink, source(m, kib), m),
            Side("smartsink --workers 1", sink(1), source(m, kib), m),
        ),
        Pair(
            "end to end: trafficgen -> smartsink vs smtp-source -d -> smtp-sink, 1 KiB",
            Side("smtp-source -> smtp-sink", smtp_sink, source(m, kib), m),
            Side("trafficgen -> smartsink", sink(1), generator(m, kib), m),
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each side (median taken)")
    parser.add_argument("--messages", type=int, default=200_000, help="messages per 1 KiB run")
    parser.add_argument("--only", default="", help="run only the pairs whose name contains this")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "latest.json"), help="where to save results")
    args = parser.parse_args()

    missing = [name for name in ("smtp-source", "smtp-sink") if find_tool(name) is None]
    if missing:
        print(
            f"bench: {' and '.join(missing)} not found: install Postfix's tools with `apt-get install postfix`",
            file=sys.stderr,
        )
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    policy = workdir / "accept-all.toml"
    policy.write_text(ACCEPT_ALL)
    cpus = os.cpu_count() or 1
    selected = [p for p in pairs(args.messages, policy, cpus) if args.only in p.name]
    print(
        f"bench: {len(selected)} pairs, {args.rounds} rounds each, {cpus} CPUs, {args.messages:,} messages a 1 KiB run",
        file=sys.stderr,
    )
    try:
        for pair in selected:
            pair.run(args.rounds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"\nmachine: {cpus} CPUs, Python {sys.version.split()[0]}; "
        f"{args.rounds} alternating rounds (A B A B ...), medians\n"
    )
    print(f"{'pair':84} {'A msg/s':>10} {'B msg/s':>10} {'B/A':>7}  target")
    for pair in selected:
        verdict = "for the record"
        if pair.target:
            verdict = f">= {pair.target:.1f}x {'met' if pair.ratio >= pair.target else 'NOT MET'}"
        print(
            f"{pair.name:84} {statistics.median(pair.a.rates):>10,.0f} {statistics.median(pair.b.rates):>10,.0f} "
            f"{pair.ratio:>6.2f}x  {verdict}"
        )
    print("\ncommands (ports vary):")
    for pair in selected:
        print(f"  {pair.name}")
        for command in pair.commands:
            print(f"    {command}")
    results = {
        "cpus": cpus,
        "python": sys.version.split()[0],
        "rounds": args.rounds,
        "messages": args.messages,
        "pairs": [
            {
                "name": p.name,
                "a": p.a.label,
                "b": p.b.label,
                "a_rates": p.a.rates,
                "b_rates": p.b.rates,
                "ratio": p.ratio,
                "target": p.target,
                "commands": p.commands,
            }
            for p in selected
        ],
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 1 if any(p.target and p.ratio < p.target for p in selected) else 0


if __name__ == "__main__":
    raise SystemExit(main())
