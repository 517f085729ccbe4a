"""`python -m bench --scale` (make bench-scale): what a held connection costs each side, and throughput as the
connections grow.

Memory: `smartsink --workers 2` and `trafficgen --processes 2 --throttle 1/s` holding N idle connections (a message
a second over all of them). Once the sink's `smartsink_connections_active` gauge shows all N (polled, never slept
on), the proportional set size (PSS, from /proc/PID/smaps_rollup; shared pages divided among the processes sharing
them) of each side's process tree is read, and the resident size (RSS) beside it. The cost of a connection is the
difference from a baseline of 10 connections, divided by the connections added. Kernel memory (socket buffers,
TCP state) is in neither figure.

Throughput: `trafficgen --message-count M --concurrency N --processes 2` into `smartsink --workers 2`, N from 10 to
20,000, M large enough that each connection sends many messages: messages a second over trafficgen's sending window
(and over the wall-clock time of the command), and CPU microseconds a message of each side's process tree. A step
that loses more throughput than it adds connections (10x the connections, less than a tenth of the messages a
second) is flagged, as is CPU a message that grows faster than the connections: either would mean a cost per
message that grows faster than linearly with the connections held.

Everything runs on 127.0.0.0/8: the sink listens on 127.0.0.1, and when the connections of a run would take more
than half of the ephemeral port range (/proc/sys/net/ipv4/ip_local_port_range) trafficgen connects from several
127.0.0.x source addresses (--source-address), each with a port range of its own. Both tools raise their own
open-files limit to the hard limit, and this run raises the hard limit when it is too low and it may (root).

    python -m bench --scale
    python -m bench --scale --counts 10,100,1000          # a quick check: both parts at these counts
    python -m bench --scale --part memory --held 1000,5000
    python -m bench --scale --part throughput --connections 10,1000 --messages 50000
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.cpu import TreeMeter, descendants, run_measured
from bench.servers import ACCEPT_ALL, ROOT, Server, smartsink, trafficgen

BASELINE = 10  # connections held for the memory baseline
SIZE = 1024
BAR = 50  # characters of the longest bar
EXTRA_FILES = 1000  # open files a process needs beside its connections
PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
PORT_SHARE = 0.5  # of a source address's ephemeral ports a run may take (the rest: TIME_WAIT, other programs)


# --- what is measured, and what it means (pure) ---------------------------------------------------------------------


@dataclass(frozen=True)
class Memory:
    """Both sides' process trees holding `connections` connections, in KiB."""

    connections: int
    sink_pss: float
    sink_rss: float
    client_pss: float
    client_rss: float
    waited: float  # seconds from trafficgen's start until the sink held them all


def per_connection(point: Memory, baseline: Memory) -> tuple[float, float]:
    """KiB of PSS a connection adds to (the sink, trafficgen), against the baseline."""
    added = point.connections - baseline.connections
    return (point.sink_pss - baseline.sink_pss) / added, (point.client_pss - baseline.client_pss) / added


@dataclass(frozen=True)
class Point:
    """One throughput run: `messages` over `connections`, its times (s) and each side's CPU (s)."""

    connections: int
    messages: int
    wall: float
    window: float  # trafficgen's sending window (its run, without interpreter and process start-up)
    client_cpu: float
    server_cpu: float
    errors: int = 0

    @property
    def rate(self) -> float:
        """Messages a second over the sending window."""
        return self.messages / self.window

    @property
    def wall_rate(self) -> float:
        return self.messages / self.wall

    @property
    def client_us(self) -> float:
        return self.client_cpu / self.messages * 1e6

    @property
    def server_us(self) -> float:
        return self.server_cpu / self.messages * 1e6


