"""Reconciliation on trafficgen's side: the sinks' ledgers combined and one verdict for every recipient the
target accepted, and each message from its recipients (trafficgen.reconcile, pure: each case of issue 23), the
MTA's queue listings, and the command's errors when reconciliation cannot be done. Reconciliation through an MTA is
in tests/e2e/."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.mail import dsn, generated
from harness.policies import ACCEPT_ALL
from harness.sink import running_sink
from harness.trafficgen import run_report, run_trafficgen
from mailload import contract
from smartsink.ledger import Ledgers
from smartsink.policy.model import Outcome
from smartsink.responder import returned_recipients
from trafficgen import reconcile as reconcile_module
from trafficgen.reconcile import Ledger, combine, message_outcome, read_queue, recipient_outcome, reconcile

A, T, P = contract.ANSWER_ACCEPTED, contract.ANSWER_TEMPFAILED, contract.ANSWER_PERMFAILED


def mark(*answers: int, returned: bool = False) -> int:
    """The sink's mark of a recipient after these answers, one transaction each (and a DSN returning it)."""
    value = 0
    for answer in answers:
        value = contract.mark_answer(value, answer)
    return contract.mark_dsn(value) if returned else value


def sink(*marks: int, capacity: int | None = None) -> Ledger:
    return Ledger(bytes(marks), capacity)


def outcomes(view: dict[str, int]) -> dict[str, int]:
    """The non-zero counts of a view, without its attempts."""
    return {k: v for k, v in view.items() if v and k != "attempts"}


