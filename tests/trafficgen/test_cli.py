"""The `trafficgen` command as a user meets it: bad input is one line and exit 2, a dead target one line and
exit 1, every option also a TRAFFICGEN_* variable, ^C stops cleanly (issue 3, "Command", "Outcomes and errors")."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import ROOT, child_env
from harness.capture import CaptureServer
from harness.net import GreetOnly, namespace, netns_unusable, refusing_port
from harness.policies import ACCEPT_ALL
from harness.sink import running_sink, wait_for
from harness.trafficgen import COMMAND, error_lines, run_report, run_trafficgen, start_trafficgen

# (arguments, words the one error line must hold)
BAD_INPUT = [
    (["--domain", "gmail.com:abc"], "weight 'abc' is not a number"),
    (["--domain", "gmail.com:0"], "weight must be more than 0"),
    (["--domain", "gmail.com:-2.5"], "weight must be more than 0"),
    (["--domain", "gmail.com:nan"], "weight 'nan' is not a number"),
    (["--domain", "gmail.com:inf"], "weight 'inf' is not finite"),
    (["--seed", "abc"], "--seed 'abc' is not a whole number"),
    (["--concurrency", "1.5"], "--concurrency '1.5' is not a whole number"),
    (["--duration", "1e12"], "--duration 1e+12 is more than 2,592,000 seconds (30 days)"),
    (["--timeout", "1e12"], "--timeout 1e+12 is more than 86,400 seconds"),
    (["--reconcile-wait", "-1"], "--reconcile-wait -1 must be between 0 and 86,400 seconds"),
    (["--target", "--duration", "2"], "--target needs a value: the next word, --duration, is an option"),
    (["--domain", "not a domain"], "is not a domain name"),
    (["--domain-suffix", "bad suffix!"], "--domain-suffix"),
    (["--body-size", "10zb"], "unknown unit 'zb'"),
    (["--body-size", "big"], "--body-size"),
    (["--body-size", "200kb..10kb"], "from a larger to a smaller size"),
    (["--body-size", "2GiB"], "larger than"),
    (["--throttle", "300"], "needs a unit"),
    (["--throttle", "300/fortnight"], "unknown unit 'fortnight'"),
    (["--throttle", "lots/s"], "'lots' is not a number"),
    (["--throttle", "0/s"], "must be more than zero"),
    (["--throttle", "300/s,max_burst=0"], "max_burst must be at least 1"),
    (["--throttle", "300/s,max_burst=x"], "max_burst must be a whole number"),
    (["--target", "mail.example.test"], "must look like HOST:PORT"),
    (["--target", "127.0.0.1:smtp"], "port 'smtp' is not a number"),
    (["--target", "127.0.0.1:70000"], "out of range"),
    (["--target", "127.0.0.1:0"], "port 0"),
    (["--target", "::1:25"], "brackets"),
    (["--auth-user", "loadtester"], "--auth-user and --auth-password go together"),
    (["--auth-password", "secret"], "--auth-user and --auth-password go together"),
    (["--header", "NoColonHere"], 'must look like "Name: value"'),
    (["--header", "Bad Name: x"], 'must look like "Name: value"'),
    (["--sender", "not-an-address"], "--sender 'not-an-address' is not an address"),
    (["--recipient", "a@b@c"], "--recipient"),
    (["--concurrency", "0"], "--concurrency must be at least 1"),
    (["--concurrency", "many"], "--concurrency"),
    (["--message-count", "0"], "--message-count must be at least 1"),
    (["--duration", "0"], "--duration must be more than 0"),
    (["--duration", "-5"], "--duration must be more than 0"),
    (["--recipients-per-message", "0"], "--recipients-per-message must be at least 1"),
    (["--messages-per-connection", "0"], "--messages-per-connection must be at least 1"),
    (["--timeout", "0"], "--timeout must be more than 0"),
    (["--source-address", "localhost"], "is not an IP address"),
    (["--body-file", "/nonexistent/message.eml"], "no such file"),
    (["--processes", "3", "--concurrency", "2"], "--processes 3 is more than --concurrency 2"),
    (["--run-id", "has spaces"], "--run-id"),
    (["--no-such-option"], "No such option: --no-such-option"),
]


def _id(case: tuple[list[str], str]) -> str:
    return " ".join(case[0]).lstrip("-")


class TestBadInput:
    """Every bad input: exactly one line on stderr naming the problem, exit 2, no traceback, nothing sent."""

    @pytest.mark.parametrize(("args", "words"), BAD_INPUT, ids=[_id(c) for c in BAD_INPUT])
    def test_one_line_and_exit_2(self, args, words):
        """The line starts with 'trafficgen: error:' and names what was wrong."""
        done = run_trafficgen(*args)
        assert done.returncode == 2, done.stderr
        assert done.stdout == ""
        (line,) = error_lines(done)
        assert line.startswith("trafficgen: error: ")
        assert words in line

    def test_bad_environment_value_names_the_variable(self):
        """A bad TRAFFICGEN_* value is one line that names the variable."""
        done = run_trafficgen(env={"TRAFFICGEN_CONCURRENCY": "lots"})
        assert done.returncode == 2
        (line,) = error_lines(done)
        assert "TRAFFICGEN_CONCURRENCY" in line

    def test_a_flag_is_named_as_given(self):
        """`--seed abc` names --seed in the project's words; the variable only when the value came from it."""
        (line,) = error_lines(run_trafficgen("--seed", "abc"))
        assert line == "trafficgen: error: --seed 'abc' is not a whole number", line
        (line,) = error_lines(run_trafficgen(env={"TRAFFICGEN_SEED": "abc"}))
        assert line == "trafficgen: error: TRAFFICGEN_SEED 'abc' is not a whole number", line


