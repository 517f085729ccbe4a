"""`make bench`: trafficgen and smartsink side by side with Postfix's smtp-source and smtp-sink, in one run, by wall
clock and by CPU.

Each pair is run alternately (A B A B ...), each side's figures are the medians of its runs, and the ratios B/A are
what count: absolute figures move with the machine, ratios taken side by side do not (much). Two kinds of ratio:

- wall: messages / wall-clock seconds of the sending command, start-up included, for both sides alike. It moves
  with whatever else the machine is doing.
- CPU: messages per CPU-second (user + system) of the side the pair compares: the client's process tree (the
  sending command and every process it waited for, from getrusage), the server's (the server and all its
  descendants, from /proc, sampled just before and just after the sending command), or both (end to end). CPU time
  moves much less with a busy machine than wall time does.

Every side also reports the CPU of both ends per message. A target applies to the CPU ratio (the wall ratio is
reported beside it); the exit status is 1 when one misses. The build the run used (compiled with mypyc or pure
Python, mailload/native.py) is printed first and saved with the results. Everything runs on 127.0.0.1. Nothing is
installed: a missing tool is named with the command that installs it.

    python -m bench                 # all pairs, 3 rounds
    python -m bench --rounds 5 --messages 300000
    python -m bench --only sink     # pairs whose name contains "sink"
    python -m bench --scale         # memory per held connection, throughput from 10 to 20,000 connections
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from bench import scale
from bench.cpu import TreeMeter, run_measured
from bench.servers import ACCEPT_ALL, ROOT, Server, find_tool, smartsink, smtp_sink, smtp_source, trafficgen
from mailload import native

Compared = Literal["client", "server", "both"]


@dataclass(frozen=True)
class Round:
    """One run of one side: messages, wall seconds, and (user, system) CPU seconds of each end's process tree."""

    messages: int
    wall: float
    client_user: float
    client_system: float
    server_user: float
    server_system: float

    @property
    def rate(self) -> float:
        return self.messages / self.wall

    def cpu(self, part: Compared) -> float:
        client = self.client_user + self.client_system
        server = self.server_user + self.server_system
        return {"client": client, "server": server, "both": client + server}[part]

    def per_message_us(self, part: Compared) -> float:
        return self.cpu(part) / self.messages * 1e6

    def per_cpu_second(self, part: Compared) -> float:
        cpu = self.cpu(part)
        return self.messages / cpu if cpu > 0 else math.inf


@dataclass
class Side:
    label: str
    server: Callable[[], AbstractContextManager[Server]]  # starts the receiving server
    command: Callable[[int], list[str]]  # the sending command for the server's port
    messages: int
    rounds: list[Round] = field(default_factory=list)

    def run_once(self) -> str:
        with self.server() as server:
            command = self.command(server.port)
            meter = TreeMeter(server.pid)
            meter.start()
            cost = run_measured(command)
            server_user, server_system = meter.stop()
        self.rounds.append(Round(self.messages, cost.wall, cost.user, cost.system, server_user, server_system))
        return " ".join(command)

    def rate(self) -> float:
        """Messages a wall-clock second, median of the rounds."""
        return statistics.median(r.rate for r in self.rounds)

    def per_message_us(self, part: Compared) -> float:
        return statistics.median(r.per_message_us(part) for r in self.rounds)

    def per_cpu_second(self, part: Compared) -> float:
        return statistics.median(r.per_cpu_second(part) for r in self.rounds)


@dataclass
class Pair:
    key: str  # short, for the tables
    name: str
    compared: Compared  # whose CPU the CPU ratio compares
    a: Side
    b: Side
    target: float | None = None
    commands: list[str] = field(default_factory=list)

    @property
    def wall_ratio(self) -> float:
        return self.b.rate() / self.a.rate()

    @property
    def cpu_ratio(self) -> float:
        return self.b.per_cpu_second(self.compared) / self.a.per_cpu_second(self.compared)

    def misses(self) -> list[str]:
        """The ratio below target ("CPU", the one the targets are for), or none; the wall ratio is for the record."""
        if self.target is None:
            return []
        return ["CPU"] if self.cpu_ratio < self.target else []

    def verdict(self) -> str:
        if self.target is None:
            return "for the record"
        misses = self.misses()
        return f">= {self.target:.1f}x " + (f"NOT MET ({', '.join(misses)})" if misses else "met")

    def run(self, rounds: int) -> None:
        for _ in range(rounds):
            commands = [
                f"A ({self.a.label}): {self.a.run_once()}",
                f"B ({self.b.label}): {self.b.run_once()}",
            ]
            self.commands = self.commands or commands
            a, b = self.a.rounds[-1], self.b.rounds[-1]
            print(
                f"  {self.key}: A {a.rate:,.0f}/s {a.per_message_us(self.compared):.1f} µs/msg"
                f"  B {b.rate:,.0f}/s {b.per_message_us(self.compared):.1f} µs/msg ({self.compared} CPU)",
                file=sys.stderr,
                flush=True,
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "name": self.name,
            "compared": self.compared,
            "a": _side_json(self.a),
            "b": _side_json(self.b),
            "wall_ratio": self.wall_ratio,
            "cpu_ratio": self.cpu_ratio,
            "target": self.target,
            "met": not self.misses() if self.target is not None else None,
            "commands": self.commands,
        }


