"""The policy loader: KumoMTA's responses.toml in, a frozen Policy out, every problem named by file:line."""

from __future__ import annotations

import contextlib
import datetime
import re
import sys
import tomllib
from importlib import resources

import pytest

from bench.reload import big_policy, domain_name
from harness.policies import KUMO_POLICY, SHIPPED_POLICY, needs_kumo_policy
from smartsink.policy import PolicyError, fallback, load_policy, parse_policy, pieces
from smartsink.policy.loader import Memory
from smartsink.policy.model import Escalation, Exchange, Latency, Reply, Window

SOURCE = "x.toml"

# --- good files -----------------------------------------------------------------------------------------
# (text, {(domain or None for [default], attribute): expected value})
GOOD = {
    "empty-file": (
        "",
        {
            (None, "bounce"): 0.0,
            (None, "defer"): 0.0,
            (None, "bounces"): fallback.BOUNCES,
            (None, "defers"): fallback.DEFERS,
        },
    ),
    "kumomta-layout": (
        '[default]\nbounce=10\ndefer=5\n\n[domain."gmail.com"]\nbounce = 10\ndefer =  10\n',
        {
            (None, "bounce"): 10.0,
            (None, "defer"): 5.0,
            ("gmail.com", "bounce"): 10.0,
            ("gmail.com", "defer"): 10.0,
        },
    ),
    "float-percentages-exact": (
        '[default]\nbounce = 12.5\ndefer = 0.5\n[domain."gmail.com"]\nbounce = 0.01\n',
        {
            (None, "bounce"): 12.5,
            (None, "defer"): 0.5,
            ("gmail.com", "bounce"): 0.01,
            ("gmail.com", "defer"): 0.5,
        },
    ),
    "domain-inherits-default-keys": (
        '[default]\nbounce = 10\ndefer = 5\nlatency = "100ms"\n\n[domain."gmail.com"]\nbounce = 3\n',
        {
            ("gmail.com", "bounce"): 3.0,
            ("gmail.com", "defer"): 5.0,
            ("gmail.com", "latency"): Latency(0.1, 0.1),
        },
    ),
    "domain-overrides-default-to-zero": (
        '[default]\nbounce = 10\ndefer = 5\n[domain."gmail.com"]\nbounce = 0\ndefer = 0\n',
        {("gmail.com", "bounce"): 0.0, ("gmail.com", "defer"): 0.0, (None, "bounce"): 10.0},
    ),
    "list-only-domain-gets-default-percentages": (
        "[default]\nbounce = 7\ndefer = 3\n\n"
        '[[defer."rocketmail.com"]]\ncode = 451\nmsg = "Message temporarily deferred"\n',
        {
            ("rocketmail.com", "bounce"): 7.0,
            ("rocketmail.com", "defer"): 3.0,
            ("rocketmail.com", "defers"): (Reply(451, "Message temporarily deferred"),),
            ("rocketmail.com", "bounces"): fallback.BOUNCES,
        },
    ),
    "default-level-lists": (
        "[default]\nbounce = 1\n\n"
        '[[bounce."default"]]\ncode = 554\nmsg = "5.7.1 default bounce"\n\n'
        '[[defer."default"]]\ncode = 452\nmsg = "4.2.2 default defer"\n\n'
        '[domain."yahoo.com"]\nbounce = 2\n\n'
        '[[bounce."gmail.com"]]\ncode = 550\nmsg = "5.1.1 gmail bounce"\n',
        {
            (None, "bounces"): (Reply(554, "5.7.1 default bounce"),),
            (None, "defers"): (Reply(452, "4.2.2 default defer"),),
            ("yahoo.com", "bounces"): (Reply(554, "5.7.1 default bounce"),),
            ("yahoo.com", "defers"): (Reply(452, "4.2.2 default defer"),),
            ("gmail.com", "bounces"): (Reply(550, "5.1.1 gmail bounce"),),
            ("gmail.com", "defers"): (Reply(452, "4.2.2 default defer"),),
        },
    ),
    "fallback-replies-without-lists": (
        '[domain."example.com"]\nbounce = 50\ndefer = 50\n',
        {("example.com", "bounces"): fallback.BOUNCES, ("example.com", "defers"): fallback.DEFERS},
    ),
    "entries-kept-in-file-order": (
        '[[bounce."gmail.com"]]\ncode = 550\nmsg = "first"\n\n[[bounce."gmail.com"]]\ncode = 552\nmsg = "second"\n',
        {("gmail.com", "bounces"): (Reply(550, "first"), Reply(552, "second"))},
    ),
    "multi-line-msg-kept-as-text": (
        '[[defer."gmail.com"]]\ncode = 421\nmsg = "421-4.7.0 one\\r\\n421 4.7.0 two"\n',
        {("gmail.com", "defers"): (Reply(421, "421-4.7.0 one\r\n421 4.7.0 two"),)},
    ),
    "domain-names-case-insensitive": (
        '[domain."GMail.COM"]\nbounce = 4\n\n[[bounce."GMAIL.com"]]\ncode = 550\nmsg = "5.1.1 gone"\n',
        {("gmail.com", "bounce"): 4.0, ("gmail.com", "bounces"): (Reply(550, "5.1.1 gone"),)},
    ),
    "weights-and-new-lists": (
        '[domain."m.test"]\nunknown = 2.5\nper = "ip"\nrequire_tls = true\nmax_message_size = "10MB"\n'
        'require_headers = ["Message-ID"]\nescalate = { after = 5, within = "1m", to = "defer", for = "2m" }\n\n'
        '[[defer."m.test"]]\ncode = 451\nmsg = "4.7.650 a"\nweight = 4\n\n'
        '[[block."m.test"]]\ncode = 550\nmsg = "5.7.1 S3150"\n\n'
        '[[unknown."m.test"]]\ncode = 550\nmsg = "5.5.0 mailbox unavailable"\n',
        {
            ("m.test", "unknown"): 2.5,
            ("m.test", "per"): "ip",
            ("m.test", "require_tls"): True,
            ("m.test", "max_message_size"): 10_000_000,
            ("m.test", "require_headers"): ("Message-ID",),
            ("m.test", "escalate"): Escalation(5, 60.0, "defer", 120.0),
            ("m.test", "defers"): (Reply(451, "4.7.650 a", 4.0),),
            ("m.test", "blocks"): (Reply(550, "5.7.1 S3150"),),
            ("m.test", "unknowns"): (Reply(550, "5.5.0 mailbox unavailable"),),
            (None, "blocks"): fallback.BLOCKS,
        },
    ),
    "inline-table-domain": (
        '[domain]\n"gmail.com" = { bounce = 4, defer = 6 }\n',
        {("gmail.com", "bounce"): 4.0, ("gmail.com", "defer"): 6.0},
    ),
}


