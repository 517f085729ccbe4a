"""Workload files (issue 12): `trafficgen --workload FILE.toml`, keys named as the options, options given winning
over the file, a bad key or value named with FILE:LINE, and the shipped example."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import ROOT
from harness.capture import CaptureServer
from harness.trafficgen import error_lines, run_report, run_trafficgen
from trafficgen.config import ConfigError, Weighted, build
from trafficgen.workload import keys, line_of

EXAMPLE = ROOT / "docs" / "workloads" / "production.toml"


def write(tmp_path: Path, text: str, name: str = "w.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


class TestKeys:
    def test_keys_are_the_options(self):
        """Every option but --workload is a key, named by its long flag without the dashes."""
        names = keys(__import__("trafficgen.config", fromlist=["RunConfig"]).RunConfig)
        assert {"domain", "body-size", "fail-if", "profile", "tenant", "source-address", "keep-going"} <= set(names)
        assert "workload" not in names
        assert "domains" not in names

    def test_values_as_toml_writes_them(self, tmp_path):
        """Strings as on the command line, numbers, booleans, lists, tables of weights, durations as text."""
        path = write(
            tmp_path,
            'target = "127.0.0.1:2600"\nconcurrency = 12\nduration = "2m"\ntimeout = 5\nkeep-going = true\n'
            'body_size = "10kb..20kb"\nfail-if = ["p99 < 2s", "errors == 0"]\n'
            'domain = { "gmail.com" = 67.4, "yahoo.com" = 5.9 }\n'
            "[tenant]\nacme = 2\nbeta = 1\n",
        )
        config = build(workload=path)
        assert (config.target, config.concurrency, config.duration, config.timeout) == ("127.0.0.1:2600", 12, 120, 5)
        assert config.keep_going
        assert config.body_size == (10_000, 20_000)
        assert config.domains == (Weighted("gmail.com", 67.4), Weighted("yahoo.com", 5.9))
        assert config.tenants == (Weighted("acme", 2.0), Weighted("beta", 1.0))
        assert [t.text for t in config.fail_if] == ["p99 < 2s", "errors == 0"]
        assert config.public()["workload"]["file"] == "w.toml"
        assert len(config.public()["workload"]["sha256"]) == 64

    def test_given_options_win(self, tmp_path):
        """An option given (by a program, the command line or a variable) wins over the file's."""
        path = write(tmp_path, 'concurrency = 12\nbody-size = "5kb"\n')
        config = build(workload=path, concurrency=3)
        assert (config.concurrency, config.body_size) == (3, (5000, 5000))

    def test_profile_as_a_list_and_body_file_beside_the_file(self, tmp_path):
        """A profile as a list of stages; body-file read relative to the workload file."""
        (tmp_path / "m.eml").write_bytes(b"Subject: x\n\nhello\n")
        path = write(tmp_path, 'profile = ["ramp 0..10/s 5s", "hold 10/s 5s"]\nbody-file = "m.eml"\n')
        config = build(workload=path)
        assert config.profile is not None
        assert config.profile.text == "ramp 0..10/s 5s, hold 10/s 5s"
        assert config.effective_duration == 10
        assert Path(config.body_file or "") == tmp_path / "m.eml"

    def test_line_of(self):
        """The line of a key, quoted or not, or of its [section]."""
        text = '# c\nconcurrency = 1\n"body-size" = "1kb"\n\n[domain]\n"a.test" = 1\n'
        assert (line_of(text, "concurrency"), line_of(text, "body-size"), line_of(text, "domain")) == (2, 3, 5)
        assert line_of(text, "missing") == 0


