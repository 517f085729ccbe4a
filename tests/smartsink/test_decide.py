"""The sink's decisions as pure functions of (policy, recipient, rng): forced answers, exact percentages,
the worst of several recipients, and domain lookup (case, suffix)."""

from __future__ import annotations

import random

import pytest

from harness.stats import assert_binomial
from smartsink.policy import decide as d
from smartsink.policy import fallback, parse_policy
from smartsink.policy.model import DomainRules, Outcome, Reply
from smartsink.replies import render

POLICY = parse_policy(
    """
[default]
bounce = 0
defer = 0

[domain."gmail.com"]
bounce = 100

[[bounce."gmail.com"]]
code = 550
msg = "5.1.1 gmail: no such user"

[[bounce."gmail.com"]]
code = 552
msg = "5.2.2 gmail: over quota"

[[defer."gmail.com"]]
code = 421
msg = "4.7.28 gmail: rate limited"

[[defer."gmail.com"]]
code = 450
msg = "4.2.1 gmail: receiving too fast"

# a 5xx in a defer list (KumoMTA's yahoo.ca has one): never the answer to a forced tempfail
[[defer."gmail.com"]]
code = 550
msg = "5.5.0 gmail: mailbox unavailable"

[[bounce."yahoo.com"]]
code = 554
msg = "5.7.9 yahoo: policy"

[[defer."yahoo.com"]]
code = 421
msg = "4.7.0 yahoo: deferred"

[[defer."only5xx.test"]]
code = 554
msg = "5.0.0 not a deferral"

[[bounce."only4xx.test"]]
code = 451
msg = "4.0.0 not a bounce"
""",
    "decide.toml",
)
SUFFIXES = ("sink.test",)
DRAWS = 400  # forced answers: enough draws to see every entry of a 2-3 entry list many times


def answers(address: str, draws: int = DRAWS, seed: int = 1) -> list[Reply | None]:
    """What decide() answers for one address, `draws` times, with the lookup the sink does."""
    rng = random.Random(seed)
    local, domain = d.split_address(address)
    rules = d.resolve(POLICY, domain, SUFFIXES)
    return [d.decide(rules, local, rng) for _ in range(draws)]


def replies(domain: str, attribute: str, lo: int, hi: int) -> set[Reply]:
    return {r for r in getattr(POLICY.domains[domain], attribute) if lo <= r.code < hi}


