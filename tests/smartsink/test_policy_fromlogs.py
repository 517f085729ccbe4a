"""`smartsink policy from-logs` (smartsink.policy.fromlogs): the policy a KumoMTA log (built from its documented
record format, bench.maillogs) describes loads, and says what the log says: each domain's failure shares, when they
came, the texts (masked) by frequency, and latency where the log has it; messages of several recipients answered at
DATA are accounted for."""

from __future__ import annotations

import collections
import random

import pytest

from bench import maillogs
from mailload.mtalog.aggregate import Aggregate
from mailload.mtalog.events import Attempt, Received, Stage
from mailload.mtalog.read import ReadReport, read_logs
from smartsink.policy import parse_policy
from smartsink.policy.fromlogs import DerivationError, per_recipient, policy


@pytest.fixture(scope="module")
def derived(tmp_path_factory: pytest.TempPathFactory) -> tuple[maillogs.Log, str]:
    tmp = tmp_path_factory.mktemp("kumo")
    log = maillogs.Log(3000, seed=12)
    maillogs.write_kumomta(maillogs.kumomta_records(log), tmp, 10_000, ("zstd",))
    aggregate, report = read_logs([str(tmp)])
    return log, policy(aggregate, report, top=4, replies=5)


def shares(counts: dict[str, int]) -> tuple[float, float]:
    total = sum(counts.values())
    return 100 * counts["permfailed"] / total, 100 * counts["tempfailed"] / total


class TestPolicy:
    def test_loads_and_gives_each_domain_the_logs_shares(self, derived):
        """Each domain's bounce and defer are its share of the answered attempts (to the 4 decimals written); the
        domains not named make [default]; RCPT-time failures give reject_at = "rcpt"."""
        log, text = derived
        loaded = parse_policy(text, "derived.toml")
        assert set(loaded.domains) == {"gmail.com", "yahoo.com", "outlook.com", "icloud.com"}
        for name, rules in loaded.domains.items():
            bounce, defer = shares(log.truth.answers[name])
            assert (rules.bounce, rules.defer) == (pytest.approx(bounce, abs=1e-4), pytest.approx(defer, abs=1e-4))
        tail = sum((c for n, c in log.truth.answers.items() if n.startswith("tail-")), start=collections.Counter())
        assert (loaded.default.bounce, loaded.default.defer) == pytest.approx(shares(tail), abs=1e-4)
        assert loaded.domains["gmail.com"].reject_at == "rcpt"
        assert loaded.domains["yahoo.com"].reject_at == "data"
        assert loaded.domains["icloud.com"].bounces == loaded.default.bounces  # none of its own: the default's

    def test_texts_masked_and_weighted(self, derived):
        """The failure texts are the providers', masked (the recipient, the client IP, ids), weighted by their
        count; no local part, message id or subject of the log is in the file."""
        log, text = derived
        loaded = parse_policy(text, "derived.toml")
        (bounce,) = loaded.domains["gmail.com"].bounces
        assert bounce.text.startswith("5.1.1 <{recipient}>: Recipient address rejected")
        assert bounce.weight == log.truth.answers["gmail.com"]["permfailed"]
        (defer,) = loaded.domains["yahoo.com"].defers
        assert defer.code == 451
        assert "Messages from {client_ip} temporarily deferred" in defer.text
        (gmail_defer,) = loaded.domains["gmail.com"].defers
        assert gmail_defer.text == "4.7.0 Try again later, closing connection. <id> - gsmtp"
        assert not [s for s in log.truth.secrets if s in text]

    def test_no_answer_no_policy(self):
        """Logs in which no server answered give no policy, said in one line."""
        aggregate = Aggregate()
        aggregate.add(Attempt(None, "a.example", None, "connect to a.example: Connection refused"))
        with pytest.raises(DerivationError, match="no delivery attempt in these logs got an answer"):
            policy(aggregate, ReadReport())

    def test_latency_where_the_log_has_it(self):
        """The median and p99 of accepted transmissions' times (seed 4: log-normal, median 120 ms)."""
        rng = random.Random(4)
        aggregate = Aggregate()
        for _ in range(5000):
            aggregate.add(Attempt(None, "slow.example", 250, "2.0.0 OK", Stage.DATA, rng.lognormvariate(-2.12, 0.5)))
        rules = parse_policy(policy(aggregate, ReadReport())).domains["slow.example"]
        assert rules.latency is not None
        assert rules.latency.median == pytest.approx(0.12, rel=0.05)
        assert rules.latency.p99 == pytest.approx(0.12 * 2.718 ** (0.5 * 2.326), rel=0.1)


class TestSeveralRecipients:
    @pytest.mark.parametrize(("b", "d", "k"), [(0.1, 0.2, 2), (0.02, 0.05, 5), (0.0, 0.3, 3), (0.25, 0.0, 2)])
    def test_worst_of_k(self, b, d, k):
        """Per-recipient shares whose worst-of-k gives the messages' shares: the inverse is exact."""
        accepted = (1 - b - d) ** k
        bounced = 1 - (1 - b) ** k
        assert per_recipient(bounced, 1 - accepted - bounced, k) == pytest.approx((b, d))

    def test_data_time_domains_of_messages_with_two_recipients(self):
        """Messages of two recipients failed whole at DATA 19% of the time: 10% per recipient is written; at RCPT
        the recipients' own shares are."""
        aggregate = Aggregate()
        for n in range(100):
            aggregate.add(Received(None, "s.example", 1000, 2))
            for _ in range(2):
                aggregate.add(Attempt(None, "data.example", 550 if n < 19 else 250, "5.7.1 No", Stage.DATA))
                aggregate.add(Attempt(None, "rcpt.example", 550 if n < 19 else 250, "5.7.1 No", Stage.RCPT))
        loaded = parse_policy(policy(aggregate, ReadReport()))
        assert loaded.domains["data.example"].bounce == pytest.approx(100 * (1 - 0.81**0.5), abs=1e-4)
        assert loaded.domains["rcpt.example"].bounce == pytest.approx(19.0)
