"""The responder in process: the policy applied to conversations, without a socket and without a real sleep.

Each test builds what one sink worker holds (a SinkContext with a parsed policy, LocalLimits over a SharedState
whose clock the test moves by hand) and drives Responders as the engines do: the greeting, MAIL, each RCPT, DATA,
the end of DATA, RSET, the close. It checks the Answers they return and the ledger entries they report. The same
behaviours over real sockets, with real clocks, are in test_smtp.py, test_backpressure.py and test_providers.py.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest
from prometheus_client import REGISTRY

from harness.mail import dsn, generated
from harness.policies import ACCEPT_ALL, PROVIDERS, greylisting
from mailload import contract
from smartsink import metrics
from smartsink.config import build
from smartsink.ledger import Answered, LedgerEntry, ReturnedInDsn
from smartsink.limits.local import LocalLimits
from smartsink.limits.state import SharedState
from smartsink.policy import PolicyError, parse_policy
from smartsink.policy.model import Outcome
from smartsink.replies import Answer
from smartsink.responder import Responder, SinkContext

pytestmark = pytest.mark.asyncio

SENDER = "sender@client.test"
CLIENT = "127.0.0.21"  # the client address a responder is told (in process: nothing is sent)
MESSAGE = b"Subject: test\r\n\r\nhello\r\n"
QUEUED = "2.0.0 Ok: queued as "


class Clock:
    """A clock the test moves by hand (SharedState's rate buckets and greylist read it)."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recording(LocalLimits):
    """LocalLimits that also keeps every ledger entry the responders report, in order."""

    def __init__(self, state: SharedState):
        super().__init__(state)
        self.entries: list[LedgerEntry] = []

    def report(self, entry: LedgerEntry) -> None:
        self.entries.append(entry)
        super().report(entry)


@dataclass
class Sink:
    """One worker's shared context, its state and the hand-moved clock."""

    ctx: SinkContext
    state: SharedState
    limits: Recording
    clock: Clock

    async def connect(self, client: str = CLIENT) -> Responder:
        """A connection that was greeted (the engine sends the greeting first)."""
        responder = Responder(self.ctx, client)
        assert (await responder.greet()).accepted
        return responder


def sink_of(policy: str, **options: object) -> Sink:
    clock = Clock()
    state = SharedState(clock=clock)
    limits = Recording(state)
    ctx = SinkContext(build(seed=1, **options), parse_policy(policy, "test.toml"), limits)
    return Sink(ctx, state, limits, clock)


def said(answer: Answer | None) -> tuple[int, str]:
    """The reply an Answer puts on the wire, as (code, text: its lines)."""
    assert answer is not None, "the connection was cut without a reply"
    return answer.code, "\n".join(answer.lines)


async def send(
    responder: Responder, *recipients: str, head: bytes = MESSAGE, sender: str = SENDER
) -> list[tuple[int, str]]:
    """One transaction as a client that goes on after a refused recipient: MAIL, each RCPT, then (when a recipient
    was taken) DATA and its end. The reply to each RCPT and to the end of DATA."""
    responder.mail(sender)
    answers = []
    for recipient in recipients:
        action = await responder.rcpt(recipient)
        answers.append(said(action))
        if action.close:
            return answers
    if responder.recipients:
        assert not responder.data()
        reader = contract.dsn_reader(head)  # as the engines read a DSN
        returned = reader.result() if reader is not None else None
        answers.append(said(await responder.data_end(len(head), head, returned=returned)))
    return answers


async def outcome(responder: Responder, *recipients: str, head: bytes = MESSAGE, sender: str = SENDER) -> int:
    """The code that decided the transaction: its last reply."""
    return (await send(responder, *recipients, head=head, sender=sender))[-1][0]


def traced(run_id: str, seq: int, sent_ms: int) -> bytes:
    """A message carrying trafficgen's trace header, sent at `sent_ms` (Unix milliseconds)."""
    return contract.trace_header(run_id, seq, sent_ms).encode() + MESSAGE


def counted(name: str, **labels: str) -> float:
    metrics.publish()  # what a scrape does first: the per-message counts handed to prometheus-client
    return REGISTRY.get_sample_value(name, labels) or 0.0


class TestGreylisting:
    """greylist = "5m": the first attempt of a (client, sender, recipient) is refused, retries pass after 5 min."""

    POLICY = greylisting("5m")

    async def test_first_attempt_refused_then_passes_after_the_delay(self):
        """451 4.7.1 at RCPT first, 451 again a moment before the delay is over, 250 once it is, and from then on."""
        sink = sink_of(self.POLICY)
        before = counted("smartsink_greylisted_total", domain="greylist.test")

        async def attempt() -> tuple[int, str]:
            return (await send(await sink.connect(), "user@greylist.test"))[0]

        first = await attempt()
        assert first[0] == 451
        assert first[1].startswith("4.7.1 Greylisted")
        sink.clock.advance(299.5)
        assert (await attempt())[0] == 451  # too early
        sink.clock.advance(0.5)
        assert await attempt() == (250, "2.1.5 Ok")
        sink.clock.advance(3600)
        assert await attempt() == (250, "2.1.5 Ok")  # stays passed
        assert counted("smartsink_greylisted_total", domain="greylist.test") - before == 2

    async def test_each_triplet_is_greylisted_on_its_own(self):
        """Another recipient, another sender or another client is a new triplet, refused first; other domains pass."""
        sink = sink_of(self.POLICY)
        assert await outcome(await sink.connect(), "user@greylist.test") == 451
        sink.clock.advance(300)
        assert await outcome(await sink.connect(), "user@greylist.test") == 250
        assert await outcome(await sink.connect(), "other@greylist.test") == 451
        assert await outcome(await sink.connect(), "user@greylist.test", sender="else@client.test") == 451
        assert await outcome(await sink.connect("127.0.1.7"), "user@greylist.test") == 451
        assert await outcome(await sink.connect(), "user@example.com") == 250

    async def test_retry_is_counted_into_the_attempts_of_its_recipient(self):
        """The refusal at RCPT (no header yet) is reported for the recipient trafficgen numbered, and the retry
        that delivers it is its second attempt: two attempts, delivered once."""
        sink = sink_of(self.POLICY)
        recipient = "user-7.grey@greylist.test.sink.test"
        head = traced("grey", 7, int(time.time() * 1000))
        assert await outcome(await sink.connect(), recipient, head=head) == 451
        assert sink.limits.entries == [Answered("grey", (7,), Outcome.TEMPFAILED, "", None)]
        sink.clock.advance(300)
        assert await outcome(await sink.connect(), recipient, head=head) == 250
        ledger = sink.state.ledgers.run("grey")
        assert ledger is not None
        summary = ledger.summary()
        assert (summary["seen"], summary["delivered"], summary["deferred"]) == (1, 1, 0)
        assert summary["attempts"]["2"] == 1
        assert sum(summary["attempts"].values()) == 1


class TestRate:
    """rate = "2/s": a bucket of two accepted messages that refills at two a second, never above two."""

    POLICY = '[default]\nrate = "2/s"\n\n[[throttle."default"]]\ncode = 451\nmsg = "4.7.28 Slow down"\n'

    async def test_bucket_refills_with_the_clock(self):
        """Two at once, then the throttle reply; half a second gives one more; a minute gives two, not 120."""
        sink = sink_of(self.POLICY)
        client = await sink.connect()
        assert [await outcome(client, "a@example.com") for _ in range(3)] == [250, 250, 451]
        assert (await send(client, "a@example.com"))[-1] == (451, "4.7.28 Slow down")
        sink.clock.advance(0.5)
        assert [await outcome(client, "a@example.com") for _ in range(2)] == [250, 451]
        sink.clock.advance(60)
        assert [await outcome(client, "a@example.com") for _ in range(3)] == [250, 250, 451]

    async def test_rate_at_rcpt(self):
        """With reject_at = "rcpt" the rate is taken at RCPT: an empty bucket refuses the recipient there."""
        sink = sink_of('[default]\nrate = "1/s"\nreject_at = "rcpt"\n')
        client = await sink.connect()
        assert [code for code, _ in await send(client, "a@example.com")] == [250, 250]
        refused = await send(client, "a@example.com")
        assert refused == [(451, "4.7.28 Rate limited: too many messages for this domain, please try again later")]
        sink.clock.advance(1)
        assert [code for code, _ in await send(client, "a@example.com")] == [250, 250]


class TestRateStart:
    """rate_start: a rate's bucket starts full (one period's worth at once) or empty (the rate from the first
    message), at its first use: after a start, or after the state is forgotten (DELETE /state), never by accident
    of when the sink started."""

    @staticmethod
    def policy(start: str) -> str:
        throttle = '[[throttle."default"]]\ncode = 451\nmsg = "4.7.28 x"\n'
        return f'[default]\nrate = "4/s"\nrate_start = "{start}"\n\n{throttle}'

    async def test_full_gives_a_burst_then_the_rate(self):
        """full: four at once, then the throttle; a reset brings the burst back, not a sink restart."""
        sink = sink_of(self.policy("full"))
        client = await sink.connect()
        assert [await outcome(client, "a@example.com") for _ in range(5)] == [250] * 4 + [451]
        sink.clock.advance(1000)  # however long the sink has been up, a used bucket holds one period's worth
        assert [await outcome(client, "a@example.com") for _ in range(5)] == [250] * 4 + [451]
        sink.state.forget()
        assert [await outcome(client, "a@example.com") for _ in range(5)] == [250] * 4 + [451]

    async def test_empty_gives_the_rate_from_the_first_message(self):
        """empty: the first message finds no room; a quarter of a second later one passes, and so on."""
        sink = sink_of(self.policy("empty"))
        client = await sink.connect()
        assert await outcome(client, "a@example.com") == 451
        sink.clock.advance(0.25)
        assert [await outcome(client, "a@example.com") for _ in range(2)] == [250, 451]
        sink.clock.advance(1)
        assert [await outcome(client, "a@example.com") for _ in range(5)] == [250] * 4 + [451]
        sink.state.forget()
        assert await outcome(client, "a@example.com") == 451

    async def test_a_bad_value_is_named(self):
        """rate_start takes "full" or "empty"; anything else is a policy problem with its line."""
        with pytest.raises(PolicyError) as caught:
            parse_policy('[default]\nrate = "4/s"\nrate_start = "half"\n', "start.toml")
        assert str(caught.value) == (
            'start.toml:3: [default] rate_start: must be "full" (one period\'s worth at once) or "empty" (the rate '
            "from the start), got 'half'"
        )


class TestAcceptAll:
    """--accept-all: a plain black hole, whatever the policy would say."""

    async def test_every_recipient_250_at_once(self):
        """A policy that bounces, delays, rate-limits and greylists is not applied: 250 to each RCPT and message,
        tempfail@ included, without waiting."""
        policy = '[default]\nbounce = 100\nlatency = "10s"\nrate = "1/h"\ngreylist = "5m"\nmax_concurrency = 1\n'
        sink = sink_of(policy, accept_all=True)
        client = await sink.connect()
        loop = asyncio.get_running_loop()
        started = loop.time()
        for recipient in ("a@example.com", "tempfail@gmail.com", "permfail@yahoo.com", "450-x@example.com"):
            (rcpt, queued) = await send(client, recipient)
            assert rcpt == (250, "2.1.5 Ok")
            assert queued[0] == 250
        assert loop.time() - started < 5  # the policy's 10 s latency was not applied, four times over
        assert sink.state.summary()["rate_buckets"] == sink.state.summary()["greylist"] == 0


class TestMessagesPerConnection:
    async def test_the_one_after_the_limit_gets_421_and_a_close(self):
        """max_messages_per_connection = 3: three messages pass; the fourth's RCPT gets 421 and closes; a new
        connection starts again."""
        sink = sink_of(ACCEPT_ALL + "max_messages_per_connection = 3\n")
        client = await sink.connect()
        for _ in range(3):
            (_, queued) = await send(client, "b@example.com")
            assert queued[0] == 250
        client.mail(SENDER)
        refused = await client.rcpt("b@example.com")
        assert said(refused) == (421, "4.7.0 Maximum number of messages per connection reached, closing connection")
        assert refused.close
        client.closed()
        assert await outcome(await sink.connect(), "b@example.com") == 250


class TestConcurrency:
    """max_concurrency = 1: one transaction in flight for the domain; its slot is freed however it ends."""

    POLICY = ACCEPT_ALL + "max_concurrency = 1\n"

    async def holding(self, sink: Sink) -> Responder:
        """A connection whose transaction took the slot (its first recipient was accepted)."""
        client = await sink.connect()
        client.mail(SENDER)
        assert (await client.rcpt("a@example.com")).accepted
        return client

    async def refused(self, sink: Sink) -> bool:
        """Whether a second transaction is refused with 421 (and the connection closed)."""
        other = await sink.connect()
        other.mail(SENDER)
        action = await other.rcpt("b@example.com")
        other.closed()
        if action.accepted:
            return False
        assert said(action) == (421, "4.7.0 Too many concurrent transactions for this domain, closing connection")
        assert action.close
        return True

    async def test_released_by_rset(self):
        """RSET ends the transaction and frees its slot; the connection stays usable."""
        sink = sink_of(self.POLICY)
        client = await self.holding(sink)
        assert await self.refused(sink)
        client.reset()
        assert not await self.refused(sink)

    async def test_released_by_the_close(self):
        """A connection that goes away mid-transaction gives its slot back."""
        sink = sink_of(self.POLICY)
        client = await self.holding(sink)
        assert await self.refused(sink)
        client.closed()
        assert not await self.refused(sink)

    async def test_released_at_the_end_of_data(self):
        """The answer to the end of DATA ends the transaction and frees its slot."""
        sink = sink_of(self.POLICY)
        client = await self.holding(sink)
        assert (await client.data_end(len(MESSAGE), MESSAGE)).accepted
        assert not await self.refused(sink)


class TestConnections:
    async def test_max_connections_refused_at_the_greeting_and_freed_by_a_close(self):
        """[listener] max_connections = 2: the third greeting is 421 and a close; a close frees a slot, and a
        refused connection's own close does not."""
        sink = sink_of("[listener]\nmax_connections = 2\n")
        first, _ = await sink.connect(), await sink.connect()
        third = Responder(sink.ctx, CLIENT)
        greeting = await third.greet()
        assert said(greeting) == (421, "4.7.0 Too many connections, please try again later")
        assert greeting.close
        third.closed()
        assert not (await Responder(sink.ctx, CLIENT).greet()).accepted
        first.closed()
        assert (await Responder(sink.ctx, CLIENT).greet()).accepted


class TestEscalation:
    async def test_escalation_ends_after_its_time(self):
        """escalate for = "30m": blocked until 30 minutes after the escalation, then answered as before."""
        policy = (
            '[domain."ms.test"]\ndefer = 100\nreject_at = "rcpt"\n'
            'escalate = { after = 2, within = "1m", to = "block", for = "30m" }\n'
        )
        sink = sink_of(policy)
        responder = Responder(sink.ctx, "127.0.0.2")
        codes = []
        for step in (0, 1, 2, 1799, 1801):
            sink.clock.now = 1000.0 + step
            responder.mail(SENDER)
            action = await responder.rcpt("u@ms.test")
            codes.append(action.code if action else 0)
        # two deferrals escalate; blocked at +2 s and +1799 s; the block is over at +1801 s (deferred again).
        assert codes == [451, 451, 550, 550, 451]


FORCED = {
    "tempfail": ("tempfail@gmail.com", (452, "4.2.2 gmail: over quota")),
    "permfail": ("permfail@yahoo.com", (554, "5.7.9 yahoo: policy")),
    "suffixed": ("tempfail@gmail.com.sink.test", (452, "4.2.2 gmail: over quota")),
    "unknown-domain": ("permfail@example.org", (550, "5.1.1 The email account that you tried to reach does not exist")),
    "450-echo": ("450-hello@gmail.com", (450, "4.0.0 you said 450-hello")),
    "bounce-100": ("someone@bounceall.test", (550, "5.1.1 The email account that you tried to reach does not exist")),
}


class TestForcedUsers:
    @pytest.mark.parametrize(("recipient", "reply"), FORCED.values(), ids=FORCED.keys())
    async def test_answered_at_the_end_of_data(self, recipient, reply):
        """The user part forces the answer, from the recipient domain's own lists; RCPT itself is accepted."""
        sink = sink_of(PROVIDERS)
        assert await send(await sink.connect(), recipient) == [(250, "2.1.5 Ok"), reply]

    async def test_250_dash_is_accepted_where_everyone_else_bounces(self):
        """250-... is accepted by a domain that bounces 100%."""
        sink = sink_of(PROVIDERS)
        (rcpt, queued) = await send(await sink.connect(), "250-fine@bounceall.test")
        assert rcpt == (250, "2.1.5 Ok")
        assert queued[0] == 250
        assert queued[1].startswith(QUEUED)


class TestRejectAt:
    async def test_data_answers_the_whole_message(self):
        """reject_at = "data" (the default): every RCPT gets 250 and the end of DATA the worst recipient's answer."""
        sink = sink_of(PROVIDERS)
        answers = await send(await sink.connect(), "ok@gmail.com", "permfail@gmail.com")
        assert answers == [(250, "2.1.5 Ok"), (250, "2.1.5 Ok"), (550, "5.1.1 gmail: no such user")]
        assert sink.limits.entries == []

    async def test_rcpt_answers_each_recipient(self):
        """reject_at = "rcpt": the refused recipient is answered at RCPT (and, numbered by trafficgen, reported to
        the ledger at once); the message goes to the others, and its answer is reported for them alone."""
        sink = sink_of(
            PROVIDERS
            + '\n[domain."gmail.com"]\nreject_at = "rcpt"\n[domain."no.test"]\nreject_at = "rcpt"\nbounce = 100\n'
        )
        answers = await send(await sink.connect(), "permfail@gmail.com", "ok@gmail.com")
        assert answers[:2] == [(550, "5.1.1 gmail: no such user"), (250, "2.1.5 Ok")]
        assert answers[2][0] == 250
        assert answers[2][1].startswith(QUEUED)
        assert sink.limits.entries == [], "addresses trafficgen did not number, a message without a trace header"
        answers = await send(await sink.connect(), "user-4.r@no.test", "user-5.r@no.test", "user-6.r@gmail.com")
        assert [code for code, _ in answers] == [550, 550, 250, 250]
        assert sink.limits.entries == [
            Answered("r", (4,), Outcome.PERMFAILED, "", None),
            Answered("r", (5,), Outcome.PERMFAILED, "", None),
            Answered("r", (6,), Outcome.ACCEPTED, "gmail.com", None),
        ]

    async def test_a_run_id_never_forces_an_answer(self):
        """A run id holding "permfail" in a numbered recipient is not a forced failure: the policy reads user-<n>."""
        sink = sink_of(PROVIDERS)
        assert await outcome(await sink.connect(), "user-1.permfail@gmail.com") == 250
        assert await outcome(await sink.connect(), "permfail-user-1@gmail.com") == 550


class TestNullSender:
    """Mail from <> (the DSNs an MTA returns): accepted whatever the rules, unless [listener] null_sender = "policy"."""

    RULES = PROVIDERS + greylisting("5m").removeprefix(ACCEPT_ALL) + '\n[domain."slow.test"]\nlatency = "1h"\n'

    @pytest.mark.parametrize(
        "recipient", ["someone@bounceall.test", "permfail@gmail.com", "user@greylist.test", "x@slow.test"]
    )
    async def test_accepted_by_default(self, recipient):
        """A bouncing domain, a forced failure, greylisting, an hour of latency: all accepted, at once."""
        sink = sink_of(self.RULES)
        answers = await asyncio.wait_for(send(await sink.connect(), recipient, sender=""), 5)
        assert answers[0] == (250, "2.1.5 Ok")
        assert answers[1][0] == 250
        assert answers[1][1].startswith(QUEUED)

    @pytest.mark.parametrize(
        ("recipient", "expected"),
        [("someone@bounceall.test", [250, 550]), ("permfail@gmail.com", [250, 550]), ("user@greylist.test", [451])],
    )
    async def test_policy_applies_the_rules(self, recipient, expected):
        """null_sender = "policy": mail from <> gets the answers any other mail gets."""
        sink = sink_of('[listener]\nnull_sender = "policy"\n' + self.RULES)
        assert [code for code, _ in await send(await sink.connect(), recipient, sender="")] == expected


class TestLedgerEntries:
    async def test_answered_with_its_transit_time(self):
        """A trafficgen message's answer is reported for each recipient trafficgen numbered (the others: for the
        message, by its trace header) with the domain without the suffix and the time since the trace header's t=
        (none for a deferral: the message is not there yet)."""
        sink = sink_of(PROVIDERS)
        sent = int(time.time() * 1000) - 5000
        await send(
            await sink.connect(), "user-1.run1@gmail.com.sink.test", "Else@Yahoo.com", head=traced("run1", 1, sent)
        )
        await send(await sink.connect(), "tempfail@gmail.com.sink.test", head=traced("run1", 2, sent))
        accepted, deferred = sink.limits.entries
        assert isinstance(accepted, Answered)
        assert isinstance(deferred, Answered)
        assert accepted._replace(transit_ms=None) == Answered("run1", (1,), Outcome.ACCEPTED, "gmail.com", None)
        assert accepted.transit_ms is not None
        assert 5000 <= accepted.transit_ms < 5000 + 5000
        assert deferred == Answered("run1", (2,), Outcome.TEMPFAILED, "gmail.com", None)
        ledger = sink.state.ledgers.run("run1")
        assert ledger is not None
        summary = ledger.summary()
        assert (summary["seen"], summary["delivered"], summary["deferred"]) == (2, 1, 1)
        assert set(ledger.transit) == {"gmail.com"}

    async def test_ledger_entry_of_an_answered_message(self):
        """Mail to an address trafficgen did not number is reported for its message, with its transit time."""
        sink = sink_of(ACCEPT_ALL)
        responder = Responder(sink.ctx, "127.0.0.2")
        responder.mail(SENDER)
        await responder.rcpt("User@x.test")
        head = contract.trace_header("Run1", 7, int(time.time() * 1000) - 1500).encode() + b"Subject: x\r\n\r\n"
        await responder.data_end(len(head), head)
        (entry,) = sink.limits.entries
        assert isinstance(entry, Answered)
        assert (entry.tag, entry.numbers, entry.domain) == ("run1", (7,), "x.test")
        assert entry.transit_ms is not None
        assert 1500 <= entry.transit_ms < 60_000

    async def test_dsn_returning_recipients(self):
        """A failure DSN (built with the email package) from <> is accepted and reported as returning each of the
        recipients it names."""
        sink = sink_of(PROVIDERS)
        data = dsn(generated("dsnrun", 42, recipients=3))
        answers = await send(await sink.connect(), "noreply@gmail.com.sink.test", head=data, sender="")
        assert answers[-1][0] == 250
        assert sink.limits.entries == [ReturnedInDsn("dsnrun", (126, 127, 128))]
        ledger = sink.state.ledgers.run("dsnrun")
        assert ledger is not None
        assert ledger.summary()["dsn_received"] == 3

    async def test_mail_without_a_trace_reports_nothing(self):
        """Mail that trafficgen did not send (no trace header, no numbered recipient, not a DSN) leaves the ledger
        alone."""
        sink = sink_of(PROVIDERS)
        await send(await sink.connect(), "user@gmail.com")
        await send(await sink.connect(), "noreply@gmail.com", head=dsn(MESSAGE), sender="")
        assert sink.limits.entries == []
