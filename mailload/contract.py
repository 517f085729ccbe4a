"""The contract between trafficgen and smartsink, written once: both tools import it, a test pins the round trip.

- The trace header. trafficgen stamps every message with `X-Trafficgen-Id: <run_id>.<seq>; t=<unix ms>`: the run,
  the message's number in it, and when it was handed to the target. The sink reads it from the message's own
  header section only (up to the first empty line), so a bounce that quotes the original in its body is never
  taken for the original.
- DSNs (RFC 3464). A `multipart/report; report-type=delivery-status` message whose `message/delivery-status`
  part says `Action: failed` and whose returned headers hold a trace header is the MTA returning that message.
- The ledger. Per run, the sink keeps one byte per message id (`MARK_*` below); trafficgen fetches the bytes
  from `GET /runs/<run_id>?marks=1` and reconciles them, id by id, with what the target accepted.
- Transit times. The sink records, per run and per recipient domain, the time from a message's `t=` to the
  sink's final answer (accepted, or refused permanently) in an HDR histogram of milliseconds (`TRANSIT_*`).
"""

from __future__ import annotations

import re
from typing import NamedTuple

# RFC 2606 reserves .test: no public DNS name ends in it, so generated mail can never reach a real mailbox.
# smartsink strips the same suffix by default, so user@gmail.com.sink.test gets gmail.com's rules.
DEFAULT_SUFFIX = "sink.test"

TRACE_HEADER = "X-Trafficgen-Id"
# How much of a message's start the sink keeps to read these: a DSN quotes the original's headers after its own
# headers, its human-readable text (which holds the refusal, several lines for some providers) and its
# delivery-status part.
HEAD_BYTES = 16 * 1024
RUN_ID_MAX = 64
RUN_ID = re.compile(rf"^[A-Za-z0-9_-]{{1,{RUN_ID_MAX}}}$")
_TRACE_VALUE = rb"([A-Za-z0-9_-]{1,64})\.([0-9]{1,15})(?:[ \t]*;[ \t]*t=([0-9]{1,16}))?[ \t]*\r?$"
_TRACE_LINE = re.compile(rb"(?im)^x-trafficgen-id:[ \t]*" + _TRACE_VALUE)
_CONTENT_TYPE = re.compile(rb"(?im)^content-type:[ \t]*((?:[^\r\n]|\r?\n[ \t])*)")
_ACTION = re.compile(rb"(?im)^action:[ \t]*([a-z]+)")
_FINAL_RECIPIENT = re.compile(rb"(?im)^final-recipient:[ \t]*rfc822[ \t]*;[ \t]*<?([^\s<>]+@[^\s<>]+?)>?[ \t]*\r?$")


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
    if b"rafficgen" not in head and b"RAFFICGEN" not in head:  # the common case without one: no regex
        return None
    m = _TRACE_LINE.search(header_section(head))
    return _trace(m) if m else None


class Returned(NamedTuple):
    """A failure DSN: the message it returns, and to which recipient delivery failed (lower-cased; '' if unsaid)."""

    trace: Trace
    recipient: str


def returned_message(head: bytes) -> Returned | None:
    """What a failure DSN returns, when `head` starts such a DSN (RFC 3464); else None.

    It takes all three signs: the top-level type `multipart/report` with `report-type=delivery-status`, a
    `message/delivery-status` part saying `Action: failed`, and a trace header among the returned headers.
    A delay notice (`Action: delayed`) is not a bounce and is not counted."""
    headers = header_section(head)
    if b"eport" not in headers and b"EPORT" not in headers:
        return None
    m = _CONTENT_TYPE.search(headers)
    if m is None:
        return None
    content_type = re.sub(rb"\r?\n[ \t]+", b" ", m.group(1)).lower()
    if not content_type.startswith(b"multipart/report") or b"delivery-status" not in content_type:
        return None
    body = head[len(headers) :]
    lowered = body.lower()
    if b"message/delivery-status" not in lowered:
        return None
    if b"failed" not in {a.lower() for a in _ACTION.findall(body)}:
        return None
    found = _TRACE_LINE.search(body)
    if found is None:
        return None
    recipient = _FINAL_RECIPIENT.search(body)
    return Returned(_trace(found), recipient.group(1).decode("utf-8", "replace").lower() if recipient else "")


# --- the ledger: one byte per message id -------------------------------------------------------------------------
MARK_ACCEPTED_MASK = 0b0000_0011  # how often the sink accepted it, saturating at 3 (2 or more: duplicated)
MARK_TEMPFAILED = 0b0000_0100  # the sink refused it temporarily at least once
MARK_PERMFAILED = 0b0000_1000  # the sink refused it permanently at least once
MARK_DSN = 0b0001_0000  # the MTA under test returned it in a failure DSN
MARK_ATTEMPTS_SHIFT = 5  # bits 5-7: how many times it reached the end of DATA at the sink, saturating at 7
MARK_ATTEMPTS_MAX = 7
MARK_FLAGS = MARK_TEMPFAILED | MARK_PERMFAILED | MARK_DSN

ANSWER_ACCEPTED, ANSWER_TEMPFAILED, ANSWER_PERMFAILED = 0, 1, 2  # smartsink's Outcome values


def mark_answer(mark: int, answer: int) -> int:
    """The mark after one more answer of the sink to this message (ANSWER_*)."""
    tries = min(MARK_ATTEMPTS_MAX, (mark >> MARK_ATTEMPTS_SHIFT) + 1)
    mark = (mark & ~(MARK_ATTEMPTS_MAX << MARK_ATTEMPTS_SHIFT)) | (tries << MARK_ATTEMPTS_SHIFT)
    if answer == ANSWER_ACCEPTED:
        return (mark & ~MARK_ACCEPTED_MASK) | min(3, (mark & MARK_ACCEPTED_MASK) + 1)
    return mark | (MARK_TEMPFAILED if answer == ANSWER_TEMPFAILED else MARK_PERMFAILED)


def mark_dsn(mark: int) -> int:
    return mark | MARK_DSN


def accepted(mark: int) -> int:
    """How often the sink accepted the message (3: three times or more)."""
    return mark & MARK_ACCEPTED_MASK


def attempts(mark: int) -> int:
    """How often the message reached the end of DATA at the sink (7: seven times or more)."""
    return mark >> MARK_ATTEMPTS_SHIFT


def combine_marks(a: int, b: int) -> int:
    """Two sinks' marks for one id as one: acceptances and attempts add up (saturating), flags are kept."""
    tries = min(MARK_ATTEMPTS_MAX, attempts(a) + attempts(b))
    return (tries << MARK_ATTEMPTS_SHIFT) | ((a | b) & MARK_FLAGS) | min(3, accepted(a) + accepted(b))


# --- reconciliation -------------------------------------------------------------------------------------------
RECONCILE_COUNTS = (
    "delivered",  # the sink accepted it (once or more)
    "bounced",  # the sink refused it permanently and never accepted it
    "dsn_returned",  # of the bounced: the MTA returned it to the sender in a DSN
    "bounced_without_dsn",  # of the bounced: no DSN reached the sink
    "expired",  # the sink only deferred it, and the MTA gave up and returned it in a DSN
    "dsn_after_delivery",  # the sink accepted it, yet the MTA returned it in a DSN (an MTA bug)
    "deferred_pending",  # the sink only deferred it so far, and no DSN: the MTA may still retry
    "lost",  # the sink never saw it
    "duplicated",  # of the delivered: accepted more than once
    "unexpected",  # the target refused it, yet the sink accepted it
    "unknown",  # beyond what the sink's ledger keeps
)
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