def _rules(policy, domain):
    return policy.default if domain is None else policy.domains[domain]


class TestGoodFiles:
    @pytest.mark.parametrize(("text", "expected"), GOOD.values(), ids=GOOD.keys())
    def test_loads_with_these_rules(self, text, expected):
        """A valid file loads, and each domain's rules hold what the file (or [default], or fallback) says."""
        policy = parse_policy(text, SOURCE)
        for (domain, attribute), value in expected.items():
            assert getattr(_rules(policy, domain), attribute) == value, (domain, attribute)
        assert policy.warnings == ()

    def test_unknown_domain_gets_default_rules_labelled_other(self):
        """The [default] rules carry the metric label `other`, so unknown domains stay one label."""
        policy = parse_policy('[default]\nbounce = 3\n[domain."gmail.com"]\nbounce = 1\n', SOURCE)
        assert policy.default.name == "other"
        assert policy.domains["gmail.com"].name == "gmail.com"

    @pytest.mark.parametrize(
        ("line", "suffixes"),
        [
            ('domain_suffix = "sink.test"', ("sink.test",)),
            ('domain_suffix = ".Sink.Test."', ("sink.test",)),
            ('domain_suffix = ["mx.example.net", "Relay.Test"]', ("mx.example.net", "relay.test")),
        ],
        ids=["string", "dots-and-case", "list"],
    )
    def test_domain_suffix_key(self, line, suffixes):
        """The domain_suffix key gives suffixes to strip: lower-case, without outer dots."""
        assert parse_policy(f"{line}\n[default]\nbounce = 1\n", SOURCE).suffixes == suffixes

    def test_fallback_replies_are_sensible(self):
        """Built-in replies have the right class: 5xx with 5.x.x for bounces, 4xx with 4.x.x for defers."""
        for reply in fallback.BOUNCES:
            assert 500 <= reply.code < 600
            assert reply.text.startswith("5.")
        for reply in (*fallback.DEFERS, *fallback.THROTTLES):
            assert 400 <= reply.code < 500
            assert reply.text.startswith("4.")


