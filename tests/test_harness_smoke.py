"""The harness itself: a sink started by the tests answers SMTP and HTTP on the ports it announced, and the tools
the harness starts never see the test run's own TRAFFICGEN_* and SMARTSINK_* variables, and a private Postfix
starts whatever took its port meanwhile."""

import smtplib
import socket

from harness.capture import CaptureServer
from harness.net import free_port
from harness.policies import ACCEPT_ALL
from harness.postfix import Postfix, needs_postfix
from harness.sink import running_sink
from harness.trafficgen import run_report


def test_sink_starts_on_free_ports_and_answers(tmp_path):
    """The ready line names real, distinct ports for SMTP and admin HTTP."""
    with running_sink(policy=ACCEPT_ALL, tmp=tmp_path) as sink:
        assert sink.port > 0
        assert sink.http
        assert not sink.http.endswith(f":{sink.port}")
        with smtplib.SMTP(*sink.address, timeout=10) as client:
            assert client.ehlo()[0] == 250
        assert sink.health()["status"] == "ok"


def test_the_test_runs_variables_do_not_leak(tmp_path, monkeypatch):
    """With variables in the test run's environment that would break both tools, the sink starts with one worker
    and trafficgen sends what it is told to."""
    for name, value in {"SMARTSINK_WORKERS": "0", "TRAFFICGEN_CONCURRENCY": "lots", "TRAFFICGEN_SEED": "x"}.items():
        monkeypatch.setenv(name, value)
    with running_sink(policy=ACCEPT_ALL, tmp=tmp_path) as sink:
        assert sink.health()["workers"]["configured"] == 1
    with CaptureServer() as server:
        report, _ = run_report("--target", server.target, "--message-count", "3")
    assert report["totals"]["accepted"] == 3 == len(server.messages)


@needs_postfix
def test_postfix_whose_port_was_taken_starts_on_another():
    """Another test binds the port a private Postfix was given before Postfix does (the suite shares the machine):
    it starts on another port, and its greeting is its own."""
    postfix = Postfix(free_port())
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", postfix.port))
        taken.listen()
        try:
            postfix.start()
            assert postfix.port != taken.getsockname()[1]
            with smtplib.SMTP("127.0.0.1", postfix.port, timeout=10) as client:
                assert client.ehlo()[0] == 250
        finally:
            postfix.stop()
