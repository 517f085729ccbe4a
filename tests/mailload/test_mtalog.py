"""Reading MTA logs (mailload.mtalog): each format's lines to events, masking, bounded tallies, the files (plain,
gzip, zstd, cut short) and the reading's report. The Postfix lines are copied from what the suite's private Postfix
(tests/harness/postfix.py) wrote; the KumoMTA records follow its documented record format (bench.maillogs)."""

from __future__ import annotations

import gzip
import io
import json
import os
import pty
import random
import select

import pytest
import zstandard

from bench import maillogs
from mailload.mtalog import exim, formats, kumomta, postfix
from mailload.mtalog.aggregate import Aggregate
from mailload.mtalog.events import Attempt, Received, Recipient, Stage
from mailload.mtalog.masking import mask
from mailload.mtalog.read import LogError, progress_bar, read_logs, summary
from mailload.mtalog.sources import expand
from mailload.mtalog.tally import LogHistogram, Timeline, TopCounter

# Lines as the suite's private Postfix 3.7 wrote them (maillog_file), one message of two recipients: a deferral at
# RCPT and an acceptance, then a retry of the deferred one.
POSTFIX = """\
Dec 06 09:30:20 mta postfix/smtpd[12316]: D3CA920D6F8: client=localhost[127.0.0.1]
Dec 06 09:30:20 mta postfix/cleanup[12320]: D3CA920D6F8: message-id=<2ced63fd6fd3.0@gmail.com.sink.test>
Dec 06 09:30:20 mta postfix/qmgr[12314]: D3CA920D6F8: from=<noreply@gmail.com.sink.test>, size=11827, nrcpt=2 (queue active)
Dec 06 09:30:20 mta postfix/smtp[12323]: D3CA920D6F8: to=<user-0@gmail.com.sink.test>, relay=127.0.0.1[127.0.0.1]:45053, delay=0.04, delays=0.01/0.01/0/0.01, dsn=4.3.0, status=deferred (host 127.0.0.1[127.0.0.1] said: 451 4.3.0 Temporary local problem, please try again later (in reply to RCPT TO command))
Dec 06 09:30:20 mta postfix/smtp[12323]: D3CA920D6F8: to=<user-1@gmail.com.sink.test>, relay=127.0.0.1[127.0.0.1]:45053, delay=0.04, delays=0.01/0.01/0/0.02, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 0)
Dec 06 09:30:21 mta postfix/qmgr[12314]: D3CA920D6F8: from=<noreply@gmail.com.sink.test>, size=11827, nrcpt=2 (queue active)
Dec 06 09:30:21 mta postfix/smtp[12326]: D3CA920D6F8: to=<user-0@gmail.com.sink.test>, relay=127.0.0.1[127.0.0.1]:45053, delay=0.16, delays=0.15/0/0.01/0, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 15)
Dec 06 09:30:21 mta postfix/qmgr[12314]: D3CA920D6F8: removed
"""  # noqa: E501 (log lines as Postfix and Exim write them)


def feed_all(parser: formats.Parser, text: str) -> list[object]:
    events: list[object] = []
    for line in text.splitlines():
        found = parser.feed(line)
        assert found is not None, f"not understood: {line}"
        events.extend(found)
    return events


