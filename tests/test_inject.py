"""KumoMTA's HTTP injection API: the sink answers it with the policy, trafficgen --http submits through it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request

import pytest
from conftest import running_sink

from trafficgen.inject import outcome_of
from trafficgen.messages import Message
from trafficgen.outcome import ACCEPTED, PERMFAILED, TEMPFAILED

POLICY = """
[default]
bounce = 0
defer = 0

[domain."gmail.com"]
bounce = 0
defer = 0

[[bounce."gmail.com"]]
code = 550
msg = "5.1.1 The email account that you tried to reach does not exist."

[[defer."gmail.com"]]
code = 421
msg = "4.7.28 Rate limited"
"""


@pytest.fixture(scope="module")
def sink(tmp_path_factory):
    path = tmp_path_factory.mktemp("inject") / "responses.toml"
    path.write_text(POLICY)
    with running_sink("--seed", "4", policy=path) as running:
        yield running


def post(
    sink, body: bytes | dict, path: str = "/api/inject/v1", content_type: str | None = "application/json"
) -> tuple[int, dict | str]:
    """POST a body; the answer as JSON when it is JSON, else as text (kumod's refusals are plain text)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    request = urllib.request.Request(f"http://{sink.http}{path}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def trafficgen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trafficgen", "--quiet", *args], capture_output=True, text=True, timeout=120
    )


class TestSinkAPI:
    def test_answers_like_kumomta_with_the_policy_applied(self, sink):
        """KumoMTA's body gets KumoMTA's answer, but each recipient gets the policy's verdict."""
        status, answer = post(
            sink,
            {
                "envelope_sender": "noreply@example.test",
                "content": "Subject: hello\r\n\r\nhi\r\n",
                "recipients": [
                    {"email": "user@gmail.com"},
                    {"email": "permfail@gmail.com.sink.test"},
                    {"email": "tempfail@gmail.com"},
                ],
            },
        )
        assert status == 200
        assert answer["success_count"] == 1
        assert answer["fail_count"] == 2
        assert answer["failed_recipients"] == ["permfail@gmail.com.sink.test", "tempfail@gmail.com"]
        assert answer["errors"] == [
            "permfail@gmail.com.sink.test: 550 5.1.1 The email account that you tried to reach does not exist.",
            "tempfail@gmail.com: 421 4.7.28 Rate limited",
        ]

    @pytest.mark.parametrize(
        ("body", "status", "words"),
        [
            (b"not json", 400, "Failed to parse the request body as JSON"),
            (b"[1, 2]", 422, "Failed to deserialize the JSON body"),
            ({"content": "x", "recipients": [{"email": "a@b.c"}]}, 422, "missing field `envelope_sender`"),
            ({"envelope_sender": "a@b.c", "content": 5, "recipients": [{"email": "a@b.c"}]}, 422, "Content"),
            ({"envelope_sender": "a@b.c", "content": "x", "recipients": [{"mail": "a@b.c"}]}, 422, "email"),
            (
                {"envelope_sender": "a@b.c", "content": "x", "recipients": [], "bogus": 1},
                422,
                "unknown field `bogus`",
            ),
            (
                {"envelope_sender": "a@b.c", "content": "x", "recipients": [], "template_dialect": "Mustache"},
                422,
                "unknown variant `Mustache`",
            ),
            ({"envelope_sender": "not an address", "content": "x", "recipients": []}, 500, "Error: envelope_sender"),
            (
                {"envelope_sender": "a@b.c", "content": {"subject": "no body"}, "recipients": []},
                500,
                "Error: at least one of text_body and/or html_body must be given",
            ),
            (
                {"envelope_sender": "a@b.c", "content": "Subject: x\r\n\r\nHello {{ broken", "recipients": []},
                500,
                "Error: syntax error",
            ),
        ],
        ids=[
            "not-json",
            "not-object",
            "no-sender",
            "bad-content",
            "no-email",
            "unknown-field",
            "bad-dialect",
            "sender-not-address",
            "builder-without-body",
            "broken-template",
        ],
    )
    def test_refused_with_kumods_status(self, sink, body, status, words):
        """A request kumod refuses gets kumod's status (400 not JSON, 422 wrong shape, 500 unusable) and its text;
        the sink keeps serving."""
        got, answer = post(sink, body)
        assert got == status, answer
        assert isinstance(answer, str)
        assert words in answer
        assert sink.health()["status"] == "ok"

    def test_without_json_content_type_is_415(self, sink):
        """No `Content-Type: application/json`: 415, as axum answers for kumod."""
        body = {"envelope_sender": "a@b.c", "content": "x", "recipients": [{"email": "a@gmail.com"}]}
        status, answer = post(sink, body, content_type=None)
        assert status == 415
        assert answer == "Expected request with `Content-Type: application/json`"

    def test_no_recipients_is_200_with_zero_counts(self, sink):
        """`recipients: []` is a request kumod takes: 200, nothing injected."""
        status, answer = post(sink, {"envelope_sender": "a@b.c", "content": "x", "recipients": []})
        assert (status, answer) == (200, {"success_count": 0, "fail_count": 0, "failed_recipients": [], "errors": []})

    def test_a_bad_recipient_fails_alone(self, sink):
        """One recipient that is not an address fails; the others are injected."""
        body = {
            "envelope_sender": "a@b.c",
            "content": "Subject: x\r\n\r\nhi\r\n",
            "recipients": [{"email": "one@gmail.com"}, {"email": "not an address"}, {"email": "two@gmail.com"}],
        }
        status, answer = post(sink, body)
        assert status == 200
        assert isinstance(answer, dict)
        assert (answer["success_count"], answer["fail_count"]) == (2, 1)
        assert answer["failed_recipients"] == ["not an address"]
        assert answer["errors"][0].startswith("not an address: recipient email not an address: ")

    def test_builder_content_is_taken(self, sink):
        """A content builder with a text body, headers and an attachment is taken as kumod takes it."""
        body = {
            "envelope_sender": "a@b.c",
            "content": {
                "text_body": "Hello {{ name }}",
                "subject": "hi",
                "headers": {"X-Tenant": "t1"},
                "attachments": [{"data": "aGk=", "content_type": "text/plain", "base64": True}],
            },
            "recipients": [{"email": "one@gmail.com", "name": "One"}],
        }
        assert post(sink, body) == (200, {"success_count": 1, "fail_count": 0, "failed_recipients": [], "errors": []})


