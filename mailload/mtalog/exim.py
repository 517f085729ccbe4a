"""Exim's main log (`mainlog`), where it gives what Postfix's log gives: pure.

A line is `YYYY-MM-DD HH:MM:SS[.mmm][ +ZZZZ][ [PID]] MESSAGEID FLAG ...` (ids `xxxxxx-xxxxxx-xx`, or
`xxxxxx-xxxxxxxxxxx-xxxx` since Exim 4.97). Of the flags:

- `<= SENDER ... S=SIZE ... [for RCPT RCPT...]`: a message taken in (the sender `<>`: a bounce notice Exim wrote);
- `=> RCPT ... C="250 ..." [DT=1.2s]` and `-> RCPT` (another recipient of the same delivery): delivered;
- `== RCPT ... defer (ERRNO): ...` deferred, `** RCPT ...: ...` failed: the reply is the one of `SMTP error from
  remote mail server after RCPT TO:<...>: 550 5.1.1 ...` (`after end of data`: at DATA), none when no server
  answered (`Connection refused`);
- `*>` (a delivery suppressed by -N) and everything else are read and not used; `Completed` forgets the id.

The first attempt to each recipient of a message taken in is a Recipient event. Open ids are bounded as Postfix's.
"""

from __future__ import annotations

import calendar
import re
from collections import OrderedDict
from dataclasses import dataclass, field

from mailload.mtalog.events import Attempt, Event, Received, Recipient, Stage, domain_of

NAME = "exim"
MAX_OPEN = 100_000

_LINE = re.compile(
    r"^(?P<date>\d{4}-\d\d-\d\d) (?P<h>\d\d):(?P<m>\d\d):(?P<s>\d\d)(?P<frac>\.\d+)?(?: (?P<tz>[-+]\d{4}))?"
    r"(?: \[\d+\])? (?P<rest>.*)$"
)
_ID = r"[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4}"
_MESSAGE = re.compile(rf"^(?P<id>{_ID}) (?P<flag><=|=>|->|\*>|==|\*\*) (?P<who>\S+)(?P<fields>.*)$")
_DONE = re.compile(rf"^(?P<id>{_ID}) Completed")
_SIZE = re.compile(r" S=(\d+)")
_SUBJECT = re.compile(r' T="(?:[^"\\]|\\.)*"')
_CONFIRMED = re.compile(r' C="(?P<code>[2-5]\d\d)[ -](?P<text>(?:[^"\\]|\\.)*)"')
_ELAPSED = re.compile(r" DT=(?P<dt>[\d.wdhms]+)")
_ERROR = re.compile(
    r"SMTP error from remote mail (?:server|host) after (?P<after>.+?): (?P<code>[2-5]\d\d)[ -](?P<text>.*)$"
)
_UNITS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
SNIFF = re.compile(
    rf"^\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?(?: [-+]\d{{4}})?(?: \[\d+\])? {_ID} "
    r"(?:<=|=>|->|==|\*\*|\*>|Completed)"
)


def looks_like(line: str) -> bool:
    return SNIFF.match(line) is not None


@dataclass(slots=True)
class _Message:
    bounce_notice: bool = False
    recipients: set[str] = field(default_factory=set)


class Parser:
    def __init__(self, max_open: int = MAX_OPEN):
        self.max_open = max_open
        self.open: OrderedDict[str, _Message] = OrderedDict()
        self.evicted = 0
        self.before_log = 0
        self._days: dict[str, int] = {}

    def start_file(self, mtime: float) -> None:
        """Exim's lines carry their year: nothing to do."""

    def feed(self, line: str) -> list[Event] | None:
        m = _LINE.match(line)
        if m is None:
            return None
        when = self._time(m)
        rest = m.group("rest")
        message = _MESSAGE.match(rest)
        if message is None:
            done = _DONE.match(rest)
            if done is not None:
                self.open.pop(done.group("id"), None)
            return []
        flag, who, fields = message.group("flag"), message.group("who"), message.group("fields")
        if flag == "<=":
            return self._received(message.group("id"), who, fields, when)
        if flag == "*>":
            return []
        return self._attempt(message.group("id"), flag, who, fields, when)

    def _received(self, mid: str, sender: str, fields: str, when: float | None) -> list[Event]:
        state = _Message(bounce_notice=sender == "<>")
        self.open[mid] = state
        if len(self.open) > self.max_open:
            self.open.popitem(last=False)
            self.evicted += 1
        size = _SIZE.search(fields)
        unquoted = _SUBJECT.sub("", fields)
        _, found, listed = unquoted.rpartition(" for ")
        recipients = sum(1 for word in listed.split() if "@" in word) if found else 0
        domain = domain_of(sender)
        return [Received(when, domain or None, int(size.group(1)) if size else None, recipients)]

    def _attempt(self, mid: str, flag: str, rcpt: str, fields: str, when: float | None) -> list[Event]:
        domain = domain_of(rcpt)
        if flag in ("=>", "->"):
            confirmed = _CONFIRMED.search(fields)
            code, text = (int(confirmed.group("code")), confirmed.group("text")) if confirmed else (250, "")
            elapsed = _ELAPSED.search(fields)
            seconds = _duration(elapsed.group("dt")) if elapsed else None
            attempt = Attempt(when, domain, code, text, Stage.DATA, seconds)
        else:
            error = _ERROR.search(fields)
            if error is None:
                attempt = Attempt(when, domain, None, fields.strip())
            else:
                after = error.group("after").upper()
                stage = Stage.RCPT if "RCPT" in after else Stage.DATA if "DATA" in after else Stage.OTHER
                attempt = Attempt(when, domain, int(error.group("code")), error.group("text"), stage)
        events: list[Event] = [attempt]
        state = self.open.get(mid)
        if state is None:
            self.before_log += 1
        elif rcpt not in state.recipients:
            state.recipients.add(rcpt)
            events.append(Recipient(domain, state.bounce_notice))
        return events

    def _time(self, m: re.Match[str]) -> float | None:
        day = self._days.get(m.group("date"))
        if day is None:
            try:
                year, month, mday = (int(p) for p in m.group("date").split("-"))
                day = calendar.timegm((year, month, mday, 0, 0, 0))
            except ValueError:
                return None
            if len(self._days) > 1000:
                self._days.clear()
            self._days[m.group("date")] = day
        when: float = day + int(m.group("h")) * 3600 + int(m.group("m")) * 60 + int(m.group("s"))
        if m.group("frac"):
            when += float(m.group("frac"))
        zone = m.group("tz")
        if zone:
            offset = int(zone[1:3]) * 3600 + int(zone[3:5]) * 60
            when -= offset if zone[0] == "+" else -offset
        return when


def _duration(text: str) -> float | None:
    """Exim's elapsed time: `0.123s`, `2s`, `1m2s`, `1h2m3s`, `1w2d`."""
    total = 0.0
    for number, unit in re.findall(r"([\d.]+)([wdhms])", text):
        try:
            total += float(number) * _UNITS[unit]
        except ValueError:
            return None
    return total
