"""KumoMTA's HTTP injection API on the sink: it answers with the policy, and refuses what it does not take."""

from __future__ import annotations

import json
import urllib.request

import pytest

from harness.sink import running_sink

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
            "tempfail@gmail.com: 451 4.7.28 Rate limited",
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
