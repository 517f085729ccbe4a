"""What a KumoMTA user writes, accepted as they write it (issue 16): one table per kind of input, each case run
through the code that parses it and, where the answer travels over SMTP, through a real sink and smtplib."""

from __future__ import annotations

import smtplib

import pytest

from harness.policies import KUMO_POLICY, needs_kumo_policy
from harness.sink import run_smartsink, running_sink
from harness.trafficgen import run_trafficgen
from mailload import units
from smartsink.config import KUMO_SUFFIX

RUN = {"trafficgen": run_trafficgen, "smartsink": run_smartsink}  # each command, run as a user runs it

# -- throttle specs ---------------------------------------------------------------------------------------------

RATES = [
    # (KumoMTA's spelling, messages, per seconds)
    ("100/s", 100, 1),
    ("local:100/s", 100, 1),
    ("local: 6000/min", 6000, 60),
    ("100/5m", 100, 300),
    ("10/2s", 10, 2),
    ("100/30sec", 100, 30),
    ("1,000/hr", 1000, 3600),
    ("50/1.5h", 50, 5400),
    ("2000/d", 2000, 86400),
]


@pytest.mark.parametrize(("text", "count", "per"), RATES, ids=[r[0] for r in RATES])
def test_rates(text, count, per):
    spec = units.parse_rate(text)
    assert (spec.count, spec.per) == (count, per)


@pytest.mark.parametrize("text", ["100/0m", "100/fortnight", "local:", "100/5 m s", "/s"])
def test_bad_rates_name_the_problem(text):
    with pytest.raises(ValueError, match="rate"):
        units.parse_rate(text)


@pytest.mark.parametrize(("text", "count", "per"), RATES, ids=[r[0] for r in RATES])
def test_rates_in_a_policy(tmp_path, text, count, per):
    """The sink's `rate` key takes the same spellings (checked by `smartsink --check`)."""
    policy = tmp_path / "responses.toml"
    policy.write_text(f'[default]\nbounce = 0\ndefer = 0\n\n[domain."gmail.com"]\nrate = "{text}"\n')
    result = run_smartsink("--check", "--policy", str(policy))
    assert result.returncode == 0, result.stderr
    from smartsink.policy import load_policy

    rate = load_policy(policy).domains["gmail.com"].rate
    assert rate is not None
    assert (rate.count, rate.per) == (count, per)


def test_trafficgen_throttle_takes_kumo_spellings():
    """`trafficgen --throttle local:100/5m` is 1/3 message a second, as KumoMTA's traffic-gen reads it."""
    from trafficgen.config import build

    config = build(target="127.0.0.1:25", throttle="local:100/5m")
    assert config.throttle is not None
    assert config.throttle.per_second == pytest.approx(100 / 300)


# -- sizes ------------------------------------------------------------------------------------------------------

SIZES = [
    ("1Ki", 1024),
    ("1KiB", 1024),
    ("1kb", 1000),
    ("1Mi", 1024**2),
    ("2MB", 2_000_000),
    ("1Gi", 1024**3),
    ("1TB", 1000**4),
    ("1TiB", 1024**4),
    ("1Ti", 1024**4),
    ("4096", 4096),
]


@pytest.mark.parametrize(("text", "size"), SIZES, ids=[s[0] for s in SIZES])
def test_sizes(text, size):
    assert units.parse_size(text) == size