# --- bad files ------------------------------------------------------------------------------------------
# (text, the start of the problem line: "file:line: key: ", a fragment of the message)
BAD = {
    "percent-over-100": (
        '[default]\nbounce = 1\n\n[domain."gmail.com"]\nbounce = 120\n',
        'x.toml:5: [domain."gmail.com"] bounce: ',
        "from 0 to 100",
    ),
    "negative-percent-in-default": (
        "[default]\ndefer = -1\n",
        "x.toml:2: [default] defer: ",
        "from 0 to 100",
    ),
    "percent-as-string": (
        '[domain."yahoo.com"]\nbounce = "10%"\n',
        'x.toml:2: [domain."yahoo.com"] bounce: ',
        "must be a number",
    ),
    "percent-as-bool": ("[default]\nbounce = true\n", "x.toml:2: [default] bounce: ", "must be a number"),
    "percent-nan": ("[default]\n\ndefer = nan\n", "x.toml:3: [default] defer: ", "must be a number"),
    "unknown-key-in-domain": (
        '# a comment\n[default]\nbounce = 1\n\n[domain."gmail.com"]\nbounce = 2\ndefr = 3\n',
        'x.toml:7: [domain."gmail.com"] defr: ',
        "unknown key",
    ),
    "unknown-key-in-default": (
        "[default]\nbounce = 1\nbounces = 2\n",
        "x.toml:3: [default] bounces: ",
        "unknown key",
    ),
    "unknown-top-level-key": (
        '# the suffix\ndomain_sufix = "sink.test"\n[default]\nbounce = 1\n',
        "x.toml:2: domain_sufix: ",
        "unknown top-level key",
    ),
    "unknown-top-level-table": (
        '[default]\nbounce = 1\n\n[domian."gmail.com"]\nbounce = 2\n',
        "x.toml:4: domian: ",
        "unknown top-level key",
    ),
    "bounce-plus-defer-over-100": (
        '[default]\nbounce = 1\n[domain."gmail.com"]\nbounce = 60\ndefer = 50.5\n',
        'x.toml:3: [domain."gmail.com"]: ',
        "bounce + defer is 110.5%",
    ),
    "bounce-plus-inherited-defer-over-100": (
        '[default]\ndefer = 60\n\n[domain."gmail.com"]\nbounce = 50\n',
        'x.toml:4: [domain."gmail.com"]: ',
        "bounce + defer is 110%",
    ),
    "bounce-plus-defer-over-100-in-default": (
        "[default]\nbounce = 70\ndefer = 40\n",
        "x.toml:1: [default]: ",
        "bounce + defer is 110%",
    ),
    "reply-code-out-of-range": (
        '[[bounce."gmail.com"]]\ncode = 250\nmsg = "2.0.0 fine"\n',
        'x.toml:2: [[bounce."gmail.com"]] code: ',
        "must be 400 to 599, got 250",
    ),
    "reply-code-missing": (
        '[[defer."gmail.com"]]\nmsg = "4.0.0 no code"\n',
        'x.toml:1: [[defer."gmail.com"]] code: ',
        "must be 400 to 599, got None",
    ),
    "second-entry-bad": (
        '[[defer."gmail.com"]]\ncode = 421\nmsg = "4.7.0 one"\n\n'
        '[[defer."gmail.com"]]\ncode = 4510\nmsg = "4.7.0 two"\n',
        'x.toml:6: [[defer."gmail.com"]] code: ',
        "got 4510",
    ),
    "reply-msg-not-text": (
        '[[bounce."gmail.com"]]\ncode = 550\nmsg = 5\n',
        'x.toml:3: [[bounce."gmail.com"]] msg: ',
        "must be a string",
    ),
    "reply-unknown-key": (
        '[[bounce."gmail.com"]]\ncode = 550\ntext = "5.1.1 gone"\n',
        'x.toml:3: [[bounce."gmail.com"]] text: ',
        "unknown key",
    ),
    "list-written-as-table": (
        '[bounce."gmail.com"]\ncode = 550\nmsg = "5.1.1 gone"\n',
        'x.toml:1: [[bounce."gmail.com"]]: ',
        "must be a list of tables",
    ),
    "inline-domain-bad-percent": (
        '[domain]\n"gmail.com" = { bounce = 500 }\n',
        'x.toml:2: [domain."gmail.com"] bounce: ',
        "from 0 to 100",
    ),
    "inline-domain-over-100": (
        '[domain]\n"gmail.com" = { bounce = 60, defer = 50 }\n',
        'x.toml:2: [domain."gmail.com"]: ',
        "bounce + defer is 110%",
    ),
    "domain-not-a-table": (
        '[domain]\n"gmail.com" = 5\n',
        'x.toml:2: [domain."gmail.com"]: ',
        "must be a table",
    ),
    "default-not-a-table": ("# defaults\ndefault = 5\n", "x.toml:2: [default]: ", "must be a table"),
    "domain-suffix-wrong-type": (
        "domain_suffix = 5\n[default]\nbounce = 1\n",
        "x.toml:1: domain_suffix: ",
        "must be a string or a list of strings",
    ),
    "reject-at-bad": (
        '[domain."outlook.com"]\nreject_at = "mail"\n',
        'x.toml:2: [domain."outlook.com"] reject_at: ',
        'must be "rcpt" or "data"',
    ),
    "latency-bad": ('[default]\nlatency = "soon"\n', "x.toml:2: [default] latency: ", "soon"),
    "listener-unknown-key": (
        "[listener]\nmax_conections = 5\n",
        "x.toml:2: [listener] max_conections: ",
        "unknown key",
    ),
    "per-unknown": ('[domain."c.test"]\nper = "host"\n', 'x.toml:2: [domain."c.test"] per: ', "must be one of"),
    "listener-per-unknown": ('[listener]\nper = "everyone"\n', "x.toml:2: [listener] per: ", "must be one of"),
    "escalate-not-a-table": (
        '[domain."m.test"]\nescalate = 50\n',
        'x.toml:2: [domain."m.test"] escalate: ',
        "must be a table",
    ),
    "escalate-bad-to": (
        '[domain."m.test"]\nescalate = { after = 5, within = "1m", to = "ban" }\n',
        'x.toml:2: [domain."m.test"] escalate: ',
        'to must be "block" or "defer"',
    ),
    "escalate-bad-within": (
        '[domain."m.test"]\nescalate = { after = 5, within = "soon" }\n',
        'x.toml:2: [domain."m.test"] escalate: ',
        "duration",
    ),
    "require-tls-not-bool": (
        '[domain."t.test"]\nrequire_tls = "yes"\n',
        'x.toml:2: [domain."t.test"] require_tls: ',
        "true or false",
    ),
    "max-message-size-bad": (
        '[domain."t.test"]\nmax_message_size = "big"\n',
        'x.toml:2: [domain."t.test"] max_message_size: ',
        "size",
    ),
    "require-headers-bad-name": (
        '[domain."t.test"]\nrequire_headers = ["Message ID"]\n',
        'x.toml:2: [domain."t.test"] require_headers: ',
        "not a header name",
    ),
    "unknown-percent": ("[default]\nunknown = 101\n", "x.toml:2: [default] unknown: ", "from 0 to 100"),
    "weight-zero": (
        '[[defer."g.test"]]\ncode = 451\nmsg = "4.7.0 x"\nweight = 0\n',
        'x.toml:4: [[defer."g.test"]] weight: ',
        "must be more than 0",
    ),
    "schedule-unknown-key": (
        '[[schedule."y.test"]]\nstart = "1m"\ndefr = 100\n',
        'x.toml:3: [[schedule."y.test"]] defr: ',
        "unknown key",
    ),
    "schedule-empty": ('[[schedule."y.test"]]\nstart = "1m"\n', 'x.toml:1: [[schedule."y.test"]]: ', "changes nothing"),
    "schedule-at-without-zone": (
        '[[schedule."y.test"]]\nat = 2026-12-02T10:00:00\ndefer = 100\n',
        'x.toml:1: [[schedule."y.test"]]: ',
        "with its zone",
    ),
    "mx-empty": ('[domain."e.test"]\nbounce = 1\nmx = []\n', 'x.toml:3: [domain."e.test"] mx: ', "a list of them"),
    "mx-not-strings": ('[domain."e.test"]\nmx = [5]\n', 'x.toml:2: [domain."e.test"] mx: ', "a list of them"),
    "mx-bad-host": ('[domain."e.test"]\nmx = ["mx_1.e.test"]\n', 'x.toml:2: [domain."e.test"] mx: ', "not a host"),
    "mx-preference-too-big": (
        '[domain."e.test"]\nmx = ["70000 mx.e.test"]\n',
        'x.toml:2: [domain."e.test"] mx: ',
        "0 to 65535",
    ),
    "mx-listed-twice": (
        '[domain."e.test"]\nmx = ["mx.e.test", "20 MX.e.test."]\n',
        'x.toml:2: [domain."e.test"] mx: ',
        "listed twice",
    ),
    "mx-in-default": ('[default]\nbounce = 1\nmx = ["mx.e.test"]\n', "x.toml:3: [default] mx: ", "domain."),
    "mx-in-a-window": (
        '[[schedule."e.test"]]\nstart = "1m"\nmx = ["mx.e.test"]\n',
        'x.toml:3: [[schedule."e.test"]] mx: ',
        "unknown key",
    ),
    "per-mx-in-a-window": (
        '[[schedule."e.test"]]\nstart = "1m"\nper = "mx"\n',
        'x.toml:3: [[schedule."e.test"]] per: ',
        "unknown key",
    ),
    "not-toml": ("[default]\nbounce = 1\ndefer = \n", "x.toml:3: ", "not valid TOML"),
    "duplicate-key": ("[default]\nbounce = 1\nbounce = 2\n", "x.toml:3: ", "not valid TOML"),
}


