"""What the sink answers, step by step: the policy applied to a conversation. The seam every front-end calls.

The two SMTP engines (smartsink.engines.fast and the aiosmtpd reference, smartsink.engines.reference) parse the
wire themselves, and the inject API's front-end (smartsink.engines.inject) reads JSON; all three ask a Responder at
the steps the policy cares about: the greeting, each RCPT, DATA, the end of DATA, a reset, the close. A step's
answer is a replies.Answer (what to say, whether the recipient or the message was taken, whether to close), or None:
cut the connection without a word (a policy's `disconnect`). The Responder never touches a socket and never makes
bytes: the front-ends render or report its answers. Decisions come from the pure smartsink.policy.decide;
sink-wide limits from smartsink.limits. What was answered to a trafficgen run's recipients is written to its ledger
in one place, SinkContext.record.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import re
import time

from mailload import contract
from smartsink import logs, metrics, replies
from smartsink.config import SinkConfig
from smartsink.dns import table as mx_table
from smartsink.dns.addresses import Addressing
from smartsink.ledger import Answered, ReturnedInDsn
from smartsink.limits import Limits
from smartsink.limits.state import limit_key
from smartsink.policy import decide as policy
from smartsink.policy import fallback
from smartsink.policy.model import DomainRules, Exchange, Outcome, Policy, Reply
from smartsink.replies import Answer

_RULES_CACHE_MAX = 10_000
OTHER_MX = "other"  # the per-MX label of an address in --dns-network that is no known MX host's
_HEADER_NAME = re.compile(rb"(?m)^([!-9;-~]+):")


async def hold(delay: float) -> None:
    """Wait at least `delay` seconds. uvloop's timers have millisecond resolution and may fire up to a millisecond
    early; a policy's `latency = "300ms"` must never answer in 299.5."""
    deadline = time.monotonic() + delay
    await asyncio.sleep(delay)
    left = deadline - time.monotonic()
    if left > 0:  # once is enough: the second timer is due a millisecond later than the first fell short
        await asyncio.sleep(left + 0.001)


class SinkContext:
    """What all sessions of one worker share: config, the policy in force, limits, the random source."""

    def __init__(self, config: SinkConfig, policy_in_force: Policy, limits: Limits, worker: int = 0):
        self.config = config
        self.limits = limits
        self.accept_all = config.accept_all  # a plain black hole: every transaction is let through as a DSN is
        seed = config.seed if config.seed is None else config.seed + worker
        self.rng = random.Random(seed)
        self._rules: dict[str, DomainRules] = {}
        self.mx_addressing: tuple[Addressing, ...] = ()
        self._mx_source: dict[str, tuple[Exchange, ...]] | None = None  # the policy `mx` the addressing is for
        self._mx_at: dict[str, tuple[str | None, str]] = {}  # destination -> mx_at(destination), cached
        self.set_policy(policy_in_force)
        self._queue_ids = itertools.count((os.getpid() << 20) if seed is None else worker << 24)
        self.welcome = replies.banner(config.hostname)
        self.tracing = logs.tracing()  # --log-level debug: each connection and transaction

    def set_policy(self, new: Policy) -> None:
        self.policy = new
        self.suffixes = tuple(dict.fromkeys((*self.config.domain_suffixes, *new.suffixes)))
        self._rules = {}
        if self._mx_source is None or self._mx_source != new.mx:
            # The same addresses the sink's DNS gives (smartsink.dns.server builds its zone from the same inputs).
            hosts = mx_table.for_policy(new).hosts
            networks = (self.config.dns_network, self.config.dns_network6)
            self.mx_addressing = tuple(Addressing.of(network, hosts) for network in networks if network is not None)
            self._mx_source, self._mx_at = new.mx, {}

    def mx_at(self, address: str) -> tuple[str | None, str]:
        """The MX host a connection to `address` was meant for, as /metrics labels it (a host of the MX table, or
        "other" for an address of --dns-network that is no known host's: an unlisted domain's MX), None when the
        address is not in the network; and what `per = "mx"` counts it under (the host, else the address)."""
        found = self._mx_at.get(address)
        if found is None:
            found = None, address
            for addressing in self.mx_addressing:
                if addressing.slot_of(address) is not None:
                    host = addressing.host_at(address)
                    found = (host, host) if host is not None else (OTHER_MX, address)
            if len(self._mx_at) >= _RULES_CACHE_MAX:
                self._mx_at = {}
            self._mx_at[address] = found
        return found

    def rules_for(self, domain: str) -> DomainRules:
        """The rules for a lower-cased recipient domain (policy.split_address), cached per domain."""
        rules = self._rules.get(domain)
        if rules is None:
            if len(self._rules) >= _RULES_CACHE_MAX:
                self._rules = {}
            rules = self._rules[domain] = policy.resolve(self.policy, domain, self.suffixes)
        return rules

    def queued(self) -> Answer:
        """The message is taken: 250 with a queue id of its own."""
        return replies.queued(next(self._queue_ids))

    def record(
        self,
        outcome: Outcome,
        numbers: dict[str, list[int]],
        trace: contract.Trace | None,
        domain: str,
        returned: contract.Returned | None = None,
    ) -> None:
        """The one place a run's ledger is written. The sink answered `outcome` to recipients trafficgen numbered
        (`numbers`: by run tag), or, when there are none, to the message of the `trace` header (mail to an address
        trafficgen did not number), to `domain` (a recipient's, suffix and all); the transit time from the trace's
        t= when the answer is final. Else a DSN that `returned` recipients."""
        if not numbers and trace is not None:
            numbers = {contract.run_tag(trace.run_id): [trace.seq]}
        if numbers:
            transit = None
            if trace is not None and outcome is not Outcome.TEMPFAILED and trace.sent_ms is not None:
                transit = int(time.time() * 1000) - trace.sent_ms
            domain = policy.strip_suffix(domain, self.suffixes)
            for tag, taken in numbers.items():
                self.limits.report(Answered(tag, tuple(taken), int(outcome), domain, transit))
        elif returned is not None:
            metrics.DSNS.inc()
            for tag, returned_numbers in returned_recipients(returned).items():
                self.limits.report(ReturnedInDsn(tag, returned_numbers))


