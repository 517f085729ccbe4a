"""Envelopes and message content: what goes on the wire for each message.

Everything that can be built once is built once (trafficgen.content): the bodies are windows of text, HTML and
base64 generated at start, picked by the message's number; header lines that never change are joined in advance.
Per message only the weighted choices (domain, and tenant, campaign, sender domain when given), the recipient,
Date (once a second), Message-ID, trace header (with the time it was sent) and Subject are formatted.

Content is kept dot-stuffed (RFC 5321 4.5.2) and CRLF-terminated, without the final ".\r\n".
"""

from __future__ import annotations

import datetime
import email.utils
import random
import re
import time
from pathlib import Path

from mailload import contract
from trafficgen.config import RunConfig
from trafficgen.content import LINE_MAX, MIME_HEADERS, Bodies, Sizes, Text, readable_block
from trafficgen.domains import DomainPicker
from trafficgen.version import __version__

SUBJECTS = (
    "Your order has shipped",
    "Meeting notes from Tuesday",
    "Invoice for this month",
    "Weekly project update",
    "Reminder: team lunch on Friday",
    "Your account summary",
    "Welcome to the newsletter",
    "Quick question about the report",
    "Travel plans for next week",
    "Updated schedule attached",
    "Thanks for your feedback",
    "New features in the latest release",
    "Your receipt",
    "Draft agenda for review",
    "Holiday opening hours",
    "Confirm your booking",
    "Monthly statement is ready",
    "Photos from the weekend",
    "Action needed: review the budget",
    "Follow-up on our call",
)


class Body(Text):
    """Readable text of at least a given size, cut on line boundaries (the text/plain bodies)."""

    def __init__(self, rng: random.Random, largest: int):
        super().__init__(readable_block(rng), largest)


def load_message_file(path: str) -> bytes:
    """A whole message from a file: line endings made CRLF, dot-stuffed, ending with CRLF."""
    data = Path(path).read_bytes()
    data = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return dot_stuff(data)


def dot_stuff(data: bytes) -> bytes:
    """RFC 5321 4.5.2: a line starting with "." gets another one in front."""
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..")


class Message:
    """One message of the run, built once and sent once.

    A plain class with slots, not a NamedTuple: compiled, it is built and its fields read natively (a NamedTuple
    stays a Python class: a generic call to build it and another for each field read, several a message)."""

    __slots__ = (
        "campaign",
        "content",
        "domain",
        "intended",
        "recipients",
        "sender",
        "sender_domain",
        "seq",
        "size",
        "source",
        "stage",
        "tenant",
    )

    def __init__(
        self,
        seq: int,
        domain: int,  # index into the run's domain list
        sender: str,
        recipients: tuple[str, ...],
        content: tuple[bytes | memoryview, ...],  # dot-stuffed, CRLF-ended, without the final ".\r\n"
        size: int,
        intended: float,  # when it was meant to be sent (loop time), for latency without coordinated omission
        tenant: int = 0,  # index into --tenant (0 without)
        campaign: int = 0,  # index into --campaign
        sender_domain: int = 0,  # index into --sender-domain
        source: int = 0,  # index into --source-address: the address of the connection it went over
        stage: int = 0,  # the --profile stage it fell due in
    ) -> None:
        self.seq = seq
        self.domain = domain
        self.sender = sender
        self.recipients = recipients
        self.content = content
        self.size = size
        self.intended = intended
        self.tenant = tenant
        self.campaign = campaign
        self.sender_domain = sender_domain
        self.source = source
        self.stage = stage


