"""Mail as the wire carries it, written independently of the tools: a client's stream split into transactions,
CRLF and dot-stuffing, header sections, RFC 5322 message ids, and DSNs built with the email package."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from email import encoders, message_from_bytes
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

from trafficgen.config import build
from trafficgen.messages import MessageFactory

# RFC 5322 3.6.4: msg-id = "<" id-left "@" id-right ">", both dot-atom-text here.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
MESSAGE_ID = re.compile(rf"^<{_ATEXT}(?:\.{_ATEXT})*@{_ATEXT}(?:\.{_ATEXT})*>$")


@dataclass
class Transaction:
    """What a client stream held for one message: its commands and its raw (still dot-stuffed) content."""

    commands: list[bytes]
    content: bytes


def transactions(stream: bytes) -> list[Transaction]:
    """Split a client's byte stream into transactions: command lines, then the content after each DATA
    up to the lone dot (the content keeps its final CRLF, as RFC 5321 section 4.1.1 on DATA reads it)."""
    out: list[Transaction] = []
    commands: list[bytes] = []
    pos = 0
    while True:
        end = stream.find(b"\r\n", pos)
        if end < 0:
            break
        line = stream[pos:end]
        pos = end + 2
        commands.append(line)
        if line.upper() != b"DATA":
            continue
        if stream.startswith(b".\r\n", pos):
            content, pos = b"", pos + 3
        else:
            stop = stream.find(b"\r\n.\r\n", pos)
            if stop < 0:
                break
            content, pos = stream[pos : stop + 2], stop + 5
        out.append(Transaction(commands, content))
        commands = []
    return out


def crlf(data: bytes) -> bytes:
    """Every line ending made CRLF, and a final one added: what --body-file promises."""
    data = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def stuffed(data: bytes) -> bytes:
    """RFC 5321 4.5.2 written line by line (independently of trafficgen's own code)."""
    lines = data.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)


def split_message(content: bytes) -> tuple[list[bytes], bytes]:
    """(header lines, body) of CRLF message content."""
    head, _, body = content.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body


# --- trafficgen's messages, and the DSNs an MTA returns for them ------------------------------------------


def generated(run_id: str = "run-1", seq: int = 42, recipients: int = 1, body_size: str = "1kb") -> bytes:
    """Message `seq` of trafficgen run `run_id` (to user-<seq>.<run>@gmail.com.sink.test, or with `recipients` N to
    user-<seq*N>.<run> .. user-<seq*N+N-1>.<run>), as trafficgen writes it."""
    config = build(domains=["gmail.com"], run_id=run_id, recipients_per_message=recipients, body_size=body_size)
    factory = MessageFactory(config, random.Random(1))
    return b"".join(bytes(part) for part in factory.build(seq, 0.0).content)


REFUSAL = (
    "550 5.1.1 The email account that you tried to reach does not exist. Please try double-checking the "
    "recipient's email address for typos or unnecessary spaces."
)


def dsn(
    original: bytes,
    action: str = "failed",
    returned: str = "message",
    report_type: str = "delivery-status",
    recipients: list[str] | None = None,
    original_recipients: list[str] | None = None,
    encoding: str | None = None,
) -> bytes:
    """A DSN as RFC 3464 3.1 describes it: a human part naming each recipient with the refusal (as Postfix writes
    it), a delivery-status part with a group per recipient (Final-Recipient, Action, Status, Diagnostic-Code; an
    Original-Recipient from `original_recipients`), then the returned message (or only its headers, `returned`).
    `recipients`: by default the original's To addresses, capitalised as an MTA may write them (User-42...).
    `encoding`: "base64" sends the delivery-status and returned parts base64-encoded."""
    if recipients is None:
        to = message_from_bytes(original).get("To", "")
        found = [a.strip() for a in str(to).replace("\r\n", "").split(",") if a.strip()]
        recipients = [a.replace("user-", "User-", 1) for a in found] or ["User-42@Gmail.com.sink.test"]
    report = MIMEMultipart("report", report_type=report_type)
    report["From"] = "MAILER-DAEMON@mta.test"
    report["To"] = "noreply@gmail.com.sink.test"
    report["Subject"] = "Undelivered Mail Returned to Sender"
    human = "I'm sorry to have to inform you that your message could not be delivered to one or more recipients.\n\n"
    human += "".join(
        f"<{r}>: host sink.test[127.0.0.1] said: {REFUSAL} (in reply to RCPT TO command)\n\n" for r in recipients
    )
    report.attach(MIMEText(human))
    per_message = Message()
    per_message["Reporting-MTA"] = "dns; mta.test"
    groups = [per_message]
    for i, recipient in enumerate(recipients):
        group = Message()
        if original_recipients is not None:
            group["Original-Recipient"] = f"rfc822; {original_recipients[i]}"
        group["Final-Recipient"] = f"rfc822; {recipient}"
        group["Action"] = action
        group["Status"] = "5.1.1"
        group["Diagnostic-Code"] = f"smtp; {REFUSAL}"
        groups.append(group)
    status = MIMEBase("message", "delivery-status")
    status.set_payload(groups)
    if encoding == "base64":
        status = _encoded_part("message/delivery-status", status.as_bytes().split(b"\n\n", 1)[1])
    report.attach(status)
    if returned == "message":
        part: Message = MIMEMessage(message_from_bytes(original))
        if encoding == "base64":
            part = _encoded_part("message/rfc822", original)
    else:
        headers = original.split(b"\r\n\r\n")[0]
        part = _encoded_part("text/rfc822-headers", headers) if encoding == "base64" else MIMEText(
            headers.decode(), "rfc822-headers")  # fmt: skip
    report.attach(part)
    data = report.as_bytes()
    for content_type in (b"message/delivery-status", b"message/rfc822", b"text/rfc822-headers"):
        data = data.replace(b"application/x-" + content_type.replace(b"/", b"-"), content_type)
    return data.replace(b"\n", b"\r\n")


def _encoded_part(content_type: str, payload: bytes) -> Message:
    """A part of this type whose payload is base64-encoded, as some MTAs send the parts of a DSN. (The email
    package writes message/* parts its own way: the type is written as a placeholder, set by dsn() at the end.)"""
    part = MIMEBase("application", "x-" + content_type.replace("/", "-"))
    part.set_payload(payload)
    encoders.encode_base64(part)
    return part