@dataclass(frozen=True)
class Step:
    """From one point to the next: how much the connections grew, and what throughput and CPU a message did."""

    before: int
    after: int
    growth: float  # connections after / before
    throughput: float  # msg/s after / before
    cpu: float  # CPU a message (both sides) after / before

    @property
    def throughput_worse_than_linear(self) -> bool:
        """Throughput fell by a larger factor than the connections grew."""
        return self.throughput * self.growth < 1.0

    @property
    def cpu_worse_than_linear(self) -> bool:
        """CPU a message grew by a larger factor than the connections."""
        return self.cpu > self.growth

    def verdict(self) -> str:
        flags = [
            name
            for name, bad in (("throughput", self.throughput_worse_than_linear), ("CPU", self.cpu_worse_than_linear))
            if bad
        ]
        return f"WORSE THAN LINEAR ({', '.join(flags)})" if flags else "ok"


def steps(points: Sequence[Point]) -> list[Step]:
    """Each step from a point to the next (in the order given: growing connections)."""
    return [
        Step(
            a.connections,
            b.connections,
            b.connections / a.connections,
            b.rate / a.rate,
            (b.client_us + b.server_us) / (a.client_us + a.server_us),
        )
        for a, b in itertools.pairwise(points)
    ]


def chart(rows: Sequence[tuple[str, float]], width: int = BAR) -> list[str]:
    """A horizontal bar for each (label, value), the largest `width` characters long."""
    if not rows:
        return []
    top = max(value for _, value in rows) or 1.0
    label_width = max(len(label) for label, _ in rows)
    return [
        f"{label:>{label_width}} |{'█' * round(value / top * width):<{width}} {value:,.0f}" for label, value in rows
    ]


# --- process trees --------------------------------------------------------------------------------------------------


