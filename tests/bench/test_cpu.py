"""The bench's accounting: the CPU of a process tree (a command's, from getrusage; a running server's, from /proc)
lands on what its processes burnt, grandchildren included; the scale run's chart and verdicts, and the pairs'
ratios, on fixed numbers. No timed performance assertions: only what is counted."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.__main__ import Pair, Round, Side
from bench.cpu import TreeMeter, descendants, run_measured
from bench.scale import Memory, Point, chart, parse, per_connection, sources, steps

BURN = 0.5  # CPU seconds each process burns
# What the two processes burnt, within: -0.05 s for /proc's clock ticks (10 ms per process, rounded down) and
# getrusage's rounding; +0.5 s for two interpreter start-ups and a subprocess import (tens of ms each when the machine
# is idle, more when it is busy). Leaving the grandchild out would measure about BURN, far below the floor.
LOW, HIGH = 2 * BURN - 0.05, 2 * BURN + 0.5

BURNER = textwrap.dedent(
    """
    # argv: "child" or "grandchild", then how the child ends:
    #   exit    the child waits for its grandchild and exits (a command run to its end)
    #   reaped  the child waits for its grandchild, says "done", and stays until its stdin closes (a server whose
    #           worker ended)
    #   alive   both burn, the child says "done" once its grandchild has, and both stay (a server and its worker)
    import subprocess, sys, time

    def burn(seconds):
        end = time.process_time() + seconds  # this process's own user + system time
        while time.process_time() < end:
            pass

    role, mode = sys.argv[1], sys.argv[2]
    if role == "grandchild":
        burn(BURN)
        if mode == "alive":
            print("done", flush=True)
            sys.stdin.read()
    else:
        if mode != "exit":
            sys.stdin.readline()  # "go": the measure starts before it
        argv = [sys.executable, __file__, "grandchild", mode]
        grandchild = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        burn(BURN)
        if mode == "alive":
            grandchild.stdout.readline()
        else:
            grandchild.wait()
        if mode != "exit":
            print("done", flush=True)
            sys.stdin.read()
        grandchild.stdin.close()
        grandchild.wait()
    """
).replace("BURN", repr(BURN))


@pytest.fixture
def burner(tmp_path: Path) -> Path:
    script = tmp_path / "burner.py"
    script.write_text(BURNER)
    return script


class TestProcessTreeCpu:
    def test_a_command_counts_its_waited_for_grandchild(self, burner: Path) -> None:
        """getrusage(RUSAGE_CHILDREN) around a command: its CPU and its grandchild's, within the tolerance."""
        cost = run_measured([sys.executable, str(burner), "child", "exit"], timeout=60)
        assert LOW <= cost.cpu <= HIGH, cost
        assert cost.wall > 0

    @pytest.mark.parametrize("mode", ["alive", "reaped"], ids=["worker-alive", "worker-exited-and-reaped"])
    def test_a_running_tree_counts_its_descendants(self, burner: Path, mode: str) -> None:
        """/proc sampled before and after: the server's CPU and its worker's, live (utime) or reaped (cutime)."""
        argv = [sys.executable, str(burner), "child", mode]
        with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as server:
            assert server.stdin is not None
            assert server.stdout is not None
            meter = TreeMeter(server.pid)
            meter.start()
            server.stdin.write("go\n")
            server.stdin.flush()
            assert server.stdout.readline() == "done\n"
            tree = descendants(server.pid)
            user, system = meter.stop()
            server.stdin.close()  # the child and its grandchild end
        assert len(tree) == (2 if mode == "alive" else 1)
        assert LOW <= user + system <= HIGH, (user, system)

    def test_a_process_that_is_gone_counts_nothing(self) -> None:
        """A pid that no longer exists: no descendants besides itself, no CPU (a server that died mid-run)."""
        meter = TreeMeter(2**22 + 1)  # above the kernel's pid_max: never a process
        meter.start()
        assert meter.stop() == (0.0, 0.0)


def point(connections: int, rate: float, cpu_us: float) -> Point:
    """A throughput point of 100,000 messages at `rate` msg/s and `cpu_us` µs a message (split evenly)."""
    messages = 100_000
    cpu = cpu_us * messages / 1e6
    return Point(connections, messages, messages / rate + 1.0, messages / rate, cpu / 2, cpu / 2)