class TestBadFiles:
    @pytest.mark.parametrize(("text", "where", "fragment"), BAD.values(), ids=BAD.keys())
    def test_refused_naming_file_line_and_key(self, text, where, fragment):
        """A bad file raises PolicyError whose one line names the file, the line, the key and the problem."""
        with pytest.raises(PolicyError) as caught:
            parse_policy(text, SOURCE)
        assert len(caught.value.problems) == 1, str(caught.value)
        line = str(caught.value)
        assert line.startswith(where), line
        assert fragment in line[len(where) :], line

    def test_every_problem_is_reported(self):
        """A file with several problems names each of them, one per line."""
        text = '[default]\nbounce = 101\nfoo = 1\n\n[domain."gmail.com"]\ndefer = "x"\n\n'
        text += '[[bounce."a.test"]]\ncode = 1\n'
        with pytest.raises(PolicyError) as caught:
            parse_policy(text, SOURCE)
        lines = str(caught.value).splitlines()
        assert [line.split(": ")[0:2] for line in sorted(lines)] == [
            ["x.toml:2", "[default] bounce"],
            ["x.toml:3", "[default] foo"],
            ["x.toml:6", '[domain."gmail.com"] defer'],
            ["x.toml:9", '[[bounce."a.test"]] code'],
        ]

    @pytest.mark.parametrize(
        ("make", "fragment"),
        [
            (lambda d: d / "missing.toml", "no such file"),
            (lambda d: d, "is a directory"),
            (
                lambda d: (d / "latin1.toml", (d / "latin1.toml").write_bytes(b"[default]\n# caf\xe9\n"))[0],
                "not UTF-8",
            ),
        ],
        ids=["missing", "directory", "not-utf8"],
    )
    def test_unreadable_file_is_a_policy_error(self, tmp_path, make, fragment):
        """A missing, non-file or non-UTF-8 policy is a PolicyError naming the path, not an OSError."""
        path = make(tmp_path)
        with pytest.raises(PolicyError) as caught:
            load_policy(path)
        assert str(caught.value).startswith(f"{path}: ")
        assert fragment in str(caught.value)

    def test_load_policy_names_the_real_path(self, tmp_path):
        """Problems of a file on disk name its path as given, with the line."""
        path = tmp_path / "responses.toml"
        path.write_text("[default]\nbounce = 1\ndefer = 200\n")
        with pytest.raises(PolicyError, match=rf"^{path}:3: \[default\] defer: "):
            load_policy(path)


