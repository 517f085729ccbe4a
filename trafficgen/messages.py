"""Envelopes and message content: what goes on the wire for each message.

Everything that can be built once is built once: the body text (readable words, lines of at most 78
characters plus CRLF, RFC 5322 2.1.1) is generated at start and each message takes a prefix of it that
ends on a line boundary; header lines that never change are joined in advance. Per message only the
recipient, Date (once a second), Message-ID, trace header (with the time it was sent) and Subject are
formatted.

Content is kept dot-stuffed (RFC 5321 4.5.2) and CRLF-terminated, without the final ".\r\n".
"""

from __future__ import annotations

import bisect
import datetime
import email.utils
import random
import re
import time
from pathlib import Path
from typing import NamedTuple

from mailload import contract
from trafficgen import __version__
from trafficgen.config import RunConfig
from trafficgen.domains import DomainPicker

LINE_MAX = 78
BLOCK_SIZE = 64 * 1024  # unique text; larger bodies repeat it

WORDS = """
account action address advice afternoon agenda agreement answer april archive arrival article attached
attention august autumn balance basket beach before benefit better birthday board booking branch break
bring budget building business calendar call campaign change chapter check choice client coffee colour
comment company complete confirm contact copy corner cost course credit customer daily dashboard data
deadline december delivery department design detail dinner direct discount document draft early east
edition email energy evening event example exchange expected family february feedback field figure final
first follow forward friday friend future garden global good green group growth guide happy harbour
holiday honest hotel idea important include invoice island issue january journey july june kitchen
knowledge label later launch leader letter library light limit local lunch march market meeting member
message method minute monday month morning network news next note notice november number october offer
office online open order owner package page paper partner payment people period picture place plan
please point policy portal present price print process product project promise question quick quiet
quote reason receipt record reference region reminder report request review river road saturday
schedule school season second secure service share short simple site small soon spring staff start
status summer sunday supply support survey system table team thanks thursday ticket today together
total travel tuesday update useful value version village visit wednesday week welcome window winter
world year yesterday
""".split()  # noqa: SIM905 (a block of words reads better than a list of 200 strings)

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


def readable_block(rng: random.Random, size: int = BLOCK_SIZE) -> bytes:
    """About `size` bytes of sentences in paragraphs, lines wrapped at 78 characters, CRLF line ends."""
    lines: list[str] = []
    total = 0
    line = ""
    while total < size:
        sentence = [rng.choice(WORDS) for _ in range(rng.randint(6, 16))]
        sentence[0] = sentence[0].capitalize()
        for word in (*sentence[:-1], sentence[-1] + "."):
            if line and len(line) + 1 + len(word) > LINE_MAX:
                lines.append(line)
                total += len(line) + 2
                line = word
            else:
                line = f"{line} {word}" if line else word
        if rng.random() < 0.2:  # end the paragraph
            lines.extend((line, ""))
            total += len(line) + 4
            line = ""
    if line:
        lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


class Body:
    """Message bodies of at least a given size, cut on line boundaries from one readable text."""

    def __init__(self, rng: random.Random, largest: int):
        self.block = readable_block(rng)
        self.ends = [m.end() for m in re.finditer(b"\r\n", self.block)]
        repeats = largest // len(self.block) + 2
        self.text = memoryview(self.block * repeats) if repeats > 1 else memoryview(self.block)

    def end_for(self, size: int) -> int:
        """The first line end at or after `size` bytes."""
        length = len(self.block)
        whole, rest = divmod(size, length)
        if rest == 0:
            return whole * length
        return whole * length + self.ends[bisect.bisect_left(self.ends, rest)]

    def get(self, size: int) -> memoryview:
        return self.text[: self.end_for(size)]


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


class Message(NamedTuple):
    seq: int
    domain: int  # index into the run's domain list
    sender: str
    recipients: tuple[str, ...]
    content: tuple[bytes | memoryview, ...]  # dot-stuffed, CRLF-ended, without the final ".\r\n"
    size: int
    intended: float  # when it was meant to be sent (loop time), for latency without coordinated omission


class MessageFactory:
    """Builds message `seq` of this run: its weighted domain, unique recipients, headers and body."""

    def __init__(self, config: RunConfig, rng: random.Random):
        self.config = config
        self.rng = rng
        self.run_id = config.run_id
        if config.recipient:
            self.full_domains = [config.recipient.rpartition("@")[2]]
        else:
            self.full_domains = [config.domain_with_suffix(d.name) for d in config.domains]
        self.picker = DomainPicker(config.domains, rng) if not config.recipient else None
        self.senders = [config.sender or f"noreply@{d}" for d in self.full_domains]
        extra = "".join(f"{name}: {value}\r\n" for name, value in config.headers)
        self.fixed_headers = (
            f"X-Mailer: trafficgen/{__version__}\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n"
            "Content-Transfer-Encoding: 7bit\r\n"
            f"{extra}"
        )
        self.file_content = load_message_file(config.body_file) if config.body_file else None
        self.file_extra = extra.encode("utf-8")
        low, high = config.body_size
        self.body = Body(random.Random(rng.random()), high) if self.file_content is None else None
        self.fixed_body = self.body.get(low) if self.body is not None and low == high else None
        self._date_second = -1
        self._date = ""

    def date(self) -> str:
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            # RFC 5322 3.3: "-0000" would say the zone is unknown; this time is UTC, so "+0000".
            self._date = email.utils.format_datetime(datetime.datetime.fromtimestamp(now, datetime.UTC))
        return self._date

    def build(self, seq: int, intended: float) -> Message:
        config = self.config
        domain = self.picker.pick() if self.picker is not None else 0
        sender = self.senders[domain]
        count = config.recipients_per_message
        if config.recipient:
            recipients: tuple[str, ...] = (config.recipient,) * count
        elif count == 1:
            recipients = (f"user-{seq}@{self.full_domains[domain]}",)
        else:
            full = self.full_domains[domain]
            recipients = tuple(f"user-{seq * count + j}@{full}" for j in range(count))
        trace = contract.trace_header(self.run_id, seq, int(time.time() * 1000))
        if self.file_content is not None:
            head = trace.encode("ascii") + self.file_extra
            return Message(
                seq, domain, sender, recipients, (head, self.file_content), len(head) + len(self.file_content), intended
            )
        to = ", ".join(recipients)
        if len(to) > LINE_MAX - len("To: "):
            to = ",\r\n ".join(recipients)  # RFC 5322 2.1.1, 3.2.2: folded, each line at most 78 characters
        header = (
            f"From: {sender}\r\n"
            f"To: {to}\r\n"
            f"Subject: {SUBJECTS[seq % len(SUBJECTS)]}\r\n"
            f"Date: {self.date()}\r\n"
            f"Message-ID: <{self.run_id}.{seq}@{self.full_domains[domain]}>\r\n"
            f"{trace}{self.fixed_headers}\r\n"
        ).encode()
        body = self.fixed_body
        if body is None:
            assert self.body is not None
            low, high = config.body_size
            body = self.body.get(low + int(self.rng.random() * (high - low + 1)))
        return Message(seq, domain, sender, recipients, (header, body), len(header) + len(body), intended)
