"""`make soak`: one smartsink (fast engine) under normal mail and every kind of hostile client at once, for minutes,
watched for anything that grows without bound.

Normal mail comes from trafficgen (throttled, over the shipped policy's providers: latency, rates, concurrency
caps, greylisting). Hostile clients are the kinds tests/smartsink/test_hostile.py and test_slow_readers.py send one
at a time, here all the time: random bytes, over-long lines, DATA that never ends, pipeliners that never read (then
leave, reset, or wait to be cut), resetters, one-byte-at-a-time clients, clients that vanish mid-DATA, garbage
commands. Every --interval seconds a row: resident memory of the sink's process tree (from /proc), open connections
(smartsink_connections_active), connections and messages accepted so far (from /metrics).

At the end the last third of the samples is compared with the middle third (the first third is warm-up): the run
fails (exit 1) when memory or open connections grew past the middle third's highest value by more than noise, when
mail stopped being accepted, when connections were not given back after the clients stopped, when a client that
stopped reading was never cut, or when the sink logged a traceback or died. Everything runs on 127.0.0.1.

    python -m bench.soak                    # 10 minutes
    python -m bench.soak --minutes 2 --interval 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import servers

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
READY = re.compile(r"listening on smtp://\S+:(\d+) .*?admin http://([^ ,]+)")
DOMAINS = ["gmail.com:60", "yahoo.com:10", "hotmail.com:10", "aol.com:5", "comcast.net:5", "orange.fr:5"]
DOMAINS += ["greylist.test:5"]
CLIENT_WAIT = 30.0  # the longest a hostile client waits for the sink to answer or close (beyond --timeout)
TRAFFICGEN_WAIT = 60.0  # trafficgen ends within 10 s of its --duration (messages in flight); this is plenty
# Noise allowed before a quantity counts as grown: the last third's median above the middle third's maximum by more
# than this much. The sink's memory rises for its first minutes (the allocator's arenas, the greylist, the ledger)
# and then stays within a MiB (a 10-minute run on the 2-core development machine: 182 MiB at the start, 188.5 from
# the fifth minute on); open connections move with the hostile clients held at the moment of a sample.
RSS_SLACK_MB, RSS_SLACK_SHARE = 4.0, 0.02
OPEN_SLACK, OPEN_SLACK_SHARE = 10, 0.25


# --- the sink -------------------------------------------------------------------------------------------------------


@dataclass
class Sink:
    process: subprocess.Popen[str]
    port: int
    http: str
    log: list[str] = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        return HOST, self.port

    def metrics(self) -> dict[str, float]:
        """Each metric of /metrics summed over its labels, and accepted messages as "accepted"."""
        return servers.metric_sums(self.http, accepted=True)

    def stop(self) -> None:
        servers.stop(self.process)


def start_sink(policy: Path, workers: int, timeout: float) -> Sink:
    argv = [sys.executable, "-m", "smartsink", "--listen", f"{HOST}:0", "--http", f"{HOST}:0"]
    argv += ["--policy", str(policy), "--workers", str(workers), "--timeout", str(timeout), "--log-level", "warning"]
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert process.stderr is not None
    for line in process.stderr:
        m = READY.search(line)
        if m:
            sink = Sink(process, int(m[1]), m[2])
            break
    else:
        raise RuntimeError(f"smartsink did not start: {' '.join(argv)}")

    def drain() -> None:  # keep its stderr flowing, and keep what it says
        assert process.stderr is not None
        for line in process.stderr:
            sink.log.append(line)

    threading.Thread(target=drain, daemon=True).start()
    return sink


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (the supervisor and its workers), in MiB."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(child) for child in (task / "children").read_text().split()]
    return total


# --- hostile clients ------------------------------------------------------------------------------------------------


@dataclass
class Crowd:
    """The hostile clients' side of the run: what they did and what they saw."""

    address: tuple[str, int]
    timeout: float  # the sink's --timeout
    runs: Counter[str] = field(default_factory=Counter)
    never_closed: int = 0  # clients the sink neither closed nor cut within --timeout + CLIENT_WAIT
    surprises: list[str] = field(default_factory=list)  # exceptions other than a closed or reset connection
    stopping: bool = False  # no new client after this (the stop does not rest on a cancellation alone)


