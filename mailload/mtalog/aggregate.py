"""The events of a log folded into what a workload and a policy are made of, in bounded memory (pure).

Traffic (for trafficgen): the messages taken in, less the MTA's own bounce notices: their recipients' domains,
senders' domains, tenants, campaigns, recipients per message, sizes and arrival times. Answers (for smartsink):
per recipient domain, every delivery attempt a server answered (accepted, temporary or permanent failure), when
the failures came (RCPT or end of DATA), the failure texts (masked), and how long accepted transmissions took.

A domain's name loses the sink's suffixes (`gmail.com.sink.test` is gmail.com) so that a log of a test rig reads
as the production one. Domains answered beyond ANSWERED_DOMAINS are folded into `others` (they are the small ones:
the policy's [default]).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailload import contract
from mailload.mtalog.events import Attempt, Event, Received, Recipient, Stage
from mailload.mtalog.masking import mask
from mailload.mtalog.tally import LogHistogram, Timeline, TopCounter

SUFFIXES = (contract.DEFAULT_SUFFIX, "mx-sink.wezfurlong.org")  # smartsink's defaults: a test rig's logs
ANSWERED_DOMAINS = 5_000
TEXTS_PER_DOMAIN = 64
NO_VALUE = ""  # a message without a tenant (or campaign)


@dataclass
class Answers:
    """What one domain's servers (or several domains', folded) answered."""

    accepted: int = 0
    tempfailed: int = 0
    permfailed: int = 0
    no_reply: int = 0  # attempts no server answered
    at_rcpt: int = 0  # failures answered at RCPT
    at_data: int = 0  # failures answered at the end of DATA
    texts: TopCounter[tuple[int, str]] = field(default_factory=lambda: TopCounter(TEXTS_PER_DOMAIN))
    latency: LogHistogram | None = None  # seconds accepted transmissions took

    @property
    def replies(self) -> int:
        return self.accepted + self.tempfailed + self.permfailed

    def add(self, attempt: Attempt, text: str) -> None:
        code = attempt.code
        if code is None:
            self.no_reply += 1
            return
        if code < 400:
            self.accepted += 1
            if attempt.seconds is not None:
                if self.latency is None:
                    self.latency = LogHistogram(unit=0.001)
                self.latency.add(attempt.seconds)
            return
        if code < 500:
            self.tempfailed += 1
        else:
            self.permfailed += 1
        if attempt.stage is Stage.RCPT:
            self.at_rcpt += 1
        elif attempt.stage is Stage.DATA:
            self.at_data += 1
        self.texts.add((code, text))

    def merge(self, other: Answers) -> None:
        for name in ("accepted", "tempfailed", "permfailed", "no_reply", "at_rcpt", "at_data"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.texts.merge(other.texts)
        if other.latency is not None:
            if self.latency is None:
                self.latency = LogHistogram(unit=0.001)
            self.latency.merge(other.latency)


class Aggregate:
    """Every event of the logs read, folded."""

    def __init__(self, answered_domains: int = ANSWERED_DOMAINS):
        self.messages = 0  # taken in, bounce notices left out
        self.bounce_notices = 0
        self.domains: TopCounter[str] = TopCounter()  # recipients' domains
        self.senders: TopCounter[str] = TopCounter()
        self.tenants: TopCounter[str] = TopCounter()
        self.campaigns: TopCounter[str] = TopCounter()
        self.per_message: TopCounter[int] = TopCounter()
        self.sizes = LogHistogram()
        self.arrivals = Timeline()
        self.sources: set[str] = set()
        self.answered_domains = answered_domains
        self.answers: dict[str, Answers] = {}
        self.others = Answers()  # domains folded away
        self.folded_domains = 0
        self.attempts = 0
        self._names: dict[str, str] = {}
        self._masked: dict[str, str] = {}

    def add(self, event: Event) -> None:
        kind = type(event)
        if kind is Attempt:
            self._attempt(event)  # type: ignore[arg-type]
        elif kind is Recipient:
            if not event.bounce_notice:  # type: ignore[union-attr]
                self.domains.add(self.name(event.domain))  # type: ignore[union-attr]
        elif kind is Received:
            self._received(event)  # type: ignore[arg-type]

    def _received(self, event: Received) -> None:
        if event.sender_domain is None:
            self.bounce_notices += 1
            return
        self.messages += 1
        self.senders.add(self.name(event.sender_domain))
        self.tenants.add(event.tenant or NO_VALUE)
        self.campaigns.add(event.campaign or NO_VALUE)
        if event.recipients > 0:
            self.per_message.add(min(event.recipients, 1000))
        if event.size is not None:
            self.sizes.add(event.size)
        if event.time is not None:
            self.arrivals.add(event.time)

    def _attempt(self, event: Attempt) -> None:
        self.attempts += 1
        if event.source is not None and len(self.sources) < 10_000:
            self.sources.add(event.source)
        domain = self.name(event.domain)
        answers = self.answers.get(domain)
        if answers is None:
            answers = self.answers[domain] = Answers()
            if len(self.answers) > self.answered_domains:
                self._fold()
                answers = self.answers.get(domain) or self.others
        text = ""
        if event.code is not None and event.code >= 400:
            text = self._masked.get(event.text, "")
            if not text:
                if len(self._masked) > 10_000:
                    self._masked.clear()
                text = self._masked[event.text] = mask(event.text)
        answers.add(event, text)

    def _fold(self) -> None:
        """Fold the less answered half of the domains into `others`."""
        ordered = sorted(self.answers.items(), key=lambda item: item[1].replies + item[1].no_reply)
        for name, answers in ordered[: len(ordered) // 2]:
            self.others.merge(answers)
            del self.answers[name]
            self.folded_domains += 1

    def name(self, domain: str) -> str:
        """A domain as the workload and the policy name it: the sink's suffix taken off."""
        found = self._names.get(domain)
        if found is None:
            found = domain
            for suffix in SUFFIXES:
                if found.endswith("." + suffix):
                    found = found[: -len(suffix) - 1]
                    break
            if len(self._names) > 100_000:
                self._names.clear()
            self._names[domain] = found
        return found

    @property
    def replies(self) -> int:
        return sum(a.replies for a in self.answers.values()) + self.others.replies

    @property
    def no_reply(self) -> int:
        return sum(a.no_reply for a in self.answers.values()) + self.others.no_reply
