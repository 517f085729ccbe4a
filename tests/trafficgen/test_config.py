"""Options as users write them, parsed once into a RunConfig: domains, sizes, rates, headers, targets, defaults
(issue 3, "Command"). Bad input through the real command is in test_cli.py."""

from __future__ import annotations

import dataclasses
import os

import pytest

from mailload import units
from trafficgen.config import ConfigError, DomainWeight, RunConfig, build


class TestDomains:
    """--domain NAME[:WEIGHT]: float weights, weight 1 by default, names normalised."""

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("gmail.com", DomainWeight("gmail.com", 1.0)),
            ("gmail.com:67.4", DomainWeight("gmail.com", 67.4)),
            ("comcast.net:0.5", DomainWeight("comcast.net", 0.5)),
            ("yahoo.com:3", DomainWeight("yahoo.com", 3.0)),
            ("aol.com:1e-3", DomainWeight("aol.com", 0.001)),
            (" Hotmail.COM. :2.5", DomainWeight("hotmail.com", 2.5)),
            ("mx-1.example_test.org", DomainWeight("mx-1.example_test.org", 1.0)),
        ],
        ids=["no-weight", "float", "below-one", "integer", "exponent", "case-and-dot", "hyphen-underscore"],
    )
    def test_parsed(self, text, expected):
        """The name (lower-cased, without a final dot) and its weight as a float."""
        assert build(domains=[text]).domains == (expected,)

    def test_default_list(self):
        """Without --domain: KumoMTA's list, aol.com, gmail.com, hotmail.com, yahoo.com, weight 1 each."""
        assert build().domains == tuple(
            DomainWeight(d, 1.0) for d in ("aol.com", "gmail.com", "hotmail.com", "yahoo.com")
        )

    def test_repeated_keeps_order(self):
        """Repeated --domain options keep the order given."""
        config = build(domains=["gmail.com:67.4", "yahoo.com:5.9", "hotmail.com:8.8"])
        assert [d.name for d in config.domains] == ["gmail.com", "yahoo.com", "hotmail.com"]


class TestSizes:
    """--body-size: bytes, decimal (kb) and binary (KiB) units, and ranges low..high."""

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("1024", (1024, 1024)),
            ("0", (0, 0)),
            ("60kb", (60_000, 60_000)),
            ("60KB", (60_000, 60_000)),
            ("60k", (60_000, 60_000)),
            ("2KiB", (2048, 2048)),
            ("1MiB", (1_048_576, 1_048_576)),
            ("1mb", (1_000_000, 1_000_000)),
            ("1.5kb", (1500, 1500)),
            ("1,024", (1024, 1024)),
            ("512b", (512, 512)),
            ("10kb..200kb", (10_000, 200_000)),
            ("1KiB..1KiB", (1024, 1024)),
            ("0..1MiB", (0, 1_048_576)),
        ],
        ids=lambda v: v if isinstance(v, str) else None,
    )
    def test_parsed(self, text, expected):
        """(low, high) in bytes; a single size is a range of one."""
        assert build(body_size=text).body_size == expected

    @pytest.mark.parametrize(
        ("text", "words"),
        [("10zb", "unknown unit 'zb'"), ("kb", "not a number"), ("20kb..10kb", "larger to a smaller"), ("-1", "")],
        ids=["unit", "no-number", "reversed", "negative"],
    )
    def test_rejected(self, text, words):
        """ConfigError names --body-size and what is wrong."""
        with pytest.raises(ConfigError, match="--body-size") as e:
            build(body_size=text)
        assert words in str(e.value)


class TestThrottle:
    """--throttle: a rate per second, minute, hour or day, with an optional burst."""

    @pytest.mark.parametrize(
        ("text", "per_second", "burst"),
        [
            ("300/s", 300.0, None),
            ("300/sec", 300.0, None),
            ("6000/m", 100.0, None),
            ("6000/min", 100.0, None),
            ("1,000/hr", 1000 / 3600, None),
            ("3600/h", 1.0, None),
            ("86400/d", 1.0, None),
            ("2.5/s", 2.5, None),
            ("300/s,max_burst=20", 300.0, 20),
            ("300/s, max_burst = 5", 300.0, 5),
            ("1,000/hr,max_burst=1", 1000 / 3600, 1),
        ],
        ids=lambda v: v if isinstance(v, str) else None,
    )
    def test_parsed(self, text, per_second, burst):
        """The rate per second and the burst."""
        spec = build(throttle=text).throttle
        assert spec is not None
        assert spec.per_second == pytest.approx(per_second)
        assert spec.max_burst == burst

    def test_no_throttle(self):
        """Without --throttle there is no rate: as fast as the connections go."""
        assert build().throttle is None

    def test_burst_only_where_allowed(self):
        """max_burst belongs to trafficgen's throttle; a plain rate parser refuses it."""
        with pytest.raises(ValueError, match="max_burst is not allowed"):
            units.parse_rate("300/s,max_burst=2")