class MessageFactory:
    """Builds message `seq` of this run: its weighted domain, unique recipients, headers and body."""

    def __init__(self, config: RunConfig, rng: random.Random):
        self.config = config
        self.rng = rng
        self.run_id = config.run_id
        self.tag = contract.run_tag(config.run_id)  # in each recipient's local part: the sink ties answers to it
        if config.recipient:
            self.full_domains = [config.recipient.rpartition("@")[2]]
        else:
            self.full_domains = [config.domain_with_suffix(d.name) for d in config.domains]
        self.picker = DomainPicker(config.domains, rng) if not config.recipient else None
        self.senders = [config.sender or f"noreply@{d}" for d in self.full_domains]
        # The other weighted dimensions, each only when given (nothing is drawn for them otherwise).
        self.tenants = DomainPicker(config.tenants, rng) if config.tenants else None
        self.tenant_lines = [f"{config.tenant_header}: {t.name}\r\n" for t in config.tenants]
        self.campaigns = DomainPicker(config.campaigns, rng) if config.campaigns else None
        self.campaign_lines = [f"{config.campaign_header}: {c.name}\r\n" for c in config.campaigns]
        self.sending = DomainPicker(config.sender_domains, rng) if config.sender_domains else None
        self.sending_full = [config.domain_with_suffix(d.name) for d in config.sender_domains]
        self.sending_senders = [f"noreply@{d}" for d in self.sending_full]
        extra = "".join(f"{name}: {value}\r\n" for name, value in config.headers)
        common = f"X-Mailer: trafficgen/{__version__}\r\nMIME-Version: 1.0\r\n"
        self.mime_headers = [f"{common}{mime}{extra}" for mime in MIME_HEADERS]
        self.fixed_headers = self.mime_headers[0]
        self.file_content = load_message_file(config.body_file) if config.body_file else None
        self.file_extra = extra.encode("utf-8")
        self.bodies: Bodies | None = None
        if self.file_content is None:
            sizes = Sizes(config.body_size, rng)
            self.bodies = Bodies(config.content, sizes, config.attachment_share / 100, random.Random(rng.random()))
        self.fixed_bodies = self.bodies.fixed if self.bodies is not None else None
        self.mixing = self.tenants is not None or self.campaigns is not None
        self._date_second = -1
        self._date = ""

    def date(self) -> str:
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            # RFC 5322 3.3: "-0000" would say the zone is unknown; this time is UTC, so "+0000".
            self._date = email.utils.format_datetime(datetime.datetime.fromtimestamp(now, datetime.UTC))
        return self._date

    def build(self, seq: int, intended: float, source: int = 0, stage: int = 0) -> Message:
        config = self.config
        domain = self.picker.pick() if self.picker is not None else 0
        tenant = campaign = sending = 0
        mix = ""
        if self.mixing:
            if self.tenants is not None:
                tenant = self.tenants.pick()
                mix = self.tenant_lines[tenant]
            if self.campaigns is not None:
                campaign = self.campaigns.pick()
                mix += self.campaign_lines[campaign]
        if self.sending is not None:
            sending = self.sending.pick()
            sender, home = self.sending_senders[sending], self.sending_full[sending]
        else:
            sender, home = self.senders[domain], self.full_domains[domain]
        count = config.effective_recipients_per_message
        if config.recipient:
            recipients: tuple[str, ...] = (config.recipient,) * count
        elif count == 1:
            recipients = (f"user-{seq}.{self.tag}@{self.full_domains[domain]}",)
        else:
            full, tag = self.full_domains[domain], self.tag
            recipients = tuple(f"user-{seq * count + j}.{tag}@{full}" for j in range(count))
        trace = contract.trace_header(self.run_id, seq, int(time.time() * 1000))
        if self.file_content is not None:
            head = trace.encode("ascii") + mix.encode("ascii") + self.file_extra
            content = (head, self.file_content)
            size = len(head) + len(self.file_content)
            return Message(
                seq, domain, sender, recipients, content, size, intended, tenant, campaign, sending, source, stage
            )
        to = ", ".join(recipients)
        if len(to) > LINE_MAX - len("To: "):
            to = ",\r\n ".join(recipients)  # RFC 5322 2.1.1, 3.2.2: folded, each line at most 78 characters
        fixed = self.fixed_bodies
        if fixed is not None:  # a fixed size: every variant was built at start
            body = fixed[seq % len(fixed)]
        else:
            assert self.bodies is not None
            body = self.bodies.pick(seq)
        header = (
            f"From: {sender}\r\n"
            f"To: {to}\r\n"
            f"Subject: {SUBJECTS[seq % len(SUBJECTS)]}\r\n"
            f"Date: {self.date()}\r\n"
            f"Message-ID: <{self.run_id}.{seq}@{home}>\r\n"
            f"{trace}{mix}{self.mime_headers[body.mime]}\r\n"
        ).encode()
        return Message(
            seq,
            domain,
            sender,
            recipients,
            (header, *body.parts),
            len(header) + body.length,
            intended,
            tenant,
            campaign,
            sending,
            source,
            stage,
        )