@contextlib.asynccontextmanager
async def _connected(crowd: Crowd) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A connection that has read the greeting (or a 421 when the sink is full), closed however the client ends."""
    async with asyncio.timeout(CLIENT_WAIT):
        reader, writer = await asyncio.open_connection(*crowd.address)
    try:
        async with asyncio.timeout(CLIENT_WAIT):
            await reader.readline()
        yield reader, writer
    finally:
        writer.close()


async def _until_closed(reader: asyncio.StreamReader, crowd: Crowd) -> None:
    """Read what the sink says until it closes (it must: every hostile conversation ends in a close or a cut)."""
    try:
        async with asyncio.timeout(crowd.timeout + CLIENT_WAIT):
            while await reader.read(65536):
                pass
    except TimeoutError:
        crowd.never_closed += 1


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


ENVELOPE = b"EHLO hostile.test\r\nMAIL FROM:<a@hostile.test>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"


async def random_bytes(crowd: Crowd, rng: random.Random) -> None:
    async with _connected(crowd) as (reader, writer):
        writer.write(rng.randbytes(rng.randint(4096, 65536)))
        await _until_closed(reader, crowd)


async def long_line(crowd: Crowd, rng: random.Random) -> None:
    async with _connected(crowd) as (reader, writer):
        writer.write(b"EHLO " + b"x" * rng.randint(100_000, 300_000) + b"\r\nNOOP\r\nQUIT\r\n")
        await _until_closed(reader, crowd)


async def endless_data(crowd: Crowd, rng: random.Random) -> None:
    """A body streamed at 1 MB/s for a few seconds with no end; then the client vanishes, or falls silent and is
    cut by --timeout."""
    async with _connected(crowd) as (reader, writer):
        writer.write(ENVELOPE)
        chunk = b"no end in sight " * 1024
        deadline = time.monotonic() + rng.uniform(1, 5)
        while time.monotonic() < deadline:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(len(chunk) / 1e6)
        if rng.random() < 0.5:
            await _until_closed(reader, crowd)


async def non_reader(crowd: Crowd, rng: random.Random) -> None:
    """Pipelines HELPs without reading a reply until the sink stops taking them; then leaves (FIN or RST), or stays
    and must be cut by the sink's --timeout."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(CLIENT_WAIT):
            await loop.sock_connect(sock, crowd.address)
            await loop.sock_recv(sock, 512)
        await loop.sock_sendall(sock, b"EHLO hostile.test\r\n")
        helps = b"HELP\r\n" * 10_000
        with contextlib.suppress(TimeoutError):
            while True:  # until a send waits half a second: the sink has stopped reading us
                async with asyncio.timeout(0.5):
                    await loop.sock_sendall(sock, helps)
        ending = rng.choice(["close", "reset", "cut"])
        if ending == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif ending == "cut":
            try:
                async with asyncio.timeout(crowd.timeout + CLIENT_WAIT):
                    while True:
                        await loop.sock_sendall(sock, helps)
            except TimeoutError:
                crowd.never_closed += 1
            except OSError:
                pass  # cut: what it had to see
    finally:
        sock.close()


async def resetter(crowd: Crowd, rng: random.Random) -> None:
    async with _connected(crowd) as (_, writer):
        writer.write(ENVELOPE[: rng.randint(1, len(ENVELOPE))])
        await writer.drain()
        _reset(writer)


async def one_byte_at_a_time(crowd: Crowd, rng: random.Random) -> None:
    """A whole conversation a byte at a time (served), or one byte and then silence (cut by --timeout)."""
    async with _connected(crowd) as (reader, writer):
        if rng.random() < 0.5:
            writer.write(b"E")
        else:
            for byte in b"EHLO slow.test\r\nNOOP\r\nQUIT\r\n":
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.2)
        await _until_closed(reader, crowd)


async def vanish_mid_data(crowd: Crowd, rng: random.Random) -> None:
    async with _connected(crowd) as (_, writer):
        writer.write(ENVELOPE + b"Subject: half\r\n\r\n" + b"a half " * rng.randint(1, 10_000))
        await writer.drain()


async def garbage_commands(crowd: Crowd, rng: random.Random) -> None:
    async with _connected(crowd) as (reader, writer):
        writer.write(b"RCPT TO:<x@y>\r\nDATA\r\nMAIL FROM:<\x00>\r\nSTARTTLS\r\nAUTH PLAIN !!\r\n")
        writer.write(b"NO\x00OP\r\n\xff\xfe\r\nMAIL FROM:<a@x> SIZE=99999999999999999999\r\nVRFY\r\nEXPN x\r\nQUIT\r\n")
        await _until_closed(reader, crowd)


KINDS: dict[str, Callable[[Crowd, random.Random], Awaitable[None]]] = {
    "random bytes": random_bytes,
    "long line": long_line,
    "endless DATA": endless_data,
    "never reads": non_reader,
    "resets": resetter,
    "one byte": one_byte_at_a_time,
    "vanishes mid-DATA": vanish_mid_data,
    "garbage": garbage_commands,
}