def _side_json(side: Side) -> dict[str, Any]:
    return {
        "label": side.label,
        "messages": side.messages,
        "rounds": [asdict(r) for r in side.rounds],
        "median": {
            "per_second": side.rate(),
            "client_us_per_message": side.per_message_us("client"),
            "server_us_per_message": side.per_message_us("server"),
            "both_us_per_message": side.per_message_us("both"),
            "per_client_cpu_second": side.per_cpu_second("client"),
            "per_server_cpu_second": side.per_cpu_second("server"),
            "per_cpu_second_both": side.per_cpu_second("both"),
        },
    }


def pairs(m: int, policy: Path) -> list[Pair]:
    # 100 KiB runs of half as many messages: 100,000 by default, so that start-up (about a second) is not most of it
    kib, hundred_kib, big = 1024, 100 * 1024, max(2000, m // 2)

    def source(messages: int, size: int) -> Callable[[int], list[str]]:
        return lambda port: smtp_source(port, messages, size)

    def generator(messages: int, size: int) -> Callable[[int], list[str]]:
        return lambda port: trafficgen(port, messages, size)

    def sink(workers: int) -> Callable[[], AbstractContextManager[Server]]:
        return lambda: smartsink(workers, policy)

    return [
        Pair(
            "trafficgen 1 KiB",
            "trafficgen vs smtp-source -d: 1 KiB, 50 connections, into smtp-sink",
            "client",
            Side("smtp-source -d", smtp_sink, source(m, kib), m),
            Side("trafficgen", smtp_sink, generator(m, kib), m),
            1.5,
        ),
        Pair(
            "trafficgen 100 KiB",
            "trafficgen vs smtp-source -d: 100 KiB, 50 connections, into smtp-sink",
            "client",
            Side("smtp-source -d", smtp_sink, source(big, hundred_kib), big),
            Side("trafficgen", smtp_sink, generator(big, hundred_kib), big),
            1.0,
        ),
        Pair(
            "smartsink --workers 2",
            "smartsink --workers 2 vs smtp-sink: fed by smtp-source -d, 1 KiB, 50 connections",
            "server",
            Side("smtp-sink", smtp_sink, source(m, kib), m),
            Side("smartsink --workers 2", sink(2), source(m, kib), m),
            0.9,
        ),
        Pair(
            "smartsink --workers 1",
            "smartsink --workers 1 vs smtp-sink: fed by smtp-source -d, 1 KiB, 50 connections",
            "server",
            Side("smtp-sink", smtp_sink, source(m, kib), m),
            Side("smartsink --workers 1", sink(1), source(m, kib), m),
            1.0,
        ),
        Pair(
            "end to end",
            "end to end: trafficgen -> smartsink --workers 1 vs smtp-source -d -> smtp-sink, 1 KiB",
            "both",
            Side("smtp-source -> smtp-sink", smtp_sink, source(m, kib), m),
            Side("trafficgen -> smartsink", sink(1), generator(m, kib), m),
            1.3,
        ),
    ]


def print_tables(selected: list[Pair], rounds: int, cpus: int) -> None:
    print(
        f"\nmachine: {cpus} CPUs, Python {sys.version.split()[0]}; {rounds} alternating rounds (A B A B ...), medians."
    )
    print(f"build: {native.build().describe()}")
    print("CPU = user + system of a process tree; client: the sending command and its children; server: the")
    print("receiver and its workers. msg/CPU-s counts the CPU of the end the pair compares.\n")
    print(f"{'pair':22} {'side':26} {'msg/s':>9} {'client µs/msg':>14} {'server µs/msg':>14} {'msg/CPU-s':>10}")
    for pair in selected:
        for mark, side in (("A", pair.a), ("B", pair.b)):
            print(
                f"{pair.key:22} {mark} {side.label:24} {side.rate():>9,.0f} {side.per_message_us('client'):>14.1f} "
                f"{side.per_message_us('server'):>14.1f} {side.per_cpu_second(pair.compared):>10,.0f}"
            )
    print(f"\n{'pair':22} {'CPU of':>7} {'wall B/A':>9} {'CPU B/A':>8}  target")
    for pair in selected:
        print(f"{pair.key:22} {pair.compared:>7} {pair.wall_ratio:>8.2f}x {pair.cpu_ratio:>7.2f}x  {pair.verdict()}")
    print("\npairs and commands (ports vary):")
    for pair in selected:
        print(f"  {pair.key}: {pair.name}")
        for command in pair.commands:
            print(f"    {command}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each side (median taken)")
    parser.add_argument("--messages", type=int, default=200_000, help="messages per 1 KiB run")
    parser.add_argument("--only", default="", help="run only the pairs whose name contains this")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "latest.json"), help="where to save results")
    parser.add_argument("--scale", action="store_true", help="the scale run instead (its options: --scale --help)")
    argv = sys.argv[1:]
    if "--scale" in argv:
        return scale.main([arg for arg in argv if arg != "--scale"])
    args = parser.parse_args(argv)

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
    selected = [p for p in pairs(args.messages, policy) if args.only in p.name or args.only in p.key]
    print(
        f"bench: {len(selected)} pairs, {args.rounds} rounds each, {cpus} CPUs, {args.messages:,} messages a 1 KiB "
        f"run; build {native.build().describe()}",
        file=sys.stderr,
    )
    try:
        for pair in selected:
            pair.run(args.rounds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print_tables(selected, args.rounds, cpus)
    results = {
        "build": native.build().kind,
        "cpus": cpus,
        "python": sys.version.split()[0],
        "load_average": os.getloadavg(),
        "rounds": args.rounds,
        "messages": args.messages,
        "pairs": [p.to_json() for p in selected],
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 1 if any(p.misses() for p in selected) else 0


if __name__ == "__main__":
    raise SystemExit(main())