# --- warnings -------------------------------------------------------------------------------------------
WARN = {
    "5xx-in-defer-list": (
        '[default]\nbounce = 1\n\n[[defer."a.test"]]\ncode = 550\nmsg = "gone"\n',
        'x.toml:5: [[defer."a.test"]] code: ',
        "550 in a defer list",
    ),
    "4xx-in-bounce-list": (
        '[[bounce."a.test"]]\ncode = 421\nmsg = "busy"\n',
        'x.toml:2: [[bounce."a.test"]] code: ',
        "421 in a bounce list",
    ),
    "mx-host-carries-the-suffix": (
        '[domain."e.test"]\nmx = ["mx.e.test.sink.test"]\n',
        'x.toml:2: [domain."e.test"] mx: ',
        "served as mx.e.test.sink.test.sink.test",
    ),
    "enhanced-code-class-mismatch": (
        '[[defer."a.test"]]\ncode = 451\nmsg = "5.1.1 no such user"\n',
        'x.toml:3: [[defer."a.test"]] msg: ',
        "does not match code 451",
    ),
}


class TestWarnings:
    @pytest.mark.parametrize(("text", "where", "fragment"), WARN.values(), ids=WARN.keys())
    def test_suspicious_but_valid_entry_loads_with_a_warning(self, text, where, fragment):
        """A reply whose class contradicts its list loads (KumoMTA's do) with a warning naming file:line."""
        policy = parse_policy(text, SOURCE)
        assert len(policy.warnings) == 1, policy.warnings
        assert policy.warnings[0].startswith(where), policy.warnings[0]
        assert fragment in policy.warnings[0]