async def hostile_loop(crowd: Crowd, kind: str, seed: int) -> None:
    """Clients of one kind, one after another, until the crowd stops (or the task is cancelled)."""
    rng = random.Random(seed)
    client = KINDS[kind]
    while not crowd.stopping:
        try:
            await client(crowd, rng)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the sink closed or cut the connection: expected of hostile clients
        except Exception as e:  # a soak reports what it saw, it does not stop
            crowd.surprises.append(f"{kind}: {type(e).__name__}: {e}")
        crowd.runs[kind] += 1
        await asyncio.sleep(rng.uniform(0, 0.2))


# --- the run --------------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    rss_mb: float
    active: float
    connections: float
    accepted: float
    hostile: int


def trafficgen_totals(report: Path) -> dict[str, int] | None:
    """The totals of trafficgen's JSON report (attempted, accepted...), None when it wrote none."""
    if not report.exists():
        return None
    totals: dict[str, int] = json.loads(report.read_text())["totals"]
    return totals


async def soak(args: argparse.Namespace, sink: Sink, workdir: Path) -> tuple[list[Sample], list[str]]:
    """The whole run: normal mail (unless --rate 0), the hostile crowd, the samples; what went wrong."""
    report = workdir / "trafficgen.json"
    generator = None
    if args.rate:
        generator = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "trafficgen", "--target", f"{HOST}:{sink.port}", "--concurrency", "20"],
            *["--duration", f"{args.minutes * 60:g}", "--throttle", f"{args.rate}/s", "--keep-going", "--quiet"],
            *["--seed", "1", *[arg for domain in DOMAINS for arg in ("--domain", domain)]],
            *["--body-size", "1kb..20kb", "--json", str(report)],
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
    try:
        return await watch(args, sink, generator, report)
    finally:
        if generator is not None and generator.returncode is None:
            generator.kill()
            await generator.wait()


async def watch(
    args: argparse.Namespace, sink: Sink, generator: asyncio.subprocess.Process | None, report: Path
) -> tuple[list[Sample], list[str]]:
    seconds = args.minutes * 60
    crowd = Crowd(sink.address, args.timeout)
    tasks = [
        asyncio.create_task(hostile_loop(crowd, kind, seed=1000 * n + i))
        for n, kind in enumerate(KINDS)
        for i in range(args.hostile)
    ]
    print(f"{'t (s)':>7} {'RSS MiB':>8} {'open':>6} {'connections':>12} {'accepted':>10} {'hostile':>8}", flush=True)
    samples: list[Sample] = []
    started = time.monotonic()
    try:
        for n in range(max(3, round(seconds / args.interval)) + 1):
            await asyncio.sleep(max(0.0, started + n * args.interval - time.monotonic()))
            metrics = await asyncio.to_thread(sink.metrics)
            sample = Sample(
                time.monotonic() - started,
                tree_rss_mb(sink.process.pid),
                metrics.get("smartsink_connections_active", 0.0),
                metrics.get("smartsink_connections_total", 0.0),
                metrics.get("accepted", 0.0),
                sum(crowd.runs.values()),
            )
            samples.append(sample)
            print(
                f"{sample.t:>7.0f} {sample.rss_mb:>8.1f} {sample.active:>6.0f} {sample.connections:>12,.0f} "
                f"{sample.accepted:>10,.0f} {sample.hostile:>8,}",
                flush=True,
            )
    finally:
        crowd.stopping = True
        for task in tasks:
            task.cancel()
        # Bounded: a client is between two awaits at most a send or a read long, each bounded by CLIENT_WAIT.
        _, stuck = await asyncio.wait(tasks, timeout=CLIENT_WAIT + args.timeout) if tasks else (set(), set())
    problems = [f"{len(stuck)} hostile clients did not stop when asked"] if stuck else []
    if generator is not None:
        try:
            _, err = await asyncio.wait_for(generator.communicate(), TRAFFICGEN_WAIT)
        except TimeoutError:
            generator.kill()
            _, err = await generator.communicate()
            problems.append(f"trafficgen was still running {TRAFFICGEN_WAIT:g} s after its --duration: {err!r:.300}")
        totals = trafficgen_totals(report)
        if totals is not None:
            print("trafficgen: " + ", ".join(f"{key} {value:,}" for key, value in totals.items()))
        else:
            problems.append(f"trafficgen wrote no report (exit {generator.returncode}): {err.decode()[-300:]}")
    released_at = time.monotonic()
    deadline = released_at + args.timeout + 5
    while (active := (await asyncio.to_thread(sink.metrics)).get("smartsink_connections_active", 0.0)) > 0:
        if time.monotonic() > deadline:
            problems.append(f"{active:.0f} connections still open {args.timeout + 5:g} s after every client stopped")
            break
        await asyncio.sleep(0.2)
    else:
        print(f"\nevery connection given back {time.monotonic() - released_at:.1f} s after the clients stopped")
    print(f"sink memory at the end: {tree_rss_mb(sink.process.pid):.1f} MiB")
    print("hostile clients: " + ", ".join(f"{kind} {crowd.runs[kind]:,}" for kind in KINDS))
    if crowd.never_closed:
        problems.append(f"{crowd.never_closed} hostile clients were never closed nor cut by the sink")
    problems += [f"hostile client saw {surprise}" for surprise in crowd.surprises[:5]]
    return samples, problems