class TestPostfix:
    def test_a_message_its_recipients_and_each_attempt(self):
        """qmgr's first from= is the message (its retries are not), each to= an attempt, the first per recipient a
        Recipient; the code, text, step and transmission time come from the line."""
        events = feed_all(postfix.Parser(), POSTFIX)
        received = [e for e in events if isinstance(e, Received)]
        assert [(r.sender_domain, r.size, r.recipients) for r in received] == [("gmail.com.sink.test", 11827, 2)]
        assert [e.domain for e in events if isinstance(e, Recipient)] == ["gmail.com.sink.test"] * 2
        attempts = [e for e in events if isinstance(e, Attempt)]
        assert [(a.code, a.stage, a.seconds) for a in attempts] == [
            (451, Stage.RCPT, 0.01),
            (250, Stage.DATA, 0.02),
            (250, Stage.DATA, 0.0),
        ]
        assert attempts[0].text == "4.3.0 Temporary local problem, please try again later"

    def test_retries_of_messages_from_before_the_log_are_not_traffic(self):
        """A queue id never seen taken in (its smtpd/cleanup lines are before the log) gives attempts only."""
        later = "\n".join(POSTFIX.splitlines()[5:])
        parser = postfix.Parser()
        events = feed_all(parser, later)
        assert not [e for e in events if isinstance(e, Received | Recipient)]
        assert len([e for e in events if isinstance(e, Attempt)]) == 1
        assert parser.before_log == 1

    @pytest.mark.parametrize(
        ("why", "status", "expected"),
        [
            ("connect to mx.example[127.0.0.21]:25: Connection refused", "deferred", (None, Stage.UNKNOWN)),
            ("host mx.example[127.0.0.21] refused to talk to me: 421 4.7.0 Too busy", "deferred", (421, Stage.OTHER)),
            (
                "host mx.example[127.0.0.21] said: 552 5.3.4 Message too big (in reply to end of DATA command)",
                "bounced",
                (552, Stage.DATA),
            ),
            (
                "host mx.example[127.0.0.21] said: 550 5.7.1 Sender refused (in reply to MAIL FROM command)",
                "bounced",
                (550, Stage.OTHER),
            ),
            ("delivered to mailbox", "sent", (250, Stage.DATA)),
        ],
        ids=["no-answer", "greeting", "end-of-data", "mail-from", "local"],
    )
    def test_replies(self, why, status, expected):
        """Each kind of reason gives its code and step; none where no server answered."""
        line = (
            "2026-03-05T10:00:00.123456+00:00 mta postfix-out/smtp[77]: 4BF3A1E02C: to=<a.b@example.com>, "
            f"orig_to=<c@example.com>, relay=mx.example[127.0.0.21]:25, conn_use=3, delay=1.2, delays=0.1/0/0.5/0.6, "
            f"dsn=5.0.0, status={status} ({why})"
        )
        (attempt,) = postfix.Parser().feed(line) or []
        assert isinstance(attempt, Attempt)
        assert (attempt.code, attempt.stage) == expected
        assert attempt.time == pytest.approx(1772704800.123456)

    def test_syslog_years(self):
        """A syslog line has no year: the one that puts it at or before the file's time (December, read in
        January, is last year's)."""
        parser = postfix.Parser()
        parser.start_file(1767312000.0)  # 2026-01-02
        line = "Dec 31 23:59:59 mta postfix/qmgr[1]: ABCDE12345: removed"
        parser.feed("Dec 31 23:59:59 mta postfix/smtpd[1]: ABCDE12345: client=x[127.0.0.1]")
        (received,) = parser.feed(
            "Dec 31 23:59:59 mta postfix/qmgr[1]: ABCDE12345: from=<a@b.example>, size=1, nrcpt=1"
        )
        assert isinstance(received, Received)
        assert received.time == 1767225599.0  # 2025-12-31 23:59:59 UTC
        assert parser.feed(line) == []

    def test_open_queue_ids_are_bounded(self):
        """Past max_open ids taken in and not removed, the oldest are forgotten and counted."""
        parser = postfix.Parser(max_open=10)
        for n in range(25):
            parser.feed(f"Mar  5 10:00:00 mta postfix/smtpd[1]: {n:010X}: client=x[127.0.0.1]")
        assert len(parser.open) == 10
        assert parser.evicted == 15

    def test_other_lines(self):
        """Other programs' lines are read and not used; a line that is not syslog's is not understood."""
        parser = postfix.Parser()
        assert parser.feed("Mar  5 10:00:00 mta sshd[1]: Accepted publickey for root") == []
        assert parser.feed("Mar  5 10:00:00 mta postfix/qmgr[1]: D3CA920D6F8: to=<x@y>, garbled") is None
        assert parser.feed("garbage") is None