class TestReconcile:
    def test_combine_adds_acceptances_and_keeps_refusals(self):
        """Two sinks' ledgers: acceptances add up (saturating at 3), refusals are kept, the least capacity wins."""
        one = Ledger(bytes([1, 4, 0, 8, 3]), 100)
        two = Ledger(bytes([1, 0, 5]), 50)
        assert combine([one, two]) == Ledger(bytes([2, 4, 5, 8, 3]), 50)

    def test_every_accepted_recipient_gets_one_verdict(self):
        """delivered / duplicated / bounced / pending / lost / unknown (beyond the capacity) / unexpected, one
        recipient a message: they add up to what the target accepted."""
        ours = bytes([1, 1, 1, 1, 1, 2, 1])  # seq 5 was refused by the target, the others accepted
        theirs = sink(mark(A), mark(A, A), mark(P), mark(T), 0, mark(A), capacity=6)
        result = reconcile(ours, theirs, "r")
        recipients = outcomes(result["recipients"])
        assert recipients == {
            "accepted": 6,
            "delivered": 1,
            "duplicated": 1,
            "bounced": 1,
            "bounced_without_dsn": 1,
            "pending": 1,
            "lost": 1,
            "unknown": 1,
            "unexpected": 1,
        }
        assert outcomes(result["messages"]) == {k: v for k, v in recipients.items() if k in result["messages"]}
        assert [s["id"] for s in result["samples"]["lost"]] == ["r.4"]
        assert [s["recipient"] for s in result["samples"]["duplicated"]] == ["user-1.r"]

    def test_partly_refused_message_with_its_dsn(self):
        """4 recipients, 3 refused permanently at RCPT and returned in one DSN, 1 delivered, in one transaction:
        partly delivered, nothing wrong, one attempt (schema 1 said a bounce for delivered mail, an MTA bug)."""
        theirs = sink(mark(A), mark(P, returned=True), mark(P, returned=True), mark(P, returned=True))
        result = reconcile(bytes([1] * 4), theirs, "r", per=4)
        assert outcomes(result["recipients"]) == {"accepted": 4, "delivered": 1, "bounced": 3, "dsn_returned": 3}
        assert outcomes(result["messages"]) == {"accepted": 1, "partly_delivered": 1}
        assert result["messages"]["attempts"]["1"] == 1
        assert not any(result["samples"].values())

    def test_partly_deferred_then_delivered_once(self):
        """Three recipients delivered in one transaction, the fourth deferred at RCPT and delivered on the retry:
        every recipient arrived once (not duplicated); the message took two attempts (schema 1: 4 attempts for
        two transactions, and duplicated)."""
        theirs = sink(mark(A), mark(A), mark(A), mark(T, A))
        result = reconcile(bytes([1] * 4), theirs, "r", per=4)
        assert outcomes(result["recipients"]) == {"accepted": 4, "delivered": 4}
        assert outcomes(result["recipients"]["attempts"]) == {"1": 3, "2": 1}
        assert outcomes(result["messages"]) == {"accepted": 1, "delivered": 1}
        assert outcomes(result["messages"]["attempts"]) == {"2": 1}

    def test_refusal_at_rcpt_is_not_lost(self):
        """A recipient the sink refused temporarily at RCPT (its message never reached DATA) is pending, with what
        the sink saw of it, and its message too."""
        result = reconcile(bytes([1, 1]), sink(mark(A), mark(T)), "r", per=2)
        assert outcomes(result["recipients"]) == {"accepted": 2, "delivered": 1, "pending": 1}
        assert outcomes(result["messages"]) == {"accepted": 1, "pending": 1}
        assert result["samples"]["pending"] == [
            {"id": "r.0", "recipient": "user-1.r", "sink_saw": "refused temporarily (1 attempt)"}
        ]

    @pytest.mark.parametrize(
        ("seen", "queued", "expected"),
        [
            (0, None, "lost"),
            (0, True, "deferred"),
            (0, False, "lost"),
            (mark(T), None, "pending"),
            (mark(T, T), True, "deferred"),
            (mark(T), False, "lost"),
            (mark(T, returned=True), None, "expired"),
            (mark(returned=True), False, "expired"),
            (mark(P), True, "bounced"),
            (mark(T, A), True, "delivered"),
        ],
        ids=[
            "unseen",
            "unseen-queued",
            "unseen-not-queued",
            "deferred",
            "deferred-queued",
            "deferred-dropped",
            "deferred-then-dsn",
            "dsn-unseen",
            "bounced-still-listed",
            "delivered-still-listed",
        ],
    )
    def test_pending_deferred_or_lost(self, seen, queued, expected):
        """What the sink saw and, when asked, whether the MTA's queue holds the recipient: one verdict. A recipient
        the MTA still holds is deferred; only deferred by the sink and nobody asked the MTA: pending; neither
        seen nor held, or dropped from the queue without a DSN: lost."""
        queue = None
        if queued is not None:
            queue = read_queue(["user-0.r@a.test"] if queued else [], "r")
        result = reconcile(bytes([1]), sink(seen), "r", queue=queue)
        counts = result["recipients"]
        assert {k: counts[k] for k in contract.RECIPIENT_OUTCOMES if counts[k]} == {expected: 1}
        assert result["messages"][expected] == 1

    def test_lost_carries_ids_and_what_the_sink_saw(self):
        """Every lost recipient is listed (up to 100) with its message id, its local part and what the sink last
        saw of it; the MTA's reason for holding a deferred one comes from postqueue -j."""
        queue = read_queue(
            ['{"queue_name": "deferred", "recipients": [{"address": "user-2.r@a.test", "delay_reason": "said 451"}]}'],
            "r",
        )
        result = reconcile(bytes([1, 1, 1]), sink(0, mark(T, T)), "r", queue=queue)
        assert result["samples"]["lost"] == [
            {"id": "r.0", "recipient": "user-0.r", "sink_saw": "nothing"},
            {"id": "r.1", "recipient": "user-1.r", "sink_saw": "refused temporarily (2 attempts)"},
        ]
        assert result["samples"]["deferred"] == [
            {"id": "r.2", "recipient": "user-2.r", "sink_saw": "nothing", "mta_said": "said 451"}
        ]

    def test_long_dsn_with_60_recipients(self):
        """A message of 60 recipients refused permanently at RCPT, returned in one DSN (its returned headers past
        35 KB): the sink's reading of it matches each recipient, and all 60 are bounced with their DSN."""
        ledgers = Ledgers()
        tag = contract.run_tag("long")
        ledgers.record(tag, tuple(range(60, 120)), Outcome.PERMFAILED)
        returned = contract.returned_message(dsn(generated("long", 1, recipients=60)))
        assert returned is not None
        for run_tag, numbers in returned_recipients(returned).items():
            ledgers.record_dsn(run_tag, numbers)
        run = ledgers.run("long")
        assert run is not None
        result = reconcile(bytes(60) + bytes([1] * 60), Ledger(bytes(run.marks), None), "long", per=60)
        assert outcomes(result["recipients"]) == {"accepted": 60, "bounced": 60, "dsn_returned": 60}
        assert outcomes(result["messages"]) == {"accepted": 1, "bounced": 1}

    def test_per_message_with_a_fixed_recipient(self):
        """With --recipient the sink goes by the trace header: one mark per message, no recipient names."""
        result = reconcile(bytes([1, 1]), sink(mark(A)), "r", numbered=False)
        assert result["per"] == "message"
        assert result["samples"]["lost"] == [{"id": "r.1", "recipient": None, "sink_saw": "nothing"}]

    def test_shards_map_to_global_ids(self):
        """With --shard 1/3 and 2 recipients a message, our index i is recipient i % 2 of message 3 (i // 2) + 1,
        whose number is 2 seq + i % 2."""
        ours = bytes([1, 1, 1, 1])  # messages 1 and 4: recipients 2, 3, 8, 9
        theirs = sink(0, 0, mark(A), mark(A), 0, 0, 0, 0, mark(A), 0)
        result = reconcile(ours, theirs, "r", per=2, shards=3, shard=1)
        assert result["recipients"]["delivered"] == 3
        assert [(s["id"], s["recipient"]) for s in result["samples"]["lost"]] == [("r.4", "user-9.r")]

    def test_unexpected_per_recipient(self):
        """A recipient the target refused at RCPT, yet the sink accepted: unexpected, and not among the accepted."""
        result = reconcile(bytes([1, 2]), sink(mark(A), mark(A)), "r", per=2)
        assert outcomes(result["recipients"]) == {"accepted": 1, "delivered": 1, "unexpected": 1}
        assert outcomes(result["messages"]) == {"accepted": 1, "delivered": 1}

    @pytest.mark.parametrize(
        ("recipients", "message"),
        [
            (("delivered", "delivered"), "delivered"),
            (("delivered", "bounced"), "partly_delivered"),
            (("delivered", "expired"), "partly_delivered"),
            (("bounced", "expired"), "bounced"),
            (("expired",), "expired"),
            (("delivered", "duplicated"), "duplicated"),
            (("duplicated", "lost"), "lost"),
            (("delivered", "deferred", "pending"), "deferred"),
            (("bounced", "pending"), "pending"),
            (("delivered", "unknown"), "unknown"),
        ],
    )
    def test_message_from_its_recipients(self, recipients, message):
        """A message's outcome: the first of lost, duplicated, deferred, pending, unknown among its recipients',
        else delivered, bounced, expired or partly delivered."""
        bits = dict(zip(contract.RECIPIENT_OUTCOMES, (1 << i for i in range(8)), strict=True))
        assert message_outcome(sum({bits[r] for r in recipients})) == message

    def test_queue_listings(self):
        """postqueue -j's JSON lines and postqueue -p's text name the queued recipients of this run only."""
        lines = [
            '{"queue_name": "deferred", "recipients": [{"address": "user-4.r@a.test", "delay_reason": "busy"},'
            ' {"address": "user-5.other@a.test", "delay_reason": "busy"}]}',
            "4F1A2C3B4D*    2311 Mon Dec  1 10:00:00  noreply@a.test",
            "                                         User-7.R@A.test",
            "(host 127.0.0.1[127.0.0.1] said: 451 4.7.1 busy (in reply to RCPT TO command))",
        ]
        queue = read_queue(lines, "r")
        assert [n for n in range(10) if queue.holds(n)] == [4, 7]
        assert queue.reasons == {4: "busy"}
        assert queue.recipients == 2


