"""The contract between trafficgen and smartsink, written once: both tools import it, a test pins the round trip.

- The trace header. trafficgen stamps every message with `X-Trafficgen-Id: <run_id>.<seq>; t=<unix ms>`: the run,
  the message's number in it, and when it was handed to the target. The sink reads it from the message's own
  header section only (up to the first empty line), so a bounce that quotes the original in its body is never
  taken for the original.
- Numbered recipients. Each recipient trafficgen makes up is `user-<n>.<tag>@<domain>`: `n` its number in the run
  (message `seq` of N recipients holds `seq*N` to `seq*N + N-1`) and `tag` the run (`run_tag`), so the sink can
  tie any answer to its recipient and run, the refusals at RCPT time included, before any header is seen.
- DSNs (RFC 3464). A `multipart/report; report-type=delivery-status` message whose `message/delivery-status` part
  says `Action: failed` for a recipient, and whose returned headers hold a trace header, is the MTA returning that
  message for that recipient. `DsnReader` reads one as it streams by, whatever its length, in bounded memory.
- The ledger. Per run, the sink keeps one byte per recipient number (`MARK_*` below; per message id for mail to
  addresses trafficgen did not number, as with `--recipient`); trafficgen fetches the bytes from
  `GET /runs/<run_id>?marks=1` and reconciles them, recipient by recipient, with what the target accepted.
- Transit times. The sink records, per run and per recipient domain, the time from a message's `t=` to the
  sink's final answer at the end of DATA (accepted, or refused permanently), once per recipient, in an HDR
  histogram of milliseconds (`TRANSIT_*`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import quopri
import re
from typing import NamedTuple

# RFC 2606 reserves .test: no public DNS name ends in it, so generated mail can never reach a real mailbox.
# smartsink strips the same suffix by default, so user@gmail.com.sink.test gets gmail.com's rules.
DEFAULT_SUFFIX = "sink.test"

TRACE_HEADER = "X-Trafficgen-Id"
# How much of a message's start the sink keeps to read its header section (and to tell a DSN from other mail; a
# DSN itself is read to its returned headers by DsnReader, however long).
HEAD_BYTES = 16 * 1024
RUN_ID_MAX = 64
RUN_ID = re.compile(rf"^[A-Za-z0-9_-]{{1,{RUN_ID_MAX}}}$")
_TRACE_VALUE = rb"([A-Za-z0-9_-]{1,64})\.([0-9]{1,15})(?:[ \t]*;[ \t]*t=([0-9]{1,16}))?[ \t]*\r?$"
_TRACE_LINE = re.compile(rb"(?im)^x-trafficgen-id:[ \t]*" + _TRACE_VALUE)


class Trace(NamedTuple):
    """What a trace header says: the run, the message's number in it, and when trafficgen sent it."""

    run_id: str
    seq: int
    sent_ms: int | None  # Unix time in milliseconds; None from a header without `t=`


def trace_header(run_id: str, seq: int, sent_ms: int) -> str:
    """The trace header line, CRLF-terminated."""
    return f"{TRACE_HEADER}: {run_id}.{seq}; t={sent_ms}\r\n"


def header_section(message: bytes) -> bytes:
    """The header section of a message (or of the first bytes of one): up to its first empty line."""
    end = message.find(b"\r\n\r\n")
    if end < 0:
        end = message.find(b"\n\n")
        if end < 0:
            return message
        return message[: end + 1]
    return message[: end + 2]


def _trace(match: re.Match[bytes]) -> Trace:
    sent = match.group(3)
    return Trace(match.group(1).decode("ascii"), int(match.group(2)), int(sent) if sent else None)


def trace_of(head: bytes) -> Trace | None:
    """The trace header of a message from its first bytes, found only in its own header section."""
    # The common case without one: no regex. (find(), not `in`: on Python 3.11 `bytes in bytes` raises and clears a
    # TypeError each time.)
    if head.find(b"rafficgen") < 0 and head.find(b"RAFFICGEN") < 0:
        return None
    m = _TRACE_LINE.search(header_section(head))
    return _trace(m) if m else None


# --- numbered recipients -----------------------------------------------------------------------------------------
# RFC 5321 4.5.3.1.1: a local part is at most 64 octets. "user-" and 15 digits and "." leave room for a tag of 32.
RUN_TAG_MAX = 32
_NUMBERED = re.compile(r"user-([0-9]{1,15})\.([A-Za-z0-9_-]{1,32})@", re.IGNORECASE)


