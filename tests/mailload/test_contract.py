"""The contract between the two tools (mailload.contract): what trafficgen writes, smartsink reads back.

DSNs here are built with the email package as RFC 3464 lays them out (nobody here wrote it); the Postfix tests
(tests/e2e/test_postfix.py) check the same with the DSNs a real MTA sends.
"""

from __future__ import annotations

import time
from email.message import EmailMessage

import pytest

from harness.mail import dsn, generated
from mailload import contract
from mailload.contract import ATTEMPT_BUCKETS, MARK_ATTEMPTS_MAX, Trace
from trafficgen.config import build


class TestTraceHeader:
    def test_round_trip(self):
        """What trafficgen's MessageFactory writes, the sink parses back: run id, number, and the send time."""
        before = int(time.time() * 1000)
        trace = contract.trace_of(generated("abc_DEF-9", 123456789))
        assert trace is not None
        assert (trace.run_id, trace.seq) == ("abc_DEF-9", 123456789)
        assert trace.sent_ms is not None
        assert before - 1000 <= trace.sent_ms <= int(time.time() * 1000)

    def test_longest_run_id_both_sides_accept(self):
        """Both tools take run ids up to RUN_ID_MAX characters, and no more."""
        longest = "r" * contract.RUN_ID_MAX
        assert build(run_id=longest).run_id == longest
        trace = contract.trace_of(generated(longest, 1))
        assert trace is not None
        assert (trace.run_id, trace.seq) == (longest, 1)
        with pytest.raises(ValueError, match="run-id"):
            build(run_id=longest + "r")

    def test_header_without_time(self):
        """A trace header of an older trafficgen (no t=) still names the message."""
        assert contract.trace_of(b"Subject: x\r\nX-Trafficgen-Id: old.7\r\n\r\nbody\r\n") == Trace("old", 7, None)

    @pytest.mark.parametrize(
        "message",
        [
            b"Subject: a reply\r\n\r\nX-Trafficgen-Id: run.5; t=1\r\n",
            b"Subject: quoted\r\n\r\n> X-Trafficgen-Id: run.5\r\n",
            b"Subject: a\r\n\r\nbody\r\n\r\nX-Trafficgen-Id: run.5\r\n",
        ],
        ids=["in-body", "quoted", "after-a-blank-line"],
    )
    def test_only_the_header_section_counts(self, message):
        """The trace header counts only in the message's own header section (up to the first empty line)."""
        assert contract.trace_of(message) is None

    def test_bare_lf_messages(self):
        """A message written with bare LF line ends has its header section found too."""
        assert contract.trace_of(b"Subject: x\nX-Trafficgen-Id: lf.3; t=5\n\nbody\n") == Trace("lf", 3, 5)
        assert contract.trace_of(b"Subject: x\n\nX-Trafficgen-Id: lf.3\n") is None


class TestDsn:
    @pytest.mark.parametrize("returned", ["message", "headers"], ids=["message/rfc822", "text/rfc822-headers"])
    def test_failure_dsn_names_the_original(self, returned):
        """A failure DSN returning the whole message or only its headers names the original and recipient."""
        found = contract.returned_message(dsn(generated("dsnrun", 42), returned=returned))
        assert found is not None
        assert (found.trace.run_id, found.trace.seq) == ("dsnrun", 42)
        assert found.recipient == "user-42@gmail.com.sink.test"

    def test_the_dsn_itself_is_not_the_message(self):
        """The DSN quotes the original's trace header in its body, so it is never taken for the original."""
        assert contract.trace_of(dsn(generated())) is None

    def test_delay_notice_is_not_a_bounce(self):
        """Action: delayed (a warning while the MTA still retries) is not counted as a returned message."""
        assert contract.returned_message(dsn(generated(), action="delayed")) is None

    def test_other_reports_are_not_dsns(self):
        """A multipart/report of another type (a disposition notification) is not a DSN."""
        assert contract.returned_message(dsn(generated(), report_type="disposition-notification")) is None

    def test_dsn_of_a_message_without_trace(self):
        """A DSN for mail trafficgen did not send returns nothing to record."""
        plain = EmailMessage()
        plain["Subject"] = "not ours"
        plain.set_content("hello")
        assert contract.returned_message(dsn(plain.as_bytes())) is None

    def test_found_within_the_bytes_the_sink_keeps(self):
        """A DSN with a long human-readable part still shows its returned headers within HEAD_BYTES."""
        data = dsn(generated("long", 1))
        assert contract.returned_message(data[: contract.HEAD_BYTES]) is not None


class TestMarks:
    def test_answers_count_attempts_and_flags(self):
        """Deferred twice, then accepted: three attempts, accepted once, the deferral remembered."""
        mark = 0
        for answer in (contract.ANSWER_TEMPFAILED, contract.ANSWER_TEMPFAILED, contract.ANSWER_ACCEPTED):
            mark = contract.mark_answer(mark, answer)
        assert contract.attempts(mark) == 3
        assert contract.accepted(mark) == 1
        assert mark & contract.MARK_TEMPFAILED
        assert not mark & contract.MARK_PERMFAILED

    def test_saturation(self):
        """Attempts stop at 7 and acceptances at 3: a byte never overflows into the next field."""
        mark = 0
        for _ in range(20):
            mark = contract.mark_answer(mark, contract.ANSWER_ACCEPTED)
        assert contract.attempts(mark) == MARK_ATTEMPTS_MAX
        assert contract.accepted(mark) == 3
        assert mark < 256
        assert ATTEMPT_BUCKETS[-1] == "7+"

    def test_combine_adds_and_keeps_flags(self):
        """Two sinks' marks: attempts and acceptances add up, DSN and refusal flags are kept."""
        a = contract.mark_dsn(contract.mark_answer(0, contract.ANSWER_PERMFAILED))
        b = contract.mark_answer(contract.mark_answer(0, contract.ANSWER_TEMPFAILED), contract.ANSWER_ACCEPTED)
        both = contract.combine_marks(a, b)
        assert contract.attempts(both) == 3
        assert contract.accepted(both) == 1
        assert both & contract.MARK_DSN
        assert both & contract.MARK_PERMFAILED
        assert both & contract.MARK_TEMPFAILED

    def test_runs_path(self):
        assert contract.runs_path("abc") == "/runs/abc"