class TestMx:
    def test_mx_key_gives_the_domains_set_as_zone_files_write_it(self):
        """`mx = [...]`: "PREFERENCE host" or a host alone (preference 10), lower-cased, without a final dot; the
        domain's other keys are read as usual, and a domain with only `mx` is known to the policy."""
        policy = parse_policy(
            '[domain."Example.COM"]\nbounce = 3\nmx = ["5 MX1.example.net.", "mx2.example.net"]\n'
            '[domain."only-mx.test"]\nmx = "mail.only-mx.test"\n',
            SOURCE,
        )
        assert policy.mx == {
            "example.com": (Exchange(5, "mx1.example.net"), Exchange(10, "mx2.example.net")),
            "only-mx.test": (Exchange(10, "mail.only-mx.test"),),
        }
        assert policy.domains["example.com"].bounce == 3.0
        assert "only-mx.test" in policy.domains
        assert policy.warnings == ()

    def test_per_mx_is_a_scope(self):
        """`per = "mx"` is taken by a domain and by [listener]."""
        policy = parse_policy('[listener]\nper = "mx"\nmax_connections = 3\n[domain."o.test"]\nper = "mx"\n', SOURCE)
        assert policy.listener.per == policy.domains["o.test"].per == "mx"


# --- the real files -------------------------------------------------------------------------------------


@needs_kumo_policy()
class TestKumoPolicy:
    def test_loads_unchanged(self):
        """KumoMTA's own responses.toml loads as it is, with its domains, percentages and lists."""
        raw = tomllib.loads(KUMO_POLICY.read_text())
        policy = load_policy(KUMO_POLICY)
        named = set(raw["domain"]) | set(raw["bounce"]) | set(raw["defer"])
        assert set(policy.domains) == named
        assert (policy.default.bounce, policy.default.defer) == (
            raw["default"]["bounce"],
            raw["default"]["defer"],
        )
        for name, table in raw["domain"].items():
            assert (policy.domains[name].bounce, policy.domains[name].defer) == (
                table["bounce"],
                table["defer"],
            )
        for kind, attribute in (("bounce", "bounces"), ("defer", "defers")):
            for name, entries in raw[kind].items():
                assert getattr(policy.domains[name], attribute) == tuple(Reply(e["code"], e["msg"]) for e in entries)

    def test_warns_about_the_550_in_a_defer_list(self):
        """Its one oddity, a 550 among yahoo.ca's defers, is the only warning, naming file, line and key."""
        lines = KUMO_POLICY.read_text().splitlines()
        code_line = next(
            n
            for n, text in enumerate(lines, start=1)
            if text.strip() == "code=550" and lines[n - 2].strip() == '[[defer."yahoo.ca"]]'
        )
        policy = load_policy(KUMO_POLICY)
        assert len(policy.warnings) == 1, policy.warnings
        assert policy.warnings[0].startswith(f'{KUMO_POLICY}:{code_line}: [[defer."yahoo.ca"]] code: ')
        assert "550 in a defer list" in policy.warnings[0]