class TestBadFiles:
    """One line: FILE:LINE: KEY: what is wrong."""

    @pytest.mark.parametrize(
        ("text", "line", "words"),
        [
            ('target = "x:1"\nconcurency = 10\n', 2, "concurency: no such option (did you mean 'concurrency'?)"),
            ('\n\n[domain]\n"gmail.com" = -1\n', 3, "domain: 'gmail.com:-1': weight must be more than 0"),
            ('profile = "hold fast 10s"\n', 1, "profile: 'hold fast 10s': rate 'fast' needs a unit"),
            ('fail-if = ["p42 < 1s"]\n', 1, "fail-if: 'p42 < 1s': unknown metric 'p42'"),
            ("concurrency = 1.5\n", 1, "concurrency: 1.5 is not a whole number"),
            ('keep-going = "yes"\n', 1, "keep-going: write true or false"),
            ('workload = "other.toml"\n', 1, "workload: a workload file cannot name another workload"),
            ('[tenant]\nacme = 1\ncontent = "html"\n', 1, "write the sections last"),
            ('concurrency = 10\nbody-size = "10kb\n', 2, "not TOML"),
            ('source-address = "::2"\n', 1, "source-address: ::2 is not an address of this host"),
        ],
        ids=[
            "unknown-key",
            "weight",
            "profile",
            "threshold",
            "float-count",
            "flag",
            "nested",
            "section-swallows",
            "not-toml",
            "source",
        ],
    )
    def test_one_line_naming_file_line_and_key(self, tmp_path, text, line, words):
        """Through the command: `trafficgen: error: FILE:LINE: KEY: ...`, exit 2."""
        path = write(tmp_path, text)
        done = run_trafficgen("--workload", path)
        assert done.returncode == 2, done.stderr
        (message,) = error_lines(done)
        assert message.startswith(f"trafficgen: error: {path}:{line}: "), message
        assert words in message, message

    def test_missing_file(self, tmp_path):
        """A file that is not there: one line naming --workload."""
        with pytest.raises(ConfigError, match=r"--workload .*nope\.toml: no such file"):
            build(workload=str(tmp_path / "nope.toml"))


class TestExample:
    """docs/workloads/production.toml: the seeds' mix, and a run from it with the command line overriding it."""

    def test_example_builds(self):
        """The example holds the seeds' domain weights, 60 KB log-normal bodies, mixed content, a 17-minute
        profile and CI thresholds."""
        config = build(workload=str(EXAMPLE))
        weights = {d.name: d.weight for d in config.domains}
        assert (weights["gmail.com"], weights["hotmail.com"], weights["yahoo.com"]) == (67.4, 8.8, 5.9)
        assert config.body_size.median == 60_000
        assert config.content == "mixed"
        assert config.effective_duration == 17 * 60
        assert config.fail_if
        assert config.tenants
        assert config.campaigns

    @pytest.mark.slow
    def test_run_from_the_example(self):
        """--workload with --target, --concurrency, --processes, --profile and --body-size given: those win, the
        file gives the rest (domains, tenants, campaigns, sender domains, content, thresholds, keep-going)."""
        with CaptureServer() as server:
            report, _ = run_report(
                "--workload", str(EXAMPLE), "--target", server.target, "--concurrency", "8", "--processes", "1",
                "--profile", "hold 100/s 2s", "--body-size", "5kb", "--seed", "9",
            )  # fmt: skip
        config = report["config"]
        assert config["workload"]["file"] == "production.toml"
        assert (config["concurrency"], config["processes"], config["profile"]) == (8, 1, "hold 100/s 2s")
        assert config["keep_going"] is True
        assert config["content"] == "mixed"
        assert config["body_size"] == [5000, 5000]
        assert set(report["tenants"]) == {"retail", "newsletters", "transactional"}
        assert report["totals"]["accepted"] == 200 == len(server.messages)
        assert report["thresholds"]["passed"] is True
        assert len(report["thresholds"]["results"]) == 4

    def test_variable_wins_over_the_file(self, tmp_path):
        """A TRAFFICGEN_* variable wins over the file too; a flag the file sets stays set."""
        path = write(tmp_path, "concurrency = 12\nmessage-count = 4\nkeep-going = true\nquiet = true\n")
        with CaptureServer() as server:
            report, _ = run_report(
                "--workload", path, "--target", server.target, env={"TRAFFICGEN_CONCURRENCY": "2"}
            )  # fmt: skip
        assert report["config"]["concurrency"] == 2
        assert report["config"]["keep_going"] is True
        assert report["totals"]["attempted"] == 4
