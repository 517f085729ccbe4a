"""The contract between the two tools (mailload.contract): what trafficgen writes, smartsink reads back.

DSNs here are built with the email package as RFC 3464 lays them out (nobody here wrote it); the Postfix tests
(tests/e2e/test_postfix.py) check the same with the DSNs a real MTA sends.
"""

from __future__ import annotations

import time
from email.message import EmailMessage
from random import Random

import pytest

from harness.mail import dsn, generated
from mailload import contract
from mailload.contract import ATTEMPT_BUCKETS, MARK_ATTEMPTS_MAX, Trace
from trafficgen.config import build
from trafficgen.messages import MessageFactory


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


class TestRecipients:
    def test_round_trip(self):
        """What trafficgen's MessageFactory puts in RCPT, the sink reads back: the run's tag and each number."""
        factory = MessageFactory(build(domains=["gmail.com"], run_id="Run_A-1", recipients_per_message=3), Random(1))
        recipients = factory.build(5, 0.0).recipients
        assert [contract.numbered(r) for r in recipients] == [("run_a-1", n) for n in (15, 16, 17)]
        assert contract.numbered(recipients[0].upper()) == ("run_a-1", 15), "an MTA may fold the case of an address"

    def test_local_part_within_64_octets(self):
        """The longest run id and a 15-digit number still make a local part of at most 64 octets (RFC 5321)."""
        tag = contract.run_tag("r" * contract.RUN_ID_MAX)
        assert tag != contract.run_tag("r" * (contract.RUN_ID_MAX - 1))
        local = contract.recipient_local(tag, 10**15 - 1)
        assert len(local) <= 64
        assert contract.numbered(local + "@x.test") == (tag, 10**15 - 1)
        assert contract.run_tag("3f2a9c41d0be") == "3f2a9c41d0be", "a random run id is its own tag"

    @pytest.mark.parametrize(
        "address",
        ["user-5@gmail.com", "user-5.@gmail.com", "user-.run@gmail.com", "someone.run@gmail.com", "tempfail@x.test"],
        ids=["no-tag", "empty-tag", "no-number", "not-user", "forced"],
    )
    def test_other_addresses_are_not_numbered(self, address):
        """Addresses trafficgen did not number (or an older trafficgen's user-<n>) name no run."""
        assert contract.numbered(address) is None


class TestDsn:
    @pytest.mark.parametrize("returned", ["message", "headers"], ids=["message/rfc822", "text/rfc822-headers"])
    def test_failure_dsn_names_the_original(self, returned):
        """A failure DSN returning the whole message or only its headers names the original and recipient."""
        found = contract.returned_message(dsn(generated("dsnrun", 42), returned=returned))
        assert found is not None
        assert (found.trace.run_id, found.trace.seq) == ("dsnrun", 42)
        assert found.recipients == ("user-42.dsnrun@gmail.com.sink.test",)

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

    @pytest.mark.parametrize("encoding", [None, "base64"], ids=["7bit", "base64"])
    @pytest.mark.parametrize("returned", ["message", "headers"], ids=["message/rfc822", "text/rfc822-headers"])
    def test_sixty_recipients_each_matched(self, returned, encoding):
        """A DSN for 60 recipients puts the returned headers past 16 KiB: found all the same, and each failed
        recipient named (the 16 KiB prefix the sink once read held none of it)."""
        data = dsn(generated("long", 3, recipients=60), returned=returned, encoding=encoding)
        assert data.find(b"X-Trafficgen-Id") > 16 * 1024 or encoding
        found = contract.returned_message(data)
        assert found is not None
        assert found.trace[:2] == ("long", 3)
        assert [contract.numbered(r) for r in found.recipients] == [("long", n) for n in range(180, 240)]

    def test_read_as_it_streams_by(self):
        """Fed in pieces of 7 bytes, dot-stuffed as on the wire (a line of the returned body starts with a dot), a
        DSN reads the same; the reader stops wanting more once it has the returned headers."""
        original = generated("stream", 9, recipients=4).replace(b"\r\n\r\n", b"\r\n\r\n.leading dot\r\n", 1)
        data = dsn(original)
        wire = data.replace(b"\r\n.", b"\r\n..")
        reader = contract.DsnReader(stuffed=True)
        fed = 0
        while reader.wanted and fed < len(wire):
            reader.feed(wire[fed : fed + 7])
            fed += 7
        assert fed < len(wire) - len(original) // 2, "it stopped after the returned headers"
        found = reader.result()
        assert found is not None
        assert found.trace[:2] == ("stream", 9)
        assert len(found.recipients) == 4

    def test_original_recipient_wins_when_numbered(self):
        """An MTA that rewrote the recipient says so in Final-Recipient; the Original-Recipient names ours."""
        data = dsn(
            generated("orig", 1),
            recipients=["someone@elsewhere.test"],
            original_recipients=["user-1.orig@gmail.com.sink.test"],
        )
        found = contract.returned_message(data)
        assert found is not None
        assert found.recipients == ("user-1.orig@gmail.com.sink.test",)

    def test_only_failed_recipients(self):
        """Of a DSN's recipients, only those with Action: failed are returned."""
        data = dsn(generated("mixed", 2, recipients=2))
        data = data.replace(b"Action: failed", b"Action: delivered", 1)
        found = contract.returned_message(data)
        assert found is not None
        assert found.recipients == ("user-5.mixed@gmail.com.sink.test",)

    @pytest.mark.parametrize(
        "damage",
        [b"boundary=", b"Content-Type: message/delivery-status", b"X-Trafficgen-Id"],
        ids=["no-boundary", "no-status-part", "no-trace"],
    )
    def test_not_a_dsn_when_a_sign_is_missing(self, damage):
        """Without its boundary, its delivery-status part or the returned trace header, it is no DSN of ours."""
        data = dsn(generated("gone", 1))
        assert contract.returned_message(data.replace(damage, b"X-Other" + damage[1:], 1)) is None

    def test_only_a_report_is_read_further(self):
        """The sink reads on only mail whose top-level type is multipart/report: a Subject saying "report" costs
        nothing more."""
        assert contract.dsn_reader(b"Subject: the report\r\nContent-Type: text/plain\r\n\r\nbody\r\n") is None
        assert contract.dsn_reader(dsn(generated())[:2000]) is not None

    def test_long_lines_and_headers_cost_bounded_memory(self):
        """A line of a megabyte and a header section of a megabyte: read in bounded memory, and no DSN."""
        reader = contract.DsnReader()
        reader.feed(b"Subject: " + b"x" * 1_000_000 + b"\r\n")
        assert len(reader._partial) == 0
        reader.feed(b"X-Many: header\r\n" * 100_000)
        assert not reader.wanted
        assert reader.result() is None


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

    @pytest.mark.parametrize(
        ("answers", "said"),
        [
            ((), "nothing"),
            ((contract.ANSWER_TEMPFAILED, contract.ANSWER_TEMPFAILED), "refused temporarily (2 attempts)"),
            ((contract.ANSWER_ACCEPTED,) * 2, "accepted 2 times (2 attempts)"),
            ((contract.ANSWER_PERMFAILED,), "refused permanently (1 attempt)"),
        ],
        ids=["unseen", "deferred", "twice", "bounced"],
    )
    def test_described(self, answers, said):
        """What the sink saw of a recipient, in words, for the lost and the other problems' samples."""
        mark = 0
        for answer in answers:
            mark = contract.mark_answer(mark, answer)
        assert contract.describe_mark(mark) == said
        assert contract.describe_mark(contract.mark_dsn(mark)).endswith("returned in a DSN")
