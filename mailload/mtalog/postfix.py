"""Postfix's log lines, from syslog or from `maillog_file` (postlogd), joined by queue id: pure.

A line is `TIME HOST PROGRAM[PID]: QUEUEID: ...` with TIME in syslog's form (`Mar  5 10:00:00`, no year: the
year is the one that puts the line at or before `reference`, the file's modification time) or RFC 3339's
(`2026-03-05T10:00:00.123+00:00`). Of the rest:

- a message taken in names its queue id first at smtpd (`client=`), pickup (`uid=... from=`) or cleanup
  (`message-id=`): the id is remembered;
- qmgr's `from=<SENDER>, size=BYTES, nrcpt=N` describes it: a Received event, once per message (qmgr logs it
  again at every retry; a queue id not seen taken in, from before the log began, gives none);
- a delivery agent's `to=<RCPT>, relay=..., delay=..., delays=a/b/c/d, dsn=X.Y.Z, status=sent|deferred|bounced
  (...)` is an Attempt: the code and text of `host H said: CODE TEXT (in reply to RCPT TO command)`, or of the
  acceptance `(250 2.0.0 Ok ...)`; no code when no server answered (`connect to ...: Connection refused`). `d`,
  the time the transmission took, is the attempt's seconds. The first attempt to each recipient of a message
  taken in is a Recipient event too;
- qmgr's `removed` forgets the id.

At most MAX_OPEN queue ids are remembered: past that, the oldest is forgotten (`evicted` counts them), so memory
stays bounded whatever the log's length.
"""

from __future__ import annotations

import calendar
import datetime
import re
from collections import OrderedDict
from dataclasses import dataclass, field

from mailload.mtalog.events import Attempt, Event, Received, Recipient, Stage, domain_of

NAME = "postfix"
MAX_OPEN = 100_000
MONTHS = {
    m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)
}

_BSD = re.compile(
    r"^(?P<mon>[A-Z][a-z]{2}) +(?P<day>\d{1,2}) (?P<h>\d\d):(?P<m>\d\d):(?P<s>\d\d)(?:\.\d+)? \S+ "
    r"(?P<prog>[^\s\[:]+)(?:\[\d+\])?: (?P<msg>.*)$"
)
_ISO = re.compile(
    r"^(?P<iso>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?) \S+ "
    r"(?P<prog>[^\s\[:]+)(?:\[\d+\])?: (?P<msg>.*)$"
)
_QUEUED = re.compile(r"^(?P<qid>[0-9A-Za-z]{5,}): (?P<rest>.*)$")
_QMGR = re.compile(r"^from=<(?P<sender>[^>]*)>, size=(?P<size>\d+), nrcpt=(?P<n>\d+)")
_DELIVERY = re.compile(
    r"^to=<(?P<to>[^>]*)>,(?: orig_to=<[^>]*>,)? relay=(?P<relay>[^,]*),(?: conn_use=\d+,)? delay=[\d.]+, "
    r"delays=(?P<delays>[\d./]+), dsn=[\d.]+, status=(?P<status>[a-z]+)(?: \((?P<why>.*)\))?$"
)
_SAID = re.compile(r"^host \S+ said: (?P<code>[2-5]\d\d)[ -](?P<text>.*?)(?: \(in reply to (?P<cmd>[^)]*)\))?$")
_REFUSED = re.compile(r"^host \S+ refused to talk to me: (?P<code>[2-5]\d\d)[ -](?P<text>.*)$")
_CODE = re.compile(r"^(?P<code>[2-5]\d\d)[ -](?P<text>.*)$")
SNIFF = re.compile(r"^(?:[A-Z][a-z]{2} +\d{1,2} [\d:.]+|\d{4}-\d\d-\d\dT\S+) \S+ postfix[^\s\[:]*/[^\s\[:]+\[\d+\]: ")


def looks_like(line: str) -> bool:
    return SNIFF.match(line) is not None


@dataclass(slots=True)
class _Message:
    described: bool = False
    bounce_notice: bool = False
    recipients: set[str] = field(default_factory=set)


