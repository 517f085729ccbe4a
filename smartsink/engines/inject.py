"""The inject API's front-end (KumoMTA's `POST /api/inject/v1`), beside the two SMTP engines: it asks the Responder
as they do, one transaction for each recipient, and reports each answer's code and lines as kumod does.

smartsink.inject reads the request (pure: kumod's checks and refusals); smartsink.admin serves it over HTTP. Each
recipient is one MAIL, RCPT and end of DATA of its own, so the policy judges it alone, as kumod injects each
recipient; the recipients are answered CHUNK at a time, the loop serving SMTP between chunks. A recipient trafficgen
numbered is written to its run's ledger by the Responder as it is answered; mail to recipients it did not number is
one message of the trace header's, written once for the request (SinkContext.record).
"""

from __future__ import annotations

import asyncio

from mailload import contract
from smartsink import inject as inject_api
from smartsink import metrics
from smartsink.policy.model import Outcome
from smartsink.replies import Answer
from smartsink.responder import Responder, SinkContext

CHUNK = 200  # recipients answered in one turn of the loop
# What the inject API says of a recipient whose transaction the policy cut (`disconnect`): no HTTP client sees a cut.
CUT = Answer(451, ("4.4.2 the policy cut this transaction (disconnect)",), "4.4.2")


async def inject(ctx: SinkContext, peer: str, request: inject_api.Request) -> list[str | None]:
    """Each recipient's error as kumod words it ("CODE TEXT", or why the address is refused), None when the
    recipient was taken."""
    raw = request.content.encode("utf-8", "replace")
    head = raw[: contract.HEAD_BYTES]
    recipients = request.recipients
    answers: list[Answer | str] = []
    for start in range(0, len(recipients), CHUNK):
        chunk = recipients[start : start + CHUNK]
        answers += await asyncio.gather(*(_one(ctx, peer, request.sender, email, len(raw), head) for email in chunk))
        await asyncio.sleep(0)  # the loop's other work (SMTP, the workers' questions) between chunks
    metrics.INJECTED.inc(len(answers))
    _record_message(ctx, head, recipients, answers)
    return [_error(answer) for answer in answers]


async def _one(ctx: SinkContext, peer: str, sender: str, email: str, size: int, head: bytes) -> Answer | str:
    """The policy's answer for one recipient, as a transaction of its own; a text when the address is refused."""
    problem = inject_api.recipient_problem(email)
    if problem is not None:
        return problem
    responder = Responder(ctx, peer)
    responder.mail(sender)
    try:
        answer = await responder.rcpt(email)
        if answer is not None and answer.accepted:
            # Mail to an address trafficgen did not number is recorded once per request (_record_message).
            answer = await responder.data_end(size, head if contract.numbered(email) else b"")
    finally:
        responder.closed()
    return CUT if answer is None else answer


def _error(answer: Answer | str) -> str | None:
    if isinstance(answer, str):
        return answer
    if answer.accepted:
        return None
    return f"{answer.code} " + " ".join(answer.lines)


def _record_message(ctx: SinkContext, head: bytes, recipients: tuple[str, ...], answers: list[Answer | str]) -> None:
    """One message to recipients trafficgen did not number (each numbered one is recorded as it is answered):
    delivered if any of them took it."""
    if any(contract.numbered(email) for email in recipients):
        return
    trace = contract.trace_of(head)
    taken = [answer for answer in answers if isinstance(answer, Answer)]
    if trace is None or not taken:
        return
    outcome = min(Outcome.ACCEPTED if answer.accepted else Outcome.of_code(answer.code) for answer in taken)
    ctx.record(outcome, {}, trace, recipients[0].rpartition("@")[2].lower())