def run_tag(run_id: str) -> str:
    """How a run is named in its recipients' local parts, and what the sink keys its ledger by: the run id in lower
    case (some MTAs fold addresses) when it has at most RUN_TAG_MAX characters (a random run id has 12), else 24
    hexadecimal digits of its BLAKE2b digest."""
    if len(run_id) <= RUN_TAG_MAX:
        return run_id.lower()
    return hashlib.blake2b(run_id.encode("ascii"), digest_size=12).hexdigest()


def recipient_local(tag: str, number: int) -> str:
    """The local part of recipient `number` of the run tagged `tag`: `user-<number>.<tag>`."""
    return f"user-{number}.{tag}"


def numbered(address: str) -> tuple[str, int] | None:
    """(run tag, recipient number) of an address trafficgen numbered, in any case; None for any other address."""
    m = _NUMBERED.match(address)
    return (m.group(2).lower(), int(m.group(1))) if m else None


# --- DSNs (RFC 3464), read as they stream by -------------------------------------------------------------------
DSN_LINE_MAX = 4096  # longer lines are cut: the fields read (types, boundaries, recipients, actions) are short
DSN_HEADERS_MAX = 64 * 1024  # a header section longer than this is not one of a DSN read here
DSN_ENCODED_MAX = 256 * 1024  # a base64 or quoted-printable part is gathered up to this, then decoded
DSN_RECIPIENTS_MAX = 1000  # failed recipients kept from one DSN
_STATUS_TYPES = (b"message/delivery-status", b"message/global-delivery-status")
_RETURNED_TYPES = (b"message/rfc822", b"text/rfc822-headers", b"message/global", b"message/global-headers")
_PARAMETER = re.compile(rb'(?i);\s*([a-z-]+)\s*=\s*(?:"([^"]*)"|([^;\s]+))')
_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:[ \t]*(.*?)[ \t]*$")
_REPORT_TYPE = re.compile(rb"(?im)^content-type:[ \t]*(?:\r?\n[ \t]+)?multipart/report")
_TRACE_FIELD = re.compile(rb"(?i)x-trafficgen-id:[ \t]*" + _TRACE_VALUE)
_TOP, _PREAMBLE, _PART_HEADERS, _PART_BODY, _DONE = range(5)
_OTHER, _STATUS, _RETURNED = range(3)


class Returned(NamedTuple):
    """A failure DSN: the message it returns, and each recipient it says delivery failed to (lower-cased; the
    Original-Recipient when trafficgen numbered it, else the Final-Recipient; '' for a recipient left unnamed)."""

    trace: Trace
    recipients: tuple[str, ...]


def _address(value: bytes) -> str:
    """The address of an Original- or Final-Recipient field (`rfc822; user@domain`), lower-cased."""
    _, _, address = value.partition(b";")
    return address.strip().strip(b"<>").decode("utf-8", "replace").lower()


