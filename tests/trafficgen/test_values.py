"""One reading of every value (issue 27): the same text for --duration, --throttle and --body-size is accepted, as
the same value, or refused, in the same words, whether it comes on the command line, in an environment variable,
in a workload file or to build(); a value of the wrong type to build() is a ConfigError of one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.sink import running_sink
from harness.trafficgen import error_lines, run_report, run_trafficgen
from trafficgen.config import ConfigError, build

# (field, its long flag, its variable, its key in a workload file)
OPTIONS = {
    "duration": ("--duration", "TRAFFICGEN_DURATION", "duration"),
    "throttle": ("--throttle", "TRAFFICGEN_THROTTLE", "throttle"),
    "body_size": ("--body-size", "TRAFFICGEN_BODY_SIZE", "body-size"),
}
# What the report's `config` shows for each (the same keys whichever way the value came).
SHOWN = {
    "duration": ("duration_s",),
    "throttle": ("throttle_per_s", "max_burst"),
    "body_size": ("body_size", "body_size_median", "body_size_p99"),
}
ACCEPTED = {"duration": "1500ms", "throttle": "1200/m", "body_size": "2kb"}
REFUSED = [
    ("duration", "abc"),
    ("duration", "-5s"),
    ("duration", "0"),
    ("duration", "1 fortnight"),
    ("throttle", "fast"),
    ("throttle", "0/s"),
    ("body_size", "20zb"),
    ("body_size", "median=20kb"),
]


def workload(tmp_path: Path, key: str, value: str) -> str:
    path = tmp_path / "w.toml"
    path.write_text(f'{key} = "{value}"\n')
    return str(path)


def refusal(field: str, value: str) -> str:
    with pytest.raises(ConfigError) as caught:
        build(**{field: value})
    return str(caught.value)


@pytest.mark.parametrize(("field", "value"), REFUSED, ids=[f"{f}-{v}" for f, v in REFUSED])
def test_refused_the_same_way_everywhere(tmp_path, field, value):
    """build()'s words name the option; the command line prints them as the one error line, the variable
    too with its own name for the option's; the workload file prints them after FILE:LINE: KEY: (without the
    flag, which the key names)."""
    flag, env, key = OPTIONS[field]
    message = refusal(field, value)
    assert message.startswith(flag), message
    assert "\n" not in message

    done = run_trafficgen(flag, value)
    assert done.returncode == 2, done.stderr
    assert error_lines(done) == [f"trafficgen: error: {message}"]
    done = run_trafficgen(env={env: value})  # the line names the variable the value came from
    assert done.returncode == 2, done.stderr
    assert error_lines(done) == [f"trafficgen: error: {env}{message.removeprefix(flag)}"]

    path = workload(tmp_path, key, value)
    done = run_trafficgen("--workload", path)
    assert done.returncode == 2, done.stderr
    words = message.removeprefix(flag).removeprefix(":").strip()
    assert error_lines(done) == [f"trafficgen: error: {path}:1: {key}: {words}"]
    with pytest.raises(ConfigError) as caught:
        build(workload=path)
    assert str(caught.value) == f"{path}:1: {key}: {words}"


def test_duration_units_on_the_command_line_as_in_a_file(tmp_path):
    """`1m` is a minute to build() and to a workload file alike (the command line refused it before)."""
    assert build(duration="1m").duration == 60
    assert build(workload=workload(tmp_path, "duration", "1m")).duration == 60
    assert build(duration="90").duration == build(duration=90).duration == 90


@pytest.fixture(scope="module")
def sink(tmp_path_factory):
    with running_sink("--seed", "5", tmp=tmp_path_factory.mktemp("values")) as running:
        yield running


def test_accepted_the_same_way_everywhere(sink, tmp_path):
    """The same texts on the command line, in variables and in a workload file run with the values build() reads
    from them: the reports' `config` agree with build()'s, key for key."""
    expected = build(**ACCEPTED).public()
    keys = [k for field in ACCEPTED for k in SHOWN[field]]
    wanted = {k: expected[k] for k in keys}
    assert wanted["duration_s"] == 1.5
    assert wanted["throttle_per_s"] == 20
    assert wanted["body_size"] == [2000, 2000]

    base = ["--target", sink.target, "--message-count", "3", "--concurrency", "1", "--keep-going"]
    on_the_line = [arg for field, value in ACCEPTED.items() for arg in (OPTIONS[field][0], value)]
    in_variables = {OPTIONS[field][1]: value for field, value in ACCEPTED.items()}
    path = tmp_path / "w.toml"
    path.write_text("".join(f'{OPTIONS[field][2]} = "{value}"\n' for field, value in ACCEPTED.items()))
    runs = {
        "command line": run_report(*base, *on_the_line),
        "variables": run_report(*base, env=in_variables),
        "workload file": run_report(*base, "--workload", str(path)),
    }
    for way, (report, _) in runs.items():
        assert {k: report["config"][k] for k in keys} == wanted, way


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ({"duration": [60]}, "--duration [60] is not a duration"),
        ({"concurrency": 2.5}, "--concurrency 2.5 is not a whole number"),
        ({"keep_going": "yes"}, "--keep-going: write true or false, not 'yes'"),
        ({"throttle": {"rate": 5}}, "--throttle"),
        ({"attachment_share": True}, "--attachment-share True is not a percentage"),
    ],
    ids=["list-for-seconds", "float-for-count", "text-for-flag", "table-for-rate", "bool-for-percent"],
)
def test_wrong_type_to_build_is_one_config_error(given, words):
    """A program that gives a value of the wrong type gets a ConfigError naming the option, not a TypeError."""
    with pytest.raises(ConfigError) as caught:
        build(**given)
    message = str(caught.value)
    assert message.startswith(words), message
    assert "\n" not in message


def test_what_was_given_is_never_rewritten():
    """The options a run derives other values from keep what was given: the run's length, the inject URL and the
    recipients per message are derived beside them, and the report's `config.derived` says from what."""
    config = build(profile="hold 10/s 5s", duration="1m")
    assert config.duration == 60
    assert config.effective_duration == 5
    assert config.public()["duration_s"] == 5
    assert config.public()["derived"]["duration_s"] == {"given": 60, "from": ["--profile"]}

    config = build(message_count=5)
    assert config.duration is None
    assert config.effective_duration is None
    assert config.public()["derived"] == {"duration_s": {"given": None, "from": ["--message-count"]}}

    config = build(http=True, target="http://127.0.0.1:8000/", http_batch_size=4)
    assert config.target == "http://127.0.0.1:8000/"
    assert config.http_url == "http://127.0.0.1:8000/api/inject/v1"
    assert config.recipients_per_message == 1
    assert config.effective_recipients_per_message == 4
    assert config.public()["derived"]["recipients_per_message"] == {"given": 1, "from": ["--http-batch-size"]}