EXIM = """\
2026-03-05 10:00:00 1rhXyZ-000ABC-12 <= bounces+123@news.example H=app [127.0.0.1] P=esmtp S=5120 id=abc@news.example T="Hello for you" for ana.p@gmail.com luis.q@gmail.com
2026-03-05 10:00:01 1rhXyZ-000ABC-12 => ana.p@gmail.com R=dnslookup T=remote_smtp H=mx.gmail.com [127.0.0.1] X=TLS1.3 C="250 2.0.0 OK 1458889573 vy4si17489309pab.124 - gsmtp" DT=0.3s
2026-03-05 10:00:01 1rhXyZ-000ABC-12 == luis.q@gmail.com R=dnslookup T=remote_smtp defer (-44) H=mx.gmail.com [127.0.0.1]: SMTP error from remote mail server after RCPT TO:<luis.q@gmail.com>: 451 4.7.1 Greylisted
2026-03-05 10:10:01 1rhXyZ-000ABC-12 ** luis.q@gmail.com R=dnslookup T=remote_smtp H=mx.gmail.com [127.0.0.1]: SMTP error from remote mail server after end of data: 550 5.7.1 Refused
2026-03-05 10:10:01 1rhXyZ-000ABC-12 Completed
2026-03-05 10:10:02.250 +0100 [4242] 1rhXzA-0000000ABC-1234 <= <> R=1rhXyZ-000ABC-12 U=Debian-exim P=local S=1197
"""  # noqa: E501 (log lines as Postfix and Exim write them)


class TestExim:
    def test_messages_deliveries_deferrals_failures(self):
        """<= a message (its `for` recipients counted, the subject never read), => accepted with C= and DT=, ==
        and ** with the remote reply and its step; the sender <> a bounce notice."""
        events = feed_all(exim.Parser(), EXIM)
        received = [e for e in events if isinstance(e, Received)]
        assert [(r.sender_domain, r.size, r.recipients) for r in received] == [
            ("news.example", 5120, 2),
            (None, 1197, 0),
        ]
        assert received[1].time == 1772701802.25  # +0100: 09:10:02.25 UTC
        attempts = [(a.code, a.stage, a.seconds) for a in events if isinstance(a, Attempt)]
        assert attempts == [(250, Stage.DATA, 0.3), (451, Stage.RCPT, None), (550, Stage.DATA, None)]
        assert [e.domain for e in events if isinstance(e, Recipient)] == ["gmail.com", "gmail.com"]

    def test_elapsed_times(self):
        """DT= in Exim's forms."""
        assert exim._duration("1m2s") == 62
        assert exim._duration("1h") == 3600
        assert exim._duration("0.123s") == pytest.approx(0.123)


class TestKumoMTA:
    def records(self) -> list[dict]:
        log = maillogs.Log(40, seed=5)
        return list(maillogs.kumomta_records(log))

    def test_reception_and_attempts(self):
        """Reception: a message, its recipient's domain, tenant and campaign (from the queue name or the logged
        headers); Delivery, TransientFailure, Bounce: attempts with the peer's code, enhanced code and step."""
        parser = kumomta.Parser()
        log = maillogs.Log(300, seed=5)
        events = [e for r in maillogs.kumomta_records(log) for e in parser.feed(json.dumps(r)) or []]
        received = [e for e in events if isinstance(e, Received)]
        assert len(received) == 300
        tenants = {t: sum(1 for r in received if (r.tenant or "") == t) for t in log.truth.tenants}
        assert tenants == dict(log.truth.tenants)
        campaigns = {c: sum(1 for r in received if (r.campaign or "") == c) for c in log.truth.campaigns}
        assert campaigns == dict(log.truth.campaigns)
        attempts = [e for e in events if isinstance(e, Attempt)]
        assert sum(sum(c.values()) for c in log.truth.answers.values()) == len(attempts)
        assert all(a.code is not None and a.text[:1] in "245" and a.source in maillogs.SOURCES for a in attempts)

    @pytest.mark.parametrize(
        ("queue", "expected"),
        [
            ("campaign:tenant@domain.example", ("tenant", "campaign")),
            ("tenant@domain.example!routing.example", ("tenant", None)),
            ("campaign:@domain.example", (None, "campaign")),
            ("domain.example", (None, None)),
        ],
    )
    def test_queue_names(self, queue, expected):
        """KumoMTA's queue name `campaign:tenant@domain!routing_domain`, each part optional."""
        assert kumomta._queue_parts(queue) == expected

    def test_its_own_answers_are_no_reply(self):
        """A response kumod made itself ("KumoMTA internal: ...") is no server's answer; other types are read and
        not used; a line that is not a record is not understood."""
        record = {**self.records()[1], "type": "TransientFailure"}
        record["response"] = {"code": 451, "content": "KumoMTA internal: failed to connect to any candidate hosts"}
        (attempt,) = kumomta.Parser().feed(json.dumps(record)) or []
        assert isinstance(attempt, Attempt)
        assert attempt.code is None
        assert kumomta.Parser().feed(json.dumps({**record, "type": "Expiration"})) == []
        assert kumomta.Parser().feed('{"type": "Delivery"') is None
        assert kumomta.Parser().feed("[1, 2]") is None

    def test_recipient_as_a_list(self):
        """Newer versions log the recipient as a list: one attempt each."""
        record = {**self.records()[1], "recipient": ["a@x.example", "b@y.example"]}
        events = kumomta.Parser().feed(json.dumps(record)) or []
        assert [e.domain for e in events if isinstance(e, Attempt)] == ["x.example", "y.example"]


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        (
            "5.1.1 <maria.482913@gmail.com>: Recipient address rejected",
            "5.1.1 <{recipient}>: Recipient address rejected",
        ),
        (
            "4.7.0 [127.0.0.9] Our system has detected an unusual rate  d9443c01a7336-21f4a4csi12345678pfb.123 - gsmtp",
            "4.7.0 [{client_ip}] Our system has detected an unusual rate <id>-<id>.123 - gsmtp",
        ),
        ("5.7.1 Client host [2001:db8::1] blocked", "5.7.1 Client host [{client_ip}] blocked"),
        ("2.0.0 OK ids=8a5475ccbbc611eda12250ebf67f93bd", "2.0.0 OK ids=<id>"),
        ("4.7.650 rate limited (S775) at 12:30:45", "4.7.650 rate limited (S775) at 12:30:45"),
    ],
    ids=["address", "ipv4-and-ids", "ipv6", "hex-id", "kept"],
)
def test_masking(raw, masked):
    """Addresses, IP addresses and ids are masked; codes, words and times stay."""
    assert mask(raw) == masked