def with_file_limit(soft: int, hard: int) -> list[str]:
    """argv0 for run_trafficgen: the command started with these open-files limits (as a shell's ulimit would)."""
    code = (
        f"import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard})); "
        "sys.argv[0] = 'trafficgen'; runpy.run_module('trafficgen', run_name='__main__')"
    )
    return [sys.executable, "-c", code]


class TestFileLimit:
    """--concurrency and the open-files limit: the soft limit is raised to the hard one, or the run refused."""

    def test_concurrency_beyond_the_hard_limit(self):
        """--concurrency that cannot fit the hard limit is refused up front, with the fix named."""
        with refusing_port() as sock:
            target = f"127.0.0.1:{sock.getsockname()[1]}"
            done = run_trafficgen("--target", target, "--concurrency", "500", argv0=with_file_limit(200, 200))
        assert done.returncode == 2
        (line,) = error_lines(done)
        assert "--concurrency needs 564 open files" in line
        assert "limit is 200" in line

    def test_soft_limit_is_raised(self, tmp_path: Path):
        """300 connections held at once with a soft limit of 128 (hard 1024): the soft limit is raised to the hard."""
        with running_sink(policy=ACCEPT_ALL, tmp=tmp_path) as sink:
            done = run_trafficgen(
                "--target", sink.target, "--concurrency", "300", "--duration", "2", "--throttle", "1000/s", "-q",
                "--json", "-",
                argv0=with_file_limit(128, 1024),
            )  # fmt: skip
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        # 2 s at 1000/s: the message due at exactly 2.000 s may go too on a loaded machine (seen once: 2001)
        assert report["totals"]["accepted"] == report["totals"]["attempted"]
        assert 2000 <= report["totals"]["attempted"] <= 2001, report["totals"]
        assert report["connections"]["opened"] == report["connections"]["peak"] == 300


