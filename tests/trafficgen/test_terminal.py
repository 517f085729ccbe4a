"""The terminal: the live view and the summary follow the terminal's width (run under a real pseudo-terminal of
80 and 120 columns), nothing is wrapped or cut where it matters, files get no trailing spaces, plain progress lines
fit 100 columns and say the progress, the ETA, the rate asked and the live p99 (issue 14); with the seeds' 13-domain
mix and the shipped policy, and through Postfix, no headline part is broken, no number cut, rcpt under pipelining
explained and replies that read alike told apart (issue 29)."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest
from rich.console import Console

from harness import ROOT, child_env
from harness.postfix import needs_postfix, running_postfix
from harness.sink import running_sink
from harness.trafficgen import run_report, run_trafficgen
from trafficgen.stats.progress import (
    PLAIN_WIDTH,
    Snapshot,
    Tick,
    clock,
    eta,
    lines,
    reconcile_lines,
    reconcile_table,
    table,
)
from trafficgen.stats.summary import distinct_cuts
from trafficgen.stats.summary import summary as summary_of

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
POLICY = "[default]\ndefer = 10\nbounce = 5\n"


# The seeds' mix (scripts/demo.py's ten) and three more domains the shipped policy knows.
THIRTEEN_DOMAINS = (
    "gmail.com:67.4", "yahoo.com:5.9", "hotmail.com:8.8", "aol.com:1.5", "outlook.com:1.2", "icloud.com:1.2",
    "comcast.net:0.5", "orange.fr:0.4", "gmx.de:0.3", "example.com:13.6", "live.com:0.5", "web.de:0.3",
    "wanadoo.fr:0.2",
)  # fmt: skip
HEADLINE_PARTS = re.compile(
    r"accepted [\d,]+|tempfailed [\d,]+|permfailed [\d,]+|errors [\d,]+|success rate [\d.]+%|throughput [\d,.]+/s"
)


def under_pty(args: list[str], columns: int, timeout: float = 60) -> str:
    """trafficgen ARGS with stdout and stderr on a pseudo-terminal `columns` wide: everything it wrote."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = child_env({"TERM": "xterm-256color"})
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "trafficgen", *args], stdin=follower, stdout=follower, stderr=follower, env=env, cwd=ROOT
    )
    os.close(follower)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # the follower closed: the process is gone
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
    finally:
        os.close(leader)
        process.wait(10)
    assert process.returncode == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def screen_lines(text: str) -> list[str]:
    """What a terminal shows, line by line, without colours and cursor moves (each redraw of the live view is
    its own set of lines)."""
    return [line.rstrip() for line in re.split(r"\r\n|\n|\r", ANSI.sub("", text))]


@pytest.fixture(scope="module")
def sink(tmp_path_factory):
    with running_sink("--seed", "3", policy=POLICY, tmp=tmp_path_factory.mktemp("terminal")) as running:
        yield running


@pytest.fixture(scope="module")
def saved_report(sink) -> dict:
    """A report as trafficgen writes it, for the summary's pure tests."""
    report, _ = run_report("--target", sink.target, "--message-count", "100", "--concurrency", "4", "--keep-going")
    return report


@pytest.mark.parametrize("columns", [80, 120])
def test_live_view_and_summary_fit_the_terminal(sink, columns):
    """A 3 s --message-count run on a terminal: every line fits; the live view shows the progress with its ETA,
    the rate asked and the p99; the summary's tables are whole (each header on one line)."""
    args = ["--target", sink.target, "--message-count", "900", "--throttle", "300/s", "--concurrency", "10"]
    args += ["--keep-going", "--domain", "gmail.com", "--domain", "yahoo.com"]
    shown = screen_lines(under_pty(args, columns))
    too_long = [line for line in shown if len(line) > columns]
    assert too_long == [], too_long
    text = "\n".join(shown)
    assert re.search(r"\d+% of 900, ETA \d+ s", text), text
    assert "asked/s" in text
    assert "p99 ms" in text
    headers = [line for line in shown if "p50" in line]
    assert any("p99" in line and "max" in line for line in headers), text
    domains = [line for line in shown if line.split()[:2] == ["domain", "attempted" if columns >= 110 else "sent"]]
    assert domains, text
    assert "accepted %" in domains[0]
    replies = [line for line in shown if re.match(r"^\s*count\s+code\s+from\s+text$", line)]
    assert replies, text
    assert re.search(r"^\s*[\d,]+\s+250\s+(gmail|yahoo)\.com", text, re.M), text


