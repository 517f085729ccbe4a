"""trafficgen where KumoMTA's traffic-gen users meet it (issue 16): 451 4.5.3 reconnects, pipelined transactions
are never timed below a round trip, and `--http` sends content as written, to KumoMTA's default URL, with HTTP
basic authentication. The SMTP side is a real smartsink; the HTTP side a real smartsink, or an aiohttp server
that records the requests it gets."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from harness.sink import running_sink
from harness.trafficgen import run_report, run_trafficgen
from trafficgen.config import build
from trafficgen.stats import kumomta

# -- 451 4.5.3 --------------------------------------------------------------------------------------------------


def _policy(text: str) -> str:
    return f"""
[default]
bounce = 0
defer = 0

[domain."full.test"]
defer = 100
reject_at = "rcpt"

[[defer."full.test"]]
code = 451
msg = "{text}"
"""


@pytest.mark.parametrize(
    ("text", "reconnects"),
    [("4.5.3 Too many recipients for this connection", True), ("4.7.0 Try again later", False)],
    ids=["4.5.3-reconnects", "other-451-keeps-the-connection"],
)
@pytest.mark.parametrize("pipelining", ["--pipelining", "--no-pipelining"])
def test_451_4_5_3_makes_trafficgen_reconnect(tmp_path, text, reconnects, pipelining):
    """KumoMTA's traffic-gen reconnects on 451 4.5.3; so does trafficgen: one connection per message here,
    against one connection for the whole run on any other 451."""
    with running_sink(policy=_policy(text), tmp=tmp_path) as sink:
        report, _ = run_report(
            "--target",
            sink.target,
            "--domain",
            "full.test",
            "--message-count",
            "12",
            "--concurrency",
            "1",
            pipelining,
            "--keep-going",
        )
        connections = sink.metrics()["smartsink_connections_total"]
    assert report["totals"]["tempfailed"] == 12
    assert report["replies"][0]["code"] == 451
    if reconnects:
        assert connections >= 12
    else:
        assert connections == 1


# -- pipelined latency ------------------------------------------------------------------------------------------

DELAY = 0.02  # each way: a round trip through the proxy takes at least 40 ms


class DelayProxy:
    """A TCP relay on 127.0.0.1 that holds every chunk DELAY seconds in each direction, in order: a slow
    network in front of a real server, without a qdisc."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._relay, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self.server = server
        ready.set()
        self.loop.run_forever()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    break
                await asyncio.sleep(max(0.0, due - self.loop.time()))
                writer.write(chunk)
            writer.close()

        sender = asyncio.ensure_future(deliver())
        try:
            while chunk := await reader.read(65536):
                queue.put_nowait((self.loop.time() + DELAY, chunk))
        finally:
            queue.put_nowait((0.0, b""))
            await sender

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        for task in asyncio.all_tasks(self.loop):
            task.cancel()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()


def test_pipelined_transactions_take_at_least_a_round_trip(tmp_path):
    """Through a relay that makes every round trip at least 40 ms, no transaction is recorded faster, refusals
    at RCPT whose replies come in the same read as the previous message's included (they were timed at 1 us)."""
    policy = '[default]\nbounce = 40\ndefer = 10\nreject_at = "rcpt"\n'
    with running_sink("--seed", "5", policy=policy, tmp=tmp_path) as sink:
        proxy = DelayProxy(sink.address)
        try:
            report, _ = run_report(
                "--target",
                proxy.target,
                "--message-count",
                "200",
                "--concurrency",
                "2",
                "--pipelining",
                "--keep-going",
                "--seed",
                "5",
            )
        finally:
            proxy.close()
    assert report["totals"]["permfailed"] > 40  # refusals at RCPT, pipelined behind accepted messages
    assert report["totals"]["accepted"] > 40
    assert report["latency_ms"]["min"] >= 2 * DELAY * 1000