class TestDeadTarget:
    """A target that cannot be used: one clear line, exit 1 (the run started, then stopped)."""

    def test_refused(self):
        """A closed port on 127.0.0.1: exit 1 and one line saying the connection was refused, naming the target."""
        with refusing_port() as sock:
            target = f"127.0.0.1:{sock.getsockname()[1]}"
            done = run_trafficgen("--target", target, "--message-count", "10")
        assert done.returncode == 1
        (line,) = error_lines(done)
        assert line.startswith("trafficgen: error: ")
        assert "refused" in line
        assert target in line
        assert done.stdout == ""

    def test_refused_with_keep_going_counts_errors(self):
        """--keep-going against a closed port counts every message as an error, still ends, and fails (exit 1):
        a run in which no message got an answer did not test the target, whatever the flags."""
        with refusing_port() as sock:
            target = f"127.0.0.1:{sock.getsockname()[1]}"
            report, done = run_report(
                "--target", target, "--message-count", "6", "--concurrency", "6", "--keep-going", expect=1
            )  # fmt: skip
        assert report["totals"] == {"attempted": 6, "accepted": 0, "tempfailed": 0, "permfailed": 0, "errors": 6}
        assert "refused" in report["errors"][0]["text"]
        assert report["connections"]["failed"] == 6
        assert report["connections"]["opened"] == 0
        line = error_lines(done)[-1]
        assert line == f"trafficgen: error: no message got an answer from {target}: {report['errors'][0]['text']}"
        assert "throughput" not in done.stderr  # nothing reached a server: no rate to speak of

    @pytest.mark.netns
    def test_a_name_that_does_not_resolve(self):
        """`--target nonexistent.invalid:25` in a namespace with only loopback (no DNS query leaves it): one line
        naming the target and the lookup's failure, exit 1; no asyncio "Future exception was never retrieved"."""
        reason = netns_unusable()
        if reason:
            pytest.skip(reason)
        with namespace() as ns:
            done = run_trafficgen(
                "--target", "nonexistent.invalid:25", "--duration", "2", "--concurrency", "20",
                argv0=[*ns.prefix, *COMMAND],
            )  # fmt: skip
        assert done.returncode == 1, done.stderr
        (line,) = error_lines(done)
        assert line.startswith("trafficgen: error: --target nonexistent.invalid:25: cannot resolve nonexistent.invalid")

    def test_silent_server_times_out(self):
        """A server that never greets: exit 1 after --timeout with one line saying no reply came."""
        with GreetOnly(None) as target:
            started = time.monotonic()
            done = run_trafficgen("--target", target, "--message-count", "1", "--timeout", "0.5", "-q")
        assert done.returncode == 1
        (line,) = error_lines(done)
        assert "no reply to the greeting in 0.5 s" in line
        assert time.monotonic() - started < 10

    def test_not_smtp(self):
        """A server that is not SMTP (an IMAP greeting): exit 1, one line calling it a protocol violation."""
        with GreetOnly(b"* OK [CAPABILITY IMAP4rev1] ready\r\n") as target:
            done = run_trafficgen("--target", target, "--message-count", "1", "-q")
        assert done.returncode == 1
        (line,) = error_lines(done)
        assert "not an SMTP reply" in line
        assert "IMAP4rev1" in line


