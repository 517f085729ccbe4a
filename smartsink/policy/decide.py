"""The sink's decisions as pure functions of (policy, recipient, rng): no sockets, no clocks, no state.

- resolve(): which rules apply to a recipient domain (case-insensitive, suffix stripped).
- decide(): the answer for one recipient: forced by its user part, else rolled from the percentages.
- worst(): a DATA-time answer for several recipients: permanent over temporary over accept.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable

from smartsink.policy import fallback
from smartsink.policy.model import DomainRules, Latency, Outcome, Policy, Reply

DISCONNECT_STEPS = ("rcpt", "data", "data_end")


def split_address(address: str) -> tuple[str, str]:
    """(local part, domain lower-cased) of an address without angle brackets; domain '' when absent."""
    local, at, domain = address.rpartition("@")
    if not at:
        return address, ""
    return local, domain.lower().rstrip(".")


def strip_suffix(domain: str, suffixes: Iterable[str]) -> str:
    """gmail.com.sink.test -> gmail.com, for the first suffix that matches."""
    for suffix in suffixes:
        if domain.endswith(suffix) and len(domain) > len(suffix) and domain[-len(suffix) - 1] == ".":
            return domain[: -len(suffix) - 1]
    return domain


def resolve(policy: Policy, domain: str, suffixes: Iterable[str]) -> DomainRules:
    """The rules for a (lower-case) recipient domain; [default] when the policy does not name it."""
    return policy.domains.get(strip_suffix(domain, suffixes), policy.default)


def pick(replies: tuple[Reply, ...], rng: random.Random) -> Reply:
    """One reply of a list, each as often as its weight says (all 1: uniformly)."""
    if len(replies) == 1:
        return replies[0]
    if all(r.weight == 1.0 for r in replies):
        return replies[int(rng.random() * len(replies))]
    total = sum(r.weight for r in replies)
    draw = rng.random() * total
    for reply in replies:
        draw -= reply.weight
        if draw < 0:
            return reply
    return replies[-1]


def personal(reply: Reply, client: str, recipient: str) -> Reply:
    """The reply with `{client_ip}` and `{recipient}` filled in, as providers name them in their texts."""
    if "{" not in reply.text:
        return reply
    text = reply.text.replace("{client_ip}", client).replace("{recipient}", recipient)
    return Reply(reply.code, text, reply.weight)


def scope(client: str, per: str, mx: str = "") -> str:
    """What a limit counts this client as: "" for the whole sink, its address, its /24 (IPv6: its /64), or the MX
    host its connection was meant for (`mx`: the host, or the address it dialled)."""
    if per == "mx":
        return f"mx:{mx}"
    if per == "ip":
        return client
    if per == "net24":
        if ":" in client:
            return ":".join(client.split(":")[:4]) + "::/64"
        head, _, _ = client.rpartition(".")
        return f"{head}.0/24" if head else client
    return ""


def forced(rules: DomainRules, local: str, rng: random.Random) -> Reply | bool | None:
    """The answer a special user part asks for, True for a forced accept, or None when it asks nothing.

    Checked in KumoMTA's order, so a user part that asks two things gets what KumoMTA's sink would give it:
    one holding `tempfail` gets a temporary failure from this domain's defer list (forced_tempfail), one holding
    `permfail` a permanent failure from its bounce list (KumoMTA documents this but answers fixed texts); `450-...`
    gets "450 you said <user>"; `250-...` is accepted whatever the percentages say. Unlike KumoMTA, case is
    ignored: MTAs and people write `TempFail@` too, and providers treat user parts without case.
    """
    lowered = local.lower()
    if "tempfail" in lowered:
        return forced_tempfail(rules, rng)
    if "permfail" in lowered:
        return pick(tuple(r for r in rules.bounces if r.code >= 500) or fallback.BOUNCES, rng)
    if lowered.startswith("450-"):
        return Reply(450, f"you said {local}")
    if lowered.startswith("250-"):
        return True
    return None


_CODE_421 = re.compile(r"(?m)^421[ ,-]")


def forced_tempfail(rules: DomainRules, rng: random.Random) -> Reply:
    """A temporary failure from the domain's defer list that leaves the connection open, as KumoMTA's sink
    answers `tempfail@`: a 421 closes the connection (RFC 5321 3.8), so it is not picked while the list has
    another; a list of 421s only gives one's words with 451. With `tempfail_closes` the whole list is picked from."""
    defers = tuple(r for r in rules.defers if 400 <= r.code < 500) or fallback.DEFERS
    if rules.tempfail_closes:
        return pick(defers, rng)
    staying = tuple(r for r in defers if r.code != 421)
    if staying:
        return pick(staying, rng)
    closing = pick(defers, rng)
    return Reply(451, _CODE_421.sub("", closing.text), closing.weight)


def roll(rules: DomainRules, rng: random.Random) -> Reply | None:
    """bounce% of calls pick from the bounce list, the next defer% from the defer list, else None (accept).

    One uniform draw in [0, 100) split into [0, bounce) and [bounce, bounce + defer): exact for fractions,
    unlike a whole-number roll compared with "<" (which bounces 9% for bounce = 10, and never below 1%).
    """
    if not rules.bounce and not rules.defer:
        return None
    r = rng.random() * 100.0
    if r < rules.bounce:
        return pick(rules.bounces, rng)
    if r < rules.bounce + rules.defer:
        return pick(rules.defers, rng)
    return None


def asks(local: str) -> bool:
    """The user part asks for its answer (tempfail, permfail, 450-, 250-): no roll applies to it."""
    lowered = local.lower()
    return "tempfail" in lowered or "permfail" in lowered or lowered.startswith(("450-", "250-"))


def unknown_user(rules: DomainRules, local: str, rng: random.Random) -> Reply | None:
    """`unknown`% of recipients do not exist: refused at RCPT time, as the providers that check do."""
    if not rules.unknown or asks(local) or rng.random() * 100.0 >= rules.unknown:
        return None
    return pick(rules.unknowns, rng)


def decide(rules: DomainRules, local: str, rng: random.Random) -> Reply | None:
    """The answer for one recipient, None meaning accept."""
    answer = forced(rules, local, rng)
    if answer is True:
        return None
    if answer is not None:
        return answer  # type: ignore[return-value]
    return roll(rules, rng)


def worst(replies: Iterable[Reply | None]) -> Reply | None:
    """The reply that decides a transaction: the first permanent failure, else the first temporary one."""
    chosen: Reply | None = None
    rank = Outcome.ACCEPTED
    for reply in replies:
        if reply is not None and reply.outcome > rank:
            chosen, rank = reply, reply.outcome
            if rank is Outcome.PERMFAILED:
                break
    return chosen


def sample_latency(latency: Latency, rng: random.Random) -> float:
    """Seconds to wait: the median when fixed, else a log-normal draw with that median and p99."""
    sigma = latency.sigma
    if sigma == 0.0:
        return latency.median
    return math.exp(rng.gauss(latency.mu, sigma))


def disconnect_step(rules: DomainRules, rng: random.Random) -> str | None:
    """The step at which to cut this transaction without a reply, or None to let it run."""
    if not rules.disconnect or rng.random() * 100.0 >= rules.disconnect:
        return None
    return DISCONNECT_STEPS[int(rng.random() * len(DISCONNECT_STEPS))]


def greylist_key(client: str, sender: str, recipient: str) -> str:
    """The greylisting triplet, as real greylisters key it (`client` is the scope: an address, a /24, or "")."""
    return f"{client}\x00{sender.lower()}\x00{recipient.lower()}"