def reference(ours: bytes, theirs: Ledger, per: int, shards: int, shard: int, held: set[int] | None) -> dict:
    """The reconciliation written the plain way, one recipient at a time, for the property below."""
    recipients: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    recipient_tries: Counter[int] = Counter()
    message_tries: Counter[int] = Counter()
    lost: list[str] = []
    for m in range(len(ours) // per):
        seq = m * shards + shard
        bits = most = 0
        for j in range(per):
            mine, number = ours[m * per + j], seq * per + j
            beyond = theirs.capacity is not None and number >= theirs.capacity
            sink = theirs.marks[number] if number < len(theirs.marks) and not beyond else 0
            if mine == 2 and contract.accepted(sink):
                recipients["unexpected"] += 1
            if mine != 1:
                continue
            if beyond:
                bits |= 1 << contract.RECIPIENT_OUTCOMES.index("unknown")
                recipients["unknown"] += 1
                continue
            outcome = recipient_outcome(sink, None if held is None else number in held)
            name = contract.RECIPIENT_OUTCOMES[outcome.bit_length() - 1]
            recipients[name] += 1
            bits |= outcome
            most = max(most, contract.attempts(sink))
            if name in ("delivered", "duplicated"):
                recipient_tries[min(7, max(1, contract.attempts(sink)))] += 1
            if name == "lost" and len(lost) < 100:
                lost.append(f"r.{seq}")
        if bits:
            kind = message_outcome(bits)
            messages[kind] += 1
            if kind in ("delivered", "partly_delivered", "duplicated"):
                message_tries[max(1, most)] += 1
    return {"recipients": recipients, "messages": messages, "tries": (recipient_tries, message_tries), "lost": lost}


class TestInBulk:
    """reconcile() reads recipients a chunk at a time through tables; the plain loop above says what it must find."""

    @settings(max_examples=200, deadline=None)
    @given(
        per=st.integers(1, 5),
        shards=st.integers(1, 3),
        data=st.data(),
    )
    def test_same_as_one_at_a_time(self, per, shards, data):
        """Any marks, shards, capacity and queue, read in chunks of 7 messages or fewer: every count, attempt and
        lost id as the plain loop finds them."""
        shard = data.draw(st.integers(0, shards - 1))
        messages = data.draw(st.integers(0, 30))
        ours = bytes(
            data.draw(st.lists(st.sampled_from([0, 1, 1, 1, 2]), min_size=messages * per, max_size=messages * per))
        )
        size = data.draw(st.integers(0, (messages * shards + shards) * per))
        marks = bytes(data.draw(st.lists(st.integers(0, 255), min_size=size, max_size=size)))
        capacity = data.draw(st.none() | st.integers(0, size + per))
        held = data.draw(st.none() | st.sets(st.integers(0, size + per)))
        queue = None if held is None else read_queue([f"user-{n}.r@a.test" for n in held], "r")
        theirs = Ledger(marks, capacity)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(reconcile_module, "CHUNK", 7)  # a handful of messages cross chunk boundaries
            found = reconcile(ours, theirs, "r", per=per, shards=shards, shard=shard, queue=queue)
        expected = reference(ours, theirs, per, shards, shard, held)
        counts = found["recipients"]
        assert {k: counts[k] for k in (*contract.RECIPIENT_OUTCOMES, "unexpected") if counts[k]} == dict(
            +expected["recipients"]
        )
        assert {k: v for k, v in found["messages"].items() if v and k not in ("accepted", "attempts")} == dict(
            +expected["messages"]
        )
        tries = [
            {int(k.rstrip("+")): v for k, v in view["attempts"].items() if v} for view in (counts, found["messages"])
        ]
        assert tries == [dict(t) for t in expected["tries"]]
        assert [s["id"] for s in found["samples"]["lost"]] == expected["lost"]


def test_unreachable_sink_is_one_clear_line(tmp_path):
    """A --reconcile URL where nothing answers: the run's report is written, then one error line and exit 1."""
    with running_sink(policy=ACCEPT_ALL, tmp=tmp_path) as sink:
        result = run_trafficgen(
            "--target", sink.target, "--message-count", "5", "--quiet", "--reconcile", "http://127.0.0.1:1", timeout=60
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("trafficgen: error: reconciliation: cannot read")


def test_report_reconcile_needs_a_reconciled_run(tmp_path: Path, accept_all_sink):
    """A report from a run without --reconcile cannot be reconciled later: one line, exit 2."""
    report, _ = run_report("--target", accept_all_sink.target, "--message-count", "5", "--concurrency", "1")
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    done = run_trafficgen("report", "reconcile", str(path))
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1


class TestMtaQueueCommand:
    """--mta-queue as a user gives it: a shell command whose output lists the MTA's queue."""

    def test_recipients_the_queue_names_are_deferred(self, tmp_path, accept_all_sink):
        """A queue listing (here a file, `cat`) naming two of the run's recipients, against a sink that saw none of them
        (the mail went to another sink): those two are deferred, the rest lost, with the listing's reason."""
        listing = tmp_path / "queue.json"
        listing.write_text(
            '{"recipients": [{"address": "user-1.q1@x.test", "delay_reason": "busy"}]}\n'
            "                         user-3.q1@x.test\n"
        )
        with running_sink(policy=ACCEPT_ALL, tmp=tmp_path) as elsewhere:
            report, _ = run_report(
                *("--target", accept_all_sink.target, "--message-count", "4", "--concurrency", "1", "--run-id", "q1"),
                *("--reconcile", f"http://{elsewhere.http}", "--mta-queue", f"cat {listing}"),
            )
        r = report["reconciliation"]
        assert (r["recipients"]["deferred"], r["recipients"]["lost"]) == (2, 2)
        assert r["mta_queue"] == f"cat {listing}"
        assert [(s["id"], s.get("mta_said")) for s in r["samples"]["deferred"]] == [("q1.1", "busy"), ("q1.3", None)]
        assert [s["sink_saw"] for s in r["samples"]["lost"]] == ["nothing", "nothing"]

    @pytest.mark.parametrize(
        ("command", "problem"),
        [("exit 3", "exited with status 3"), ("echo broken >&2; exit 1", "status 1: broken")],
        ids=["fails", "says-why"],
    )
    def test_a_failing_command_is_one_line(self, accept_all_sink, command, problem):
        """A queue command that fails: the report is written, then one line naming it, exit 1."""
        result = run_trafficgen(
            *("--target", accept_all_sink.target, "--message-count", "2", "--quiet"),
            *("--reconcile", f"http://{accept_all_sink.http}", "--mta-queue", command),
        )
        assert result.returncode == 1
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("trafficgen: error: reconciliation: --mta-queue"), result.stderr
        assert problem in last

    @pytest.mark.parametrize(
        ("args", "problem"),
        [
            (["--mta-queue", "postqueue -j"], "give --reconcile too"),
            (["--reconcile", "http://127.0.0.1:1", "--mta-queue", " "], "--mta-queue is empty"),
            (["--reconcile", "http://127.0.0.1:1", "--mta-queue", "x", "--recipient", "a@b.test"], "--recipient"),
        ],
        ids=["without-reconcile", "empty", "fixed-recipient"],
    )
    def test_bad_options_are_one_line(self, args, problem):
        done = run_trafficgen("--quiet", "--message-count", "1", *args)
        assert done.returncode == 2
        assert len(done.stderr.strip().splitlines()) == 1
        assert problem in done.stderr


def test_a_report_of_schema_1_is_read_and_reconciled_again(tmp_path: Path, accept_all_sink):
    """A report written before reconciliation was per recipient (schema 1, one mark per message): `report show`
    prints its reconciliation, `report reconcile` asks again, per message."""
    report, _ = run_report(
        *("--target", accept_all_sink.target, "--message-count", "5", "--concurrency", "1", "--run-id", "old1"),
        *("--reconcile", f"http://{accept_all_sink.http}"),
    )
    marks = report["reconciliation"]["marks"]
    report["schema"] = 1
    report["reconciliation"] = {
        "sink": f"http://{accept_all_sink.http}",
        "waited_s": 0,
        "delivered": 5, "bounced": 0, "dsn_returned": 0, "bounced_without_dsn": 0, "expired": 0,
        "dsn_after_delivery": 0, "deferred_pending": 0, "lost": 0, "duplicated": 0, "unexpected": 0, "unknown": 0,
        "attempts": {"1": 5}, "lost_ids": [], "duplicated_ids": [], "marks": marks,
    }  # fmt: skip
    path = tmp_path / "old.json"
    path.write_text(json.dumps(report))
    shown = run_trafficgen("report", "show", str(path))
    assert shown.returncode == 0, shown.stderr
    assert "of 5 messages the target accepted" in shown.stdout
    again = run_trafficgen("report", "reconcile", str(path), "--json", "-")
    assert again.returncode == 0, again.stderr
    reconciled = json.loads(again.stdout)["reconciliation"]
    assert reconciled["per"] == "message"
    assert reconciled["messages"]["delivered"] == 5