class TestEnvironment:
    """Every option also works from its TRAFFICGEN_* variable (containers configure that way)."""

    @pytest.mark.parametrize(
        ("env", "check"),
        [
            pytest.param({"TRAFFICGEN_MESSAGE_COUNT": "3"}, lambda r, s: r["totals"]["attempted"] == 3, id="count"),
            pytest.param({"TRAFFICGEN_CONCURRENCY": "3"}, lambda r, s: r["config"]["concurrency"] == 3, id="conc"),
            pytest.param(
                {"TRAFFICGEN_DOMAIN": "gmail.com:3.5 yahoo.com"},
                lambda r, s: r["config"]["domains"] == {"gmail.com": 3.5, "yahoo.com": 1.0},
                id="domain",
            ),
            pytest.param(
                {"TRAFFICGEN_DOMAIN_SUFFIX": "env.test"},
                lambda r, s: all(m.rcpt_tos[0].endswith(".env.test") for m in s.messages),
                id="suffix",
            ),
            pytest.param(
                {"TRAFFICGEN_DOMAIN_SUFFIX": ""},
                lambda r, s: all(m.rcpt_tos[0].endswith(".com") for m in s.messages),
                id="empty-suffix",
            ),
            pytest.param(
                {"TRAFFICGEN_BODY_SIZE": "2kb..3kb"}, lambda r, s: r["config"]["body_size"] == [2000, 3000], id="size"
            ),
            pytest.param(
                {"TRAFFICGEN_HEADER": "X-Env: from the environment\nX-Second: two words"},
                lambda r, s: all(
                    b"\r\nX-Env: from the environment\r\nX-Second: two words\r\n" in m.content for m in s.messages
                ),
                id="header",
            ),
            pytest.param(
                {"TRAFFICGEN_THROTTLE": "1,000/s,max_burst=3"},
                lambda r, s: (r["config"]["throttle_per_s"], r["config"]["max_burst"]) == (1000.0, 3),
                id="throttle",
            ),
            pytest.param(
                {"TRAFFICGEN_SENDER": "env@lab.test", "TRAFFICGEN_RECIPIENT": "to@mx.lab.test"},
                lambda r, s: {(m.mail_from, m.rcpt_tos[0]) for m in s.messages} == {("env@lab.test", "to@mx.lab.test")},
                id="sender-recipient",
            ),
            pytest.param(
                {"TRAFFICGEN_RECIPIENTS_PER_MESSAGE": "2"}, lambda r, s: r["recipients"]["accepted"] == 8, id="rcpts"
            ),
            pytest.param(
                {"TRAFFICGEN_MESSAGES_PER_CONNECTION": "1"}, lambda r, s: len(s.connections) == 4, id="per-conn"
            ),
            pytest.param(
                {"TRAFFICGEN_PIPELINING": "false"},
                lambda r, s: not any(c.mixed_chunks() for c in s.connections) and not r["config"]["pipelining"],
                id="no-pipelining",
            ),
            pytest.param({"TRAFFICGEN_SEED": "42"}, lambda r, s: r["config"]["seed"] == 42, id="seed"),
            pytest.param({"TRAFFICGEN_RUN_ID": "envrun"}, lambda r, s: r["run_id"] == "envrun", id="run-id"),
            pytest.param(
                {"TRAFFICGEN_EHLO": "env-helo.test"},
                lambda r, s: {m.helo for m in s.messages} == {"env-helo.test"},
                id="ehlo",
            ),
            pytest.param({"TRAFFICGEN_KEEP_GOING": "1"}, lambda r, s: r["config"]["keep_going"] is True, id="keep"),
            pytest.param({"TRAFFICGEN_TIMEOUT": "7.5"}, lambda r, s: r["config"]["timeout_s"] == 7.5, id="timeout"),
            pytest.param({"TRAFFICGEN_DURATION": "30"}, lambda r, s: r["config"]["duration_s"] == 30.0, id="dur"),
            pytest.param(
                {"TRAFFICGEN_SOURCE_ADDRESS": "127.0.0.1"},
                lambda r, s: r["config"]["source_address"] == "127.0.0.1" and r["totals"]["accepted"] == 4,
                id="source-address",
            ),
        ],
    )
    def test_variable(self, env, check):
        """The variable has the effect of its option (target and count from variables too)."""
        with CaptureServer() as server:
            base = {"TRAFFICGEN_TARGET": server.target, "TRAFFICGEN_CONCURRENCY": "2"}
            if "TRAFFICGEN_MESSAGE_COUNT" not in env:
                base["TRAFFICGEN_MESSAGE_COUNT"] = "4"
            report, _ = run_report(env={**base, **env})
        assert check(report, server)

    def test_json_and_quiet_variables(self, tmp_path: Path):
        """TRAFFICGEN_JSON writes the report where it says; TRAFFICGEN_QUIET silences the live progress."""
        path = tmp_path / "report.json"
        with CaptureServer() as server:
            env = {"TRAFFICGEN_TARGET": server.target, "TRAFFICGEN_MESSAGE_COUNT": "2"}
            done = run_trafficgen(env={**env, "TRAFFICGEN_JSON": str(path), "TRAFFICGEN_QUIET": "1"})
        assert done.returncode == 0, done.stderr
        assert json.loads(path.read_text())["totals"]["accepted"] == 2
        assert done.stderr == ""

    def test_option_beats_variable(self):
        """An option on the command line wins over its variable."""
        with CaptureServer() as server:
            report, _ = run_report(
                "--message-count", "2", env={"TRAFFICGEN_TARGET": server.target, "TRAFFICGEN_MESSAGE_COUNT": "9"}
            )
        assert report["totals"]["attempted"] == 2 == len(server.messages)

    def test_help_lists_a_variable_for_every_option(self):
        """--help shows a TRAFFICGEN_* variable beside every option."""
        done = run_trafficgen("--help", env={"COLUMNS": "250"})
        assert done.returncode == 0
        options = re.findall(r"^│ (--[a-z-]+)", done.stdout, re.M)
        assert "--target" in options
        assert "--throttle" in options
        for option in options:
            if option in ("--help", "--version"):
                continue
            name = option.removeprefix("--").split("/")[0].replace("-", "_").upper()
            assert f"TRAFFICGEN_{name}" in done.stdout, option


