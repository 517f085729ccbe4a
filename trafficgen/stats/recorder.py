"""Recording a run: outcome counters per domain, replies, errors, and HDR histograms of latency.

The recorder never prints (progress and reports read it); it can be turned into a plain state and merged
with others, so processes and machines combine exactly (histograms are merged, never averaged).
Latencies are recorded in microseconds. Besides the domains, the same five counts are kept per value of each
other dimension the run uses (tenants, campaigns, sender domains, source addresses) and per --profile stage (with
that stage's latency from the intended time).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass
from operator import attrgetter

from hdrh.histogram import HdrHistogram
from typing_extensions import TypedDict

from trafficgen.messages import Message
from trafficgen.outcome import ACCEPTED, ERROR, Outcome
from trafficgen.stats.document import Counts, counts_of
from trafficgen.stats.histogram import HIGHEST_US as HIGHEST_US
from trafficgen.stats.histogram import LOWEST_US as LOWEST_US
from trafficgen.stats.histogram import SIGNIFICANT_DIGITS as SIGNIFICANT_DIGITS
from trafficgen.stats.histogram import Histogram as Histogram
from trafficgen.stats.histogram import new_histogram as new_histogram
from trafficgen.stats.tally import Tally
from trafficgen.stats.timeline import State as TimelineState
from trafficgen.stats.timeline import Timeline

# The report's key of each dimension, and the Message field that holds a message's value of it.
DIMENSIONS = {
    "tenants": "tenant",
    "campaigns": "campaign",
    "sender_domains": "sender_domain",
    "source_addresses": "source",
}

PHASES = ("connect", "banner", "ehlo", "mail", "rcpt", "data")
MAX_REPLY_KEYS = 1000
MARK_ACCEPTED, MARK_REFUSED = 1, 2
OTHER_TEXTS = "(other texts)"
# Queue ids and timestamps: tokens with a digit in them, or made only of upper-case hex digits ("4F1A", "AB").
_VARYING = re.compile(r"(?<!\S)(?:\S*\d\S*|[0-9A-F]+)(?!\S)")


_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3} ")


def one_line(text: str) -> str:
    """A multi-line reply's text on one line, without the enhanced status code that every line repeats."""
    lines = text.split("\n")
    m = _ENHANCED.match(lines[0])
    if m and len(lines) > 1:
        lines[1:] = [line[len(m.group()) :] if line.startswith(m.group()) else line for line in lines[1:]]
    return " ".join(line.strip() for line in lines if line.strip())


def reply_key(code: int, text: str) -> tuple[int, str]:
    """How replies are grouped: failures by their exact text; acceptances with varying tokens masked,
    so "250 2.0.0 Ok: queued as 4F1A2" does not make one row per message."""
    text = one_line(text)
    if 200 <= code < 300:
        enhanced, _, rest = text.partition(" ")
        if re.fullmatch(r"2\.\d{1,3}\.\d{1,3}", enhanced):
            return code, f"{enhanced} {_VARYING.sub('*', rest)}".strip()
        return code, _VARYING.sub("*", text)
    return code, text[:300]


@dataclass
class Totals:
    attempted: int = 0
    accepted: int = 0
    tempfailed: int = 0
    permfailed: int = 0
    errors: int = 0

    def as_dict(self) -> Counts:
        return counts_of([self.attempted, self.accepted, self.tempfailed, self.permfailed, self.errors])


class DimensionState(TypedDict):
    names: list[str]
    counts: list[list[int]]


class StagesState(TypedDict):
    counts: list[list[int]]
    latency: list[str]  # each stage's histogram, compressed


class State(TypedDict):
    """Everything a Recorder counted, as plain data: what processes hand over, and what a report is read back as."""

    domains: list[str]
    counts: list[list[int]]
    recipients: list[int]
    replies: list[tuple[int, str, int]]
    reply_domains: list[tuple[int, str, str, int]]
    timeline: TimelineState | None
    errors: dict[str, int]
    latency: str
    corrected: str | None
    phases: dict[str, str]
    connections_opened: int
    connections_open: int
    connections_peak: int
    connection_errors: dict[str, int]
    marks: bytes | None
    dimensions: dict[str, DimensionState]
    stages: StagesState | None