class TestShippedPolicy:
    def test_loads_without_warnings(self):
        """policy/responses.toml loads cleanly: no problem, no warning."""
        policy = load_policy(SHIPPED_POLICY)
        assert policy.warnings == ()
        assert "gmail.com" in policy.domains

    def test_every_list_holds_its_own_class(self):
        """Bounce lists hold only 5xx and defer and throttle lists only 4xx."""
        policy = load_policy(SHIPPED_POLICY)
        for rules in (policy.default, *policy.domains.values()):
            assert all(r.code >= 500 for r in rules.bounces), rules.name
            assert all(400 <= r.code < 500 for r in (*rules.defers, *rules.throttles)), rules.name

    def test_package_carries_the_same_file(self):
        """The copy inside the package (used outside a checkout) is the shipped policy, byte for byte."""
        packaged = resources.files("smartsink").joinpath("data/responses.toml")
        assert packaged.read_bytes() == SHIPPED_POLICY.read_bytes()


class TestSchedule:
    def test_windows_relative_and_at_a_time(self):
        """start is counted from the sink's start; at is a time with its zone; length is optional."""
        text = (
            '[[schedule."yahoo.com"]]\nstart = "2m"\nlength = "5m"\ndefer = 100\n\n'
            '[[schedule."Gmail.com"]]\nat = 2026-12-02T10:00:00Z\nrate = "10/min"\n'
        )
        first, second = parse_policy(text, SOURCE).schedule
        assert first == Window("yahoo.com", (("defer", 100.0),), 120.0, 300.0, True)
        assert second.domain == "gmail.com"
        assert second.relative is False
        assert second.length is None
        assert second.start == datetime.datetime(2026, 12, 2, 10, tzinfo=datetime.UTC).timestamp()


def test_policy_check_refuses_a_nan_rate():
    """--check refuses rate = "nan/s" with file, line and key."""
    with pytest.raises(PolicyError) as caught:
        parse_policy('[default]\nrate = "nan/s"\n', "x.toml")
    assert str(caught.value).startswith("x.toml:2: [default] rate:")


# --- big policies: linear work, the same result piece by piece ------------------------------------------------------

# the loader's own code: the reader, the pieces it remembers, the values of keys and the line index of problems
POLICY_READERS = ("policy/loader.py", "policy/pieces.py", "policy/values.py", "policy/problems.py")


def _steps(text: str) -> int:
    """Lines of the loader's own code run to load `text` (its problems included): work counted, not timed."""
    count = 0

    def local(frame, event, arg):  # type: ignore[no-untyped-def]
        nonlocal count
        count += event == "line"
        return local

    def calls(frame, event, arg):  # type: ignore[no-untyped-def]
        return local if frame.f_code.co_filename.endswith(POLICY_READERS) else None

    sys.settrace(calls)
    try:
        with contextlib.suppress(PolicyError):
            parse_policy(text, SOURCE)
    finally:
        sys.settrace(None)
    return count


class TestBigPolicies:
    @pytest.mark.parametrize("broken", [False, True], ids=["good", "a-problem-in-each-domain"])
    def test_work_grows_linearly_with_the_domains(self, broken):
        """Twice the domains, about twice the work (the line index was scanned whole per key: four times)."""
        small, large = big_policy(150), big_policy(300)
        if broken:  # every domain names an unknown key: every problem needs its line
            small, large = (t.replace("defer = 0\nlatency", "defer = 0\nbounse = 1\nlatency") for t in (small, large))
        ratio = _steps(large) / _steps(small)
        assert ratio < 2.4, ratio

    def test_problems_name_their_lines_in_a_big_file(self):
        """Problems deep in a file of thousands of tables are named at their own line."""
        text = big_policy(3000)
        lines = text.splitlines()
        for index in (5, 1500, 2999):
            at = lines.index(f'[domain."{domain_name(index)}"]') + 1  # its bounce line (numbered from 1: + 2)
            lines[at] = "bounce = 250"
        with pytest.raises(PolicyError) as caught:
            parse_policy("\n".join(lines) + "\n", SOURCE)
        expected = [
            f'{SOURCE}:{lines.index(f"""[domain."{domain_name(i)}"]""") + 2}: [domain."{domain_name(i)}"] bounce'
            for i in (5, 1500, 2999)
        ]
        assert [str(p).rpartition(":")[0] for p in caught.value.problems] == expected


