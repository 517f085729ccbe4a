"""Each option declared once (mailload.options): the config classes, --help, the report and docs/cli.md agree."""

from __future__ import annotations

import dataclasses
import re

import pytest

from harness import ROOT
from harness.sink import run_smartsink
from harness.trafficgen import run_trafficgen
from mailload import options
from scripts import cli_tables
from smartsink import __version__ as sink_version
from smartsink.config import SinkConfig
from trafficgen import __version__ as tg_version
from trafficgen.config import RunConfig, build

TOOLS = [("trafficgen", RunConfig, "TRAFFICGEN"), ("smartsink", SinkConfig, "SMARTSINK")]
NOT_OPTIONS = {"max_recipients"}  # fields a run needs that no one sets on the command line


def help_text(tool: str, *args: str) -> str:
    run = run_trafficgen if tool == "trafficgen" else run_smartsink
    done = run(*args, env={"COLUMNS": "250"}, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize(("tool", "config", "prefix"), TOOLS, ids=[t[0] for t in TOOLS])
class TestDeclaredOnce:
    def test_every_field_is_an_option(self, tool, config, prefix):
        """Every field of the config is declared as an option (but the few that are not for users)."""
        names = {f.name for f in dataclasses.fields(config)}
        assert names - {d.name for d in options.declared(config)} == NOT_OPTIONS & names

    def test_help_shows_every_option_with_its_variable_and_panel(self, tool, config, prefix):
        """-h lists each declared flag, its variable and its panel, and no type names for metavars."""
        text = help_text(tool, "-h")
        for item in options.declared(config):
            assert re.search(rf"│ {re.escape(item.long_flag)}\b", text), item.long_flag
            assert f"[env var: {item.envvar(prefix)}]" in text, item.long_flag
            assert f"─ {item.option.panel} ─" in text
        for machine_word in ("TEXT", "INTEGER", "FLOAT", "<list", "<str"):
            assert machine_word not in text

    def test_help_lists_nothing_undeclared(self, tool, config, prefix):
        """Every flag --help shows is declared (or one of the actions: help, version, check)."""
        shown = set(re.findall(r"^│ (--[a-z-]+)", help_text(tool, "--help"), re.M))
        declared = {item.long_flag for item in options.declared(config)}
        assert shown - declared <= {"--help", "--version", "--check"}

    def test_docs_table_is_current(self, tool, config, prefix):
        """docs/cli.md holds the table the declarations make (`make docs`, scripts/cli_tables.py, rewrites it)."""
        text = (ROOT / "docs" / "cli.md").read_text()
        assert options.reference_table(config, prefix) in text
        assert cli_tables.rewrite(text) == text


@pytest.mark.parametrize(("tool", "version"), [("trafficgen", tg_version), ("smartsink", sink_version)])
def test_version(tool, version):
    """--version prints the tool and its version, and exits 0."""
    assert help_text(tool, "--version").strip() == f"{tool} {version}"


class TestReport:
    def test_report_shows_the_options_not_hidden(self):
        """The report's config holds every option but the hidden ones (the password, paths written)."""
        shown = build(auth_user="u", auth_password="secret", json_path="-").public()
        assert "secret" not in repr(shown)
        assert "auth_password" not in shown
        assert "json_path" not in shown
        for item in options.declared(RunConfig):
            if item.option.report is None:
                assert item.name in shown, item.name

    def test_unknown_option_is_refused(self):
        """A program that passes a name no option has gets a TypeError naming it, not a silent default."""
        with pytest.raises(TypeError, match="no such option: bodysize"):
            build(bodysize="1kb")

    def test_option_errors_name_the_flag(self):
        """A parser's message without the flag gets it in front."""
        with pytest.raises(ValueError, match=r"^--connect-rate: "):
            build(connect_rate="fast")