class TestScaleVerdicts:
    @pytest.mark.parametrize(
        ("before", "after", "verdict"),
        [
            (point(10, 5000, 100), point(100, 4000, 110), "ok"),
            (point(1000, 4000, 100), point(2000, 2000, 200), "ok"),  # exactly linear is not worse than linear
            (point(1000, 5000, 100), point(5000, 900, 120), "WORSE THAN LINEAR (throughput)"),
            (point(10, 5000, 100), point(100, 4000, 1200), "WORSE THAN LINEAR (CPU)"),
            (point(10, 5000, 100), point(20, 2000, 300), "WORSE THAN LINEAR (throughput, CPU)"),
        ],
        ids=["gentle-fall", "exactly-linear", "throughput-falls-faster", "cpu-grows-faster", "both"],
    )
    def test_a_step_is_judged_against_the_growth_of_connections(self, before: Point, after: Point, verdict: str):
        """A step is flagged when throughput falls, or CPU a message grows, by more than the connections grew."""
        (step,) = steps([before, after])
        assert step.growth == after.connections / before.connections
        assert step.verdict() == verdict

    def test_steps_follow_the_points(self):
        """One step between each pair of neighbours, none for a single point."""
        points = [point(n, 1000, 100) for n in (10, 100, 1000)]
        assert [(s.before, s.after) for s in steps(points)] == [(10, 100), (100, 1000)]
        assert steps(points[:1]) == []

    def test_chart_bars_are_proportional_to_the_largest(self):
        """The largest value gets the full width; labels right-aligned, values after the bars."""
        assert chart([("10", 100.0), ("1,000", 50.0), ("20,000", 0.0)], width=10) == [
            "    10 |██████████ 100",
            " 1,000 |█████      50",
            "20,000 |           0",
        ]
        assert chart([]) == []

    def test_memory_per_connection_is_against_the_baseline(self):
        """(PSS with N - PSS with the baseline) / (N - baseline connections), each side."""
        baseline = Memory(10, sink_pss=100_000, sink_rss=0, client_pss=50_000, client_rss=0, waited=1)
        held = Memory(1010, sink_pss=103_000, sink_rss=0, client_pss=56_000, client_rss=0, waited=1)
        assert per_connection(held, baseline) == (3.0, 6.0)

    def test_source_addresses_only_when_one_would_run_short_of_ports(self):
        """Up to half of an address's ephemeral ports, the default address; beyond, enough 127.0.0.x for each to
        take at most half of its own."""
        assert sources(14_116, 28_232) == []
        assert sources(20_000, 28_232) == ["127.0.0.1", "127.0.0.2"]
        assert sources(40_000, 20_000) == [f"127.0.0.{n}" for n in range(1, 5)]

    def test_counts_set_both_parts(self):
        """--counts replaces both lists; the memory part holds only counts above its baseline of 10."""
        args = parse(["--counts", "10,100,1_000"])
        assert (args.held, args.connections) == ([100, 1000], [10, 100, 1000])
        assert parse([]).held == [1000, 10_000, 20_000]


def side(label: str, *rounds: Round) -> Side:
    return Side(label, server=lambda: pytest.fail("not run"), command=lambda port: [], messages=0, rounds=list(rounds))


class TestPairRatios:
    def test_both_ratios_are_medians_of_the_sides(self):
        """Wall ratio from median msg/s, CPU ratio from median messages per CPU-second of the compared end."""
        # A: 10,000 msg/s and 10,000 messages per client CPU-second (its server's CPU does not count here).
        a = side("A", *[Round(10_000, 1.0, 0.8, 0.2, 5.0, 5.0)] * 3)
        # B: 20,000, 25,000 and 10,000 msg/s (median 20,000); 40,000, 20,000 and 25,000 per client CPU-second.
        b = side(
            "B",
            Round(10_000, 0.5, 0.2, 0.05, 9.0, 0.0),
            Round(10_000, 0.4, 0.3, 0.2, 9.0, 0.0),
            Round(10_000, 1.0, 0.3, 0.1, 9.0, 0.0),
        )
        pair = Pair("p", "pair", "client", a, b, target=1.5)
        assert pair.wall_ratio == pytest.approx(2.0)
        assert pair.cpu_ratio == pytest.approx(2.5)
        assert pair.misses() == []
        assert pair.verdict() == ">= 1.5x met"

    def test_the_target_is_for_the_cpu_ratio(self):
        """Faster by the wall clock but dearer in CPU misses the target; slower by the wall clock (a busy machine)
        but cheaper in CPU meets it: the wall ratio is reported beside it, for the record."""
        a = side("A", Round(1000, 1.0, 0.5, 0.5, 0.1, 0.1))
        b = side("B", Round(1000, 0.5, 1.5, 0.5, 0.1, 0.1))
        pair = Pair("p", "pair", "client", a, b, target=1.2)
        assert pair.wall_ratio > 1.2
        assert pair.misses() == ["CPU"]
        assert pair.verdict() == ">= 1.2x NOT MET (CPU)"
        slow_but_cheap = Pair("p", "pair", "client", b, a, target=1.2)
        assert slow_but_cheap.wall_ratio < 1.2 < slow_but_cheap.cpu_ratio
        assert slow_but_cheap.misses() == []
        assert Pair("p", "pair", "both", a, b).verdict() == "for the record"