class DsnReader:
    """Reads a message line by line as it streams by and says whether it is a failure DSN of a trafficgen message
    (`result()`), whatever its length, in bounded memory: it keeps a line at a time, a part's headers, the failed
    recipients, and a base64 or quoted-printable part up to DSN_ENCODED_MAX. It stops reading (`wanted` False) once
    it knows: at the end of the top-level headers for mail that is no DSN, after the returned headers for one.

    It follows the top-level MIME structure only (RFC 2046: the boundary from the top-level Content-Type): in the
    `message/delivery-status` part, each per-recipient group with `Action: failed`; in the returned part
    (`message/rfc822` or `text/rfc822-headers`), the trace header among the returned message's own headers.
    `stuffed`: the lines are still dot-stuffed (RFC 5321 4.5.2), as the sink's fast engine holds them."""

    __slots__ = (
        "_boundary",
        "_cut",
        "_encoded",
        "_encoding",
        "_fields",
        "_group",
        "_kind",
        "_last",
        "_partial",
        "_returned_done",
        "_section",
        "_state",
        "_status_seen",
        "_stuffed",
        "_trace",
        "recipients",
    )

    def __init__(self, stuffed: bool = False):
        self._stuffed = stuffed
        self._state = _TOP
        self._partial = bytearray()
        self._cut = False  # the line being gathered is past DSN_LINE_MAX: the rest of it is dropped
        self._section = 0  # bytes of the header section being read
        self._fields: dict[bytes, bytes] = {}  # the content-type and -transfer-encoding of the section being read
        self._last = b""
        self._boundary = b""
        self._kind = _OTHER
        self._encoding = b""
        self._encoded: bytearray | None = None
        self._group: dict[bytes, bytes] = {}  # the per-recipient group being read in the status part
        self._status_seen = False
        self._returned_done = False
        self._trace: Trace | None = None
        self.recipients: list[str] = []

    @property
    def wanted(self) -> bool:
        """Whether more of the message could change the result."""
        return self._state != _DONE

    def feed(self, data: bytes | bytearray | memoryview) -> bool:
        """Read the next bytes of the message; returns `wanted`."""
        if self._state == _DONE:
            return False
        data = bytes(data)
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            line = data[start:end]
            start = end + 1
            if self._partial or self._cut:
                line = bytes(self._partial) + line[: max(0, DSN_LINE_MAX - len(self._partial))]
                self._partial.clear()
                self._cut = False
            self._line(line[:DSN_LINE_MAX])
            if self._state == _DONE:
                return False
        if start < len(data):
            room = DSN_LINE_MAX - len(self._partial)
            self._partial += data[start : start + max(0, room)]
            self._cut = len(data) - start > room
        return True

    def result(self) -> Returned | None:
        """The message this DSN returns and its failed recipients, once it has been read; None if it is no
        failure DSN of a trafficgen message."""
        if self._state != _DONE:
            if self._partial:
                self._line(bytes(self._partial))
                self._partial.clear()
            if self._state == _PART_BODY:
                self._end_part()
            self._state = _DONE
        if self._trace is None or not self.recipients:
            return None
        return Returned(self._trace, tuple(self.recipients))

    # --- one line at a time ------------------------------------------------------------------------------------

    def _line(self, line: bytes) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if self._stuffed and line.startswith(b"."):
            line = line[1:]
        state = self._state
        if state in (_PART_BODY, _PREAMBLE):
            if line.startswith(b"--") and self._boundary and line.startswith(self._boundary):
                rest = line[len(self._boundary) :]
                if not rest.strip():
                    self._next_part()
                    return
                if rest.startswith(b"--"):
                    self._finish()
                    return
            if state == _PART_BODY:
                self._body_line(line)
            return
        if state in (_TOP, _PART_HEADERS):
            self._header_line(line)

    def _header_line(self, line: bytes) -> None:
        self._section += len(line) + 2
        if self._section > DSN_HEADERS_MAX:
            self._state = _DONE
            return
        if not line:
            self._end_headers()
            return
        if line[:1] in b" \t":
            if self._last:  # a folded line of a field we keep
                self._fields[self._last] += b" " + line.strip()
            return
        name, colon, value = line.partition(b":")
        name = name.strip().lower()
        self._last = b""
        if colon and name in (b"content-type", b"content-transfer-encoding"):
            self._fields[name] = value.strip()
            self._last = name

    def _end_headers(self) -> None:
        content_type = self._fields.get(b"content-type", b"")
        kind = content_type.split(b";", 1)[0].strip().lower()
        params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
                  for m in _PARAMETER.finditer(content_type)}  # fmt: skip
        if self._state == _TOP:
            boundary = params.get(b"boundary")
            report_type = (params.get(b"report-type") or b"").lower()
            if kind != b"multipart/report" or report_type != b"delivery-status" or not boundary:
                self._state = _DONE
                return
            self._boundary = b"--" + boundary
            self._state = _PREAMBLE
            return
        self._kind = _STATUS if kind in _STATUS_TYPES else _RETURNED if kind in _RETURNED_TYPES else _OTHER
        self._encoding = self._fields.get(b"content-transfer-encoding", b"").lower()
        self._encoded = bytearray() if self._encoding in (b"base64", b"quoted-printable") else None
        self._group = {}
        self._state = _PART_BODY

    def _next_part(self) -> None:
        if self._state == _PART_BODY:
            self._end_part()
            if self._state == _DONE:
                return
        self._state = _PART_HEADERS
        self._fields = {}
        self._last = b""
        self._section = 0

    def _finish(self) -> None:
        if self._state == _PART_BODY:
            self._end_part()
        self._state = _DONE

    def _body_line(self, line: bytes) -> None:
        if self._kind == _OTHER or (self._kind == _RETURNED and self._returned_done):
            return
        encoded = self._encoded
        if encoded is not None:
            if len(encoded) + len(line) + 2 <= DSN_ENCODED_MAX:
                encoded += line + b"\r\n"
            return
        self._content_line(line)

    def _content_line(self, line: bytes) -> None:
        if self._kind == _STATUS:
            self._status_line(line)
        elif not self._returned_done:
            if not line:
                self._returned_done = True  # the end of the returned message's own header section
                if self._status_seen and self._trace is not None:
                    self._state = _DONE
                return
            m = _TRACE_FIELD.match(line)
            if m is not None and self._trace is None:
                self._trace = _trace(m)

    def _status_line(self, line: bytes) -> None:
        if not line.strip():
            self._end_group()
            return
        if line[:1] in b" \t":
            return  # a folded line (a long Diagnostic-Code): none of the fields read here is folded
        m = _FIELD.match(line)
        if m is not None:
            name = m.group(1).lower()
            if name in (b"action", b"final-recipient", b"original-recipient"):
                self._group[name] = m.group(2)

    def _end_group(self) -> None:
        group, self._group = self._group, {}
        if group.get(b"action", b"").lower() != b"failed" or len(self.recipients) >= DSN_RECIPIENTS_MAX:
            return
        original = _address(group.get(b"original-recipient", b""))
        final = _address(group.get(b"final-recipient", b""))
        self.recipients.append(original if original and (numbered(original) or not final) else final)

    def _end_part(self) -> None:
        encoded, self._encoded = self._encoded, None
        if encoded is not None:
            try:
                if self._encoding == b"base64":
                    decoded = base64.b64decode(bytes(encoded))
                else:
                    decoded = quopri.decodestring(bytes(encoded))
            except (binascii.Error, ValueError):
                decoded = b""
            for line in decoded.splitlines():
                self._content_line(line)
        if self._kind == _STATUS:
            self._end_group()
            self._status_seen = True
        elif self._kind == _RETURNED:
            self._returned_done = True
        if self._status_seen and self._trace is not None:
            self._state = _DONE


