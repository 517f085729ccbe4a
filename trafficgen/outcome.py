"""What happened to one message: its Kind, the reply that decided it, each recipient's kind, and when.

The wire (trafficgen.smtp, trafficgen.inject) produces Outcomes; the run loop and the recorder (trafficgen.stats)
read them. Nothing here does I/O.
"""

from __future__ import annotations

from enum import IntEnum


class Kind(IntEnum):
    """A message's (or a recipient's) outcome; the values index the recorder's counters."""

    ACCEPTED = 0
    TEMPFAILED = 1
    PERMFAILED = 2
    ERROR = 3

    @classmethod
    def of_code(cls, code: int) -> Kind:
        """What an SMTP reply code means for the message: 5xx permanent, 4xx temporary, else accepted."""
        if code >= 500:
            return cls.PERMFAILED
        if code >= 400:
            return cls.TEMPFAILED
        return cls.ACCEPTED


ACCEPTED, TEMPFAILED, PERMFAILED, ERROR = Kind.ACCEPTED, Kind.TEMPFAILED, Kind.PERMFAILED, Kind.ERROR


class Outcome:
    """What happened to one message.

    Times are time.monotonic() (uvloop's loop.time() is only millisecond-precise): when the transaction
    started, when its MAIL and last RCPT replies arrived (0 when none), and when the deciding reply arrived
    (`end`). The recorder turns them into per-step durations. `close`: the connection is done (a 421, an error).
    `connecting`: an error met while opening a connection (nothing reached the target: --http's refused connect).
    """

    __slots__ = ("close", "code", "connecting", "end", "kind", "mail", "rcpt", "recipient_kinds", "started", "text")

    def __init__(
        self,
        kind: Kind,
        code: int,
        text: str,
        recipient_kinds: tuple[Kind, ...],
        close: bool,
        started: float,
        mail: float = 0.0,
        rcpt: float = 0.0,
        end: float = 0.0,
        connecting: bool = False,
    ):
        self.kind = kind
        self.connecting = connecting
        self.code = code
        self.text = text
        self.recipient_kinds = recipient_kinds
        self.close = close
        self.started = started
        self.mail = mail
        self.rcpt = rcpt
        self.end = end

    @classmethod
    def error(cls, text: str, recipients: int, started: float, end: float, connecting: bool = False) -> Outcome:
        """An error ("kind: what happened"): every recipient shares it, and the connection is done."""
        return cls(ERROR, 0, text, (ERROR,) * recipients, True, started, end=end, connecting=connecting)

    @classmethod
    def refused(cls, code: int, text: str, recipients: int, started: float, end: float) -> Outcome:
        """A reply that decides the whole message (a refused greeting, say); one that is not a refusal is an
        error, since the message could not be sent."""
        kind = Kind.of_code(code)
        if kind is ACCEPTED:
            kind = ERROR
        return cls(kind, code, text, (kind,) * recipients, True, started, end=end)

    def for_message(self, recipients: int) -> Outcome:
        """This outcome (of a connection that could not be opened) for a message of `recipients` recipients."""
        kinds = (self.kind,) * recipients
        return Outcome(self.kind, self.code, self.text, kinds, True, self.started, self.mail, self.rcpt, self.end)