# -- --http -----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def recording_inject_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An aiohttp server answering the inject API as kumod does for accepted mail, recording each request."""
    seen: list[dict[str, Any]] = []

    async def inject(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append({"body": body, "authorization": request.headers.get("Authorization")})
        count = len(body["recipients"])
        return web.json_response({"success_count": count, "fail_count": 0, "failed_recipients": [], "errors": []})

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/api/inject/v1", inject)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def test_http_timeline_has_no_connections_and_is_on_time():
    """--http holds no SMTP connection: the timeline has no connection samples (not a flat 0). The HTTP client is
    imported before the schedule starts: importing it on the first request blocked the loop for 0.15-0.2 s, and the
    first messages of a --throttle run went out that late (p90 from the intended time over 100 ms)."""
    with recording_inject_server() as (url, _):
        report, _ = run_report(
            "--http", "--target", url, "--throttle", "100/s", "--duration", "2", "--concurrency", "5"
        )  # fmt: skip
    assert report["totals"]["accepted"] == 200
    assert [p["connections"] for p in report["timeline"]["points"]] == [None] * len(report["timeline"]["points"])
    assert report["latency_from_intended_ms"]["p90"] < 60, report["latency_from_intended_ms"]


BODY = "Subject: dots\r\n\r\n.dot line\r\n..two dots\r\nplain\r\n.\r\nend\r\n"


def test_http_body_file_is_not_dot_stuffed(tmp_path):
    """The inject API takes content as it is: a line `.dot line` arrives as `.dot line`, not `..dot line`."""
    body = tmp_path / "message.eml"
    body.write_bytes(BODY.replace("\r\n", "\n").encode())
    with recording_inject_server() as (url, seen):
        report, _ = run_report("--http", "--target", url, "--body-file", str(body), "--message-count", "3")
    assert report["totals"]["accepted"] == 3
    for request in seen:
        trace, _, content = request["body"]["content"].partition("\r\n")
        assert trace.startswith("X-Trafficgen-Id: ")  # the one line trafficgen adds, for reconciliation
        assert content == BODY


def test_smtp_body_file_is_still_dot_stuffed_on_the_wire(tmp_path):
    """The same file over SMTP reaches a real server (the sink, which counts what it reads) unchanged."""
    body = tmp_path / "message.eml"
    body.write_bytes(BODY.encode())
    with running_sink(policy="[default]\nbounce = 0\ndefer = 0\n", tmp=tmp_path) as sink:
        report, _ = run_report("--target", sink.target, "--body-file", str(body), "--message-count", "2")
    assert report["totals"]["accepted"] == 2


def test_http_basic_auth_reaches_the_server():
    with recording_inject_server() as (url, seen):
        run_report(
            "--http", "--target", url, "--auth-user", "kumo", "--auth-password", "s3cret", "--message-count", "2"
        )
    expected = "Basic " + base64.b64encode(b"kumo:s3cret").decode()
    assert [request["authorization"] for request in seen] == [expected] * 2


def test_http_basic_auth_against_the_sink(tmp_path):
    """smartsink with --auth required refuses injection without credentials (401), as kumod refuses what its
    http_server_validate_auth_basic does not pass, and takes it with them."""
    with running_sink("--auth", "required", policy="[default]\nbounce = 0\ndefer = 0\n", tmp=tmp_path) as sink:
        url = f"http://{sink.http}"
        without = run_trafficgen("--quiet", "--json", "-", "--http", "--target", url, "--message-count", "2")
        report, _ = run_report(
            "--http", "--target", url, "--auth-user", "u", "--auth-password", "p", "--message-count", "4"
        )
        auths = sink.metrics()
    assert without.returncode == 1
    assert "401" in without.stderr
    assert report["totals"]["accepted"] == 4
    assert auths['smartsink_auth_total{result="ok"}'] == 4
    assert auths['smartsink_auth_total{result="failed"}'] >= 1


def test_http_without_target_is_kumomtas_default_url():
    config = build(http=True)
    assert config.http_url == "http://127.0.0.1:8000/api/inject/v1"
    assert build().target == "127.0.0.1:2025"


def test_http_batch_size_counts_recipients(tmp_path):
    """--message-count counts requests; --http-batch-size the recipients of each (KumoMTA counts recipients)."""
    with recording_inject_server() as (url, seen):
        report, _ = run_report("--http", "--target", url, "--http-batch-size", "5", "--message-count", "4")
    assert len(seen) == 4
    assert [len(request["body"]["recipients"]) for request in seen] == [5] * 4
    assert report["totals"]["attempted"] == 4
    assert json.dumps(report).count('"recipients"') >= 1


# -- --output kumomta -------------------------------------------------------------------------------------------

SENT = re.compile(r"^sent (?P<sent>[\d,]+) messages, failed (?P<failed>[\d,]+) over (?P<over>\S+)\.$")
LATENCY = re.compile(
    r"^transaction latency: avg=(?P<avg>\S+) min=(?P<min>\S+) max=(?P<max>\S+) p50=(?P<p50>\S+) p75=(?P<p75>\S+) "
    r"p90=(?P<p90>\S+) p95=(?P<p95>\S+) p99=(?P<p99>\S+) p99\.9=(?P<p99_9>\S+) $"
)
RATE = re.compile(r"^overall rate: (?P<s>[\d,]+) msgs/s, (?P<m>[\d,]+) msgs/minute, (?P<h>[\d,]+) msgs/hour$")
UNITS = {"ns": 1e-9, "µs": 1e-6, "ms": 1e-3, "s": 1.0}


def seconds(text: str) -> float:
    """A Rust Debug duration (`1.5ms`, `250µs`, `2s`) in seconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ns|µs|ms|s)", text)
    assert m, f"not a Rust duration: {text!r}"
    return float(m[1]) * UNITS[m[2]]


@pytest.mark.parametrize(
    ("nanos", "shown"),
    [
        (0, "0ns"),
        (12, "12ns"),
        (1_500, "1.5µs"),
        (250_000, "250µs"),
        (1_234_000, "1.234ms"),
        (2_000_000_000, "2s"),
        (10_001_234_567, "10.001234567s"),
        (6_164_479_000, "6.164479s"),
    ],
    ids=str,
)
def test_durations_as_rust_writes_them(nanos, shown):
    """KumoMTA's traffic-gen prints durations with Rust's {:?}: the largest unit under the value, no trailing 0."""
    assert kumomta.duration(nanos) == shown


def test_output_kumomta_prints_traffic_gens_lines(tmp_path):
    """--output kumomta: instead of the summary, the three lines KumoMTA's traffic-gen ends with (which its users'
    scripts grep), their figures the report's: sent is what the target accepted, failed the rest."""
    policy = '[default]\nbounce = 0\ndefer = 0\nlatency = "20ms"\n\n[domain."bounce.test"]\nbounce = 100\n'
    with running_sink(policy=policy, tmp=tmp_path) as sink:
        path = tmp_path / "report.json"
        done = run_trafficgen(
            "--target", sink.target, "--message-count", "200", "--concurrency", "4", "--seed", "3",
            "--domain", "ok.test:3", "--domain", "bounce.test:1", "--output", "kumomta", "-q", "--json", str(path),
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(path.read_text())
    lines = done.stdout.splitlines()
    assert len(lines) == 3, done.stdout
    sent, latency, rate = SENT.match(lines[0]), LATENCY.match(lines[1]), RATE.match(lines[2])
    assert sent, lines[0]
    assert latency, lines[1]
    assert rate, lines[2]
    totals = report["totals"]
    assert int(sent["sent"].replace(",", "")) == totals["accepted"] > 0
    assert int(sent["failed"].replace(",", "")) == totals["attempted"] - totals["accepted"] > 0
    assert seconds(sent["over"]) == pytest.approx(report["elapsed_s"], abs=0.001)
    ms = report["latency_ms"]
    for key in ("min", "max", "p50", "p99", "p99_9"):
        assert seconds(latency[key]) == pytest.approx(ms[key] / 1000, abs=1e-6), key
    assert seconds(latency["avg"]) == pytest.approx(ms["mean"] / 1000, abs=1e-6)
    per_second = int(rate["s"].replace(",", ""))
    assert per_second == int(totals["accepted"] / report["elapsed_s"])
    assert int(rate["m"].replace(",", "")) == per_second * 60
    assert int(rate["h"].replace(",", "")) == per_second * 3600
    assert "domains" not in done.stdout


def test_output_takes_summary_or_kumomta():
    """Another --output is one line and exit 2."""
    done = run_trafficgen("--output", "json", "--message-count", "1")
    assert done.returncode == 2
    assert done.stderr.strip() == "trafficgen: error: --output 'json': use one of summary, kumomta"