class TestTallies:
    def test_top_counter_keeps_the_total_and_the_largest(self):
        """Over capacity the smaller half is dropped into `pruned`: the total stays exact, the heavy keys stay."""
        rng = random.Random(3)
        counter: TopCounter[str] = TopCounter(capacity=50)
        heavy = {"a": 0, "b": 0}
        for n in range(20_000):
            key = rng.choice("ab") if n % 2 else f"tail-{n}"
            if key in heavy:
                heavy[key] += 1
            counter.add(key)
        assert counter.total == 20_000
        assert len(counter.counts) <= 50
        assert dict(counter.top(2)) == heavy
        assert counter.pruned == 20_000 - sum(counter.counts.values())

    def test_histogram_quantiles_within_one_percent(self):
        """Quantiles of a log-normal sample are within 1% of the exact ones (fixed seed)."""
        rng = random.Random(7)
        values = sorted(rng.lognormvariate(10, 1.5) for _ in range(50_000))
        histogram = LogHistogram()
        for v in values:
            histogram.add(v)
        for q in (0.01, 0.1, 0.5, 0.9, 0.99):
            exact = values[int(q * len(values))]
            assert histogram.quantile(q) == pytest.approx(exact, rel=0.011)
        assert (histogram.quantile(0), histogram.quantile(1)) == (values[0], values[-1])

    def test_timeline_coarsens_and_keeps_every_event(self):
        """A week of arrivals in 1 s intervals doubles its interval until the span fits; nothing is lost."""
        timeline = Timeline()
        for n in range(10_000):
            timeline.add(1_700_000_000 + n * 60.0)
        assert timeline.total == 10_000
        assert len(timeline.counts) <= 4097
        assert timeline.between(timeline.first - 1e6, timeline.last + 1e6) == pytest.approx(10_000)

    def test_answered_domains_are_bounded(self):
        """Past the bound, the least answered half of the domains fold into `others`; no answer is lost."""
        aggregate = Aggregate(answered_domains=20)
        for n in range(200):
            for _ in range(1 + (n == 7) * 50):
                aggregate.add(Attempt(None, f"d{n}.example", 250))
        assert len(aggregate.answers) <= 21
        assert aggregate.replies == 250
        assert "d7.example" in aggregate.answers


def written(path, text: str) -> str:
    path.write_text(text)
    return str(path)