def tree_memory(pid: int) -> tuple[float, float]:
    """(PSS, RSS) in KiB of `pid` and all its descendants."""
    pss = rss = 0.0
    for member in descendants(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += float(line.split()[1])
                elif line.startswith("Rss:"):
                    rss += float(line.split()[1])
    return pss, rss


def raise_file_limit(connections: int, processes: int) -> None:
    """Let each process open the files its share of `connections` needs (the busiest of `processes` processes a
    side, which may get more than an even share): raise the hard open-files limit when it is lower and this run may
    (CAP_SYS_RESOURCE); say so only when a process could then run short."""
    wanted = connections + EXTRA_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):  # not allowed: the tools work with what they have
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, wanted))
            hard = wanted
    share = -(-connections // max(1, processes)) * 3 // 2 + EXTRA_FILES  # SO_REUSEPORT's hashing is not even
    if hard != resource.RLIM_INFINITY and hard < share:
        print(
            f"scale: the open-files hard limit is {hard}, below the {share:,} the busiest process may need",
            file=sys.stderr,
        )


def ephemeral_ports() -> int:
    """How many ephemeral ports a source address has (28,232 with Linux's default range), 16,384 if unreadable."""
    try:
        low, high = (int(part) for part in PORT_RANGE.read_text().split())
    except (OSError, ValueError):
        return 16_384
    return high - low + 1


def sources(connections: int, ports: int) -> list[str]:
    """The 127.0.0.x addresses to connect from so that each takes at most PORT_SHARE of its `ports`: none (the
    default address) when one is enough."""
    needed = -(-connections // max(1, int(ports * PORT_SHARE)))
    return [] if needed <= 1 else [f"127.0.0.{n}" for n in range(1, needed + 1)]


def source_args(connections: int) -> list[str]:
    return [arg for address in sources(connections, ephemeral_ports()) for arg in ("--source-address", address)]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _active(sink: Server) -> float:
    try:
        return sink.metrics().get("smartsink_connections_active", 0.0)
    except (OSError, urllib.error.URLError):
        return 0.0


# --- the runs -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    policy: Path
    workdir: Path
    workers: int
    processes: int
    connect_rate: float  # trafficgen's --connect-rate (its default)


def hold(setup: Setup, connections: int) -> Memory:
    """Both sides' memory while trafficgen holds `connections` idle connections to a fresh sink."""
    ramp = connections / setup.connect_rate
    with smartsink(setup.workers, setup.policy, admin=True) as sink:
        extra = ["--throttle", "1/s", "--duration", f"{ramp + 120:.0f}", "--keep-going", *source_args(connections)]
        command = trafficgen(sink.port, None, SIZE, connections, setup.processes, extra)
        started = time.monotonic()
        client = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            wait_until(
                lambda: client.poll() is not None or _active(sink) >= connections,
                ramp + 60,
                f"{connections:,} connections held",
            )
            if client.poll() is not None:
                raise RuntimeError(f"trafficgen ended early ({client.returncode}): {client.communicate()[1][-500:]}")
            waited = time.monotonic() - started
            sink_pss, sink_rss = tree_memory(sink.pid)
            client_pss, client_rss = tree_memory(client.pid)
        finally:
            _stop(client)
    return Memory(connections, sink_pss, sink_rss, client_pss, client_rss, waited)


def _stop(client: subprocess.Popen[str]) -> None:
    """SIGTERM twice, trafficgen's ^C twice: stop now (once would let the held connections wait out its grace)."""
    for timeout in (0.5, 30.0):
        if client.poll() is None:
            client.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                client.communicate(timeout=timeout)
    if client.poll() is None:
        client.kill()
        client.communicate()


def flow(setup: Setup, connections: int, messages: int) -> Point:
    """trafficgen sending `messages` over `connections` into a fresh sink: times and each side's CPU."""
    report = setup.workdir / f"flow-{connections}.json"
    with smartsink(setup.workers, setup.policy) as sink:
        extra = source_args(connections)
        command = trafficgen(sink.port, messages, SIZE, connections, setup.processes, extra, report=str(report))
        meter = TreeMeter(sink.pid)
        meter.start()
        cost = run_measured(command, cwd=ROOT, timeout=600)
        server = sum(meter.stop())
    document = json.loads(report.read_text())
    return Point(
        connections,
        messages,
        cost.wall,
        float(document["sending_s"]),
        cost.cpu,
        server,
        int(document["totals"].get("errors", 0)),
    )


# --- output ---------------------------------------------------------------------------------------------------------


def print_memory(memory: list[Memory], setup: Setup) -> None:
    baseline = memory[0]
    print(
        f"\nmemory per held connection: smartsink --workers {setup.workers}, trafficgen --processes {setup.processes}"
        f" --throttle 1/s; PSS (RSS) of each process tree, minus {baseline.connections} connections' baseline"
    )
    print(f"{'connections':>11} {'sink MiB':>17} {'trafficgen MiB':>17} {'sink KiB/conn':>14} {'tg KiB/conn':>12}")
    for point in memory:
        added = "baseline" if point is baseline else "{:>14.2f} {:>12.2f}".format(*per_connection(point, baseline))
        print(
            f"{point.connections:>11,} {point.sink_pss / 1024:>8.1f} ({point.sink_rss / 1024:>6.1f}) "
            f"{point.client_pss / 1024:>8.1f} ({point.client_rss / 1024:>6.1f}) {added:>27}"
        )


def print_flow(points: list[Point], setup: Setup) -> None:
    print(
        f"\nthroughput as connections grow: trafficgen --processes {setup.processes} --message-count M "
        f"--concurrency N -> smartsink --workers {setup.workers}, 1 KiB"
    )
    print(
        f"{'connections':>11} {'messages':>9} {'msg/s':>8} {'wall msg/s':>10} {'client µs/msg':>14} "
        f"{'sink µs/msg':>12} {'errors':>6}  step"
    )
    verdicts = [
        "",
        *(f"x{s.growth:g}: {s.throughput:.2f}x msg/s, {s.cpu:.2f}x CPU/msg {s.verdict()}" for s in steps(points)),
    ]
    for point, verdict in zip(points, verdicts, strict=True):
        print(
            f"{point.connections:>11,} {point.messages:>9,} {point.rate:>8,.0f} {point.wall_rate:>10,.0f} "
            f"{point.client_us:>14.1f} {point.server_us:>12.1f} {point.errors:>6}  {verdict}".rstrip()
        )
    print("\nmsg/s (sending window) by connections:")
    for line in chart([(f"{p.connections:,}", p.rate) for p in points]):
        print(f"  {line}")
    print("\nCPU µs a message, both sides, by connections:")
    for line in chart([(f"{p.connections:,}", p.client_us + p.server_us) for p in points]):
        print(f"  {line}")


def to_json(memory: list[Memory], points: list[Point]) -> dict[str, Any]:
    per = [(m.connections, *per_connection(m, memory[0])) for m in memory[1:]]
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "load_average": os.getloadavg(),
        "memory_kib": [asdict(m) for m in memory],
        "memory_per_connection_kib": [{"connections": n, "sink": sink, "trafficgen": tg} for n, sink, tg in per],
        "throughput": [
            asdict(p) | {"rate": p.rate, "wall_rate": p.wall_rate, "client_us": p.client_us, "server_us": p.server_us}
            for p in points
        ],
        "steps": [asdict(step) | {"verdict": step.verdict()} for step in steps(points)],
    }


# --- the command ----------------------------------------------------------------------------------------------------


def _numbers(text: str) -> list[int]:
    return [int(part.replace("_", "")) for part in text.split(",") if part.strip()]


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench --scale",
        description="What a held connection costs each side (smartsink and trafficgen), and throughput and CPU a "
        "message as the connections grow, each step judged against linear. Everything on 127.0.0.0/8.",
    )
    parser.add_argument("--part", choices=("both", "memory", "throughput"), default="both")
    parser.add_argument("--held", type=_numbers, default=[1000, 10_000, 20_000], help="connections held (memory)")
    parser.add_argument(
        "--connections", type=_numbers, default=[10, 100, 1000, 5000, 10_000, 20_000], help="throughput points"
    )
    parser.add_argument(
        "--counts",
        type=_numbers,
        help="both parts at these counts, instead of --held and --connections (e.g. 10,100,1000 for a quick check)",
    )
    parser.add_argument("--messages", type=int, default=50_000, help="messages a throughput point, at least")
    parser.add_argument("--per-connection", type=int, default=10, help="messages a connection, at least")
    parser.add_argument("--workers", type=int, default=2, help="smartsink --workers")
    parser.add_argument("--processes", type=int, default=2, help="trafficgen --processes")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "scale.json"), help="where to save")
    args = parser.parse_args(argv)
    if args.counts:
        args.held = [n for n in args.counts if n > BASELINE]
        args.connections = args.counts
    if any(n < 1 for n in [*args.held, *args.connections]):
        parser.error("connection counts must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    raise_file_limit(max([*args.held, *args.connections]), min(args.workers, args.processes))
    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    policy = workdir / "accept-all.toml"
    policy.write_text(ACCEPT_ALL)
    setup = Setup(policy, workdir, args.workers, args.processes, 2000.0)
    memory: list[Memory] = []
    points: list[Point] = []
    started = time.monotonic()
    try:
        if args.part in ("both", "memory"):
            for connections in [BASELINE, *args.held]:
                since = time.monotonic()
                memory.append(hold(setup, connections))
                print(
                    f"  held {connections:,}: {memory[-1].waited:.1f} s to establish, {time.monotonic() - since:.1f} s"
                    " in all",
                    file=sys.stderr,
                    flush=True,
                )
        if args.part in ("both", "throughput"):
            for connections in args.connections:
                since = time.monotonic()
                points.append(flow(setup, connections, max(args.messages, args.per_connection * connections)))
                print(
                    f"  flow {connections:,}: {points[-1].rate:,.0f} msg/s, {time.monotonic() - since:.1f} s in all",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"scale: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {time.monotonic() - started:.0f} s")
    if memory:
        print_memory(memory, setup)
    if points:
        print_flow(points, setup)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(to_json(memory, points), indent=2) + "\n")
    failed = any(step.verdict() != "ok" for step in steps(points)) or any(point.errors for point in points)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
