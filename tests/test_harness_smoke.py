"""The harness itself: a sink started by the tests answers SMTP and HTTP on the ports it announced."""

import smtplib

from conftest import ACCEPT_ALL, running_sink


def test_sink_starts_on_free_ports_and_answers(tmp_path):
    """The ready line names real, distinct ports for SMTP and admin HTTP."""
    with running_sink(policy=ACCEPT_ALL, tmp=tmp_path) as sink:
        assert sink.port > 0
        assert sink.http
        assert not sink.http.endswith(f":{sink.port}")
        with smtplib.SMTP(*sink.address, timeout=10) as client:
            assert client.ehlo()[0] == 250
        assert sink.health()["status"] == "ok"
