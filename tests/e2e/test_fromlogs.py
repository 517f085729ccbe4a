"""Derive, then run: `trafficgen workload from-logs` and `smartsink policy from-logs` on an MTA's logs, then
trafficgen with the workload against smartsink with the policy, and the run's shares and the sink's answer rates
checked against the log's.

Two logs: a KumoMTA log_dir built from KumoMTA's documented record format (bench.maillogs: gzip and zstd
segments), and a Postfix log written by a real Postfix (tests/harness/postfix.py, its maillog_file) relaying
trafficgen's mail to a sink. Statistics: fixed seeds, Pearson's chi-square at significance 1e-5 (the sink's rolls
depend on the order in which concurrent connections reach it, so a run is not repeated exactly), binomial bounds
of 4 standard deviations. Neither derived file holds a local part, an address, a message id or a subject.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from bench import maillogs
from harness.metrics import Metrics
from harness.postfix import needs_postfix, running_postfix
from harness.sink import one_line, run_smartsink, running_sink
from harness.stats import assert_binomial, chi_square
from harness.trafficgen import run_report, run_trafficgen

# chi-square critical values at significance 1e-5 (scipy.stats.chi2.ppf(1 - 1e-5, df)), by degrees of freedom
CHI2_CRITICAL_1E5 = {1: 19.511, 2: 23.026, 3: 25.902, 4: 28.473}
SIGMAS = 4.0


def assert_shares(observed: dict[str, float], weights: dict[str, float], what: str) -> None:
    """Observed counts against the shares the weights ask for: Pearson's chi-square at 1e-5 over the categories
    expected 5 times or more, binomial bounds (4 standard deviations) for the others, none where none is expected."""
    total, weight = sum(observed.values()), sum(weights.values())
    assert set(observed) <= set(weights), (what, observed)
    expected = {name: total * w / weight for name, w in weights.items()}
    for name in [n for n, e in expected.items() if e < 5]:
        if weights[name] == 0:
            assert observed.get(name, 0) == 0, (what, name, observed)
        else:
            assert_binomial(
                round(observed.get(name, 0)), round(total), weights[name] / weight, SIGMAS, f"{what}: {name}"
            )
    names = sorted(n for n, e in expected.items() if e >= 5)
    if len(names) < 2:
        return
    counts = [round(observed.get(n, 0)) for n in names]
    statistic = chi_square(counts, [weights[n] for n in names])
    limit = CHI2_CRITICAL_1E5[len(names) - 1]
    assert statistic < limit, (
        f"{what}: chi-square {statistic:.1f} >= {limit} for {dict(zip(names, counts, strict=True))}"
    )


def derive(
    tmp: Path, logs: list[str], workload_args: tuple[str, ...], policy_args: tuple[str, ...]
) -> tuple[Path, Path]:
    workload, policy = tmp / "workload.toml", tmp / "responses.toml"
    done = run_trafficgen("workload", "from-logs", *logs, "-o", str(workload), *workload_args)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    done = run_smartsink("policy", "from-logs", *logs, "-o", str(policy), *policy_args)
    assert done.returncode == 0, done.stderr
    checked = run_smartsink("--check", "--policy", str(policy))
    assert checked.returncode == 0, checked.stderr
    return workload, policy


def answers(metrics: Metrics, domain: str) -> dict[str, float]:
    found = metrics.messages()
    return {outcome: found.get((domain, outcome), 0.0) for outcome in ("accepted", "tempfailed", "permfailed")}


def rates(rules: dict[str, Any]) -> dict[str, float]:
    bounce, defer = float(rules.get("bounce", 0)), float(rules.get("defer", 0))
    return {"accepted": 100 - bounce - defer, "tempfailed": defer, "permfailed": bounce}


@pytest.mark.slow
class TestKumoMTARoundTrip:
    """A day of 3,000 messages as kumod logs them, replayed in 6 s at 40% of the volume."""

    LOG = maillogs.Log(3000, seed=21)
    SPEED, SHARE = 86400 / 6, 40

    @pytest.fixture(scope="class")
    @classmethod
    def scene(cls, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
        tmp = tmp_path_factory.mktemp("kumo-round-trip")
        log = maillogs.Log(cls.LOG.messages, cls.LOG.seed)
        paths, _ = maillogs.write_kumomta(maillogs.kumomta_records(log), tmp / "kumo-logs", 2500, ("zstd", "gzip"))
        workload, policy = derive(
            tmp,
            [str(tmp / "kumo-logs")],
            ("--top", "4", "--speed", str(cls.SPEED), "--share", f"{cls.SHARE}%", "--stages", "12"),
            ("--top", "4"),
        )
        with running_sink("--seed", "5", "--policy", str(policy)) as sink:
            report, _ = run_report(
                "--workload", str(workload), "--target", sink.target, "--seed", "9", "--concurrency", "40",
                "--keep-going",
            )  # fmt: skip
            metrics = Metrics.scrape(sink)
        return {
            "log": log,
            "segments": paths,
            "workload": tomllib.loads(workload.read_text()),
            "policy": tomllib.loads(policy.read_text()),
            "texts": workload.read_text() + policy.read_text(),
            "report": report,
            "metrics": metrics,
        }

    def test_the_log_was_gzip_and_zstd_segments(self, scene):
        """The log_dir held segments of both compressions (the reading of each is pinned in test_mtalog)."""
        heads = {p.read_bytes()[:2] for p in scene["segments"]}
        assert heads == {b"\x1f\x8b", b"\x28\xb5"}

    def test_the_profile_made_the_logs_arrivals_due(self, scene):
        """The run's stages made 40% of the log's messages due (to the rates' rounding) and it sent them."""
        stages = scene["report"]["profile"]["stages"]
        due = sum(s["due"] for s in stages)
        assert due == pytest.approx(self.LOG.messages * self.SHARE / 100, abs=len(stages))
        assert scene["report"]["totals"]["attempted"] >= 0.9 * due

    def test_domain_tenant_campaign_shares_are_the_logs(self, scene):
        """The run's domains, tenants and campaigns: the workload's weights, which are the log's shares."""
        report, workload = scene["report"], scene["workload"]
        for key, section in (("domains", "domain"), ("tenants", "tenant"), ("campaigns", "campaign")):
            observed = {name: row["attempted"] for name, row in report[key].items()}
            assert set(observed) == set(workload[section])
            assert_shares(observed, workload[section], key)
        truth = scene["log"].truth
        assert workload["domain"]["gmail.com"] == pytest.approx(100 * truth.recipients["gmail.com"] / truth.messages)

    def test_the_sinks_answers_are_the_logs(self, scene):
        """Per domain, the sink answered the run as the providers answered the logged MTA (the tail: [default])."""
        policy, metrics, truth = scene["policy"], scene["metrics"], scene["log"].truth
        for name in ("gmail.com", "yahoo.com", "outlook.com", "icloud.com"):
            logged = truth.answers[name]
            assert float(policy["domain"][name]["defer"]) == pytest.approx(
                100 * logged["tempfailed"] / sum(logged.values()), abs=1e-4
            )
            assert_shares(answers(metrics, name), rates(policy["domain"][name]), name)
        assert_shares(answers(metrics, "other"), rates(policy["default"]), "the other domains")
        assert scene["report"]["totals"]["errors"] == 0

    def test_nothing_personal_in_either_file(self, scene):
        """No local part, message id or subject of the log is in the workload or the policy."""
        secrets = scene["log"].truth.secrets
        assert not [s for s in secrets if s in scene["texts"]]


REPLY_DEFER = "4.7.1 <{recipient}> greylisted from [{client_ip}], try again later"
REPLY_BOUNCE = "5.7.1 Message refused by policy"
POSTFIX_POLICY = f"""
[default]
bounce = 0
defer = 0

[domain."rcpt.test"]
defer = 20
reject_at = "rcpt"

[domain."data.test"]
bounce = 10
latency = "30ms"

[[defer."rcpt.test"]]
code = 451
msg = "{REPLY_DEFER}"

[[bounce."data.test"]]
code = 550
msg = "{REPLY_BOUNCE}"
"""
DOMAINS = {"rcpt.test": 5, "data.test": 3, "ok.test": 2}
MESSAGES = 240
BODY = (5000, 50_000)


def delivery_lines(log: str, domain: str) -> list[str]:
    """The log's attempts to a domain, counted here with a regex of our own (not the parser under test)."""
    return re.findall(rf"to=<[^>@]+@{re.escape(domain)}\.sink\.test>,.* status=(\w+)", log)


@needs_postfix
@pytest.mark.slow
class TestPostfixRoundTrip:
    """240 messages of two recipients through a real Postfix to a sink; its log derived, then replayed."""

    @pytest.fixture(scope="class")
    @classmethod
    def scene(cls, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
        tmp = tmp_path_factory.mktemp("postfix-round-trip")
        with running_sink("--seed", "3", policy=POSTFIX_POLICY, tmp=tmp) as sink, running_postfix(sink.port) as postfix:
            sent, _ = run_report(
                "--target", postfix.target, "--message-count", str(MESSAGES), "--recipients-per-message", "2",
                "--concurrency", "4", "--seed", "13", "--body-size", f"{BODY[0]}..{BODY[1]}",
                "--sender-domain", "senders.test",
                *(a for d, w in DOMAINS.items() for a in ("--domain", f"{d}:{w}")),
            )  # fmt: skip
            assert sent["totals"]["accepted"] == MESSAGES, "Postfix takes every message"

            def every_recipient_tried() -> bool:
                return len(set(re.findall(r"to=<(user-\d+)[^@>]*@[^>]+>,.* status=", postfix.log()))) >= 2 * MESSAGES

            postfix.wait_for(every_recipient_tried, timeout=90, what="a first attempt to every recipient")
            log = postfix.log()
        maillog = tmp / "maillog"
        maillog.write_text(log)
        workload, policy = derive(tmp, [str(maillog)], (), ())
        with running_sink("--seed", "6", "--policy", str(policy)) as replay:
            report, _ = run_report(
                "--workload", str(workload), "--target", replay.target, "--seed", "17", "--concurrency", "8",
                "--keep-going",
            )  # fmt: skip
            metrics = Metrics.scrape(replay)
        return {
            "sent": sent,
            "log": log,
            "workload": tomllib.loads(workload.read_text()),
            "policy": tomllib.loads(policy.read_text()),
            "texts": workload.read_text() + policy.read_text(),
            "report": report,
            "metrics": metrics,
        }

    def test_the_workload_is_what_postfix_took_in(self, scene):
        """Domain weights: the recipients Postfix took per domain (exactly); two recipients a message; the
        sender domain; sizes: the uniform 5..50 kB bodies within 4 standard deviations of their quantiles (and
        the header allowance)."""
        sent, workload = scene["sent"], scene["workload"]
        for name in DOMAINS:
            share = 100 * sent["domains"][name]["accepted"] / MESSAGES
            assert workload["domain"][name] == pytest.approx(share, abs=1e-6)
        assert workload["recipients-per-message"] == 2
        assert workload["sender-domain"] == {"senders.test": 100}
        spec = {k: int(v) for k, v in (item.split("=") for item in workload["body-size"].split(","))}
        for key, q in (("p25", 0.25), ("p50", 0.5), ("p75", 0.75)):
            uniform = BODY[0] + q * (BODY[1] - BODY[0])
            sd = (q * (1 - q) / MESSAGES) ** 0.5 * (BODY[1] - BODY[0])
            assert abs(spec[key] - uniform) <= SIGMAS * sd + 300, (key, spec[key], uniform)

    def test_the_policy_is_what_the_sink_answered_postfix(self, scene):
        """Each domain's shares are the log's (counted here independently), near the sink's first policy; RCPT time
        where the log says; the texts masked; latency from Postfix's delays."""
        policy, log = scene["policy"], scene["log"]
        rcpt = delivery_lines(log, "rcpt.test")
        assert float(policy["domain"]["rcpt.test"]["defer"]) == pytest.approx(
            100 * rcpt.count("deferred") / len(rcpt), abs=1e-4
        )
        assert_binomial(rcpt.count("deferred"), len(rcpt), 0.20, SIGMAS, "rcpt.test deferrals")
        assert policy["domain"]["rcpt.test"]["reject_at"] == "rcpt"
        assert policy["defer"]["rcpt.test"][0]["msg"] == REPLY_DEFER
        data = delivery_lines(log, "data.test")
        bounced = data.count("bounced") / len(data)  # whole messages: both recipients each time
        assert float(policy["domain"]["data.test"]["bounce"]) == pytest.approx(
            100 * (1 - (1 - bounced) ** 0.5), abs=1e-3
        )
        assert_binomial(data.count("bounced") // 2, len(data) // 2, 1 - 0.9**2, SIGMAS, "data.test bounced messages")
        assert "reject_at" not in policy["domain"]["data.test"]
        assert policy["bounce"]["data.test"][0]["msg"] == REPLY_BOUNCE
        latency = policy["domain"]["data.test"]["latency"]
        assert 20 <= int(latency["median"].removesuffix("ms")) <= 1000
        assert (policy["domain"]["ok.test"]["bounce"], policy["domain"]["ok.test"]["defer"]) == (0, 0)

    def test_the_replay_has_the_logs_shares_and_answers(self, scene):
        """The run from the workload against the sink with the policy: domains in the log's shares; the sink's
        answers at the log's rates (per recipient at RCPT time; per message at DATA, where both share one fate)."""
        report, workload, policy, metrics = scene["report"], scene["workload"], scene["policy"], scene["metrics"]
        observed = {name: row["attempted"] for name, row in report["domains"].items()}
        assert_shares(observed, workload["domain"], "domains")
        rcpt = answers(metrics, "rcpt.test")
        assert_shares(rcpt, rates(policy["domain"]["rcpt.test"]), "rcpt.test recipients")
        data = {k: v / 2 for k, v in answers(metrics, "data.test").items()}
        logged = delivery_lines(scene["log"], "data.test")
        share = 100 * logged.count("bounced") / len(logged)
        assert_shares(data, {"accepted": 100 - share, "tempfailed": 0, "permfailed": share}, "data.test messages")
        assert answers(metrics, "ok.test")["accepted"] == 2 * observed["ok.test"]

    def test_nothing_personal_in_either_file(self, scene):
        """No recipient's local part, no sender, no message id of the log is in either file."""
        texts = scene["texts"]
        assert not re.search(r"user-\d|noreply|@", texts)
        assert scene["sent"]["run_id"] not in texts


@pytest.mark.parametrize("tool", ["trafficgen", "smartsink"])
@pytest.mark.parametrize(
    ("make", "extra", "message"),
    [
        (lambda p: str(p / "nope.log"), (), "nope.log: no such file or directory"),
        (lambda p: _file(p / "notes.txt", "dear diary\n"), (), "not a log of KumoMTA, Postfix or Exim"),
        (lambda p: _file(p / "maillog", "Mar  5 10:00:00 mta x[1]: y\n"), ("--format", "exim"), "not Exim main log"),
        (lambda p: _file(p / "e", "{}\n"), ("-o", "/nonexistent/dir/out.toml"), "--output /nonexistent/dir"),
        (lambda p: _file(p / "e", "{}\n"), ("--top", "0"), "--top must be at least 1"),
    ],
    ids=["missing", "not-a-log", "wrong-format", "output-dir", "top-zero"],
)
def test_bad_input_is_one_line(tmp_path, tool, make, extra, message):
    """Both commands: one line naming the problem, exit status 2, nothing written."""
    args = ("workload" if tool == "trafficgen" else "policy", "from-logs", make(tmp_path), *extra)
    done = run_trafficgen(*args) if tool == "trafficgen" else run_smartsink(*args)
    assert done.returncode == 2, done.stderr
    assert message in one_line(done.stderr)
    assert done.stdout == ""


@pytest.mark.parametrize(("flag", "value"), [("--share", "0"), ("--share", "lots"), ("--speed", "0")])
def test_bad_shape_is_one_line(tmp_path, flag, value):
    """--share and --speed out of range: one line, exit 2."""
    done = run_trafficgen("workload", "from-logs", _file(tmp_path / "e", "{}\n"), flag, value)
    assert done.returncode == 2
    assert flag in one_line(done.stderr)


def _file(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)