class TestForcedRecipients:
    @pytest.mark.parametrize(
        ("address", "domain"),
        [
            ("tempfail@gmail.com", "gmail.com"),
            ("tempfail@yahoo.com", "yahoo.com"),
            ("user-tempfail-7@gmail.com", "gmail.com"),
            ("tempfail@gmail.com.sink.test", "gmail.com"),
        ],
        ids=["gmail", "yahoo", "contained-in-user-part", "suffixed-domain"],
    )
    def test_tempfail_picks_from_that_domains_defer_list(self, address, domain):
        """tempfail@DOMAIN answers one of DOMAIN's own 4xx deferrals that leave the connection open, each of them
        over many draws; a domain whose deferrals are all 421 (which closes) gets their words with 451."""
        got = answers(address)
        staying = {r for r in replies(domain, "defers", 400, 500) if r.code != 421}
        closing = {Reply(451, r.text, r.weight) for r in replies(domain, "defers", 421, 422)}
        assert set(got) == (staying or closing)

    def test_tempfail_closes_picks_any_deferral(self):
        """tempfail_closes = true: the whole 4xx defer list, 421 included (the policy says a forced tempfail may
        close the connection)."""
        policy = parse_policy(
            '[domain."gmail.com"]\ntempfail_closes = true\n\n[[defer."gmail.com"]]\ncode = 421\nmsg = "4.7.0 a"\n\n'
            '[[defer."gmail.com"]]\ncode = 450\nmsg = "4.2.1 b"\n',
            "closes.toml",
        )
        rng = random.Random(3)
        got = {d.decide(policy.domains["gmail.com"], "tempfail", rng) for _ in range(DRAWS)}
        assert got == {Reply(421, "4.7.0 a"), Reply(450, "4.2.1 b")}

    def test_a_421_with_its_code_in_the_text_becomes_one_451(self):
        """KumoMTA's multi-line 421 texts carry their code on each line ("421-4.7.0 ..."): as 451 the code is not
        left inside the text."""
        rules = DomainRules("k.test", defers=(Reply(421, "421-4.7.0 [TS01] first\r\n421 4.7.0 second"),))
        reply = d.decide(rules, "tempfail", random.Random(1))
        assert reply is not None
        assert render(reply) == b"451-4.7.0 [TS01] first\r\n451 4.7.0 second\r\n"

    @pytest.mark.parametrize(
        ("address", "domain"),
        [
            ("permfail@gmail.com", "gmail.com"),
            ("permfail@yahoo.com", "yahoo.com"),
            ("x.permfail@gmail.com", "gmail.com"),
        ],
        ids=["gmail", "yahoo", "contained-in-user-part"],
    )
    def test_permfail_picks_from_that_domains_bounce_list(self, address, domain):
        """permfail@DOMAIN answers one of DOMAIN's own 5xx bounces, each of them over many draws."""
        got = answers(address)
        assert set(got) == replies(domain, "bounces", 500, 600)

    @pytest.mark.parametrize(
        ("address", "expected"),
        [
            ("tempfail@example.org", set(fallback.DEFERS)),
            ("permfail@example.org", set(fallback.BOUNCES)),
            ("tempfail@only5xx.test", set(fallback.DEFERS)),
            ("permfail@only4xx.test", set(fallback.BOUNCES)),
        ],
        ids=[
            "tempfail-no-list",
            "permfail-no-list",
            "tempfail-list-without-4xx",
            "permfail-list-without-5xx",
        ],
    )
    def test_fallback_when_the_domain_has_no_fitting_reply(self, address, expected):
        """A domain without a fitting list answers the built-in reply of the right class."""
        assert set(answers(address, draws=20)) == expected

    @pytest.mark.parametrize("local", ["450-slow", "450-", "450-Mixed.Case"], ids=["word", "bare", "mixed-case"])
    def test_450_dash_echoes_the_user(self, local):
        """A user part starting with 450- gets "450 you said <user>" (with its 4.0.0 on the wire), whatever the
        percentages."""
        got = answers(f"{local}@gmail.com", draws=20)
        assert got == [Reply(450, f"you said {local}")] * 20
        assert render(got[0]) == f"450 4.0.0 you said {local}\r\n".encode()

    def test_250_dash_is_accepted_at_100_percent_bounce(self):
        """A user part starting with 250- is accepted although gmail.com bounces 100%."""
        assert POLICY.domains["gmail.com"].bounce == 100
        assert answers("250-ok@gmail.com") == [None] * DRAWS
        # the control: any other user of that domain bounces every time
        assert all(r is not None and r.outcome is Outcome.PERMFAILED for r in answers("ok@gmail.com"))

    def test_forced_answers_ignore_zero_percentages(self):
        """tempfail/permfail are answered even where the domain's percentages are 0."""
        assert POLICY.domains["yahoo.com"].bounce == POLICY.domains["yahoo.com"].defer == 0
        assert set(answers("plain@yahoo.com", draws=50)) == {None}
        assert {r.code for r in answers("tempfail@yahoo.com", draws=50)} == {451}
        assert {r.code for r in answers("permfail@yahoo.com", draws=50)} == {554}


# --- percentages ----------------------------------------------------------------------------------------
N = 200_000
SIGMAS = 4.5  # each count must lie within 4.5 standard deviations of n*p (fixed seed: deterministic)
RATES = [(10, 5), (12.5, 0.5), (0.5, 0), (0, 0.5), (33.3, 33.3), (100, 0), (0, 100)]