class TestTrafficgenHttp:
    def test_submits_through_the_api_and_counts_match_the_sink(self, tmp_path):
        """trafficgen --http: one request per message to --http-batch-size recipients; the sink counts the same."""
        policy = "[default]\nbounce = 10\ndefer = 10\n"
        with running_sink("--seed", "9", policy=policy, tmp=tmp_path) as sink:
            result = trafficgen(
                "--http",
                "--target",
                f"http://{sink.http}",
                "--message-count",
                "100",
                "--http-batch-size",
                "3",
                "--concurrency",
                "5",
                "--json",
                "-",
            )
            assert result.returncode == 0, result.stderr
            report = json.loads(result.stdout)
            metrics = sink.metrics()
            ledger = json.loads(sink.get(f"/runs/{report['run_id']}")[1])
        recipients = report["recipients"]
        assert report["totals"]["attempted"] == 100
        assert sum(recipients.values()) == 300
        sink_counts = {
            o: sum(v for k, v in metrics.items() if k.startswith("smartsink_messages_total") and f'outcome="{o}"' in k)
            for o in ("accepted", "tempfailed", "permfailed")
        }
        assert sink_counts == {k: recipients[k] for k in sink_counts}
        assert metrics["smartsink_injected_messages_total"] == 300
        # One trace per message, whatever the number of recipients: no false duplicates.
        assert ledger["seen"] == 100
        assert ledger["duplicated"] == 0
        assert ledger["delivered"] == report["totals"]["accepted"]

    def test_unreachable_endpoint_is_one_clear_line(self):
        """Nothing listening at the URL: exit 1 with one line naming it."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        result = trafficgen("--http", "--target", f"http://127.0.0.1:{port}", "--message-count", "3")
        assert result.returncode == 1
        assert result.stderr.strip().splitlines()[-1].startswith("trafficgen: error: refused: cannot connect")
        assert "Traceback" not in result.stderr

    @pytest.mark.parametrize(
        ("args", "problem"),
        [
            (["--http-batch-size", "5"], "go with --http"),
            (["--http", "--target", "127.0.0.1:25"], "give the MTA's URL"),
            (["--http", "--target", "http://127.0.0.1:1", "--starttls"], "applies to SMTP"),
            (["--http", "--target", "http://127.0.0.1:1", "--recipients-per-message", "2"], "--http-batch-size"),
        ],
        ids=["batch-without-http", "not-a-url", "starttls", "recipients"],
    )
    def test_bad_combinations(self, args, problem):
        """HTTP-only and SMTP-only options are refused in the wrong mode, in one line, exit 2."""
        result = trafficgen(*args)
        assert result.returncode == 2
        assert problem in result.stderr
        assert len(result.stderr.splitlines()) == 1


def _message(*recipients: str) -> Message:
    return Message(1, 0, "a@b.test", recipients, (b"x\r\n",), 3, 0.0)


@pytest.mark.parametrize(
    ("answer", "kind", "code", "kinds"),
    [
        ({"success_count": 2, "fail_count": 0, "failed_recipients": [], "errors": []}, ACCEPTED, 250, (0, 0)),
        ({"failed_recipients": ["x@y"], "errors": ["x@y: 550 5.1.1 no"]}, ACCEPTED, 250, (2, 0)),
        (
            {"failed_recipients": ["x@y", "z@y"], "errors": ["x@y: 550 5.1.1 no", "z@y: 451 4.3.0 later"]},
            TEMPFAILED,
            451,
            (2, 1),
        ),
        ({"failed_recipients": ["x@y", "z@y"], "errors": ["x@y: 554 no", "z@y: 550 no"]}, PERMFAILED, 554, (2, 2)),
        ({"failed_recipients": ["x@y", "z@y"], "errors": ["x@y: invalid address"]}, PERMFAILED, 550, (2, 2)),
    ],
    ids=["all-accepted", "partly", "temporary-wins", "permanent", "kumomta-error-text"],
)
def test_outcome_of_an_inject_answer(answer, kind, code, kinds):
    """An answer's failed_recipients and errors give each recipient's outcome and the message's."""
    outcome = outcome_of(answer, _message("x@y", "z@y"), 0.0, 1.0)
    assert (outcome.kind, outcome.code, outcome.recipient_kinds) == (kind, code, kinds)
