"""The SMTP dialogue of one connection of the fast engine: a Conversation answers each verb with a method of its
own, found in a table (VERBS) as aiosmtpd finds its smtp_* methods.

It keeps the SMTP state of the connection (HELO seen, AUTH, a transaction in progress), parses each command line,
and asks the connection's Responder at the steps the policy cares about. It reads and writes only through its
Wire (smartsink.engines.fast's FastConnection: buffers, waits, timeouts, flow control), and says each answer by
handing it over: the Wire puts it on the wire.
"""

from __future__ import annotations

import base64
import binascii
import ssl
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from mailload import contract
from smartsink import metrics, replies
from smartsink.replies import Answer
from smartsink.responder import Responder

LINE_LIMITS = {b"MAIL": 1024, b"AUTH": 12288}
LINE_LIMIT = 512  # RFC 5321 4.5.3.1.4, including CRLF
COMMAND_LINE_MAX = max(LINE_LIMITS.values())
MAX_ERRORS = 20  # like Postfix's smtpd_hard_error_limit
TOO_LONG: Final = object()  # what Wire.readline gives for a line over its limit (read and dropped)


class Wire(Protocol):
    """What a Conversation needs of its connection."""

    out: list[bytes]  # the replies not yet written
    closing: bool
    tls_active: bool

    async def readline(self, limit: int = LINE_LIMIT) -> bytes | object | None:
        """The next line without its CRLF; TOO_LONG for an over-long one; None at EOF."""

    async def read_body(self) -> tuple[int, bytes, contract.Returned | None] | None:
        """(size, first bytes, what it returns if it is a DSN) of a message up to CRLF.CRLF; None at EOF."""

    def send(self, answer: Answer | None) -> bool:
        """Say an answer of the Responder's (None: cut), closing when it says so; False when the connection is
        done."""

    def flush(self) -> None:
        """Write the replies gathered so far."""

    async def start_tls(self, context: ssl.SSLContext) -> bool:
        """Upgrade the connection; False when the handshake failed (the connection is done)."""


def _parse_path(arg: bytes, keyword: bytes) -> tuple[str, list[bytes]] | None:
    """("address", [params]) from b'FROM:<a@b> SIZE=10', or None when it is not that shape."""
    if arg[: len(keyword)].upper() != keyword:
        return None
    rest = arg[len(keyword) :].lstrip()
    if rest.startswith(b"<"):
        end = rest.find(b">")
        if end < 0:
            return None
        address, params = rest[1:end], rest[end + 1 :].split()
    else:
        parts = rest.split()
        if not parts:
            return None
        address, params = parts[0], parts[1:]
    # find(), not `in`: on Python 3.11 `bytes in bytes` first tries the needle as an integer, raising and clearing
    # a TypeError each time (twice the cost of the search).
    if address.find(b"<") >= 0 or address.find(b">") >= 0 or address.find(b" ") >= 0:
        return None
    # RFC 5321 4.1.2: a source route (@a,@b:user@host) is accepted and ignored.
    if address.startswith(b"@") and address.find(b":") >= 0:
        address = address.split(b":", 1)[1]
    return address.decode("utf-8", "replace"), params