def verdict(samples: list[Sample], mail: bool) -> list[str]:
    """Print the middle and the last third of the samples side by side; what grew, or stopped."""
    third = len(samples) // 3
    middle, last = samples[third : 2 * third], samples[2 * third :]
    # Memory and open connections: the middle third's highest sample against the last third's median (a level
    # quantity has as many samples above its median as below). Accepted messages: how many a second in each third.
    print(f"\n{'':18} {'middle third':>13} {'last third':>11} {'allowed':>8}")
    problems = []
    watched: list[tuple[str, Callable[[Sample], float], float, float]] = [
        ("sink memory (MiB)", lambda sample: sample.rss_mb, RSS_SLACK_MB, RSS_SLACK_SHARE),
        ("open connections", lambda sample: sample.active, OPEN_SLACK, OPEN_SLACK_SHARE),
    ]
    for name, value, slack, share in watched:
        ceiling = max(value(sample) for sample in middle)
        allowed = ceiling + max(slack, share * ceiling)
        median = statistics.median(value(sample) for sample in last)
        state = "level" if median <= allowed else "GREW"
        print(f"{name:18} {ceiling:>13,.1f} {median:>11,.1f} {allowed:>8,.1f}  {state}")
        if median > allowed:
            problems.append(f"{name} grew: the last third's median {median:,.1f} is above {allowed:,.1f}")
    spans = ((samples[third - 1], middle[-1]), (middle[-1], last[-1]))
    rates = [(end.accepted - start.accepted) / (end.t - start.t) for start, end in spans]
    print(f"{'accepted a second':18} {rates[0]:>13,.1f} {rates[1]:>11,.1f}")
    if mail and rates[1] <= 0:
        problems.append("no mail was accepted in the last third")
    return problems


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks: the sink and trafficgen are stopped too


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument("--workers", type=int, default=2, help="the sink's --workers (default 2)")
    parser.add_argument("--timeout", type=float, default=10.0, help="the sink's --timeout in seconds (default 10)")
    parser.add_argument("--rate", type=int, default=100, help="trafficgen messages a second (100; 0: none)")
    parser.add_argument("--hostile", type=int, default=2, help="clients of each hostile kind at once (2; 0: none)")
    parser.add_argument("--policy", type=Path, default=ROOT / "policy" / "responses.toml", help="the sink's policy")
    args = parser.parse_args()

    print(
        f"soak: {args.minutes:g} min, a sample every {args.interval:g} s; smartsink --workers {args.workers} "
        f"--timeout {args.timeout:g} --policy {args.policy}; trafficgen {args.rate}/s; "
        f"{args.hostile} clients of each of {len(KINDS)} hostile kinds at a time; {os.cpu_count()} CPUs",
        flush=True,
    )
    signal.signal(signal.SIGTERM, _terminate)
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    sink = start_sink(args.policy, args.workers, args.timeout)
    try:
        samples, problems = asyncio.run(soak(args, sink, workdir))
        if sink.process.poll() is not None:
            problems.append(f"the sink exited ({sink.process.returncode})")
    finally:
        sink.stop()
        for path in workdir.iterdir():
            path.unlink()
        workdir.rmdir()
    problems = verdict(samples, mail=args.rate > 0) + problems
    tracebacks = sum("Traceback" in line for line in sink.log)
    if tracebacks:
        problems.append(f"the sink logged {tracebacks} tracebacks; the first:\n{''.join(sink.log)[:2000]}")
    if problems:
        print("\nFAILED:\n  " + "\n  ".join(problems))
        return 1
    print("\nOK: memory and open connections level, mail flowing, every connection given back")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
