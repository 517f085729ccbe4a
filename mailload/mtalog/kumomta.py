"""KumoMTA's JSON log records, one a line, as kumod writes them (docs.kumomta.com/reference/log_record): pure.

- `Reception`: a message taken in. Its queue name is `campaign:tenant@domain` (either part may be absent, and a
  `!routing_domain` may follow); the tenant and campaign come from there, else from the logged `headers` (the
  names given, X-Tenant and X-Campaign by default, compared without case), else from `meta`.
- `Delivery`, `TransientFailure`, `Bounce`: a delivery attempt and the peer's `response` (`code`,
  `enhanced_code` {class, subject, detail}, `content`, `command`: "RCPT TO", "." for the end of DATA...), from
  `egress_source`. A response kumod made itself (its content starts "KumoMTA internal:") is no peer's answer.
- Every other type (Expiration, AdminBounce, OOB, Feedback, Rejection, Delay...) is read and not used.

`recipient` is a string, or a list in newer versions; `timestamp` Unix seconds (or an RFC 3339 string).
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from mailload.mtalog.events import Attempt, Event, Received, Recipient, Stage, domain_of

NAME = "kumomta"
DELIVERY_TYPES = frozenset({"Delivery", "TransientFailure", "Bounce"})
KNOWN_TYPES = frozenset({"Reception", "Expiration", "AdminBounce", "OOB", "Feedback", "Rejection", "Delay"})
INTERNAL = "KumoMTA internal"
STAGES = {"RCPT TO": Stage.RCPT, ".": Stage.DATA, "DATA": Stage.DATA, "MAIL FROM": Stage.OTHER}


def looks_like(line: str) -> bool:
    """Whether a line is one of kumod's records (for telling formats apart)."""
    if not line.startswith("{") or '"type"' not in line:
        return False
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and record.get("type") in DELIVERY_TYPES | KNOWN_TYPES


class Parser:
    """One record a line to events; None for a line that is not a record."""

    def __init__(self, tenant_header: str = "X-Tenant", campaign_header: str = "X-Campaign"):
        self.tenant_header = tenant_header.lower()
        self.campaign_header = campaign_header.lower()
        self.evicted = 0  # no state is kept: nothing is forgotten
        self.before_log = 0  # an attempt's record names its recipient: nothing is from before

    def start_file(self, mtime: float) -> None:
        """Records carry their own time: nothing to do."""

    def feed(self, line: str) -> list[Event] | None:
        try:
            record = json.loads(line)
        except ValueError:
            return None
        if not isinstance(record, dict):
            return None
        kind = record.get("type")
        try:
            if kind in DELIVERY_TYPES:
                return self._attempts(record)
            if kind == "Reception":
                return self._reception(record)
        except (TypeError, ValueError, AttributeError):
            return None
        return [] if isinstance(kind, str) else None

    def _reception(self, record: dict[str, Any]) -> list[Event]:
        recipients = _recipients(record)
        sender = domain_of(str(record.get("sender") or ""))
        tenant, campaign = self._mix(record)
        size = record.get("size")
        events: list[Event] = [
            Received(
                _time(record.get("timestamp")),
                sender or None,
                int(size) if isinstance(size, int) else None,
                len(recipients),
                tenant,
                campaign,
            )
        ]
        events.extend(Recipient(domain_of(r), bounce_notice=not sender) for r in recipients)
        return events

    def _mix(self, record: dict[str, Any]) -> tuple[str | None, str | None]:
        tenant, campaign = _queue_parts(str(record.get("queue") or ""))
        headers = record.get("headers")
        if isinstance(headers, dict) and (tenant is None or campaign is None):
            lowered = {str(k).lower(): v for k, v in headers.items()}
            tenant = tenant or _text(lowered.get(self.tenant_header))
            campaign = campaign or _text(lowered.get(self.campaign_header))
        meta = record.get("meta")
        if isinstance(meta, dict):
            tenant = tenant or _text(meta.get("tenant"))
            campaign = campaign or _text(meta.get("campaign"))
        return tenant, campaign

    def _attempts(self, record: dict[str, Any]) -> list[Event]:
        response = record.get("response") or {}
        content = str(response.get("content") or "")
        code = response.get("code")
        if not isinstance(code, int) or content.startswith(INTERNAL):
            code = None
        enhanced = response.get("enhanced_code")
        if isinstance(enhanced, dict) and code is not None:
            content = f"{enhanced.get('class')}.{enhanced.get('subject')}.{enhanced.get('detail')} {content}"
        stage = STAGES.get(str(response.get("command") or "").strip().upper(), Stage.UNKNOWN)
        source = record.get("egress_source") or _source_ip(record.get("source_address"))
        when = _time(record.get("timestamp"))
        return [
            Attempt(when, domain_of(r), code, content, stage, None, str(source) if source else None)
            for r in _recipients(record)
        ]


def _recipients(record: dict[str, Any]) -> list[str]:
    value = record.get("recipient")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value]
    raise ValueError("no recipient")


def _queue_parts(queue: str) -> tuple[str | None, str | None]:
    """(tenant, campaign) of a queue name `campaign:tenant@domain!routing_domain` (each part optional)."""
    name = queue.partition("!")[0]
    if "@" not in name:
        return None, None
    who = name.rpartition("@")[0]
    campaign, colon, tenant = who.partition(":")
    if not colon:
        campaign, tenant = "", who
    return tenant or None, campaign or None


def _text(value: Any) -> str | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return str(value).strip() or None if value is not None else None


def _source_ip(value: Any) -> str | None:
    """The address of `source_address` {"address": "10.0.0.1:53210"} (or "[v6]:port"), without the port."""
    if not isinstance(value, dict) or not isinstance(value.get("address"), str):
        return None
    address: str = value["address"]
    if address.startswith("["):
        return address[1:].partition("]")[0]
    host, colon, _ = address.rpartition(":")
    return host if colon and ":" not in host else address


def _time(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None
