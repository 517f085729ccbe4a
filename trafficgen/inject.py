"""Submitting through KumoMTA's HTTP injection API (`--http`): `POST {target}/api/inject/v1`.

One generated message goes in one request, to --http-batch-size recipients (the recipients of the message),
as written (not dot-stuffed), with HTTP basic authentication when --auth-user is given, and the body KumoMTA
documents: {"envelope_sender", "content", "recipients": [{"email"}]}. The answer's
`failed_recipients` and `errors` give each recipient's outcome; a reply code at the start of an error
("550 5.1.1 ...", as smartsink writes them) decides temporary or permanent, otherwise the refusal is
permanent. An HTTP 429 or 503 is a temporary refusal of the whole request; any other failure is an error.

HttpSession is a Transport (trafficgen.transport), like the SMTP Session: the run loop does not care which it has.
"""

from __future__ import annotations

import asyncio
import re
from time import monotonic
from typing import Any

import aiohttp

from trafficgen.config import RunConfig
from trafficgen.messages import Message
from trafficgen.outcome import ACCEPTED, PERMFAILED, TEMPFAILED, Kind, Outcome

_CODE = re.compile(r"^\s*([245]\d\d)[ -](.*)$", re.S)
ACCEPTED_CODE, ACCEPTED_TEXT = 250, "injected"


class HttpSession:
    """Requests to one injection endpoint, over a connection pool shared by the process."""

    usable = True
    holds_connection = False
    phases = (0.0, 0.0, 0.0)  # nothing to open: the pool connects as requests need

    def __init__(self, client: aiohttp.ClientSession, url: str, config: RunConfig):
        self.client = client
        self.url = url
        self.timeout = aiohttp.ClientTimeout(total=config.timeout)
        self.extra = {"deferred_spool": config.http_defer_spool, "deferred_generation": config.http_defer_generation}
        self.auth = aiohttp.BasicAuth(config.auth_user, config.auth_password or "") if config.auth_user else None

    async def quit(self) -> None:
        """Nothing to close: the pool belongs to the run."""

    async def send(self, message: Message, following: Message | None = None) -> Outcome:
        started = monotonic()
        count = len(message.recipients)
        body = {
            "envelope_sender": message.sender,
            "content": undot(b"".join(message.content)).decode("utf-8", "replace"),
            "recipients": [{"email": r} for r in message.recipients],
            **{k: v for k, v in self.extra.items() if v},
        }
        try:
            async with self.client.post(self.url, json=body, timeout=self.timeout, auth=self.auth) as response:
                status = response.status
                text = await response.text()
                answer = await response.json(content_type=None) if status == 200 else None
        except TimeoutError:
            return Outcome.error(f"timeout: no answer from {self.url}", count, started, monotonic())
        except aiohttp.ClientConnectorError as unreachable:
            text = f"refused: cannot connect to {self.url}: {unreachable.os_error}"
            return Outcome.error(text, count, started, monotonic(), connecting=True)
        except (aiohttp.ClientError, ValueError) as failed:
            return Outcome.error(f"http: {type(failed).__name__}: {failed}", count, started, monotonic())
        end = monotonic()
        if status in (429, 503):
            return Outcome(
                TEMPFAILED, status, f"HTTP {status}: {text[:200]}", (TEMPFAILED,) * count, False, started, end=end
            )
        if status != 200 or not isinstance(answer, dict):
            return Outcome.error(f"http: HTTP {status}: {text[:200]}", count, started, end)
        return outcome_of(answer, message, started, end)


def undot(content: bytes) -> bytes:
    """The content as written: messages are kept dot-stuffed for SMTP (RFC 5321 4.5.2), and the inject API takes
    content as it is."""
    if content.startswith(b".."):
        content = content[1:]
    return content.replace(b"\r\n..", b"\r\n.")


def outcome_of(answer: dict[str, Any], message: Message, started: float, end: float) -> Outcome:
    """The message's outcome from an inject API answer (pure: no I/O)."""
    failed = set(answer.get("failed_recipients") or [])
    errors = [str(e) for e in answer.get("errors") or []]
    kinds: list[Kind] = []
    refusals: list[tuple[Kind, int, str]] = []  # (kind, code, text)
    for recipient in message.recipients:
        if recipient not in failed:
            kinds.append(ACCEPTED)
            continue
        error = next((e for e in errors if e.startswith(f"{recipient}:")), "")
        reason = error[len(recipient) + 1 :].strip() if error else "refused by the injection API"
        m = _CODE.match(reason)
        code, text = (int(m.group(1)), m.group(2)) if m else (550, reason)
        kind = Kind.of_code(code) if code >= 400 else PERMFAILED
        kinds.append(kind)
        refusals.append((kind, code, text))
    if ACCEPTED in kinds:
        return Outcome(ACCEPTED, ACCEPTED_CODE, ACCEPTED_TEXT, tuple(kinds), False, started, end=end)
    kind, code, text = min(refusals, key=lambda r: (r[0] != TEMPFAILED, r[0]))
    return Outcome(kind, code, text, tuple(kinds), False, started, end=end)


def pool(concurrency: int) -> aiohttp.ClientSession:
    """One connection pool for the process's workers, as many connections as workers."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency, force_close=False))


async def close_pool(client: aiohttp.ClientSession | None) -> None:
    if client is not None:
        await client.close()
        await asyncio.sleep(0)  # aiohttp: let the connector finish closing its transports