def dsn_reader(head: bytes, stuffed: bool = False) -> DsnReader | None:
    """A DsnReader that has read a message's first bytes, when its header section may start a DSN (it says
    `multipart/report`); None for other mail, which then costs nothing more."""
    end = head.find(b"\n\n") if (end := head.find(b"\r\n\r\n")) < 0 else end
    end = len(head) if end < 0 else end
    if head.find(b"eport", 0, end) < 0 and head.find(b"EPORT", 0, end) < 0:  # no copy: most mail stops here
        return None
    if _REPORT_TYPE.search(head, 0, end) is None:  # "report" said elsewhere (a Subject)
        return None
    reader = DsnReader(stuffed)
    reader.feed(head)
    return reader


def returned_message(message: bytes) -> Returned | None:
    """What a failure DSN returns, when `message` is such a DSN (RFC 3464); else None.

    It takes all three signs: the top-level type `multipart/report` with `report-type=delivery-status`, a
    `message/delivery-status` part saying `Action: failed` for at least one recipient, and a trace header among the
    returned headers. A delay notice (`Action: delayed`) is not a bounce and is not counted."""
    reader = DsnReader()
    reader.feed(message)
    return reader.result()


# --- the ledger: one byte per recipient ---------------------------------------------------------------------------
MARK_ACCEPTED_MASK = 0b0000_0011  # how often the sink accepted it, saturating at 3 (2 or more: duplicated)
MARK_TEMPFAILED = 0b0000_0100  # the sink refused it temporarily at least once
MARK_PERMFAILED = 0b0000_1000  # the sink refused it permanently at least once
MARK_DSN = 0b0001_0000  # the MTA under test returned it in a failure DSN
MARK_ATTEMPTS_SHIFT = 5  # bits 5-7: in how many transactions the sink answered it (at RCPT or at the end of DATA)
MARK_ATTEMPTS_MAX = 7
MARK_FLAGS = MARK_TEMPFAILED | MARK_PERMFAILED | MARK_DSN

ANSWER_ACCEPTED, ANSWER_TEMPFAILED, ANSWER_PERMFAILED = 0, 1, 2  # smartsink's Outcome values


def mark_answer(mark: int, answer: int) -> int:
    """The mark after one more answer of the sink to this recipient (ANSWER_*), in one more transaction."""
    tries = min(MARK_ATTEMPTS_MAX, (mark >> MARK_ATTEMPTS_SHIFT) + 1)
    mark = (mark & ~(MARK_ATTEMPTS_MAX << MARK_ATTEMPTS_SHIFT)) | (tries << MARK_ATTEMPTS_SHIFT)
    if answer == ANSWER_ACCEPTED:
        return (mark & ~MARK_ACCEPTED_MASK) | min(3, (mark & MARK_ACCEPTED_MASK) + 1)
    return mark | (MARK_TEMPFAILED if answer == ANSWER_TEMPFAILED else MARK_PERMFAILED)