def rules_with(bounce: float, defer: float) -> DomainRules:
    return DomainRules(
        name="t",
        bounce=bounce,
        defer=defer,
        bounces=(Reply(550, "5.1.1 bounce"),),
        defers=(Reply(451, "4.3.0 defer"),),
    )


def count(draws: list[Reply | None]) -> tuple[int, int]:
    bounced = sum(1 for r in draws if r is not None and r.code == 550)
    deferred = sum(1 for r in draws if r is not None and r.code == 451)
    return bounced, deferred


def kumo_roll(rules: DomainRules, rng: random.Random) -> Reply | None:
    """KumoMTA's roll, for contrast: a whole number 1..100 that bounces when below `bounce`."""
    roll = rng.randint(1, 100)
    if roll < rules.bounce:
        return rules.bounces[0]
    if roll < rules.bounce + rules.defer:
        return rules.defers[0]
    return None


class TestPercentages:
    @pytest.mark.parametrize(("bounce", "defer"), RATES, ids=[f"b{b}-d{f}" for b, f in RATES])
    def test_rates_are_exact(self, bounce, defer):
        """Over 200,000 draws, bounce% and defer% of answers are bounces and deferrals, within 4.5 sd."""
        rng = random.Random(20261122)
        rules = rules_with(bounce, defer)
        bounced, deferred = count([d.decide(rules, "user", rng) for _ in range(N)])
        assert_binomial(bounced, N, bounce / 100, SIGMAS, "bounced")
        assert_binomial(deferred, N, defer / 100, SIGMAS, "deferred")

    @pytest.mark.parametrize(("bounce", "defer"), [(10, 5), (12.5, 0.5), (0.5, 0)], ids=["b10", "b12.5", "b0.5"])
    def test_the_tolerance_rejects_kumomtas_off_by_one_roll(self, bounce, defer):
        """The same check fails KumoMTA's roll (9% for 10, 12% for 12.5, never for 0.5): it can tell."""
        rng = random.Random(20261122)
        rules = rules_with(bounce, defer)
        bounced, _ = count([kumo_roll(rules, rng) for _ in range(N)])
        with pytest.raises(AssertionError):
            assert_binomial(bounced, N, bounce / 100, SIGMAS, "bounced")

    def test_every_entry_of_a_list_is_picked_evenly(self):
        """A domain's list entries are picked uniformly: each of 4 within 4.5 sd of a quarter."""
        entries = tuple(Reply(550 + i, f"5.0.{i} entry {i}") for i in range(4))
        rules = DomainRules(name="t", bounce=100, bounces=entries)
        rng = random.Random(5)
        draws = [d.decide(rules, "user", rng) for _ in range(40_000)]
        for entry in entries:
            assert_binomial(draws.count(entry), 40_000, 0.25, SIGMAS, entry.text)

    def test_same_seed_same_answers(self):
        """Two generators with one seed give the same sequence of answers; another seed does not."""
        rules = rules_with(30, 30)

        def run(seed: int) -> list[Reply | None]:
            rng = random.Random(seed)
            return [d.decide(rules, "user", rng) for _ in range(500)]

        assert run(99) == run(99)
        assert run(99) != run(100)


# --- worst ----------------------------------------------------------------------------------------------
OK = None
T1, T2 = Reply(451, "4.3.0 first temp"), Reply(421, "4.7.0 second temp")
P1, P2 = Reply(550, "5.1.1 first perm"), Reply(554, "5.7.1 second perm")
WORST = {
    "nothing": ([], None),
    "all-accepted": ([OK, OK], None),
    "temp-over-accept": ([OK, T1], T1),
    "perm-over-temp": ([T1, P1], P1),
    "perm-over-temp-any-order": ([P1, T1], P1),
    "perm-among-many": ([OK, T1, OK, P1, T2], P1),
    "first-of-equals-temp": ([T1, T2], T1),
    "first-of-equals-perm": ([OK, P2, P1], P2),
}