@pytest.mark.parametrize(
    ("argv", "bound"),
    [
        (["trafficgen", "--target", "127.0.0.1:25", "--body-size", "1TB", "--message-count", "1"], "512 MiB"),
        (["smartsink", "--check", "--max-message-size", "1TB"], "1 GiB"),
    ],
    ids=["trafficgen-body-size", "smartsink-max-message-size"],
)
def test_a_size_over_our_bound_names_it(argv, bound):
    """1TB parses, but is more than either tool takes: one line naming the bound, exit 2, no traceback."""
    result = RUN[argv[0]](*argv[1:], timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    problem = [line for line in result.stderr.splitlines() if "1TB" in line]
    assert len(problem) == 1
    assert bound in problem[0]


def test_a_policy_size_over_the_bound_names_it(tmp_path):
    policy = tmp_path / "responses.toml"
    policy.write_text('[default]\nbounce = 0\ndefer = 0\n\n[domain."gmail.com"]\nmax_message_size = "1TiB"\n')
    result = run_smartsink("--check", "--policy", str(policy))
    assert result.returncode != 0
    assert "1 GiB" in result.stderr
    assert "Traceback" not in result.stderr


# -- forced answers ---------------------------------------------------------------------------------------------

FORCING = """
[default]
bounce = 0
defer = 0

[[bounce."gmail.com"]]
code = 550
msg = "5.1.1 gmail: no such user"

[[defer."gmail.com"]]
code = 452
msg = "4.2.2 gmail: over quota"
"""

# KumoMTA checks tempfail, then permfail, then 450-, then 250-: a user part that asks two things gets the first.
FORCED = [
    ("tempfail", 452, "4.2.2 gmail: over quota"),
    ("permfail", 550, "5.1.1 gmail: no such user"),
    ("450-later", 450, "you said 450-later"),
    ("250-fine", 250, None),
    ("tempfail-permfail", 452, "over quota"),
    ("permfail-tempfail", 452, "over quota"),
    ("250-permfail", 550, "no such user"),
    ("450-tempfail", 452, "over quota"),
    ("250-450-x", 250, None),
    ("450-250-x", 450, "you said 450-250-x"),
    ("my-tempfail-box", 452, "over quota"),
    # where we differ from KumoMTA, which compares case: docs/policy.md, "Coming from KumoMTA"
    ("TempFail", 452, "over quota"),
    ("PERMFAIL", 550, "no such user"),
]


@pytest.fixture(scope="module")
def forcing_sink(tmp_path_factory):
    with running_sink("--seed", "3", policy=FORCING, tmp=tmp_path_factory.mktemp("forcing")) as sink:
        yield sink


@pytest.mark.parametrize(("user", "code", "text"), FORCED, ids=[f[0] for f in FORCED])
def test_forced_answers_in_kumo_order(forcing_sink, user, code, text):
    """Over SMTP, as the MTA under test sees it: the answer to the end of DATA for that one recipient."""
    with smtplib.SMTP(forcing_sink.host, forcing_sink.port, timeout=10) as client:
        client.ehlo()
        client.mail("a@example.test")
        rcpt = client.rcpt(f"{user}@gmail.com.sink.test")
        answer = client.data(b"Subject: x\r\n\r\nx\r\n") if rcpt[0] == 250 else rcpt
    assert answer[0] == code
    if text is not None:
        assert text in answer[1].decode()


# -- domain suffixes --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bouncing_sink(tmp_path_factory):
    policy = '[default]\nbounce = 0\ndefer = 0\n\n[domain."gmail.com"]\nbounce = 100\n\n' + FORCING.split("\n", 4)[4]
    with running_sink(policy=policy, tmp=tmp_path_factory.mktemp("suffix")) as sink:
        yield sink


@pytest.mark.parametrize(
    "domain",
    ["gmail.com", "gmail.com.sink.test", f"gmail.com.{KUMO_SUFFIX}", f"GMAIL.com.{KUMO_SUFFIX.upper()}"],
)
def test_kumo_traffic_gen_suffix_is_stripped_by_default(bouncing_sink, domain):
    """KumoMTA's traffic-gen sends to user@gmail.com.mx-sink.wezfurlong.org: that mail gets gmail.com's rules."""
    with (
        smtplib.SMTP(bouncing_sink.host, bouncing_sink.port, timeout=10) as client,
        pytest.raises(smtplib.SMTPDataError) as raised,
    ):
        client.sendmail("a@example.test", [f"user@{domain}"], b"Subject: x\r\n\r\nx\r\n")
    assert raised.value.smtp_code == 550


def test_other_domains_keep_the_default(bouncing_sink):
    """Only the suffix is stripped: a domain that is not gmail.com's gets the default (accept)."""
    with smtplib.SMTP(bouncing_sink.host, bouncing_sink.port, timeout=10) as client:
        assert client.sendmail("a@example.test", [f"user@notgmail.com.{KUMO_SUFFIX}"], b"Subject: x\r\n\r\nx\r\n") == {}


# -- the command lines ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tool", ["trafficgen", "smartsink"])
def test_dash_h_is_help(tool):
    result = RUN[tool]("-h", timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout
    assert "--help" in result.stdout


@needs_kumo_policy()
def test_check_prints_the_warning_the_sink_logs():
    """KumoMTA's own file has a 550 in yahoo.ca's defer list: `--check` says so (and still passes the file)."""
    result = run_smartsink("--check", "--policy", str(KUMO_POLICY))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1
    assert '[[defer."yahoo.ca"]]' in warnings[0]
    assert "550" in warnings[0]
