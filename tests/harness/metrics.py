"""One scrape of a sink's /metrics (Prometheus text), read by metric name and labels."""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.sink import SinkProcess

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Metrics:
    """One scrape of /metrics."""

    samples: tuple[tuple[str, frozenset[tuple[str, str]], float], ...]
    text: str

    @classmethod
    def scrape(cls, sink: SinkProcess) -> Metrics:
        status, body = sink.get("/metrics")
        assert status == 200, body
        samples = []
        for line in body.splitlines():
            if line and not line.startswith("#"):
                m = _SAMPLE.match(line)
                assert m, f"not a Prometheus sample: {line!r}"
                labels = frozenset(_LABEL.findall(m["labels"] or ""))
                samples.append((m["name"], labels, float(m["value"])))
        return cls(tuple(samples), body)

    def value(self, name: str, **labels: str) -> float:
        """The sample with exactly these labels; 0 when the series does not exist (yet)."""
        wanted = frozenset(labels.items())
        found = [v for n, ls, v in self.samples if n == name and ls == wanted]
        assert len(found) <= 1, f"{name}{labels} appears {len(found)} times"
        return found[0] if found else 0.0

    def label_values(self, name: str, label: str) -> set[str]:
        return {dict(ls)[label] for n, ls, _ in self.samples if n == name and label in dict(ls)}

    def messages(self) -> dict[tuple[str, str], float]:
        """smartsink_messages_total as {(domain, outcome): count}."""
        out = {}
        for n, ls, v in self.samples:
            if n == "smartsink_messages_total":
                d = dict(ls)
                out[(d["domain"], d["outcome"])] = v
        return out


def delta(after: dict[tuple[str, str], float], before: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    """The series that changed between two scrapes, with how much."""
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
