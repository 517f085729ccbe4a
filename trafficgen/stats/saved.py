"""A saved report read back: its JSON validated into the typed document (trafficgen.stats.document) in this one
place, a report of schema 1 read as schema 2, and one line naming the problem when it cannot be read.

The validation is pydantic's, against the document's own TypedDicts, strict (a count is an int, a text a str). A
report that passes is returned as it was read, every key kept (the keys a later trafficgen adds too), so it writes
back as it was. Then what the types cannot say: the start is a time, and the counts and every histogram turn back
into a Recorder (trafficgen.stats.report.recorder_of), as `report merge` will need them.
"""

from __future__ import annotations

import binascii
import datetime
import json
import zlib
from functools import cache
from typing import TYPE_CHECKING, cast

from mailload import contract
from trafficgen.stats.document import READABLE_SCHEMAS, SCHEMA, Report
from trafficgen.stats.report import recorder_of

if TYPE_CHECKING:
    from pydantic import TypeAdapter
    from pydantic_core import ErrorDetails


class ReportError(ValueError):
    """A file that is not a trafficgen report this version can read."""


def load(path: str) -> Report:
    """The report saved at `path`; ReportError names the file and what is wrong with it, in one line."""
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: cannot be read: {e}") from None
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    return read(document, path)


@cache
def _adapter() -> TypeAdapter[Report]:
    from pydantic import TypeAdapter  # only where reports are read back

    return TypeAdapter(Report)


def read(document: object, name: str) -> Report:
    """`document` (JSON as read) as a report, if it is one these commands can read; else ReportError naming the
    first problem."""
    schema = document.get("schema") if isinstance(document, dict) else None
    if not isinstance(document, dict) or type(schema) is not int or schema not in READABLE_SCHEMAS:
        raise ReportError(f"{name} is not a trafficgen report with schema {SCHEMA} (or 1)")
    from pydantic import ValidationError

    upgraded = upgrade(document)
    try:
        _adapter().validate_python(upgraded, strict=True)
    except ValidationError as e:
        raise ReportError(f"{name}: {_problem(e.errors()[0])}") from None
    report = cast(Report, upgraded)
    try:
        datetime.datetime.fromisoformat(report["started_at"])
        recorder_of(report)  # counts, replies and every histogram decode
    except (KeyError, TypeError, ValueError, AttributeError, binascii.Error, zlib.error) as e:
        raise ReportError(f"{name}: the report is damaged ({type(e).__name__}: {e})") from None
    return report


def _problem(error: ErrorDetails) -> str:
    """One of pydantic's errors as one line: the key it is at (dotted) and what is wrong."""
    where = ".".join(str(part) for part in error["loc"] if not _is_type_name(part))
    if error["type"] == "missing":
        return f"the report has no {where!r}"
    return f"the report is damaged ({where}: {error['msg']})"


# How pydantic names the members of the report's unions in an error's location: the reconciliation's two forms, and
# the kinds of a JSON value in `config`.
_UNION_MEMBERS = frozenset({"Reconciliation", "ReconcileFailure", "bool", "int", "float", "str"})


def _is_type_name(part: object) -> bool:
    """A part of an error's location that names a member of a union pydantic tried (not a key of the report)."""
    return isinstance(part, str) and (part in _UNION_MEMBERS or "[" in part)


# --- schema 1 ----------------------------------------------------------------------------------------------------


def upgrade(document: dict[str, object]) -> dict[str, object]:
    """A report of schema 1 as schema 2: its reconciliation, one verdict per message in flat keys, becomes the
    `recipients` and `messages` views of one per message (`per: "message"`). In a report of either schema, the
    sections added since the first reports (a timeline, the dimensions, connections...) are filled as a run without
    them reports them, as the commands always read such reports; the keys it has are kept as they are."""
    if document.get("schema") == 1:
        old = document.get("reconciliation")
        if isinstance(old, dict) and "error" not in old and "recipients" not in old:
            document["reconciliation"] = _reconciliation_of_schema_1(old)
        document["schema"] = SCHEMA
    absent: dict[str, object] = {
        "tool": "trafficgen",
        "sending_s": document.get("elapsed_s"),
        "stopped_by": None,
        "schedule": None,
        "latency_from_intended_ms": None,
        "tenants": {},
        "campaigns": {},
        "sender_domains": {},
        "source_addresses": {},
        "profile": None,
        "timeline": None,
        "thresholds": None,
    }
    for key, value in absent.items():
        document.setdefault(key, value)
    inner: dict[str, dict[str, object]] = {
        "connections": {"opened": 0, "peak": 0, "failed": 0, "errors": []},
        "histograms": {"latency_from_intended": None, "phases": {}},
    }
    for key, values in inner.items():
        section = document.setdefault(key, {})
        if isinstance(section, dict):
            for name, value in values.items():
                section.setdefault(name, value)
    return document


def _count(old: dict[str, object], key: str) -> int:
    value = old.get(key, 0)
    return value if isinstance(value, int) else 0


def _reconciliation_of_schema_1(old: dict[str, object]) -> dict[str, object]:
    duplicated = _count(old, "duplicated")
    outcomes = {
        "delivered": _count(old, "delivered") - duplicated,  # schema 1 counted the duplicated among the delivered
        "duplicated": duplicated,
        "bounced": _count(old, "bounced"),
        "expired": _count(old, "expired"),
        "deferred": 0,
        "pending": _count(old, "deferred_pending"),
        "lost": _count(old, "lost"),
        "unknown": _count(old, "unknown"),
    }
    accepted = sum(outcomes.values())
    attempts = old.get("attempts") or {}
    details = {key: _count(old, key) for key in contract.RECIPIENT_DETAILS}
    samples = {
        kind: [{"id": i, "recipient": None, "sink_saw": None} for i in _ids(old.get(f"{kind}_ids"))]
        for kind in contract.SAMPLE_KINDS
    }
    return {
        **{key: old[key] for key in ("sink", "waited_s") if key in old},
        "mta_queue": None,
        "per": "message",
        "recipients": {"accepted": accepted, **outcomes, **details, "attempts": attempts},
        "messages": {
            "accepted": accepted,
            **{k: outcomes.get(k, 0) for k in contract.MESSAGE_OUTCOMES},
            "attempts": attempts,
        },
        "samples": samples,
        **{key: old[key] for key in ("transit_ms", "marks") if key in old},
    }


def _ids(ids: object) -> list[object]:
    return list(ids) if isinstance(ids, list) else []
