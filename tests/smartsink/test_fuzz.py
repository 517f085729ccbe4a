"""Fuzzing the parts that read untrusted text: the policy loader and the reply renderer (hypothesis)."""

from __future__ import annotations

import contextlib
import random
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from smartsink.policy import PolicyError, parse_policy
from smartsink.policy.decide import decide
from smartsink.policy.model import Reply
from smartsink.policy.values import LISTENER_KEYS, RULE_KEYS
from smartsink.replies import render
from trafficgen.smtp.replies import ReplyParser

KEYS = sorted(RULE_KEYS | LISTENER_KEYS | {"code", "msg", "bouncee"})  # the known keys, and a typo
VALUES = st.one_of(
    st.integers(-5, 200).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: repr(f).replace("inf", "inf").replace("nan", "nan")),
    st.text(alphabet=string.printable, max_size=20).map(lambda t: '"' + t.replace("\\", "").replace('"', "") + '"'),
    st.sampled_from(
        [
            '"300ms"',
            '"5m"',
            '"10/s"',
            '"rcpt"',
            '"data"',
            "true",
            "[1, 2]",
            '{ median = "1s" }',
            '{ median = "2s", p99 = "1s" }',
            '"1,000/hr"',
            '"x/y"',
        ]
    ),
)
HEADERS = st.sampled_from(
    [
        "[default]",
        '[domain."gmail.com"]',
        '[domain."Yahoo.COM"]',
        "[listener]",
        '[[bounce."gmail.com"]]',
        '[[defer."default"]]',
        '[[throttle."x.test"]]',
        "[domain]",
        "[bounce]",
        "[nonsense]",
        "",
    ]
)


@st.composite
def policy_texts(draw: st.DrawFn) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 12))):
        lines.append(draw(HEADERS))
        lines.extend(f"{draw(st.sampled_from(KEYS))} = {draw(VALUES)}" for _ in range(draw(st.integers(0, 4))))
    return "\n".join(lines)


@settings(max_examples=400, deadline=None)
@given(policy_texts())
def test_loader_accepts_or_names_problems(text):
    """Any policy-shaped text either loads or raises PolicyError whose every line names the file; nothing else."""
    try:
        policy = parse_policy(text, "fuzz.toml")
    except PolicyError as e:
        problems = e.problems
    else:
        problems = None
    if problems is not None:
        assert problems
        assert all(str(p).startswith("fuzz.toml") for p in problems)
        return
    rng = random.Random(0)
    for rules in (policy.default, *policy.domains.values()):
        assert 0 <= rules.bounce + rules.defer <= 100
        decide(rules, "user", rng)  # a loaded policy can always be applied


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=2000))
def test_loader_survives_arbitrary_text(text):
    """Arbitrary text: a Policy or a PolicyError, never another exception."""
    with contextlib.suppress(PolicyError):
        parse_policy(text, "any.toml")


@settings(max_examples=500, deadline=None)
@given(st.integers(200, 599), st.text(max_size=3000))
def test_rendered_replies_are_well_formed(code, text):
    """Any reply text renders to CRLF lines of at most 512 octets, 7-bit, with the code and the right separator,
    and parses back as exactly one reply with that code."""
    wire = render(Reply(code, text))
    assert wire.endswith(b"\r\n")
    wire.decode("ascii")
    lines = wire[:-2].split(b"\r\n")
    for i, line in enumerate(lines):
        assert len(line) + 2 <= 512
        assert line[:3] == str(code).encode()
        last = i == len(lines) - 1
        assert line[3:4] == (b" " if last and len(line) > 3 else b"" if last else b"-")
    replies = ReplyParser().feed(wire, 0.0)
    assert len(replies) == 1
    assert replies[0].code == code
