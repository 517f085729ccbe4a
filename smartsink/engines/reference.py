"""The reference engine: aiosmtpd parses the wire, its handler hooks ask the same Responder as the fast engine.

`smartsink --engine aiosmtpd` serves with it. It is slower (docs/performance.md) but written by others,
so tests drive the same conversations through both engines and compare the answers.
Per aiosmtpd's contract, handle_MAIL sets envelope.mail_from and handle_RCPT appends to envelope.rcpt_tos.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Callable
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP, AuthResult, Envelope
from aiosmtpd.smtp import Session as AioSession

from mailload import contract
from smartsink import destination, metrics, replies
from smartsink.replies import Answer
from smartsink.responder import Responder, SinkContext


def _said(answer: Answer) -> str:
    """The answer as aiosmtpd writes it: rendered at the edge like the fast engine's, without the last CRLF (aiosmtpd
    adds it)."""
    return replies.wire(answer)[:-2].decode("ascii")


class SinkHandler:
    """aiosmtpd hooks that ask this connection's Responder."""

    def __init__(self, responder: Responder):
        self.responder = responder

    async def handle_MAIL(
        self, server: SMTP, session: AioSession, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        self.responder.mail(address)
        return _said(replies.MAIL_OK)

    async def handle_RCPT(
        self, server: SMTP, session: AioSession, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if "@" not in address or address.startswith("@") or address.endswith("@"):
            # aiosmtpd takes RCPT TO:<> (RFC 5321 4.1.1.3 asks for a mailbox); the fast engine's answer.
            return _said(replies.BAD_RCPT)
        self.responder.tls = session.ssl is not None
        answer = await self.responder.rcpt(address)
        if answer is not None and answer.accepted:
            envelope.rcpt_tos.append(address)
        return self._after(server, answer)

    async def handle_DATA(self, server: SMTP, session: AioSession, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        reader = contract.dsn_reader(content)  # aiosmtpd holds the whole message: the reader reads what it needs
        returned = reader.result() if reader is not None else None
        answer = await self.responder.data_end(len(content), content[: contract.HEAD_BYTES], returned=returned)
        return self._after(server, answer)

    async def handle_EHLO(
        self, server: SMTP, session: AioSession, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        # aiosmtpd offers AUTH whenever it can parse it; the sink offers it only with --auth any|required.
        session.host_name = hostname
        if self.responder.ctx.config.auth == "off":
            return [line for line in responses if not line[4:].upper().startswith("AUTH")]
        return responses

    async def handle_RSET(self, server: SMTP, session: AioSession, envelope: Envelope) -> str:
        self.responder.reset()
        return _said(replies.OK)

    @staticmethod
    def _after(server: SMTP, answer: Answer | None) -> str:
        transport: Any = server.transport
        if answer is None:  # the policy cuts the connection without a word
            if transport is not None:
                transport.abort()
            return "421 4.3.0 (connection already cut)"
        if answer.close and transport is not None:
            # aiosmtpd writes the returned reply before it next yields, so the close comes after it.
            asyncio.get_running_loop().call_soon(transport.close)
        return _said(answer)


def _any_credentials(server: SMTP, session: AioSession, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
    metrics.child(metrics.AUTHS, "ok").inc()
    return AuthResult(success=True)


# What aiosmtpd's own failure replies lack: an enhanced status code (RFC 2034), as EHLO's ENHANCEDSTATUSCODES
# promises and the fast engine gives; by reply code.
_ENHANCED_BY_CODE = {421: "4.3.0", 500: "5.5.2", 501: "5.5.4", 502: "5.5.1", 503: "5.5.1", 504: "5.5.4"}
_HAS_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}(?:\s|$)")


def with_enhanced_code(status: str) -> str:
    """A failure reply of aiosmtpd's with an enhanced status code of its class in front, when it has none."""
    code, separator, text = status[:3], status[3:4], status[4:]
    if not code.isdigit() or code[0] not in "45" or _HAS_ENHANCED.match(text):
        return status
    enhanced = _ENHANCED_BY_CODE.get(int(code), f"{code[0]}.0.0")
    return f"{code}{separator or ' '}{enhanced} {text}".rstrip()


class ReferenceSMTP(SMTP):
    """aiosmtpd's SMTP with the sink's greeting rules, DATA-time cuts, connection accounting, and its answers
    made to match the fast engine's where aiosmtpd's own differ: enhanced status codes on failures, no AUTH
    offered with --auth off, 421 to a client that stays silent past --timeout."""

    def __init__(self, ctx: SinkContext, context: ssl.SSLContext | None):
        self.sink_responder = Responder(ctx, "unknown")
        config = ctx.config
        super().__init__(
            SinkHandler(self.sink_responder),
            hostname=config.hostname,
            ident="ESMTP smartsink",
            data_size_limit=config.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            tls_context=context,
            require_starttls=False,
            timeout=config.timeout,
            auth_required=config.auth == "required",
            auth_require_tls=False,
            authenticator=_any_credentials if config.auth != "off" else None,
        )

    async def push(self, status: AnyStr) -> None:
        text = status.decode("utf-8", "replace") if isinstance(status, bytes) else status
        await super().push("\r\n".join(with_enhanced_code(line) for line in text.split("\r\n")))

    async def smtp_AUTH(self, arg: str) -> None:
        if self.sink_responder.ctx.config.auth == "off":
            await self.push(_said(replies.AUTH_DISABLED))
            return
        await super().smtp_AUTH(arg)

    def _timeout_cb(self) -> None:
        # RFC 5321 4.2: a server closing the connection says so first (aiosmtpd closes in silence).
        transport: Any = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(replies.wire(replies.TIMEOUT))
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    def connection_made(self, transport: Any) -> None:
        peer = transport.get_extra_info("peername")
        self.sink_responder.client = peer[0] if isinstance(peer, tuple) else "unix"
        meant, _ = destination.of_transport(transport)
        self.sink_responder.meant_for(meant[0] if meant else "")
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.sink_responder.closed()
        super().connection_lost(exc)

    async def _handle_client(self) -> None:
        answer = await self.sink_responder.greet()
        transport: Any = self.transport
        if not answer.accepted:
            if transport is not None:
                transport.write(replies.wire(answer))
                transport.close()
            return
        await super()._handle_client()

    async def smtp_DATA(self, arg: str) -> None:
        transport: Any = self.transport
        if self.envelope is not None and self.envelope.rcpt_tos and self.sink_responder.data():
            if transport is not None:
                transport.abort()
            return
        await super().smtp_DATA(arg)


def aiosmtpd_factory(ctx: SinkContext, context: ssl.SSLContext | None) -> Callable[[], ReferenceSMTP]:
    return lambda: ReferenceSMTP(ctx, context)
