"""The admin API as hostile input: nested JSON, bodies cut off or too big, domain names that are not, requests
without the admin token; each answered in one line, counted, never a traceback. And the probes Kubernetes reads."""

from __future__ import annotations

import base64
import json
import socket
import urllib.error
import urllib.request

import pytest

from harness.metrics import Metrics
from harness.policies import ACCEPT_ALL
from harness.sink import SinkProcess, running_sink, wait_for

TOKEN = "s3cret-admin-token-0123"
NESTED = b"[" * 100_000 + b"]" * 100_000  # far past any JSON parser's recursion limit
INJECT = {"envelope_sender": "a@x.test", "content": "Subject: x\r\n\r\nhi\r\n", "recipients": [{"email": "b@y.test"}]}


def request(
    sink: SinkProcess, path: str, body: bytes | dict | None = None, method: str = "POST", auth: str | None = None
) -> tuple[int, str]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = auth
    sent = urllib.request.Request(f"http://{sink.http}{path}", data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(sent, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def refused(sink: SinkProcess, reason: str) -> float:
    return Metrics.scrape(sink).value("smartsink_admin_refused_total", reason=reason)


@pytest.fixture(scope="module")
def sink(tmp_path_factory):
    with running_sink(policy=ACCEPT_ALL, tmp=tmp_path_factory.mktemp("hostile-admin")) as sink:
        yield sink


class TestHostileBodies:
    @pytest.mark.parametrize("path", ["/policy/overrides", "/api/inject/v1"])
    def test_deeply_nested_json_is_a_400_in_one_line(self, sink, path):
        """JSON nested 100,000 deep: 400 naming the problem, counted, and the log has no traceback."""
        before = refused(sink, "body")
        status, text = request(sink, path, NESTED)
        assert status == 400
        assert "nested too deeply" in text
        assert "\n" not in text.strip()
        assert refused(sink, "body") == before + 1
        assert "Traceback" not in sink.log()

    def test_a_client_gone_mid_body_is_one_counted_line(self, sink):
        """A POST that announces 1 MB and hangs up after 10 bytes: counted as a hang-up, logged in one line."""
        before = refused(sink, "hangup")
        host, port = sink.http.rsplit(":", 1)
        for _ in range(3):
            with socket.create_connection((host, int(port)), timeout=10) as raw:
                raw.sendall(
                    b"POST /policy/overrides HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 1000000\r\n\r\n" + b'{"domain":'
                )
        wait_for(lambda: refused(sink, "hangup") >= before + 3, what="three hang-ups counted")
        assert "Traceback" not in sink.log()
        assert sink.log().count("went away mid-body") >= 1

    def test_a_body_over_kumods_limit_is_413(self, sink):
        """An inject request over 2 MiB (kumod's request_body_limit) gets kumod's 413, not a minute of work."""
        recipients = [{"email": f"user-{i}@gmail.com.sink.test"} for i in range(60_000)]
        status, text = request(sink, "/api/inject/v1", {**INJECT, "recipients": recipients})
        assert status == 413
        assert text == "Failed to buffer the request body: length limit exceeded"

    def test_a_domain_that_is_not_a_name_is_refused(self, sink):
        """An override for a 10,000-character "domain" is a 400 naming why; the list stays small."""
        status, text = request(sink, "/policy/overrides", {"domain": "x" * 10_000 + ".test", "defer": 100})
        assert status == 400
        assert "more than a domain name's 253" in json.loads(text)["error"]
        assert len(json.loads(text)["error"]) < 200
        status, text = request(sink, "/policy/overrides", method="GET")
        assert status == 200
        assert json.loads(text)["overrides"] == []

    @pytest.mark.parametrize("domain", ["a" * 64 + ".test", "-x.test", "x..test", "a b.test", "x" * 250 + ".test"])
    def test_names_the_policy_would_refuse(self, sink, domain):
        """Labels over 63 characters, leading hyphens, empty labels, spaces, over 253 characters: each a 400."""
        status, _ = request(sink, "/policy/overrides", {"domain": domain, "defer": 100})
        assert status == 400


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A sink whose admin token comes from a file (a mounted secret), with a blank line after it."""
    path = tmp_path_factory.mktemp("token") / "token"
    path.write_text(TOKEN + "\n")
    with running_sink("--admin-token-file", str(path), policy=ACCEPT_ALL, tmp=path.parent) as sink:
        yield sink


class TestAdminToken:
    @pytest.mark.parametrize(
        ("path", "body"), [("/policy/overrides", {"domain": "gmail.com", "defer": 100}), ("/api/inject/v1", INJECT)]
    )
    def test_writing_needs_the_token(self, guarded, path, body):
        """Without the token, or with another: 401 and counted; with it (Bearer, or Basic's password): done."""
        before = refused(guarded, "credential")
        assert request(guarded, path, body)[0] == 401
        assert request(guarded, path, body, auth="Bearer not-the-token-at-all")[0] == 401
        assert refused(guarded, "credential") == before + 2
        assert request(guarded, path, body, auth=f"Bearer {TOKEN}")[0] in (200, 201)
        basic = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
        assert request(guarded, path, body, auth=f"Basic {basic}")[0] in (200, 201)

    def test_deleting_needs_the_token(self, guarded):
        """DELETE /policy/overrides changes state: the token too."""
        assert request(guarded, "/policy/overrides", method="DELETE")[0] == 401
        assert request(guarded, "/policy/overrides", method="DELETE", auth=f"Bearer {TOKEN}")[0] == 200

    @pytest.mark.parametrize("path", ["/health", "/health/live", "/health/ready", "/metrics", "/policy/overrides"])
    def test_reading_needs_nothing(self, guarded, path):
        """GET stays open (on loopback by default): probes and scrapes carry no secret."""
        assert request(guarded, path, method="GET")[0] == 200


class TestProbes:
    @pytest.mark.parametrize("path", ["/health/live", "/health/ready", "/health"])
    def test_a_serving_sink_is_live_and_ready(self, sink, path):
        """One worker: live, ready, and /health 200 once the sink says it listens."""
        assert request(sink, path, method="GET")[0] == 200