# Texts whose pieces are put together, or that must be parsed whole: each gives what tomllib gives, or its error.
PIECEWISE = {
    "shipped": SHIPPED_POLICY.read_text(),
    "list-across-chunks": '[[bounce."a.test"]]\ncode = 550\nmsg = "one"\n[domain."b.test"]\nbounce = 1\n'
    '[[bounce."a.test"]]\ncode = 551\nmsg = "two"\n',
    "header-inside-a-string": '[[bounce."a.test"]]\ncode = 550\nmsg = """line\n[domain."x.test"]\nmore"""\n',
    "header-inside-an-array": '[domain."a.test"]\nrequire_headers = [\n"Date",\n]\n[domain."b.test"]\nbounce = 1\n',
    "table-twice": '[domain."a.test"]\nbounce = 1\n[domain."b.test"]\n[domain."a.test"]\ndefer = 1\n',
    "default-twice": "[default]\nbounce = 1\n[listener]\n[default]\ndefer = 1\n",
    "upper-case": '[domain."A.test"]\nbounce = 1\n[domain."a.test"]\nbounce = 2\n',
    "inline-tables": '[domain]\n"a.test" = { bounce = 1 }\n"b.test" = { defer = 2 }\n',
    "dotted-top-keys": 'domain_suffix = "x.test"\ndomain."a.test".bounce = 1\n[domain."b.test"]\n',
    "same-text-twice": '[[defer."a.test"]]\ncode = 451\n[[defer."a.test"]]\ncode = 451\n',
    "other-tables": "[default]\nbounce = 1\n[default.latency]\nmedian = '1s'\n",
}


@pytest.mark.parametrize("text", list(PIECEWISE.values()), ids=list(PIECEWISE))
@pytest.mark.parametrize("mask", [0, pieces.CHUNK_MASK], ids=["a-chunk-a-table", "usual-chunks"])
def test_pieces_put_together_are_tomllib(text, mask, monkeypatch):
    """Chunks parsed alone and put together give tomllib's result; what they cannot give is parsed whole."""
    monkeypatch.setattr(pieces, "CHUNK_MASK", mask)
    try:
        whole = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        with pytest.raises(pieces.Whole):
            pieces.parse(text, {})
        return
    with contextlib.suppress(pieces.Whole):
        assert pieces.parse(text, {}).data == whole


def _domain_line(index: int, old: str, new: str) -> object:
    header = f'[domain."{domain_name(index)}"]\n'
    return lambda text: text.replace(header + old, header + new)


EDITS = {
    "a domain's value": _domain_line(7, "bounce = 0", "bounce = 5"),
    "a domain added": lambda t: t + '[domain."new.test"]\ndefer = 3\n',
    "a domain removed": lambda t: t.replace('[domain."d0000100.example"]', '[domain."d0000100.gone"]'),
    "a list entry added": lambda t: t + '[[defer."d0000003.example"]]\ncode = 452\nmsg = "4.2.2 later"\n',
    "a key line added": lambda t: t.replace('d0000050.example"]]\n', 'd0000050.example"]]\nweight = 2\n'),
    "the default": lambda t: t.replace("[default]\nbounce = 0", "[default]\nbounce = 1"),
    "an mx added": _domain_line(11, "bounce = 0", 'bounce = 0\nmx = ["5 mx.d11.example"]'),
    "an mx changed": lambda t: t.replace('mx = ["5 mx.d11.example"]', 'mx = ["7 mx.d11.example", "mx2.d11.example"]'),
    "an mx removed": lambda t: t.replace('mx = ["7 mx.d11.example", "mx2.d11.example"]\n', ""),
    "an mx problem": _domain_line(12, "bounce = 0", "bounce = 0\nmx = []"),
    "a problem": _domain_line(9, "bounce = 0", "bounce = 900"),
    "not valid TOML": _domain_line(9, "bounce = 0", "bounce = = 0"),
}


@pytest.mark.parametrize("mask", [1, pieces.CHUNK_MASK], ids=["small-chunks", "usual-chunks"])
def test_a_reload_with_memory_is_a_fresh_load(mask, monkeypatch):
    """Each edit, loaded with what the last load left, gives the policy (or the errors) a fresh load gives."""
    monkeypatch.setattr(pieces, "CHUNK_MASK", mask)
    memory = Memory()
    text = big_policy(300)
    assert parse_policy(text, SOURCE, memory) == parse_policy(text, SOURCE)
    for name, edit in EDITS.items():
        text = edit(text)
        try:
            fresh = parse_policy(text, SOURCE)
        except PolicyError as e:
            with pytest.raises(PolicyError, match=f"^{re.escape(str(e))}$"):
                parse_policy(text, SOURCE, memory)
            text = big_policy(300)
            parse_policy(text, SOURCE, memory)
            continue
        assert parse_policy(text, SOURCE, memory) == fresh, name