class TestRunLength:
    """--message-count is exact and never cut by the default duration; --duration is what cuts a run."""

    def test_message_count_alone_has_no_deadline(self):
        """--message-count alone: exactly N attempts and no duration in the config (the 60 s default is off)."""
        with CaptureServer() as server:
            report, _ = run_report("--target", server.target, "--message-count", "120", "--throttle", "100/s")
        assert report["config"]["duration_s"] is None
        assert report["totals"]["attempted"] == 120 == len(server.messages)
        assert report["elapsed_s"] >= 1.15  # the throttle spread them over 1.19 s

    def test_a_count_sent_before_the_duration_ends(self):
        """--message-count 100 --duration 60 against a fast server: the sending window is what the run took, not
        60 s, and the throughput is over it; one connection is "1 connection"."""
        with CaptureServer() as server:
            report, done = run_report(
                "--target", server.target, "--message-count", "100", "--duration", "60", "--concurrency", "1"
            )  # fmt: skip
        assert report["totals"]["attempted"] == 100
        assert report["sending_s"] < 30, report["sending_s"]
        assert report["sending_s"] == pytest.approx(report["elapsed_s"], abs=0.01)
        # sending_s is rounded to the millisecond: over a window of a few tens of them, that is a few percent
        window = report["sending_s"]
        assert report["throughput"]["per_second"] == pytest.approx(100 / window, rel=0.0005 / window + 1e-6)
        assert f"100 messages in {report['sending_s']:,.1f} s over 1 connection\n" in done.stderr, done.stderr

    def test_duration_cuts_a_message_count(self):
        """With both, --duration ends the run first: fewer than N attempts."""
        with CaptureServer() as server:
            report, _ = run_report(
                "--target", server.target, "--message-count", "1000", "--throttle", "100/s", "--duration", "0.5"
            )
        assert 45 <= report["totals"]["attempted"] <= 55


class TestInterrupt:
    """^C: the run stops taking messages, in-flight ones finish, the report is written, exit 130."""

    def test_sigint(self):
        """SIGINT during a long run ends it within the grace period with a report saying it was interrupted."""
        with CaptureServer() as server:
            process = start_trafficgen(
                "--target", server.target, "--duration", "60", "--throttle", "50/s", "--json", "-", "-q",
                "--concurrency", "2",
            )  # fmt: skip
            try:
                wait_for(lambda: len(server.messages) >= 5, timeout=20, what="messages at the capture server")
                process.send_signal(signal.SIGINT)
                stdout, stderr = process.communicate(timeout=20)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.communicate()
        assert process.returncode == 130, stderr
        report = json.loads(stdout)
        assert report["stopped_by"] == "interrupted"
        assert report["totals"]["attempted"] == len(server.messages) == report["totals"]["accepted"]
        assert "Traceback" not in stderr


class TestProgress:
    """Live progress: plain periodic lines when stderr is not a terminal, nothing with --quiet."""

    def test_plain_lines_once_a_second(self):
        """A 2.5 s run prints at least two progress lines with rates and counts on stderr, and no terminal codes."""
        with CaptureServer() as server:
            done = run_trafficgen(
                "--target", server.target, "--throttle", "40/s", "--duration", "2.5", "--json", "-"
            )  # fmt: skip
        assert done.returncode == 0
        progress = re.findall(r"^\s*\d+ s\s+[\d,.]+ msg/s\s+sent [\d,]+\s+accepted [\d,]+", done.stderr, re.M)
        assert len(progress) >= 2, done.stderr
        assert "\x1b[" not in done.stderr
        assert json.loads(done.stdout)["totals"]["attempted"] == 100


# The end of `trafficgen --json -`: the report is built, the run's event loop (uvloop's) closes, the report goes to
# stdout.
REPORT_AFTER_THE_LOOP = """
import asyncio
from mailload.runtime import event_loop_factory
from trafficgen.cli import write_json
report = {"replies": [f"4.7.1 deferral text number {n:05d}" for n in range(10_000)]}
with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
    runner.run(asyncio.sleep(0))
write_json(report, "-")
"""


class TestJsonToStdout:
    """--json -: the whole report reaches a pipe, however slowly it is read."""

    def test_a_slow_reader_gets_the_whole_report(self):
        """Closing uvloop's loop interrupts the process's next blocking write(2) milliseconds later (the kernel
        tearing libuv's io_uring ring down): a report waiting for room in a slowly read pipe was cut at 64 KiB or so,
        its rest dropped by unbuffered stdout (PYTHONUNBUFFERED, as here)."""
        process = subprocess.Popen(
            [sys.executable, "-c", REPORT_AFTER_THE_LOOP],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env({"PYTHONUNBUFFERED": "1"}),
            cwd=ROOT,
        )
        chunks = []
        with process:
            while chunk := process.stdout.read1(4096):  # a slow reader: the report (400 KB) takes a second or more
                chunks.append(chunk)
                time.sleep(0.005)
            stderr = process.stderr.read().decode()
        assert process.returncode == 0, stderr
        report = json.loads(b"".join(chunks))
        assert len(report["replies"]) == 10_000