class TestHeaders:
    """--header "Name: value"."""

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("X-Campaign: spring", ("X-Campaign", "spring")),
            ("X-Campaign:spring", ("X-Campaign", "spring")),
            ("X-Url: http://lab.test:8080/x", ("X-Url", "http://lab.test:8080/x")),
            ("X-Empty:", ("X-Empty", "")),
            ("  X-Spaced  :  two words  ", ("X-Spaced", "two words")),
        ],
        ids=["space", "no-space", "colons-in-value", "empty-value", "trimmed"],
    )
    def test_parsed(self, text, expected):
        """(name, value), the value split at the first colon only."""
        assert build(headers=[text]).headers == (expected,)

    @pytest.mark.parametrize(
        "text",
        ["NoColon", ": no name", "Bad Name: x", "X-Break: a\r\nBcc: x@y.test"],
        ids=["colon", "name", "space", "crlf"],
    )
    def test_rejected(self, text):
        """Headers that would not be one header line are refused (no header injection)."""
        with pytest.raises(ConfigError, match="--header"):
            build(headers=[text])


class TestTarget:
    """--target HOST:PORT."""

    @pytest.mark.parametrize(
        ("text", "host", "port", "shown"),
        [
            ("127.0.0.1:2025", "127.0.0.1", 2025, "127.0.0.1:2025"),
            ("localhost:25", "localhost", 25, "localhost:25"),
            ("[::1]:2525", "::1", 2525, "[::1]:2525"),
            (" mta.lab.test:587 ", "mta.lab.test", 587, "mta.lab.test:587"),
        ],
        ids=["ipv4", "name", "ipv6", "spaces"],
    )
    def test_parsed(self, text, host, port, shown):
        """Host, port, and the target as reports show it."""
        config = build(target=text)
        assert (config.host, config.port, config.target) == (host, port, shown)


class TestDefaults:
    """What a run does when nothing is said."""

    def test_defaults(self):
        """KumoMTA's defaults: 127.0.0.1:2025, 10 connections per CPU, 60 s, the reserved suffix sink.test."""
        config = build()
        assert config.target == "127.0.0.1:2025"
        assert config.concurrency == 10 * (os.cpu_count() or 1)
        assert config.effective_duration == 60.0
        assert config.message_count is None
        assert config.domain_suffix == "sink.test"
        assert config.ehlo == "trafficgen.sink.test"
        assert config.body_size == (1024, 1024)
        assert config.recipients_per_message == 1
        assert config.pipelining
        assert not config.starttls
        assert not config.keep_going

    @pytest.mark.parametrize(
        ("count", "duration", "expected"),
        [(500, None, None), (500, 5.0, 5.0), (None, None, 60.0), (None, 2.0, 2.0)],
        ids=["count-alone", "count-and-duration", "neither", "duration-alone"],
    )
    def test_message_count_is_never_cut_by_the_default_duration(self, count, duration, expected):
        """--message-count alone has no deadline; a duration given with it still applies."""
        assert build(message_count=count, duration=duration).effective_duration == expected

    @pytest.mark.parametrize(
        ("suffix", "expected", "ehlo"),
        [("", "", "trafficgen.localdomain"), (".Lab.Test.", "lab.test", "trafficgen.lab.test")],
        ids=["disabled", "normalised"],
    )
    def test_suffix(self, suffix, expected, ehlo):
        """'' disables the suffix; dots around it are dropped."""
        config = build(domain_suffix=suffix)
        assert (config.domain_suffix, config.ehlo) == (expected, ehlo)
        assert config.domain_with_suffix("gmail.com") == ("gmail.com." + expected if expected else "gmail.com")

    def test_config_is_frozen_and_public_hides_the_password(self):
        """RunConfig cannot be changed after build(), and the report's copy leaves the password out."""
        config = build(auth_user="u", auth_password="hunter2")
        with pytest.raises(dataclasses.FrozenInstanceError):
            config.port = 1  # type: ignore[misc]
        assert "hunter2" not in repr(config.public())
        assert config.public()["auth_user"] == "u"

    def test_programmatic_config_matches_build(self):
        """RunConfig(...) built by a program holds the same defaults as build() for the same run."""
        built = build(run_id="same")
        direct = RunConfig(run_id="same", concurrency=built.concurrency, ehlo=built.ehlo)
        assert direct.public() == built.public()