def test_summary_in_a_file_has_no_trailing_spaces(sink, tmp_path):
    """Written to a file (or a pipe) the summary is plain text: no escape codes, no trailing spaces, lines within
    COLUMNS (120 when unset)."""
    for columns in ("", "80"):
        done = run_trafficgen(
            "--target", sink.target, "--message-count", "200", "--concurrency", "5", "-q", "--keep-going",
            env={"COLUMNS": columns} if columns else None,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        limit = int(columns or 120)
        assert "\x1b[" not in done.stdout
        for line in done.stdout.splitlines():
            assert line == line.rstrip(), repr(line)
            assert len(line) <= limit, line


def test_recipients_per_message_shows_recipient_outcomes(sink):
    """With --recipients-per-message 3 the summary has a line of recipient outcomes that add up to 3 a message."""
    done = run_trafficgen(
        "--target", sink.target, "--message-count", "100", "--concurrency", "4", "-q", "--keep-going",
        "--recipients-per-message", "3", "--json", "-",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    recipients = report["recipients"]
    line = next(line for line in done.stderr.splitlines() if line.strip().startswith("recipients:"))
    for key in ("accepted", "tempfailed", "permfailed", "errors"):
        assert f"{key} {recipients[key]:,}" in line
    assert sum(recipients.values()) == 3 * report["totals"]["attempted"]  # every recipient of every message
    assert "(3 a message)" in line


@pytest.mark.parametrize("columns", [80, 120])
def test_reconcile_wait_shows_progress(sink, tmp_path, columns):
    """While --reconcile-wait asks, the live view says the time left and the recipients accepted, delivered and not
    seen yet (here a second sink that receives nothing: every recipient stays unseen for the 2 s), within the
    terminal's width."""
    with running_sink(policy=POLICY, tmp=tmp_path) as elsewhere:
        args = ["--target", sink.target, "--message-count", "30", "--recipients-per-message", "2", "--keep-going"]
        args += ["--reconcile", f"http://{elsewhere.http}", "--reconcile-wait", "2"]
        shown = screen_lines(under_pty(args, columns))
    assert [line for line in shown if len(line) > columns] == []
    titles = [line for line in shown if re.match(r"^reconciling +\d+ s left$", line.strip())]
    assert titles, "\n".join(shown)
    header = next(line for line in shown if "not seen yet" in line)
    assert [word for word in header.split() if word.isalpha()][:2] == ["accepted", "delivered"]


class TestPlainLines:
    """Pure: what one plain progress update prints."""

    BIG = Snapshot(9_999_999, 9_876_543, 123_456, 12_345, 1_234, 20_000)

    def test_within_100_columns_whatever_is_shown(self):
        """Counts in the millions with the rate asked, the p99, the ETA and BEHIND: every line fits."""
        tick = Tick(self.BIG, 98_765.4, 3_599.0, asked=200_000.0, due=None, message_count=20_000_000, p99_ms=12_345.6)
        out = lines(tick)
        assert all(len(line) <= PLAIN_WIDTH for line in out), out
        text = "\n".join(out)
        for words in ("asked 200,000.0/s", "p99 12,345.6 ms", "50% of 20,000,000, ETA 1:41", "BEHIND: asked"):
            assert words in text, text

    def test_reconcile_lines_within_100_columns(self):
        """While --reconcile-wait asks: the time left, recipients and messages delivered of those accepted, and
        those awaited, in lines of at most 100 columns even with counts in the millions; the live view alike."""
        recipients = {"accepted": 9_999_999, "delivered": 8_000_000, "duplicated": 1, "bounced": 12_345, "expired": 0}
        recipients |= {"deferred": 1_234_567, "pending": 0, "lost": 98_765, "bounced_without_dsn": 4_321}
        document = {"per": "recipient", "recipients": recipients}
        document["messages"] = {"accepted": 2_500_000, "delivered": 1_999_999, "duplicated": 1}
        out = reconcile_lines(document, 3_599.0)
        assert all(len(line) <= PLAIN_WIDTH for line in out), out
        text = "\n".join(out)
        for words in (
            "reconciling  59:59 left",
            "delivered 8,000,001 of 9,999,999 recipients (2,000,000 of 2,500,000 messages)",
            "deferred 1,234,567",
            "not seen yet 98,765",
            "bounced awaiting DSN 4,321",
        ):
            assert words in text, text
        console = Console(file=io.StringIO(), width=80)
        console.print(reconcile_table(document, 3_599.0))
        assert all(len(line) <= 80 for line in console.file.getvalue().splitlines())

    def test_one_line_when_nothing_extra(self):
        assert len(lines(Tick(Snapshot(10, 9, 1, 0, 0, 2), 10.0, 1.0))) == 1

    @pytest.mark.parametrize(
        ("seconds", "shown"), [(0.4, "0 s"), (45, "45 s"), (60, "1:00"), (725, "12:05"), (10_930, "3:02:10")]
    )
    def test_clock(self, seconds, shown):
        assert clock(seconds) == shown

    def test_eta(self):
        """Done share and time left at the current rate; none without --message-count; '-' when nothing moves."""
        snap = Snapshot(250, 250, 0, 0, 0, 5)
        assert eta(Tick(snap, 50.0, 5.0, message_count=1000)) == "25% of 1,000, ETA 15 s"
        assert eta(Tick(snap, 0.0, 5.0, message_count=1000)) == "25% of 1,000, ETA -"
        assert eta(Tick(snap, 50.0, 5.0)) is None
        assert eta(Tick(snap, 50.0, 5.0, message_count=250)) == "100% of 250"


class TestWidths:
    """Pure: the live view and the summary at a width, with counts in the millions: numbers are never cut."""

    @pytest.mark.parametrize("width", [80, 100, 110, 120, 160])
    def test_live_view_fits(self, width):
        snap = Snapshot(1_234_567, 1_200_000, 23_456, 11_111, 123, 500)
        tick = Tick(snap, 2_012.0, 600.0, asked=2_500.0, message_count=2_000_000, p99_ms=1_234.5)
        out = io.StringIO()
        Console(file=out, width=width).print(table(tick, width))
        shown = out.getvalue().splitlines()
        assert all(len(line.rstrip()) <= width for line in shown), shown
        assert "…" not in out.getvalue(), out.getvalue()
        assert "1,234,567" in out.getvalue()
        assert "BEHIND" in shown[-1]  # asked 2,500/s, achieved 2,058/s: said under the table

    @pytest.mark.parametrize("width", [80, 120])
    def test_summary_keeps_numbers_whole(self, saved_report, width):
        """A long domain name and eight-digit counts: the name is shortened, never a number."""
        row = {"attempted": 12_345_678, "accepted": 12_000_000, "tempfailed": 234_567, "permfailed": 111_111}
        domains = {"mail.protection.outlook.com": {**row, "errors": 0}, "gmail.com": {**row, "errors": 1_234}}
        out = io.StringIO()
        summary_of(saved_report | {"domains": domains}, out, width=width)
        text = out.getvalue()
        assert all(len(line) <= width for line in text.splitlines())
        for number in ("12,345,678", "12,000,000", "234,567", "111,111", "1,234"):
            assert number in text


def summary_of_screen(shown: list[str]) -> list[str]:
    """The summary's lines of a screen (from its first line on)."""
    start = max(i for i, line in enumerate(shown) if line.startswith("trafficgen run "))
    return shown[start:]


def section(lines: list[str], title: str) -> list[str]:
    """The lines of one table of the summary: from its title to the next blank line after its rows."""
    start = lines.index(title)
    end = next((i for i in range(start + 4, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


def check_whole(lines: list[str], columns: int) -> None:
    """Every line fits; each headline part is whole on one line; no number of the tables is cut."""
    assert all(len(line) <= columns for line in lines), [line for line in lines if len(line) > columns]
    text = "\n".join(lines)
    for words in ("accepted", "tempfailed", "permfailed", "errors", "success rate", "throughput"):
        assert re.search(rf"(^|  ){words} [\d,.]+", text, re.M), (words, text)
    headline = lines[1 : lines.index("latency (ms)")]
    parts = [p for line in headline for p in HEADLINE_PARTS.findall(line)]
    assert len(parts) == 6, headline
    for title in ("latency (ms)", "domains"):
        cut = [line for line in section(lines, title) if "…" in line]
        assert cut == [], cut


@pytest.fixture(scope="module")
def thirteen(tmp_path_factory) -> dict:
    """The seeds' 13 domains against the shipped policy (its providers answer in 100-300 ms), on terminals of 80
    and 120 columns; and the report that run wrote."""
    tmp = tmp_path_factory.mktemp("thirteen")
    policy = (ROOT / "policy" / "responses.toml").read_text()
    screens = {}
    with running_sink("--seed", "29", policy=policy, tmp=tmp) as sink:
        for columns in (80, 120):
            args = ["--target", sink.target, "--message-count", "2000", "--concurrency", "200", "--keep-going"]
            args += ["--seed", "29", "--json", str(tmp / f"{columns}.json")]
            for domain in THIRTEEN_DOMAINS:
                args += ["--domain", domain]
            screens[columns] = summary_of_screen(screen_lines(under_pty(args, columns)))
    return {"screens": screens, "report": json.loads((tmp / "120.json").read_text()), "dir": tmp}


class TestThirteenDomains:
    @pytest.mark.parametrize("columns", [80, 120])
    def test_nothing_broken_or_cut(self, thirteen, columns):
        """The run's summary on the terminal: every line fits, the headline's parts whole, no number cut; the rcpt
        row explained; the replies shown all read differently."""
        lines = thirteen["screens"][columns]
        check_whole(lines, columns)
        assert any(line.split()[:1] == ["rcpt"] for line in section(lines, "latency (ms)"))
        assert "  pipelined: rcpt's reply comes with data's (data holds the server's time)" in lines
        replies = section(lines, "most frequent replies")[4:]
        texts = [line.split(maxsplit=2)[2] for line in replies]
        assert len(set(texts)) == len(texts), replies

    @pytest.mark.parametrize("columns", [80, 120])
    def test_counts_in_the_millions(self, thirteen, columns):
        """`report show` of the same run with every count a thousand times larger, on the terminal: the totals
        line wraps between its parts (at 80 columns it broke "success rate" from its value)."""
        report = json.loads(json.dumps(thirteen["report"]))
        for rows in (report["totals"], *report["domains"].values()):
            for key in rows:
                rows[key] *= 1000
        path = thirteen["dir"] / f"big-{columns}.json"
        path.write_text(json.dumps(report))
        lines = summary_of_screen(screen_lines(under_pty(["report", "show", str(path)], columns)))
        check_whole(lines, columns)


@needs_postfix
@pytest.mark.slow
def test_through_postfix_latency_is_never_cut(tmp_path):
    """Through a private Postfix with a throttle it cannot keep up with: latency from the intended send time runs
    into seconds; at 80 and 120 columns the latency table's numbers are whole (at 120 they were cut: "86.0…")."""
    with running_sink(policy=POLICY, tmp=tmp_path) as sink, running_postfix(sink.port) as postfix:
        for columns in (80, 120):
            args = ["--target", postfix.target, "--throttle", "3000/s", "--concurrency", "5", "--duration", "3"]
            for domain in THIRTEEN_DOMAINS:
                args += ["--domain", domain]
            lines = summary_of_screen(screen_lines(under_pty([*args, "--keep-going"], columns)))
            check_whole(lines, columns)
            table = section(lines, "latency (ms)")
            intended = next(line for line in table if line.strip().startswith("from intended send"))
            # most messages sent a second or more late: the row of numbers that was cut
            assert len(re.findall(r"\d,\d{3}", intended)) >= 5, table


class TestDistinctReplies:
    def test_alike_texts_show_where_they_differ(self):
        """Two replies equal for their first 100 characters: each cut shows its difference; others are cut plainly."""
        common = "4.7.0 [TSS04] Messages from 127.0.0.1 temporarily deferred due to unexpected volume or user "
        texts = [common + "complaints - 4.16.55; see https://postmaster.example", common + "complaints - 4.16.56"]
        texts.append("2.0.0 Ok: queued as *" + " and more" * 10)
        for width in (20, 32, 46, 70):
            shown = distinct_cuts(texts, width)
            assert all(len(s) <= width for s in shown), shown
            assert len(set(shown)) == 3, shown
            assert shown[2] == texts[2][: width - 1] + "…"
            assert "4.16.55" in shown[0] or width < 32, shown

    def test_summary_at_80_columns(self, saved_report):
        """In the summary's replies at 80 columns two such replies read differently."""
        common = "4.7.0 [TSS04] Messages from 127.0.0.1 temporarily deferred due to unexpected volume - "
        replies = [{"code": 421, "text": common + tail, "count": 5, "domains": {"yahoo.com": 5}} for tail in "AB"]
        out = io.StringIO()
        summary_of(saved_report | {"replies": replies}, out, width=80)
        lines = out.getvalue().splitlines()
        shown = [line.split(maxsplit=3)[3] for line in section(lines, "most frequent replies")[4:]]
        assert len(shown) == 2
        assert shown[0] != shown[1], shown
