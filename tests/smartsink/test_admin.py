"""The admin listener: /health as JSON, /metrics in Prometheus text with exactly what the tests sent."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.metrics import Metrics, delta
from harness.policies import PROVIDERS
from harness.sink import SinkProcess, running_sink, wait_for, write_policy
from harness.smtp import body_of, close, connect, send, transaction

REQUIRED = {
    "smartsink_messages": "counter",
    "smartsink_connections_active": "gauge",
    "smartsink_connections": "counter",
    "smartsink_bytes_received": "counter",
    "smartsink_policy_reloads": "counter",
}


@dataclass
class Admin:
    sink: SinkProcess
    policy: Path
    started: float


@pytest.fixture(scope="module")
def admin(tmp_path_factory):
    path = write_policy(tmp_path_factory.mktemp("admin"), PROVIDERS)
    started = time.time()
    with running_sink("--seed", "11", policy=path) as sink:
        yield Admin(sink, path, started)


def fetch(sink: SinkProcess, path: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(f"http://{sink.http}{path}", timeout=10) as response:
        return response.status, response.headers["Content-Type"], response.read()


class TestHealth:
    def test_health_json(self, admin):
        """GET /health: 200 JSON with status ok and the policy's path, load time and (no) error."""
        status, content_type, body = fetch(admin.sink, "/health")
        assert status == 200
        assert content_type.startswith("application/json")
        health = json.loads(body)
        assert health["status"] == "ok"
        assert health["policy"]["path"] == str(admin.policy)
        assert admin.started <= health["policy"]["loaded_at"] <= time.time()
        assert health["policy"]["error"] is None
        assert health["workers"]["configured"] == health["workers"]["alive"] == 1

    def test_admin_listens_on_loopback_only(self, admin):
        """The admin listener is on the address it was given (127.0.0.1 here), on its own port."""
        host, port = admin.sink.http.rsplit(":", 1)
        assert host == "127.0.0.1"
        assert int(port) != admin.sink.port


class TestMetrics:
    def test_prometheus_text_with_the_required_metrics(self, admin):
        """GET /metrics is Prometheus text format declaring each metric issue 2 names, with its type."""
        assert send(admin.sink, ["user@gmail.com"])[0] == 250  # labelled series appear once used
        status, content_type, body = fetch(admin.sink, "/metrics")
        assert status == 200
        assert content_type.startswith("text/plain; version=0.0.4")
        text = body.decode()
        for name, kind in REQUIRED.items():
            assert re.search(rf"^# TYPE {name}(_total)? {kind}$", text, re.MULTILINE), name
        metrics = Metrics.scrape(admin.sink)
        assert metrics.value("smartsink_messages_total", domain="gmail.com", outcome="accepted") >= 1

    def test_reload_results_exported_before_any_reload(self, admin):
        """Both smartsink_policy_reloads_total series exist at 0 before a reload, so the first one shows."""
        text = Metrics.scrape(admin.sink).text
        for result in ("success", "error"):
            assert f'smartsink_policy_reloads_total{{result="{result}"}} 0.0' in text

    def test_messages_by_domain_and_outcome(self, admin):
        """smartsink_messages_total{domain,outcome} grows by exactly what was answered, per recipient."""
        sink = admin.sink
        before = Metrics.scrape(sink).messages()
        with_replies = [
            (["user1@gmail.com"], 250),
            (["user2@gmail.com"], 250),
            (["user3@GMAIL.com"], 250),
            (["tempfail@gmail.com.sink.test"], 452),
            (["tempfail@gmail.com"], 452),
            (["permfail@yahoo.com"], 554),  # yahoo.com's own bounce
            (["a@example.org"], 250),
            (["b@Example.NET"], 250),
            (["permfail@unknown.test"], 550),
            (["ok@gmail.com", "tempfail@yahoo.com"], 451),  # both recipients answered 451
        ]
        with_replies += [([f"u@random{i}.example"], 250) for i in range(20)]
        client = connect(sink)
        try:
            for recipients, code in with_replies:
                assert transaction(client, recipients)[0] == code, recipients
        finally:
            close(client)
        after = Metrics.scrape(sink)
        assert delta(after.messages(), before) == {
            ("gmail.com", "accepted"): 3,
            ("gmail.com", "tempfailed"): 3,
            ("yahoo.com", "permfailed"): 1,
            ("yahoo.com", "tempfailed"): 1,
            ("other", "accepted"): 22,
            ("other", "permfailed"): 1,
        }
        assert after.label_values("smartsink_messages_total", "domain") <= {"gmail.com", "yahoo.com", "other"}
        assert after.label_values("smartsink_messages_total", "outcome") <= {
            "accepted",
            "tempfailed",
            "permfailed",
        }

    def test_connections_total_and_active(self, admin):
        """Each connection counts once in _total; _active follows the connections open now."""
        sink = admin.sink
        before = Metrics.scrape(sink)
        active = before.value("smartsink_connections_active")
        clients = [connect(sink) for _ in range(3)]
        try:
            during = Metrics.scrape(sink)
            assert during.value("smartsink_connections_active") == active + 3
            assert during.value("smartsink_connections_total") == before.value("smartsink_connections_total") + 3
        finally:
            for client in clients:
                close(client)
        wait_for(
            lambda: Metrics.scrape(sink).value("smartsink_connections_active") == active,
            timeout=5,
            what="closed connections to leave the gauge",
        )

    def test_bytes_received(self, admin):
        """smartsink_bytes_received_total grows by the size of every message's data, accepted or not."""
        sink = admin.sink
        sizes = {"user@gmail.com": [100, 1000, 12345], "tempfail@gmail.com": [500], "permfail@x.test": [4096]}
        before = Metrics.scrape(sink).value("smartsink_bytes_received_total")
        for recipient, lengths in sizes.items():
            for length in lengths:
                send(sink, [recipient], body_of(length))
        after = Metrics.scrape(sink).value("smartsink_bytes_received_total")
        assert after - before == sum(sum(v) for v in sizes.values())