class TestFiles:
    def write(self, tmp_path, kind: str, lines: list[str], name: str = "log") -> str:
        path = tmp_path / name
        data = "".join(line + "\n" for line in lines).encode()
        if kind == "gzip":
            data = gzip.compress(data)
        elif kind == "zstd":
            data = zstandard.ZstdCompressor().compress(data)
        path.write_bytes(data)
        return str(path)

    @pytest.mark.parametrize("kind", ["", "gzip", "zstd"])
    def test_compressions_told_by_their_bytes(self, tmp_path, kind):
        """Plain, gzip and zstd files read alike, whatever their names."""
        records = [json.dumps(r) for r in maillogs.kumomta_records(maillogs.Log(30, seed=2))]
        aggregate, report = read_logs([self.write(tmp_path, kind, records)])
        assert aggregate.messages == 30
        assert report.files[0].compression == kind
        assert report.total("used") == len(records)

    def test_a_segment_still_being_written(self, tmp_path):
        """A zstd stream cut short (the segment kumod is writing) gives the lines before the cut and says so."""
        records = [json.dumps(r) for r in maillogs.kumomta_records(maillogs.Log(400, seed=2))]
        whole = zstandard.ZstdCompressor().compress("".join(r + "\n" for r in records).encode())
        path = tmp_path / "20260305-100000"
        path.write_bytes(whole[: len(whole) * 2 // 3])
        aggregate, report = read_logs([str(tmp_path)])
        assert 0 < report.total("lines") < len(records)
        assert report.files[0].cut_short is not None
        assert any("ends early" in line for line in summary(aggregate, report))

    def test_lines_not_understood_are_counted(self, tmp_path):
        """Broken records are counted, with where the first is; the rest is read."""
        records = [json.dumps(r) for r in maillogs.kumomta_records(maillogs.Log(20, seed=2))]
        path = self.write(tmp_path, "", [*records[:5], '{"type": "Reception", "sender": ', *records[5:], "}{"])
        aggregate, report = read_logs([path])
        assert report.total("not_understood") == 2
        assert report.files[0].first_not_understood == 6
        assert aggregate.messages == 20

    @pytest.mark.parametrize(
        ("setup", "fmt", "message"),
        [
            (lambda p: str(p / "nope"), "auto", "nope: no such file or directory"),
            (lambda p: (p / "d").mkdir() or str(p / "d"), "auto", "a directory with no log file in it"),
            (lambda p: written(p / "t", "hello\nworld\n"), "auto", "not a log of KumoMTA, Postfix or Exim"),
            (lambda p: written(p / "e", ""), "auto", "no mail was taken in or delivered"),
            (lambda p: written(p / "m", POSTFIX), "exim", "not Exim main log lines"),
            (lambda p: written(p / "m", POSTFIX), "sendmail", "--format 'sendmail'"),
        ],
        ids=["missing", "empty-directory", "not-a-log", "empty-file", "wrong-format", "unknown-format"],
    )
    def test_logs_that_cannot_be_used(self, tmp_path, setup, fmt, message):
        """Each is a LogError naming the file and the problem."""
        path = setup(tmp_path)
        with pytest.raises(LogError, match=message.replace("(", r"\(").replace("'", ".")):
            read_logs([path], fmt)

    def test_formats_are_told_apart(self):
        """The first line of ours decides; lines of other programs before it are passed over."""
        kumo = json.dumps(next(maillogs.kumomta_records(maillogs.Log(1))))
        assert formats.detect(["Mar  5 10:00:00 mta kernel: x", *POSTFIX.splitlines()]) == "postfix"
        assert formats.detect(EXIM.splitlines()) == "exim"
        assert formats.detect([kumo]) == "kumomta"
        assert formats.detect(["nothing", "here"]) is None


def test_progress_bar_on_a_terminal(tmp_path):
    """On a terminal (a real pseudo-terminal) a bar shows the file, the lines and their rate; elsewhere none."""
    path = written(tmp_path / "maillog", POSTFIX)
    leader, follower = pty.openpty()
    with os.fdopen(follower, "w") as terminal:
        with progress_bar([path], stream=terminal) as update:
            assert update is not None
            log = expand([path])[0]
            update(log, log.size // 2, 1234)
        with progress_bar([path], enabled=False, stream=terminal) as none:
            assert none is None
    shown = b""
    while select.select([leader], [], [], 0.5)[0]:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert b"maillog" in shown
    assert b"1,234 lines" in shown
    with progress_bar([path], stream=io.StringIO()) as not_a_terminal:
        assert not_a_terminal is None
