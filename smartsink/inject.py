"""KumoMTA's HTTP injection API (`POST /api/inject/v1`), as kumod reads a request: pure checks, no I/O.

kumod answers with axum's statuses and its own: 415 without `Content-Type: application/json`, 400 for a body that is
not JSON, 422 for JSON of the wrong shape (a missing or unknown field, a wrong type, an unknown template dialect),
500 (`Error: ...`, plain text) for a request it cannot use as a whole (an envelope sender that is not an address, a
content builder with neither text_body nor html_body, a template that does not parse), and 200 with per-recipient
results otherwise: a bad recipient fails alone, and no recipient at all is 200 with zero counts.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

REQUEST_FIELDS = {
    "envelope_sender",
    "recipients",
    "content",
    "substitutions",
    "template_dialect",
    "deferred_spool",
    "deferred_generation",
    "trace_headers",
}
RECIPIENT_FIELDS = {"email", "name", "substitutions"}
BUILDER_FIELDS = {"text_body", "html_body", "amp_html_body", "attachments", "headers", "from", "subject", "reply_to"}
ATTACHMENT_FIELDS = {"data", "content_type", "content_id", "file_name", "base64"}
TEMPLATE_DIALECTS = ("Jinja", "Static", "Handlebars")
_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")
_OPENERS = {"{{": "}}", "{%": "%}", "{#": "#}"}


class Refusal(Exception):
    """The request as a whole is refused: the HTTP status and the body kumod would send."""

    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status = status
        self.text = text


@dataclass(frozen=True)
class Request:
    """An inject request that kumod would take: the sender, each recipient's address, the content as text."""

    sender: str
    recipients: tuple[str, ...]
    content: str


def shape_error(message: str) -> Refusal:
    return Refusal(422, f"Failed to deserialize the JSON body into the target type: {message}")


def app_error(message: str) -> Refusal:
    return Refusal(500, f"Error: {message}")


def basic_credentials(header: str | None, auth: str) -> tuple[str, str] | None:
    """The (user, password) of an `Authorization: Basic` header, checked as the sink checks SMTP AUTH.

    With `--auth off` the header is not read (None); with `any` credentials are optional and any are good; with
    `required` a request without them is refused 401, as kumod refuses one its `http_server_validate_auth_basic`
    does not pass. A header that is not well-formed Basic is a 401 whatever the mode."""
    if auth == "off":
        return None
    if not header:
        if auth == "required":
            raise Refusal(401, "Unauthorized: this sink requires HTTP basic authentication (--auth required)")
        return None
    scheme, _, token = header.partition(" ")
    try:
        if scheme.lower() != "basic":
            raise ValueError(scheme)
        user, colon, password = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
        if not colon:
            raise ValueError("no colon")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Refusal(401, "Unauthorized: the Authorization header is not HTTP basic credentials") from None
    return user, password


def check_content_type(value: str | None) -> None:
    media = (value or "").split(";")[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise Refusal(415, "Expected request with `Content-Type: application/json`")


def read(body: Any) -> Request:
    """The request, or Refusal with kumod's status and text."""
    if not isinstance(body, dict):
        raise shape_error(f"invalid type: {type(body).__name__}, expected struct InjectV1Request")
    _fields(body, REQUEST_FIELDS, "struct InjectV1Request")
    for name in ("envelope_sender", "recipients", "content"):
        if name not in body:
            raise shape_error(f"missing field `{name}`")
    if not isinstance(body["envelope_sender"], str):
        raise shape_error("envelope_sender: invalid type, expected a string")
    dialect = body.get("template_dialect", "Jinja")
    if dialect not in TEMPLATE_DIALECTS:
        variants = ", ".join(f"`{d}`" for d in TEMPLATE_DIALECTS)
        raise shape_error(f"template_dialect: unknown variant `{dialect}`, expected one of {variants}")
    recipients = _recipients(body["recipients"])
    content = _content(body["content"])
    if not _ADDRESS.match(body["envelope_sender"]):
        raise app_error(f"envelope_sender: invalid address {body['envelope_sender']!r}")
    if dialect != "Static":
        for text in _templates(body["content"]):
            problem = template_problem(text)
            if problem:
                raise app_error(f"syntax error: {problem}")
    return Request(body["envelope_sender"], recipients, content)


def _fields(value: dict[str, Any], known: set[str], what: str) -> None:
    unknown = sorted(set(value) - known)
    if unknown:
        expected = ", ".join(f"`{k}`" for k in sorted(known))
        raise shape_error(f"unknown field `{unknown[0]}`, expected one of {expected} (in {what})")


def _recipients(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise shape_error("recipients: invalid type, expected a sequence")
    emails = []
    for recipient in value:
        if not isinstance(recipient, dict) or not isinstance(recipient.get("email"), str):
            raise shape_error('recipients: each must be an object with an "email" string')
        _fields(recipient, RECIPIENT_FIELDS, "struct Recipient")
        emails.append(recipient["email"])
    return tuple(emails)


def _content(value: Any) -> str:
    """The content as the sink counts it: the message text, or the builder's parts joined."""
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        raise shape_error("content: data did not match any variant of untagged enum Content")
    _fields(value, BUILDER_FIELDS, "content builder")
    for attachment in value.get("attachments") or []:
        if not isinstance(attachment, dict) or not {"data", "content_type"} <= set(attachment):
            raise shape_error("attachments: each needs `data` and `content_type`")
        _fields(attachment, ATTACHMENT_FIELDS, "struct Attachment")
    if value.get("text_body") is None and value.get("html_body") is None:
        raise app_error("at least one of text_body and/or html_body must be given")
    headers = value.get("headers") or {}
    if not isinstance(headers, dict):
        raise shape_error("headers: invalid type, expected a map")
    lines = [f"{name}: {text}" for name, text in headers.items()]
    if isinstance(value.get("subject"), str):
        lines.append(f"Subject: {value['subject']}")
    return "\r\n".join([*lines, "", value.get("text_body") or "", value.get("html_body") or ""])


def _templates(content: Any) -> list[str]:
    """The texts kumod compiles as templates."""
    if isinstance(content, str):
        return [content]
    texts = [content.get(k) for k in ("text_body", "html_body", "amp_html_body")]
    texts += list((content.get("headers") or {}).values())
    return [t for t in texts if isinstance(t, str)]


def template_problem(text: str) -> str | None:
    """Why a Jinja template would not parse (an opened tag never closed), or None."""
    at = 0
    while True:
        starts = [(text.find(opener, at), opener) for opener in _OPENERS]
        starts = [(i, o) for i, o in starts if i >= 0]
        if not starts:
            return None
        start, opener = min(starts)
        end = text.find(_OPENERS[opener], start + 2)
        if end < 0:
            line = text.count("\n", 0, start) + 1
            return f"unexpected end of input, expected end of {opener} block (line {line})"
        at = end + 2


def recipient_problem(email: str) -> str | None:
    """Why one recipient cannot be injected (it fails alone), or None."""
    if not _ADDRESS.match(email):
        return f"recipient email {email}: invalid address"
    return None