class TestWorst:
    @pytest.mark.parametrize(("verdicts", "expected"), WORST.values(), ids=WORST.keys())
    def test_worst_wins(self, verdicts, expected):
        """Permanent over temporary over accept; among equals, the first recipient's reply."""
        assert d.worst(verdicts) == expected

    def test_outcomes_are_ordered(self):
        """Outcome order is what worst() and metrics rely on, and codes map to it by class."""
        assert Outcome.ACCEPTED < Outcome.TEMPFAILED < Outcome.PERMFAILED
        assert [Outcome.of_code(c) for c in (250, 421, 452, 550, 554)] == [
            Outcome.ACCEPTED,
            Outcome.TEMPFAILED,
            Outcome.TEMPFAILED,
            Outcome.PERMFAILED,
            Outcome.PERMFAILED,
        ]


# --- lookup ---------------------------------------------------------------------------------------------
LOOKUP = {
    "exact": ("u@gmail.com", ("sink.test",), "gmail.com"),
    "upper-case": ("u@GMail.COM", ("sink.test",), "gmail.com"),
    "suffix-stripped": ("u@gmail.com.sink.test", ("sink.test",), "gmail.com"),
    "suffix-upper-case": ("u@GMAIL.COM.SINK.TEST", ("sink.test",), "gmail.com"),
    "trailing-dot": ("u@gmail.com.", ("sink.test",), "gmail.com"),
    "second-suffix": ("u@yahoo.com.mx.example.net", ("sink.test", "mx.example.net"), "yahoo.com"),
    "no-suffix-configured": ("u@gmail.com.sink.test", (), "other"),
    "suffix-only-at-a-dot": ("u@gmail.comsink.test", ("sink.test",), "other"),
    "suffix-alone-is-no-domain": ("u@sink.test", ("sink.test",), "other"),
    "unknown-domain": ("u@example.org", ("sink.test",), "other"),
    "unknown-domain-suffixed": ("u@example.org.sink.test", ("sink.test",), "other"),
    "subdomain-is-not-the-domain": ("u@mail.gmail.com", ("sink.test",), "other"),
}


class TestLookup:
    @pytest.mark.parametrize(("address", "suffixes", "rules"), LOOKUP.values(), ids=LOOKUP.keys())
    def test_recipient_domain_resolves(self, address, suffixes, rules):
        """The recipient's domain, case-insensitive and with a configured suffix stripped, picks the rules."""
        _, domain = d.split_address(address)
        assert d.resolve(POLICY, domain, suffixes).name == rules

    @pytest.mark.parametrize(
        ("domain", "suffixes", "expected"),
        [
            ("gmail.com.sink.test", ("sink.test",), "gmail.com"),
            ("gmail.com.sink.test", ("other.test", "sink.test"), "gmail.com"),
            ("a.b.sink.test", ("b.sink.test", "sink.test"), "a"),
            ("gmail.com", ("sink.test",), "gmail.com"),
            ("sink.test", ("sink.test",), "sink.test"),
            ("xsink.test", ("sink.test",), "xsink.test"),
        ],
        ids=["one", "second-of-two", "first-match-wins", "no-suffix", "only-the-suffix", "not-at-a-label"],
    )
    def test_strip_suffix(self, domain, suffixes, expected):
        """A suffix is stripped only at a label boundary, never leaving an empty domain."""
        assert d.strip_suffix(domain, suffixes) == expected

    def test_split_address_keeps_the_user_part_as_written(self):
        """The user part stays as sent (it is echoed back); the domain is lower-cased without a final dot."""
        assert d.split_address("450-Hello.World@Example.COM.") == ("450-Hello.World", "example.com")
        assert d.split_address('"a@b"@c.test') == ('"a@b"', "c.test")
        assert d.split_address("postmaster") == ("postmaster", "")