class Conversation:
    """The SMTP state of one connection, and a method for each verb (VERBS)."""

    def __init__(self, wire: Wire, responder: Responder, tls_context: ssl.SSLContext | None):
        self.wire = wire
        self.responder = responder
        self.tls_context = tls_context  # STARTTLS is offered with one
        self.ctx = responder.ctx
        self.config = responder.ctx.config
        self.helo = False
        self.authenticated = self.config.auth != "required"
        self.auth_done = False
        self.in_mail = False
        self.recipients = 0  # recipients taken in this transaction
        self.tried = 0  # RCPT commands tried in this transaction
        self.errors = 0

    def say(self, answer: Answer) -> bool:
        """Answer the client (the reply is written with the next batch); True: the connection goes on."""
        self.wire.out.append(replies.wire(answer))
        return True

    async def run(self) -> None:
        wire = self.wire
        while not wire.closing:
            line = await wire.readline(COMMAND_LINE_MAX)  # each verb's own limit is checked below
            if line is None:
                return
            if line is TOO_LONG:
                if not self._error(replies.LINE_TOO_LONG):
                    return
                continue
            assert isinstance(line, bytes)
            verb, arg = _split_command(line)
            if len(line) > LINE_LIMITS.get(verb, LINE_LIMIT) - 2:
                self.say(replies.LINE_TOO_LONG)
                continue
            handler = VERBS.get(verb)
            if handler is None:
                if not self._error(replies.UNKNOWN):
                    return
                continue
            if not await handler(self, arg):
                return

    def _error(self, answer: Answer) -> bool:
        """An error of the client's; after MAX_ERRORS of them the connection is closed. False: it is."""
        self.errors += 1
        if self.errors >= MAX_ERRORS:
            return self.wire.send(replies.TOO_MANY_ERRORS)  # a 421: it closes
        return self.say(answer)

    # --- the verbs: each answers, and returns False when the connection is done ------------------------------

    async def smtp_helo(self, arg: bytes, verb: bytes = b"HELO") -> bool:
        if not arg.strip():
            return self.say(replies.helo_syntax(verb.decode()))
        self.responder.reset()
        self.helo, self.in_mail = True, False
        if verb == b"HELO":
            return self.say(replies.helo(self.config.hostname))
        offer_tls = self.tls_context is not None and not self.wire.tls_active
        return self.say(
            replies.ehlo(self.config.hostname, self.config.max_message_size, offer_tls, self.config.auth != "off")
        )

    async def smtp_ehlo(self, arg: bytes) -> bool:
        return await self.smtp_helo(arg, b"EHLO")

    async def smtp_mail(self, arg: bytes) -> bool:
        if not self.helo:
            return self.say(replies.NEED_HELO)
        if not self.authenticated:
            return self.say(replies.AUTH_REQUIRED)
        if self.in_mail:
            return self.say(replies.NESTED_MAIL)
        reply = self._mail(arg)
        self.in_mail = reply is replies.MAIL_OK
        self.recipients = self.tried = 0
        return self.say(reply)

    def _mail(self, arg: bytes) -> Answer:
        path = _parse_path(arg, b"FROM:")
        if path is None:
            return replies.MAIL_SYNTAX
        sender, params = path
        for param in params:
            problem = _mail_parameter(param, self.config.max_message_size)
            if problem is not None:
                return problem
        self.responder.mail(sender)
        return replies.MAIL_OK

    async def smtp_rcpt(self, arg: bytes) -> bool:
        if not self.in_mail:
            return self.say(replies.NEED_MAIL)
        path = _parse_path(arg, b"TO:")
        if path is None:
            return self.say(replies.RCPT_SYNTAX)
        address = path[0]
        if "@" not in address or address.startswith("@") or address.endswith("@"):
            return self.say(replies.BAD_RCPT)
        if self.recipients >= self.config.max_recipients:
            return self.say(replies.TOO_MANY_RCPTS)
        self.tried += 1
        answer = await self.responder.rcpt(address)
        self.recipients += answer is not None and answer.accepted
        return self.wire.send(answer)

    async def smtp_data(self, arg: bytes) -> bool:
        if arg:
            return self.say(replies.DATA_SYNTAX)
        if not self.in_mail:
            return self.say(replies.NEED_MAIL)
        if not self.responder.recipients:
            # RFC 2920 3.1: when every RCPT of a pipelined group failed, DATA gets 554.
            return self.say(replies.NO_VALID_RCPT if self.tried else replies.NEED_RCPT)
        self.in_mail = False
        wire, responder = self.wire, self.responder
        if responder.data():
            wire.send(None)  # the policy cuts this transaction here
            return False
        self.say(replies.DATA_GO)
        body = await wire.read_body()
        if body is None:
            return False
        size, head, returned = body
        wire.flush()  # earlier pipelined replies go out before any latency the policy adds
        answer = await responder.data_end(size, head, size > self.config.max_message_size, returned)
        return wire.send(answer)

    async def smtp_rset(self, arg: bytes) -> bool:
        if arg.strip():
            return self.say(replies.RSET_SYNTAX)
        self.responder.reset()
        self.in_mail = False
        return self.say(replies.OK)

    async def smtp_noop(self, arg: bytes) -> bool:
        return self.say(replies.OK)

    async def smtp_quit(self, arg: bytes) -> bool:
        if arg.strip():
            return self.say(replies.QUIT_SYNTAX)
        return self.wire.send(replies.BYE)  # a 221: it closes

    async def smtp_starttls(self, arg: bytes) -> bool:
        context = self.tls_context
        if arg.strip():
            return self.say(replies.ARG_SYNTAX)
        if context is None:
            return self.say(replies.TLS_UNAVAILABLE)
        if self.wire.tls_active:
            return self.say(replies.TLS_ACTIVE)
        self.say(replies.TLS_READY)
        self.wire.flush()
        if not await self.wire.start_tls(context):
            return False
        self.helo = self.in_mail = False
        self.responder.reset()
        self.responder.tls = True
        return True

    async def smtp_auth(self, arg: bytes) -> bool:
        if self.config.auth == "off":
            return self.say(replies.AUTH_DISABLED)
        if self.auth_done:
            return self.say(replies.AUTH_DONE)
        if self.in_mail:
            return self.say(replies.AUTH_IN_MAIL)
        result = await self._auth(arg)
        if result is None:
            return False
        metrics.child(metrics.AUTHS, "ok" if result else "failed").inc()
        self.auth_done = self.authenticated = result or self.authenticated
        return True

    async def _auth(self, arg: bytes) -> bool | None:
        """AUTH PLAIN or LOGIN with any credentials; True when authenticated, None when the client left."""
        mechanism, _, initial = arg.strip().partition(b" ")
        mechanism = mechanism.upper()
        if mechanism == b"PLAIN":
            answers = await self._auth_answers([replies.AUTH_PLAIN], initial.strip())
            valid = answers is not None and _plain_valid(answers[0])
        elif mechanism == b"LOGIN":
            answers = await self._auth_answers([replies.AUTH_USER, replies.AUTH_PASS], initial.strip())
            valid = answers is not None and all(_b64(a) is not None for a in answers)
        else:
            self.say(replies.AUTH_MECH)
            return False
        if answers is None:
            return None
        if b"*" in answers:
            self.say(replies.AUTH_CANCELLED)
            return False
        self.say(replies.AUTH_OK if valid else replies.AUTH_BAD)
        return valid

    async def _auth_answers(self, prompts: list[Answer], initial: bytes) -> list[bytes] | None:
        """The client's answer to each prompt (an initial response answers the first); None when it left."""
        answers = [initial] if initial else []
        for prompt in prompts[len(answers) :]:
            self.say(prompt)
            line = await self.wire.readline(LINE_LIMITS[b"AUTH"])
            if line is None:
                return None
            answers.append(line if isinstance(line, bytes) else b"!")
        return answers

    async def smtp_vrfy(self, arg: bytes) -> bool:
        return self.say(replies.VRFY if arg.strip() else replies.VRFY_SYNTAX)

    async def smtp_expn(self, arg: bytes) -> bool:
        return self.say(replies.EXPN)

    async def smtp_help(self, arg: bytes) -> bool:
        return self.say(replies.HELP)