class Parser:
    """Lines to events, keeping each open queue id's state (bounded)."""

    def __init__(self, reference: float | None = None, max_open: int = MAX_OPEN):
        when = (
            datetime.datetime.fromtimestamp(reference, datetime.UTC)
            if reference
            else datetime.datetime.now(datetime.UTC)
        )
        self.reference = when.timestamp() + 86400  # a day of slack for time zones
        self.year = when.year
        self.max_open = max_open
        self.open: OrderedDict[str, _Message] = OrderedDict()
        self.evicted = 0
        self.before_log = 0  # attempts to messages taken in before the log began (or forgotten)
        self._days: dict[tuple[str, str], float] = {}

    def start_file(self, mtime: float) -> None:
        """The next lines come from a file last written at `mtime`: their year is the one that puts them before."""
        when = datetime.datetime.fromtimestamp(mtime, datetime.UTC)
        self.reference = when.timestamp() + 86400
        self.year = when.year
        self._days.clear()

    def feed(self, line: str) -> list[Event] | None:
        m = _BSD.match(line)
        if m is not None:
            when: float | None = self._bsd_time(m)
        else:
            m = _ISO.match(line)
            if m is None:
                return None
            when = _iso_time(m.group("iso"))
        queued = _QUEUED.match(m.group("msg"))
        if queued is None:
            return []
        qid, rest = queued.group("qid"), queued.group("rest")
        if rest.startswith("to=<"):
            return self._delivery(qid, rest, when)
        if rest.startswith("from=<"):
            return self._described(qid, rest, when)
        if rest.startswith(("client=", "message-id=", "uid=")):
            self._taken_in(qid)
        elif rest == "removed":
            self.open.pop(qid, None)
        return []

    def _taken_in(self, qid: str) -> None:
        if qid not in self.open:
            self.open[qid] = _Message()
            if len(self.open) > self.max_open:
                self.open.popitem(last=False)
                self.evicted += 1

    def _described(self, qid: str, rest: str, when: float | None) -> list[Event] | None:
        m = _QMGR.match(rest)
        if m is None:
            return []  # "from=<...>, status=expired, returned to sender" and the like
        message = self.open.get(qid)
        if message is None or message.described:
            return []  # a retry, or a message taken in before the log began
        message.described = True
        sender = domain_of(m.group("sender"))
        message.bounce_notice = m.group("sender") == ""
        return [Received(when, sender or None, int(m.group("size")), int(m.group("n")))]

    def _delivery(self, qid: str, rest: str, when: float | None) -> list[Event] | None:
        m = _DELIVERY.match(rest)
        if m is None:
            return None
        domain = domain_of(m.group("to"))
        code, text, stage = _reply(m.group("status"), m.group("why") or "")
        delays = m.group("delays").split("/")
        seconds = float(delays[3]) if len(delays) == 4 else None
        events: list[Event] = [Attempt(when, domain, code, text, stage, seconds)]
        message = self.open.get(qid)
        if message is None:
            self.before_log += 1
        elif m.group("to") not in message.recipients:
            message.recipients.add(m.group("to"))
            events.append(Recipient(domain, message.bounce_notice))
        return events

    def _bsd_time(self, m: re.Match[str]) -> float | None:
        key = (m.group("mon"), m.group("day"))
        day = self._days.get(key)
        if day is None:
            month = MONTHS.get(key[0])
            if month is None:
                return None
            try:
                day = calendar.timegm((self.year, month, int(key[1]), 0, 0, 0))
                if day > self.reference:  # a line from last year (December's, read in January)
                    day = calendar.timegm((self.year - 1, month, int(key[1]), 0, 0, 0))
            except ValueError:
                return None
            if len(self._days) > 1000:
                self._days.clear()
            self._days[key] = day
        return day + int(m.group("h")) * 3600 + int(m.group("m")) * 60 + int(m.group("s"))


def _reply(status: str, why: str) -> tuple[int | None, str, Stage]:
    """(code, text, stage) of a delivery's status and the reason in parentheses."""
    said = _SAID.match(why)
    if said is not None:
        command = (said.group("cmd") or "").upper()
        stage = Stage.RCPT if "RCPT" in command else Stage.DATA if "DATA" in command else Stage.OTHER
        return int(said.group("code")), said.group("text"), stage if command else Stage.UNKNOWN
    refused = _REFUSED.match(why)
    if refused is not None:
        return int(refused.group("code")), refused.group("text"), Stage.OTHER
    if status == "sent":
        accepted = _CODE.match(why)
        if accepted is not None:
            return int(accepted.group("code")), accepted.group("text"), Stage.DATA
        return 250, "", Stage.DATA  # a local delivery: "(delivered to mailbox)"
    return None, why, Stage.UNKNOWN


def _iso_time(text: str) -> float | None:
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
