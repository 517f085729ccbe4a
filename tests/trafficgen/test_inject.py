"""trafficgen --http: KumoMTA's HTTP injection API as the transport, against a sink serving it, and the outcome
each answer gives."""

from __future__ import annotations

import json

import pytest

from harness.net import free_port
from harness.sink import running_sink
from harness.trafficgen import run_trafficgen
from trafficgen.inject import outcome_of
from trafficgen.messages import Message
from trafficgen.outcome import ACCEPTED, PERMFAILED, TEMPFAILED


class TestTrafficgenHttp:
    def test_submits_through_the_api_and_counts_match_the_sink(self, tmp_path):
        """trafficgen --http: one request per message to --http-batch-size recipients; the sink counts the same."""
        policy = "[default]\nbounce = 10\ndefer = 10\n"
        with running_sink("--seed", "9", policy=policy, tmp=tmp_path) as sink:
            result = run_trafficgen(
                "--quiet",
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
        # One mark per recipient trafficgen numbered: each answered once, no false duplicates.
        assert ledger["seen"] == 300
        assert ledger["duplicated"] == 0
        assert ledger["delivered"] == recipients["accepted"]

    def test_unreachable_endpoint_is_one_clear_line(self):
        """Nothing listening at the URL: exit 1 with one line naming it."""
        result = run_trafficgen(
            "--quiet", "--http", "--target", f"http://127.0.0.1:{free_port()}", "--message-count", "3"
        )
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
        result = run_trafficgen("--quiet", *args)
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