class Recorder:
    """Everything a run counts. One per process; `state()` and `merge()` combine them."""

    def __init__(
        self,
        domains: list[str],
        corrected: bool = False,
        marks: bool = False,
        shards: int = 1,
        marks_per_message: int = 1,
        intervals: bool = False,
        dimensions: dict[str, list[str]] | None = None,
        stages: bool = False,
        connections: bool = True,
    ):
        self.domains = list(domains)
        # per value of each other dimension used: the five counts, as for domains
        self.dimensions = {key: list(names) for key, names in (dimensions or {}).items()}
        self.dimension_counts = {key: [[0, 0, 0, 0, 0] for _ in names] for key, names in self.dimensions.items()}
        # (the field's reader, its rows): attrgetter reads a slot of the compiled Message in C
        self._dimension_rows = [(attrgetter(DIMENSIONS[key]), rows) for key, rows in self.dimension_counts.items()]
        # per --profile stage: the five counts, and latency from the intended time
        self.stage_counts: list[list[int]] | None = [] if stages else None
        self._stage_latency: list[Tally] = []
        # per domain: [attempted, accepted, tempfailed, permfailed, errors]
        self.counts = [[0, 0, 0, 0, 0] for _ in self.domains]
        self.recipients = [0, 0, 0, 0]  # by kind
        self.replies: Counter[tuple[int, str]] = Counter()
        self.errors: Counter[str] = Counter()
        # The histograms are recorded through Tallies (trafficgen.stats.tally) and read through the properties
        # below, which make them whole first.
        self._latency = Tally(new_histogram())
        self._corrected = Tally(new_histogram()) if corrected else None
        self._phases = {name: Tally(new_histogram()) for name in PHASES}
        self._mail, self._rcpt, self._data = self._phases["mail"], self._phases["rcpt"], self._phases["data"]
        self.connections_opened = 0
        self.connections_open = 0
        self.connections_peak = 0  # the most open at once (summed over processes when merged)
        self.connection_errors: Counter[str] = Counter()  # connections that could not be opened, by why
        self._keys: dict[tuple[int, str], tuple[int, str]] = {}
        self._heads: dict[tuple[int, str], tuple[int, str]] = {}
        # For --reconcile: one byte per recipient of this instance (recipient j of message seq at (seq // shards) *
        # marks_per_message + j; one per message with --recipient): 1 the target accepted it, 2 not.
        self.marks: bytearray | None = bytearray() if marks else None
        self.shards = shards
        self.marks_per_message = marks_per_message
        # For --hdr-log: the transaction latency since the last take_interval().
        self._interval: Tally | None = Tally(new_histogram()) if intervals else None
        # The run over time (the report's timeline): counts, connections and latency per interval.
        self.timeline = Timeline(self.domains)
        # Whether open connections mean anything (not with --http: a request holds no connection of ours).
        self.samples_connections = connections
        # Which domains each reply came from: (reply key, domain index) -> count.
        self.reply_domains: Counter[tuple[tuple[int, str], int]] = Counter()

    # --- recording (the hot path: keep it lean) -------------------------------------------------------

    def record(self, message: Message, outcome: Outcome) -> None:
        kind = outcome.kind
        if self.marks is not None:
            self._mark(message.seq // self.shards, kind, outcome.recipient_kinds)
        row = self.counts[message.domain]
        row[0] += 1
        row[kind + 1] += 1
        if self._dimension_rows:
            for value_of, rows in self._dimension_rows:
                row = rows[value_of(message)]
                row[0] += 1
                row[kind + 1] += 1
        stages = self.stage_counts
        if stages is not None:
            stage = message.stage
            if stage >= len(stages):
                self._add_stages(stage + 1)
            row = stages[stage]
            row[0] += 1
            row[kind + 1] += 1
            if kind != ERROR:
                self._stage_latency[stage].record(max(1, int((outcome.end - message.intended) * 1e6)))
        recipients = self.recipients
        for k in outcome.recipient_kinds:
            recipients[k] += 1
        if kind == ERROR:
            self.errors[outcome.text] += 1
            open_now = self.connections_open if self.samples_connections else -1
            self.timeline.record(outcome.end, message.domain, kind, 0, None, open_now)
            return
        key = self._reply_key(outcome.code, outcome.text)
        replies = self.replies
        if key not in replies and len(replies) >= MAX_REPLY_KEYS:
            key = (outcome.code, OTHER_TEXTS)
        replies[key] += 1
        self.reply_domains[(key, message.domain)] += 1
        started, end = outcome.started, outcome.end
        value = max(1, int((end - started) * 1e6))
        self._latency.record(value)
        if self._interval is not None:
            self._interval.record(value)
        intended = None
        if self._corrected is not None:
            intended = max(1, int((end - message.intended) * 1e6))
            self._corrected.record(intended)
        open_now = self.connections_open if self.samples_connections else -1
        self.timeline.record(end, message.domain, kind, value, intended, open_now)
        mail, rcpt = outcome.mail, outcome.rcpt
        if mail:
            self._mail.record(max(1, int((mail - started) * 1e6)))
            if rcpt:
                self._rcpt.record(max(1, int((rcpt - mail) * 1e6)))
                if end > rcpt:
                    self._data.record(max(1, int((end - rcpt) * 1e6)))

    def _add_stages(self, count: int) -> None:
        assert self.stage_counts is not None
        while len(self.stage_counts) < count:
            self.stage_counts.append([0, 0, 0, 0, 0])
            self._stage_latency.append(Tally(new_histogram()))

    def _mark(self, index: int, kind: int, recipient_kinds: tuple[int, ...]) -> None:
        """A message's marks: each recipient the target accepted in a message it accepted is 1, any other 2."""
        marks = self.marks
        assert marks is not None
        per = self.marks_per_message
        first = index * per
        if first + per > len(marks):
            marks.extend(bytes(max(first + per - len(marks), len(marks), 1024)))
        if per == 1:
            marks[first] = MARK_ACCEPTED if kind == ACCEPTED else MARK_REFUSED
            return
        for j in range(per):
            taken = kind == ACCEPTED and j < len(recipient_kinds) and recipient_kinds[j] == ACCEPTED
            marks[first + j] = MARK_ACCEPTED if taken else MARK_REFUSED

    def _reply_key(self, code: int, text: str) -> tuple[int, str]:
        """reply_key(), remembered: the regular expressions run once per kind of reply, not once per message.

        Texts that repeat ("2.0.0 Ok", a policy's refusals) are remembered whole; acceptances that differ only in
        their last token (a queue id) are remembered by the rest of the text."""
        key = self._keys.get((code, text))
        if key is not None:
            return key
        head = (code, text[: text.rfind(" ")])
        key = self._heads.get(head)
        if key is None:
            key = reply_key(code, text)
            if key == reply_key(code, head[1] + " 0"):  # the last token does not matter: it is masked anyway
                if len(self._heads) < MAX_REPLY_KEYS:
                    self._heads[head] = key
            elif len(self._keys) < MAX_REPLY_KEYS:
                self._keys[(code, text)] = key
        return key

    def take_interval(self) -> Histogram:
        """The latency histogram of the messages since the last call (and a fresh one from now on)."""
        assert self._interval is not None
        taken: Histogram = self._interval.read()
        self._interval = Tally(new_histogram())
        return taken

    def connection_opened(self, connect_s: float, banner_s: float, ehlo_s: float) -> None:
        self.connections_opened += 1
        self.connections_open += 1
        if self.connections_open > self.connections_peak:
            self.connections_peak = self.connections_open
        self.sample_connections(time.monotonic())
        phases = self._phases
        phases["connect"].record(max(1, int(connect_s * 1e6)))
        phases["banner"].record(max(1, int(banner_s * 1e6)))
        if ehlo_s:
            phases["ehlo"].record(max(1, int(ehlo_s * 1e6)))

    def connection_closed(self) -> None:
        self.connections_open -= 1
        self.sample_connections(time.monotonic())

    def sample_connections(self, now: float) -> None:
        """The connections open now, in the timeline (each interval shows its last sample)."""
        if self.samples_connections:
            self.timeline.sample_connections(now, self.connections_open)

    def recent_latency(self) -> Histogram | None:
        """The transaction latency of the timeline's last whole interval (the live view's p99)."""
        return self.timeline.recent()

    def connection_failed(self, text: str) -> None:
        self.connection_errors[text] += 1

    # --- reading ------------------------------------------------------------------------------------------

    @property
    def latency(self) -> Histogram:
        """Each transaction's latency, from its first command to its deciding reply."""
        histogram: Histogram = self._latency.read()
        return histogram

    @property
    def corrected(self) -> Histogram | None:
        """Latency from each message's intended send time (with a rate), else None."""
        if self._corrected is None:
            return None
        histogram: Histogram = self._corrected.read()
        return histogram

    @property
    def phases(self) -> dict[str, Histogram]:
        """The duration of each step (PHASES), by name."""
        return {name: tally.read() for name, tally in self._phases.items()}

    @property
    def stage_latency(self) -> list[Histogram]:
        """Per --profile stage: latency from the intended send time."""
        return [tally.read() for tally in self._stage_latency]

    def totals(self) -> Totals:
        sums = [sum(column) for column in zip(*self.counts, strict=True)] if self.counts else [0] * 5
        return Totals(*sums)

    def reply_domain_counts(self) -> dict[tuple[int, str], dict[str, int]]:
        """For each reply, how many came from each domain, most first."""
        grouped: dict[tuple[int, str], dict[str, int]] = {}
        for (key, domain), n in self.reply_domains.items():
            grouped.setdefault(key, {})[self.domains[domain]] = n
        return {
            key: dict(sorted(counts.items(), key=lambda item: (-item[1], item[0]))) for key, counts in grouped.items()
        }

    def _domain_index(self, name: str) -> int:
        """A domain's row (a domain this recorder has not seen gets one)."""
        if name not in self.domains:
            self.domains.append(name)
            self.counts.append([0, 0, 0, 0, 0])
        return self.domains.index(name)

    def domain_totals(self) -> dict[str, Counts]:
        return {name: counts_of(row) for name, row in zip(self.domains, self.counts, strict=True)}

    def dimension_totals(self, key: str) -> dict[str, Counts]:
        """The five counts per value of a dimension ("tenants", "campaigns"...); {} when the run has none."""
        names = self.dimensions.get(key, [])
        rows = self.dimension_counts.get(key, [])
        return {name: counts_of(row) for name, row in zip(names, rows, strict=True)}

    # --- combining ----------------------------------------------------------------------------------------

    def _merge_dimension(self, key: str, names: list[str], counts: list[list[int]]) -> None:
        """Add another recorder's counts of one dimension, by name (values it has that this one lacks are added)."""
        mine = self.dimensions.setdefault(key, [])
        rows = self.dimension_counts.setdefault(key, [])
        for name, other in zip(names, counts, strict=True):
            if name not in mine:
                mine.append(name)
                rows.append([0, 0, 0, 0, 0])
            row = rows[mine.index(name)]
            for i, value in enumerate(other):
                row[i] += value

    def state(self, marks: bool = True, timeline: bool = True) -> State:
        """Everything counted, as plain data (histograms in their standard compressed form); the reconciliation
        marks (up to megabytes) and the timeline (hundreds of histograms) only when asked."""
        return {
            "domains": self.domains,
            "counts": self.counts,
            "recipients": self.recipients,
            "replies": [(code, text, n) for (code, text), n in self.replies.items()],
            "reply_domains": [
                (code, text, self.domains[domain], n) for ((code, text), domain), n in self.reply_domains.items()
            ],
            "timeline": self.timeline.state() if timeline else None,
            "errors": dict(self.errors),
            "latency": self.latency.encode().decode("ascii"),
            "corrected": self.corrected.encode().decode("ascii") if self.corrected is not None else None,
            "phases": {name: h.encode().decode("ascii") for name, h in self.phases.items()},
            "connections_opened": self.connections_opened,
            "connections_open": self.connections_open,
            "connections_peak": self.connections_peak,
            "connection_errors": dict(self.connection_errors),
            "marks": bytes(self.marks) if self.marks is not None and marks else None,
            "dimensions": {
                key: {"names": self.dimensions[key], "counts": rows} for key, rows in self.dimension_counts.items()
            },
            "stages": None
            if self.stage_counts is None
            else {
                "counts": self.stage_counts,
                "latency": [h.encode().decode("ascii") for h in self.stage_latency],
            },
        }

    def merge(self, state: State) -> None:
        """Add another recorder's state to this one (same domain list)."""
        for row, other in zip(self.counts, state["counts"], strict=True):
            for i, value in enumerate(other):
                row[i] += value
        for i, value in enumerate(state["recipients"]):
            self.recipients[i] += value
        for code, text, n in state["replies"]:
            self.replies[(code, text)] += n
        for code, text, name, n in state["reply_domains"]:
            self.reply_domains[((code, text), self._domain_index(name))] += n
        if state["timeline"]:
            self.timeline.merge(Timeline.from_state(state["timeline"]))
        self.errors.update(state["errors"])
        self.latency.add(HdrHistogram.decode(state["latency"]))
        if state["corrected"]:
            if self._corrected is None:
                self._corrected = Tally(new_histogram())
            self._corrected.read().add(HdrHistogram.decode(state["corrected"]))
        for name, encoded in state["phases"].items():
            self._phases[name].read().add(HdrHistogram.decode(encoded))
        self.connections_opened += state["connections_opened"]
        self.connections_open += state["connections_open"]
        self.connections_peak += state["connections_peak"]
        self.connection_errors.update(state["connection_errors"])
        for key, part in state["dimensions"].items():
            self._merge_dimension(key, part["names"], part["counts"])
        stages = state["stages"]
        if stages:
            if self.stage_counts is None:
                self.stage_counts = []
            self._add_stages(len(stages["counts"]))
            for i, (counts, encoded) in enumerate(zip(stages["counts"], stages["latency"], strict=True)):
                for j, value in enumerate(counts):
                    self.stage_counts[i][j] += value
                self._stage_latency[i].read().add(HdrHistogram.decode(encoded))
        theirs = state["marks"]
        if theirs is not None and self.marks is not None:
            # Processes mark disjoint messages: a byte-wise OR merges them.
            ours = bytes(self.marks)
            size = max(len(ours), len(theirs))
            merged = int.from_bytes(ours.ljust(size, b"\0"), "big") | int.from_bytes(theirs.ljust(size, b"\0"), "big")
            self.marks = bytearray(merged.to_bytes(size, "big"))