class _Recipient:
    """A recipient the transaction took at RCPT, and what DATA will answer for it. A slotted class, not a
    NamedTuple: compiled, it is built and read natively (one or more a message)."""

    __slots__ = ("domain", "numbered", "rate_taken", "rules", "verdict")

    def __init__(
        self,
        rules: DomainRules,
        verdict: Reply | None,  # the DATA-time answer for this recipient; None: accept
        rate_taken: bool,
        numbered: tuple[str, int] | None,  # (run tag, number) of a recipient trafficgen numbered (mailload.contract)
        domain: str,  # the recipient's domain, lower-cased
    ) -> None:
        self.rules = rules
        self.verdict = verdict
        self.rate_taken = rate_taken
        self.numbered = numbered
        self.domain = domain


_answer = replies.answer  # a policy's reply as the sink says it (a 421 closes: RFC 5321 3.8)
RCPT_OK = replies.RCPT_OK


class Responder:
    """One connection's policy state: the transaction in progress and what the connection has done."""

    __slots__ = (
        "active",
        "begun",
        "client",
        "completed",
        "ctx",
        "destination",
        "drop_at",
        "exempt",
        "first",
        "holding",
        "mx",
        "mx_key",
        "recipients",
        "scope",
        "sender",
        "tls",
    )

    def __init__(self, ctx: SinkContext, client: str, destination: str = ""):
        self.ctx = ctx
        self.client = client
        self.meant_for(destination)
        self.sender = ""
        self.recipients: list[_Recipient] = []
        self.completed = 0
        self.holding: str | None = None  # the domain whose max_concurrency slot this transaction holds
        self.drop_at: str | None = None
        self.active = False
        self.begun = False  # the transaction's own rules (limits, disconnect roll) have been applied
        self.first = ""  # the transaction's first recipient (lower-cased): its domain names the transaction
        self.exempt = False  # let through whatever the rules: a DSN ([listener] null_sender), or --accept-all
        self.scope = ""  # what [listener] max_connections counted this connection as
        self.tls = False  # the engine sets it once STARTTLS is done

    # --- connection -----------------------------------------------------------------------------------

    def meant_for(self, destination: str) -> None:
        """The address the client dialled ("" when unknown): which MX host that is, for the per-MX metrics and
        `per = "mx"` limits."""
        self.destination = destination
        self.mx, self.mx_key = self.ctx.mx_at(destination) if destination else (None, "")

    async def greet(self) -> Answer:
        """The greeting, or 421 when the sink already has [listener] max_connections."""
        metrics.count(metrics.CONNECTIONS)
        if self.mx is not None:
            metrics.count(metrics.child(metrics.MX_CONNECTIONS, self.mx))
        listener = self.ctx.policy.listener
        # Every connection is counted sink-wide, so a max_connections added by a reload sees them all.
        self.scope = policy.scope(self.client, listener.per, self.mx_key)
        limits = self.ctx.limits
        if not await limits.open_connection(listener.max_connections, self.scope, self.client, self.mx or ""):
            metrics.CONNECTIONS_REFUSED.inc()
            return _answer(fallback.TOO_MANY_CONNECTIONS)
        self.active = True
        metrics.CONNECTIONS_ACTIVE.inc()
        if self.ctx.tracing:
            if self.mx is not None:
                meant = self.destination
                logs.trace("connection from %s meant for MX %s (%s)", self.client, self.mx, meant,
                           event="connection", client=self.client, mx=self.mx, destination=meant)  # fmt: skip
            else:
                logs.trace("connection from %s", self.client, event="connection", client=self.client)
        if listener.banner_delay is not None:
            await hold(policy.sample_latency(listener.banner_delay, self.ctx.rng))
        return self.ctx.welcome

    def closed(self) -> None:
        """The connection is gone: give back what it held."""
        self.reset()
        if self.active:
            self.active = False
            self.ctx.limits.close_connection(self.scope, self.client, self.mx or "")
            metrics.CONNECTIONS_ACTIVE.dec()
            if self.ctx.tracing:
                logs.trace("%s closed after %d messages", self.client, self.completed, event="closed",
                           client=self.client, recipients=self.completed)  # fmt: skip

    # --- transaction ----------------------------------------------------------------------------------

    def mail(self, sender: str) -> None:
        self.reset()
        self.sender = sender
        self.exempt = self.ctx.accept_all or (not sender and self.ctx.policy.listener.null_sender == "accept")

    def reset(self) -> None:
        """End the transaction (RSET, a new MAIL, the end of DATA, a lost connection)."""
        self.recipients = []
        self.drop_at = None
        self.begun = False
        self.first = ""
        if self.holding is not None:
            self.ctx.limits.end_transaction(self.holding)
            self.holding = None

    def _count(self, rules: DomainRules, outcome: Outcome) -> None:
        metrics.count(metrics.message(rules.name, outcome.label))
        if self.mx is not None:
            metrics.count(metrics.child(metrics.MX_MESSAGES, self.mx, outcome.label))

    async def rcpt(self, address: str) -> Answer | None:
        """The answer to RCPT TO:<address> (an address with an @, without brackets); None: cut."""
        numbered = contract.numbered(address)
        answer = await self._rcpt(address, numbered)
        if numbered is not None and answer is not None and not answer.accepted:
            # A recipient trafficgen numbered names its run and number: the refusal counts now, header or not.
            self.ctx.record(Outcome.of_code(answer.code), {numbered[0]: [numbered[1]]}, None, "")
        return answer

    async def _rcpt(self, address: str, numbered: tuple[str, int] | None) -> Answer | None:
        ctx = self.ctx
        local, domain = policy.split_address(address)
        if numbered is not None:
            local = local[: local.index(".")]  # the policy reads user-<n>: a run id never forces an answer
        rules = ctx.rules_for(domain)
        if not self.first:
            self.first = address.lower()
        if self.exempt:  # a DSN (measurement, not load), or a black hole
            self.recipients.append(_Recipient(rules, None, True, numbered, domain))
            return RCPT_OK
        refused = await self._requirements(rules)
        if refused is not None:
            return refused
        if not self.begun:
            refused = await self._first_recipient(rules)
            if refused is not None or self.drop_at == "rcpt":
                return refused  # a refusal, or None: this transaction is cut at its first RCPT
            self.begun = True
        if rules.greylist is not None:
            # Greylisters key on the client: its address, or its /24 with per = "net24".
            where = policy.scope(self.client, "net24" if rules.per == "net24" else "ip")
            if not await ctx.limits.greylist_passes(policy.greylist_key(where, self.sender, address), rules.greylist):
                metrics.child(metrics.GREYLISTED, rules.name).inc()
                return self._refuse(rules, fallback.GREYLISTED, address)
        unknown = policy.unknown_user(rules, local, ctx.rng)
        if unknown is not None:
            return self._refuse(rules, unknown, address)
        verdict = policy.decide(rules, local, ctx.rng)
        if verdict is not None:
            verdict = policy.personal(verdict, self.client, address)
        if rules.reject_at == "rcpt":
            if verdict is not None:
                return self._refuse(rules, verdict, address)
            if rules.rate is not None:
                if not await ctx.limits.take_rate(self._key(rules), rules.rate, rules.rate_start == "full"):
                    metrics.child(metrics.THROTTLED, rules.name).inc()
                    return self._refuse(rules, policy.pick(rules.throttles, ctx.rng), address)
                self.recipients.append(_Recipient(rules, None, True, numbered, domain))
                return RCPT_OK
        self.recipients.append(_Recipient(rules, verdict, False, numbered, domain))
        return RCPT_OK

    def _key(self, rules: DomainRules) -> str:
        """What this domain's max_concurrency and rate count this client under."""
        return limit_key(rules.name, policy.scope(self.client, rules.per, self.mx_key))

    def _refuse(self, rules: DomainRules, reply: Reply, address: str) -> Answer:
        """A recipient refused at RCPT time: counted, noted against the client's reputation, answered."""
        reply = policy.personal(reply, self.client, address)
        self._count(rules, reply.outcome)
        self._note_deferral(rules, reply)
        if self.ctx.tracing:
            self._trace("rcpt", rules.name, reply.outcome, reply)
        return _answer(reply)

    def _trace(self, event: str, domain: str, outcome: Outcome, reply: Reply | None, size: int = 0) -> None:
        said = f"{reply.code} {reply.text.splitlines()[0] if reply.text else ''}" if reply else "250 queued"
        logs.trace(
            "%s %s from %s to %s (%s, %d recipients): %s %s",
            event,
            outcome.label,
            self.client,
            domain,
            self.sender or "<>",
            len(self.recipients),
            said,
            f"{size} bytes" if size else "",
            event=event,
            client=self.client,
            domain=domain,
            sender=self.sender,
            recipients=len(self.recipients),
            size=size,
            outcome=outcome.label,
            reply=said,
        )

    def _note_deferral(self, rules: DomainRules, reply: Reply | None) -> None:
        if rules.escalate is not None and reply is not None and reply.outcome is Outcome.TEMPFAILED:
            self.ctx.limits.deferred(self._reputation_key(rules), rules.escalate)

    def _reputation_key(self, rules: DomainRules) -> str:
        # A provider judges the sending address (or its /24): never the whole sink.
        return limit_key(rules.name, policy.scope(self.client, "net24" if rules.per == "net24" else "ip"))

    async def _requirements(self, rules: DomainRules) -> Answer | None:
        """What a domain demands of the client before any recipient: STARTTLS first, a good reputation."""
        if rules.require_tls and not self.tls:
            return self._refuse(rules, fallback.TLS_REQUIRED, self.first)
        if rules.escalate is not None and await self.ctx.limits.escalated(self._reputation_key(rules)):
            metrics.child(metrics.ESCALATED, rules.name).inc()
            answers = rules.blocks if rules.escalate.to == "block" else rules.defers
            reply = policy.pick(answers, self.ctx.rng)
            reply = policy.personal(reply, self.client, self.first)
            self._count(rules, reply.outcome)
            return _answer(reply)
        return None

    async def _first_recipient(self, rules: DomainRules) -> Answer | None:
        """Rules of the transaction as a whole, keyed by its first recipient's domain: a refusal, else None (and
        `drop_at` says whether and where the transaction is cut)."""
        limit = rules.max_messages_per_connection
        if limit is not None and self.completed >= limit:
            metrics.child(metrics.PER_CONNECTION_REFUSED, rules.name).inc()
            self._count(rules, Outcome.TEMPFAILED)
            return _answer(fallback.TOO_MANY_MESSAGES)
        if rules.disconnect:
            self.drop_at = policy.disconnect_step(rules, self.ctx.rng)
            if self.drop_at is not None:
                metrics.child(metrics.DISCONNECTS, rules.name).inc()
                if self.drop_at == "rcpt":
                    return None
        if rules.max_concurrency is not None:
            key = self._key(rules)
            if not await self.ctx.limits.begin_transaction(key, rules.max_concurrency):
                metrics.child(metrics.CONCURRENCY_REFUSED, rules.name).inc()
                self._count(rules, Outcome.TEMPFAILED)
                return _answer(fallback.TOO_MANY_TRANSACTIONS)
            self.holding = key
        return None

    def data(self) -> bool:
        """Whether to cut the connection at DATA (the transaction was chosen to be dropped there)."""
        return self.drop_at == "data"

    async def data_end(
        self, size: int, head: bytes, too_big: bool = False, returned: contract.Returned | None = None
    ) -> Answer | None:
        """The answer to the end of DATA, for a message of `size` bytes starting with `head`; `returned`: what it
        returns when it is a failure DSN of a trafficgen message (the engine read it with a contract.DsnReader).
        None: cut. The answer to a trafficgen message's recipients is written to their run's ledger (or, for a
        DSN, the recipients it returns)."""
        ctx = self.ctx
        recipients = self.recipients
        if self.drop_at == "data_end":
            self.reset()
            return None
        metrics.count(metrics.BYTES, size)
        first = recipients[0].rules if recipients else ctx.policy.default
        verdict = self._content_verdict(first, size, head, too_big)
        if verdict is None:
            verdict = policy.worst(r.verdict for r in recipients)
            if verdict is None:
                verdict = await self._take_rates(recipients)
        if verdict is not None:
            verdict = policy.personal(verdict, self.client, self.first)
        self._note_deferral(first, verdict)
        if first.latency is not None and not too_big and not self.exempt:
            delay = policy.sample_latency(first.latency, ctx.rng)
            metrics.child(metrics.REPLY_DELAY, first.name).observe(delay)
            await hold(delay)
        outcome = Outcome.ACCEPTED if verdict is None else verdict.outcome
        for recipient in recipients:
            self._count(recipient.rules, outcome)
        if ctx.tracing:
            self._trace("message", first.name, outcome, verdict, size)
        numbers: dict[str, list[int]] = {}  # the recipients trafficgen numbered, by run tag
        for recipient in recipients:
            numbered = recipient.numbered
            if numbered is not None:
                if numbered[0] in numbers:
                    numbers[numbered[0]].append(numbered[1])
                else:
                    numbers[numbered[0]] = [numbered[1]]
        domain = recipients[0].domain if recipients else policy.split_address(self.first)[1]
        ctx.record(outcome, numbers, contract.trace_of(head), domain, returned)
        self.completed += 1
        self.reset()
        if verdict is None:
            return ctx.queued()
        return _answer(verdict)

    def _content_verdict(self, rules: DomainRules, size: int, head: bytes, too_big: bool) -> Reply | None:
        """What the message itself earns: too big for the sink or the domain, or a header the domain requires."""
        if too_big or (rules.max_message_size is not None and size > rules.max_message_size and not self.exempt):
            return fallback.SIZE_EXCEEDED
        if rules.require_headers and not self.exempt:
            present = {m.lower() for m in _HEADER_NAME.findall(contract.header_section(head))}
            for name in rules.require_headers:
                if name.lower().encode() not in present:
                    return fallback.missing_header(name)
        return None

    async def _take_rates(self, recipients: list[_Recipient]) -> Reply | None:
        """Each rated domain of the transaction must have room for one more accepted message."""
        taken: set[str] = set()
        for recipient in recipients:
            rules = recipient.rules
            if rules.rate is None or recipient.rate_taken or rules.name in taken:
                continue
            taken.add(rules.name)
            if not await self.ctx.limits.take_rate(self._key(rules), rules.rate, rules.rate_start == "full"):
                metrics.child(metrics.THROTTLED, rules.name).inc()
                return policy.pick(rules.throttles, self.ctx.rng)
        return None


def returned_recipients(returned: contract.Returned) -> dict[str, tuple[int, ...]]:
    """The recipients a DSN returns, by run tag: each one trafficgen numbered; when it names none of those (mail to
    --recipient's fixed address), the message of its trace header."""
    groups: dict[str, set[int]] = {}
    for address in returned.recipients:
        numbered = contract.numbered(address)
        if numbered is not None:
            groups.setdefault(numbered[0], set()).add(numbered[1])
    if not groups:
        groups[contract.run_tag(returned.trace.run_id)] = {returned.trace.seq}
    return {tag: tuple(sorted(numbers)) for tag, numbers in groups.items()}
