"""The policy a production MTA's logs describe, in the responses.toml layout (pure): `smartsink policy from-logs`.

From the Aggregate of mailload.mtalog, per destination domain (the `top` most attempted by name, every other one
folded into [default]): the share of delivery attempts its servers answered with a temporary failure (`defer`)
and a permanent one (`bounce`), of the attempts any server answered; the reply texts of each kind, weighted by how
often they came, with addresses, IP addresses and ids masked (`{recipient}`, `{client_ip}`, `<id>`); `reject_at =
"rcpt"` when most failures came at RCPT; and `latency`, the median and p99 of the time accepted transmissions took,
where the log has it (Postfix's delays, Exim's DT=).

The sink then answers each attempt as the providers answered the MTA: its answer rates are the log's. One
correction makes that hold for messages of several recipients (all in one domain, as trafficgen sends them): a
domain that fails at the end of DATA fails the whole message, and the sink rolls each recipient and answers the
message with the worst; so with `k` recipients a message (the log's most common count, the workload's), the
percentages are those whose worst-of-k gives the log's shares: bounce = 1 - (1 - B)^(1/k), bounce + defer = 1 -
(1 - B - D)^(1/k), for the log's shares B and D.
"""

from __future__ import annotations

import json
import math
import textwrap

from mailload.mtalog.aggregate import Aggregate, Answers
from mailload.mtalog.read import LogError, ReadReport

DEFAULT = "default"
LATENCY_FLOOR = 0.001  # seconds: a median below this is no latency worth giving


class DerivationError(LogError):
    """Logs that hold no answer to derive a policy from; the message says why."""


def policy(aggregate: Aggregate, report: ReadReport, top: int = 20, replies: int = 10) -> str:
    """The text of a policy file."""
    if aggregate.replies == 0:
        raise DerivationError("no delivery attempt in these logs got an answer from a server: no policy to derive")
    named, others, folded = _split(aggregate, top)
    ranked_counts = aggregate.per_message.top(1)
    k = ranked_counts[0][0] if ranked_counts else 1
    out = _head(aggregate, report, len(named), folded)
    out += _rules("[default]", others, f"the {folded:,} other domains" if folded else "no other domain", k)
    out += _lists(DEFAULT, others, replies)
    for name, answers in named:
        out += _rules(f"[domain.{_quote(name)}]", answers, name, k)
        out += _lists(name, answers, replies)
    return out


def _split(aggregate: Aggregate, top: int) -> tuple[list[tuple[str, Answers]], Answers, int]:
    """The `top` most answered domains that can be named, and all the others folded into one (with their count)."""
    ranked = sorted(aggregate.answers.items(), key=lambda item: (-item[1].replies, item[0]))
    named = [(name, a) for name, a in ranked if a.replies and _writable(name)][:top]
    others = Answers()
    others.merge(aggregate.others)
    kept = {name for name, _ in named}
    for name, answers in ranked:
        if name not in kept:
            others.merge(answers)
    return named, others, len(ranked) - len(named) + aggregate.folded_domains


def _writable(name: str) -> bool:
    return bool(name) and name != DEFAULT and all(c.isalnum() or c in "-._" for c in name)


def _quote(text: str) -> str:
    return json.dumps(text)  # a TOML basic string: JSON's escapes are TOML's


def _comment(text: str) -> str:
    return "\n".join(textwrap.wrap(text, 116, initial_indent="# ", subsequent_indent="# ")) + "\n"


def _head(aggregate: Aggregate, report: ReadReport, named: int, folded: int) -> str:
    files = len(report.files)
    return (
        _comment(
            "A policy derived from an MTA's logs by `smartsink policy from-logs` "
            f"({files} file{'s' if files != 1 else ''}, {report.total('lines'):,} lines): {aggregate.attempts:,} "
            f"delivery attempts, {aggregate.replies:,} of them answered by a server ({aggregate.no_reply:,} without an "
            f"answer, not counted). {named} domains by name, {folded:,} others in [default]. Per domain: the share of "
            "the answered attempts that got a temporary (defer) and a permanent (bounce) failure, the failure texts "
            "weighted by how often they came (addresses, "
            "IP addresses and ids masked), when the failures came (reject_at) and how long accepted transmissions "
            "took (latency), where the log says. Check it: smartsink --check --policy THIS.toml"
        )
        + "\n"
    )


def _rules(header: str, answers: Answers, who: str, k: int) -> str:
    replies = answers.replies
    if replies == 0:
        return f"{header}\nbounce = 0\ndefer = 0\n\n"
    bounce, defer = answers.permfailed / replies, answers.tempfailed / replies
    lines = [header, f"# {who}: {replies:,} answered attempts, {100 * answers.accepted / replies:.2f}% accepted"]
    at_rcpt = answers.at_rcpt > answers.at_data
    if not at_rcpt and k > 1:
        lines.append(
            f"# the log's {100 * bounce:.4g}% bounced and {100 * defer:.4g}% deferred, as messages of {k} recipients "
            "answered at the end of DATA: per recipient, worst of the message wins"
        )
        bounce, defer = per_recipient(bounce, defer, k)
    lines += [f"bounce = {_percent(bounce)}", f"defer = {_percent(defer)}"]
    failures = answers.at_rcpt + answers.at_data
    if failures:
        share = 100 * answers.at_rcpt / failures
        if at_rcpt:
            lines.append(f'reject_at = "rcpt"  # {share:.1f}% of the failures whose step is logged came at RCPT')
        else:
            lines.append(f"# {100 - share:.1f}% of the failures whose step is logged came at the end of DATA")
    latency = answers.latency
    if latency is not None and latency.count and latency.quantile(0.5) >= LATENCY_FLOOR:
        median, p99 = latency.quantile(0.5), max(latency.quantile(0.5), latency.quantile(0.99))
        lines.append(
            f'latency = {{ median = "{_ms(median)}", p99 = "{_ms(p99)}" }}  # of {latency.count:,} accepted '
            "transmissions"
        )
    return "\n".join(lines) + "\n\n"


def per_recipient(bounce: float, defer: float, k: int) -> tuple[float, float]:
    """The shares of recipients to bounce and defer so that messages of `k`, answered with their worst, bounce and
    defer as the given shares of messages did."""
    b = 1 - (1 - bounce) ** (1 / k)
    failed = 1 - max(0.0, 1 - bounce - defer) ** (1 / k)
    return b, max(0.0, failed - b)


def _lists(name: str, answers: Answers, most: int) -> str:
    out = ""
    for kind, low, high in (("defer", 400, 500), ("bounce", 500, 600)):
        texts = [
            ((code, text), n) for (code, text), n in answers.texts.top(answers.texts.capacity) if low <= code < high
        ]
        for (code, text), n in texts[:most]:
            out += f"[[{kind}.{_quote(name)}]]\ncode = {code}\nmsg = {_quote(text)}\nweight = {n}\n\n"
    return out


def _percent(share: float) -> str:
    text = f"{100 * share:.4f}".rstrip("0").rstrip(".")
    return text if math.isfinite(share) and text else "0"


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"