Verb = Callable[[Conversation, bytes], Awaitable[bool]]
VERBS: dict[bytes, Verb] = {
    b"HELO": Conversation.smtp_helo,
    b"EHLO": Conversation.smtp_ehlo,
    b"MAIL": Conversation.smtp_mail,
    b"RCPT": Conversation.smtp_rcpt,
    b"DATA": Conversation.smtp_data,
    b"RSET": Conversation.smtp_rset,
    b"NOOP": Conversation.smtp_noop,
    b"QUIT": Conversation.smtp_quit,
    b"STARTTLS": Conversation.smtp_starttls,
    b"AUTH": Conversation.smtp_auth,
    b"VRFY": Conversation.smtp_vrfy,
    b"EXPN": Conversation.smtp_expn,
    b"HELP": Conversation.smtp_help,
}


def _split_command(line: bytes) -> tuple[bytes, bytes]:
    """(VERB, argument) of a command line; every verb has four letters but STARTTLS (RFC 3207)."""
    if len(line) > 4 and line[4:5] != b" ":
        word, _, arg = line.partition(b" ")
        return (b"STARTTLS" if word.upper() == b"STARTTLS" else b""), arg
    return line[:4].upper(), line[5:]


def _mail_parameter(param: bytes, max_size: int) -> Answer | None:
    """The refusal a MAIL parameter earns (RFC 1870 SIZE, RFC 6152 BODY, ...), or None when it is fine."""
    key, _, value = param.partition(b"=")
    key = key.upper()
    if key == b"SIZE":
        if not value.isdigit() or len(value) > 20:
            return replies.PARAM_SYNTAX
        if int(value) > max_size:
            return replies.SIZE_EXCEEDED
        return None
    if key == b"BODY":
        return None if value.upper() in (b"7BIT", b"8BITMIME") else replies.PARAM_SYNTAX
    if key not in (b"SMTPUTF8", b"AUTH", b"RET", b"ENVID"):
        return replies.PARAM_UNKNOWN
    return None


def _plain_valid(response: bytes) -> bool:
    decoded = _b64(response)
    return decoded is not None and decoded.count(b"\x00") == 2


def _b64(data: bytes) -> bytes | None:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None
