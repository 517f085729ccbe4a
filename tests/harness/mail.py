"""Mail as the wire carries it, written independently of the tools: a client's stream split into transactions,
CRLF and dot-stuffing, header sections, RFC 5322 message ids, and DSNs built with the email package."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from email import message_from_bytes
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


def generated(run_id: str = "run-1", seq: int = 42) -> bytes:
    """Message `seq` of trafficgen run `run_id` (to user-<seq>@gmail.com.sink.test), as trafficgen writes it."""
    factory = MessageFactory(build(domains=["gmail.com"], run_id=run_id), random.Random(1))
    return b"".join(bytes(part) for part in factory.build(seq, 0.0).content)


def dsn(
    original: bytes, action: str = "failed", returned: str = "message", report_type: str = "delivery-status"
) -> bytes:
    """A DSN as RFC 3464 3.1 describes it: a human part, a delivery-status part, the returned message (or only
    its headers), for the recipient User-42@Gmail.com.sink.test."""
    report = MIMEMultipart("report", report_type=report_type)
    report["From"] = "MAILER-DAEMON@mta.test"
    report["To"] = "noreply@gmail.com.sink.test"
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report.attach(MIMEText("I'm sorry to have to inform you that your message could not be delivered."))
    per_message, per_recipient = Message(), Message()
    per_message["Reporting-MTA"] = "dns; mta.test"
    per_recipient["Final-Recipient"] = "rfc822; User-42@Gmail.com.sink.test"
    per_recipient["Action"] = action
    per_recipient["Status"] = "5.1.1"
    per_recipient["Diagnostic-Code"] = "smtp; 550 5.1.1 The email account that you tried to reach does not exist"
    status = MIMEBase("message", "delivery-status")
    status.set_payload([per_message, per_recipient])
    report.attach(status)
    if returned == "message":
        report.attach(MIMEMessage(message_from_bytes(original)))
    else:
        headers = original.split(b"\r\n\r\n")[0].decode()
        report.attach(MIMEText(headers, "rfc822-headers"))
    return report.as_bytes().replace(b"\n", b"\r\n")
