"""Which build runs: the hot modules compiled with mypyc, or all of it pure Python.

`make install` compiles the modules listed here where a C compiler and Python's headers exist (scripts/native.py;
setup.py compiles the same list into wheels) and leaves pure Python otherwise. A compiled module is a shared
object beside its source that shadows the `.py`; `describe()` says which build a process runs, for the start line
and the report's config, and names compiled modules older than their source (an edit that does not run)."""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass

# The per-message paths of both tools and what they call for each message. Kept interpreted, on purpose: modules
# whose classes cross process boundaries by pickle (the configs, the Recorder's state), the HdrHistogram subclass
# (a compiled class cannot subclass an interpreted one), and everything that runs once a run or once a second.
COMPILED = (
    "trafficgen.connector",
    "trafficgen.content",
    "trafficgen.domains",
    "trafficgen.messages",
    "trafficgen.observers",
    "trafficgen.outcome",
    "trafficgen.ratelimit",
    "trafficgen.runstate",
    "trafficgen.smtp.replies",
    "trafficgen.smtp.session",
    "trafficgen.stats.recorder",
    "trafficgen.stats.tally",
    "trafficgen.stats.timeline",
    "trafficgen.transport",
    "trafficgen.worker",
    "smartsink.destination",
    "smartsink.engines.conversation",
    "smartsink.engines.fast",
    "smartsink.ledger",
    "smartsink.limits.local",
    "smartsink.limits.state",
    "smartsink.policy.decide",
    "smartsink.replies",
    "smartsink.responder",
)


def source(module: str) -> str:
    """The module's `.py`, relative to the repository (what mypyc is given)."""
    return module.replace(".", "/") + ".py"


@dataclass(frozen=True)
class Build:
    compiled: tuple[str, ...]  # modules that load from a shared object
    stale: tuple[str, ...]  # of those, the ones older than their `.py`

    @property
    def kind(self) -> str:
        if not self.compiled:
            return "pure"
        return "compiled" if len(self.compiled) == len(COMPILED) else "partly compiled"

    def describe(self) -> str:
        if not self.compiled:
            return "pure Python"
        text = f"{self.kind} (mypyc, {len(self.compiled)} of {len(COMPILED)} hot modules)"
        if self.stale:
            text += f"; older than their source, so an edit does not run: {', '.join(self.stale)} (make install)"
        return text


def build() -> Build:
    """The build this interpreter finds, without importing the hot modules themselves."""
    importlib.invalidate_caches()  # shared objects built since this process first looked
    compiled: list[str] = []
    stale: list[str] = []
    for name in COMPILED:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec else None
        if origin is None or origin.endswith(".py"):
            continue
        compiled.append(name)
        py = os.path.join(os.path.dirname(origin), name.rpartition(".")[2] + ".py")
        if os.path.exists(py) and os.path.getmtime(py) > os.path.getmtime(origin):
            stale.append(name)
    return Build(tuple(compiled), tuple(stale))


@functools.cache
def running() -> Build:
    """The build this process runs (it cannot change while the process lives): for start lines and reports."""
    return build()
