"""What the sink says about itself: logging set up once per process, as text or JSON lines, and a per-connection
and per-transaction trace at `--log-level debug` that never floods (at most TRACE_PER_SECOND lines a second,
then one line saying how many were left out).

Trace lines carry their fields twice: in the message people read, and as attributes (`extra`) that the JSON
format writes as keys, so log pipelines need no parsing.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

TRACE = logging.getLogger("smartsink.trace")
TRACE_PER_SECOND = 200  # trace lines a second, per process; the rest are counted and reported
_FIELDS = ("event", "client", "domain", "sender", "recipients", "size", "outcome", "reply", "worker")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and a trace line's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _FIELDS:
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, form: str, worker: int | None = None) -> None:
    """Set up this process's logging (the supervisor's and each worker's alike)."""
    handler = logging.StreamHandler(sys.stderr)
    if form == "json":
        handler.setFormatter(JsonFormatter())
    else:
        where = f"[worker {worker}]" if worker is not None else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s %(name)s{where}: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    if worker is not None:
        _Trace.worker = worker


class _Trace:
    """The rate limit of the trace: a window of one second and what it has let through."""

    worker: int | None = None
    window = 0.0
    written = 0
    dropped = 0


def tracing() -> bool:
    """Whether connections and transactions are traced (--log-level debug): one cheap check on the hot path."""
    return TRACE.isEnabledFor(logging.DEBUG)


def trace(message: str, *args: object, **fields: Any) -> None:
    """A trace line (`message % args`, and `fields` as its attributes), unless this second's allowance is spent."""
    now = time.monotonic()
    if now - _Trace.window >= 1.0:
        if _Trace.dropped:
            TRACE.debug("%d trace lines left out in the last second (at most %d a second)", _Trace.dropped,
                        TRACE_PER_SECOND, extra={"event": "dropped", "recipients": _Trace.dropped})  # fmt: skip
        _Trace.window, _Trace.written, _Trace.dropped = now, 0, 0
    if _Trace.written >= TRACE_PER_SECOND:
        _Trace.dropped += 1
        return
    _Trace.written += 1
    if _Trace.worker is not None:
        fields.setdefault("worker", _Trace.worker)
    TRACE.debug(message, *args, extra=fields)


class Limited:
    """A logger's warnings for what hostile clients cause (the admin API's bad requests): at most `per_minute` lines
    a minute, then one line saying how many were left out. Never a traceback: the line says what happened."""

    def __init__(self, logger: logging.Logger, per_minute: int = 20, clock: Any = time.monotonic):
        self.logger = logger
        self.per_minute = per_minute
        self.clock = clock
        self.window = float("-inf")
        self.written = 0
        self.dropped = 0

    def warning(self, message: str, *args: object) -> None:
        now = self.clock()
        if now - self.window >= 60.0:
            if self.dropped:
                self.logger.warning("%d more lines like these left out in the last minute", self.dropped)
            self.window, self.written, self.dropped = now, 0, 0
        if self.written >= self.per_minute:
            self.dropped += 1
            return
        self.written += 1
        self.logger.warning(message, *args)