def mark_dsn(mark: int) -> int:
    return mark | MARK_DSN


def accepted(mark: int) -> int:
    """How often the sink accepted the recipient (3: three times or more)."""
    return mark & MARK_ACCEPTED_MASK


def attempts(mark: int) -> int:
    """In how many transactions the sink answered the recipient (7: seven or more)."""
    return mark >> MARK_ATTEMPTS_SHIFT


def combine_marks(a: int, b: int) -> int:
    """Two sinks' marks for one recipient as one: acceptances and attempts add up (saturating), flags are kept."""
    tries = min(MARK_ATTEMPTS_MAX, attempts(a) + attempts(b))
    return (tries << MARK_ATTEMPTS_SHIFT) | ((a | b) & MARK_FLAGS) | min(3, accepted(a) + accepted(b))


def describe_mark(mark: int) -> str:
    """What the sink saw of a recipient, in words: "nothing", or its answers, attempts and DSN."""
    if not mark:
        return "nothing"
    said = []
    taken = accepted(mark)
    if taken:
        said.append("accepted" if taken == 1 else f"accepted {taken}{'+' if taken == 3 else ''} times")
    if mark & MARK_TEMPFAILED:
        said.append("refused temporarily")
    if mark & MARK_PERMFAILED:
        said.append("refused permanently")
    tries = attempts(mark)
    text = ", ".join(said)
    if tries:
        text += f" ({tries}{'+' if tries == MARK_ATTEMPTS_MAX else ''} attempt{'' if tries == 1 else 's'})"
    if mark & MARK_DSN:
        text = f"{text}; returned in a DSN" if text else "returned in a DSN"
    return text


# --- reconciliation -------------------------------------------------------------------------------------------
# What became of each recipient the target accepted: exactly one of these (they add up to those recipients).
RECIPIENT_OUTCOMES = (
    "delivered",  # the sink accepted it once
    "duplicated",  # the sink accepted it more than once
    "bounced",  # the sink refused it permanently and never accepted it
    "expired",  # the MTA returned it in a DSN, the sink having only deferred it (or never seen it)
    "deferred",  # the sink has not taken it, and the MTA's queue (--mta-queue) still holds it
    "pending",  # the sink only deferred it so far, no DSN, and nobody asked the MTA's queue: it may still retry
    "lost",  # the sink never saw it (and the MTA's queue, when asked, does not hold it), or saw it only deferred
    # and the MTA's queue no longer holds it, with no DSN
    "unknown",  # its number is beyond what the sink's ledger keeps
)
RECIPIENT_DETAILS = (
    "dsn_returned",  # of the bounced: the MTA returned it to the sender in a DSN
    "bounced_without_dsn",  # of the bounced: no DSN reached the sink
    "dsn_after_delivery",  # of the delivered and duplicated: the MTA also returned it in a DSN (an MTA bug)
    "unexpected",  # not among the target's accepted: the target refused it, yet the sink accepted it
)
# What became of each message the target accepted (for at least one recipient), from its recipients: the first
# that applies of lost, duplicated, deferred, pending, unknown; else delivered (every recipient delivered),
# bounced (none delivered, one bounced at least), expired (none delivered, every one expired) or partly_delivered.
MESSAGE_OUTCOMES = (
    "delivered",
    "partly_delivered",
    "duplicated",
    "bounced",
    "expired",
    "deferred",
    "pending",
    "lost",
    "unknown",
)
SAMPLE_KINDS = ("lost", "duplicated", "bounced_without_dsn", "dsn_after_delivery", "deferred", "pending")
ATTEMPT_BUCKETS = (*(str(n) for n in range(1, MARK_ATTEMPTS_MAX)), f"{MARK_ATTEMPTS_MAX}+")


def runs_path(run_id: str) -> str:
    """Where a sink's admin listener serves its ledger for one run."""
    return f"/runs/{run_id}"


# --- transit times ---------------------------------------------------------------------------------------------
TRANSIT_LOWEST_MS = 1
TRANSIT_HIGHEST_MS = 7 * 24 * 3600 * 1000  # a week: longer than any MTA keeps retrying by default
TRANSIT_DIGITS = 2  # 1% resolution: a few kilobytes per histogram
TRANSIT_MAX_DOMAINS = 100  # per run; more domains are recorded under TRANSIT_OTHER
TRANSIT_OTHER = "(other)"
