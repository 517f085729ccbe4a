"""What the sink has learnt, seen and reset: GET /state, DELETE /state, /health's `state`, the state gauges of
/metrics, and --state keep across a restart. Real sinks over sockets, with one worker and with two (the state then
lives in the supervisor and every worker's share is in it)."""

from __future__ import annotations

import json
import signal
import smtplib
import time

import pytest

from harness.metrics import Metrics
from harness.sink import one_line, run_smartsink, running_sink, start_sink, wait_for, write_policy
from harness.smtp import SENDER, close, connect, connected, send, transaction

# blocked.test defers everything at RCPT and escalates after 3 deferrals in a minute to its block list for 10
# minutes; rated.test takes 5 messages a minute per client; grey.test greylists; held.test counts transactions.
POLICY = """
[default]
bounce = 0
defer = 0

[domain."blocked.test"]
defer = 100
reject_at = "rcpt"
per = "ip"
escalate = { after = 3, within = "1m", to = "block", for = "10m" }

[domain."rated.test"]
rate = "5/min"
per = "ip"

[domain."grey.test"]
greylist = "5m"

[domain."held.test"]
max_concurrency = 2

[[defer."blocked.test"]]
code = 451
msg = "4.7.650 blocked.test: slow down"

[[block."blocked.test"]]
code = 550
msg = "5.7.1 blocked.test: you are on the block list"
"""
DEFERRED = (451, "4.7.650 blocked.test: slow down")
BLOCKED = (550, "5.7.1 blocked.test: you are on the block list")


def rcpt(sink, recipient: str) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    """The reply to RCPT TO:<recipient> on a fresh connection."""
    with connected(sink) as client:
        client.mail(SENDER)
        code, text = client.rcpt(recipient)
        return code, text.decode()


def block(sink) -> None:  # type: ignore[no-untyped-def]
    """Three deferrals of blocked.test: this client is then refused outright."""
    for _ in range(3):
        assert rcpt(sink, "a@blocked.test") == DEFERRED
    assert rcpt(sink, "a@blocked.test") == BLOCKED


def delete(sink, query: str = "") -> dict:  # type: ignore[no-untyped-def, type-arg]
    status, body = sink.request("DELETE", f"/state{query}")
    assert status == 200, body
    return json.loads(body)


@pytest.fixture(scope="module", params=["1", "2"], ids=["one-worker", "two-workers"])
def shared(request, tmp_path_factory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("state")
    with running_sink("--workers", request.param, policy=POLICY, tmp=tmp) as running:
        yield running


@pytest.fixture
def sink(shared):  # type: ignore[no-untyped-def]
    """The module's sink, as a new one: what earlier tests taught it forgotten (DELETE /state itself), no
    override, no connection open."""
    delete(shared)
    assert shared.request("DELETE", "/policy/overrides")[0] == 200
    wait_for(lambda: shared.state()["connections"]["count"] == 0, what="earlier tests' connections to close")
    return shared


class TestSee:
    def test_a_blocked_client_and_until_when(self, sink):
        """After the escalation, /state names the domain, the client and the end of the block (10 min from the
        block), /health counts it and /metrics has it by domain."""
        block(sink)
        blocked_at = time.time()
        state = sink.state()
        assert state["blocked"]["count"] == 1
        (entry,) = state["blocked"]["entries"]
        assert (entry["domain"], entry["client"]) == ("blocked.test", "127.0.0.1")
        assert blocked_at - 30 < entry["until"] - 600 <= blocked_at  # set by the third deferral, before now
        assert 570 < entry["left_s"] <= 600
        assert sink.health()["state"]["blocked"] == 1
        assert Metrics.scrape(sink).value("smartsink_state_blocked_clients", domain="blocked.test") == 1

    def test_deferrals_building_up(self, sink):
        """Two deferrals of three: not blocked yet, and /state says how far along the client is."""
        for _ in range(2):
            assert rcpt(sink, "a@blocked.test") == DEFERRED
        state = sink.state()
        assert state["blocked"]["count"] == 0
        assert state["deferrals"]["entries"] == [
            {
                "domain": "blocked.test",
                "client": "127.0.0.1",
                "mx": None,
                "deferrals": 2,
                "escalate_after": 3,
                "within_s": 60.0,
            }
        ]

    def test_rate_bucket_level(self, sink):
        """Two messages of rated.test's 5/min: the client's bucket holds 3 (and refills at 1/12 a second)."""
        with connected(sink) as client:
            for _ in range(2):
                assert transaction(client, ["x@rated.test"])[0] == 250
        (bucket,) = sink.state()["rate_buckets"]["entries"]
        assert (bucket["domain"], bucket["client"], bucket["capacity"]) == ("rated.test", "127.0.0.1", 5)
        assert bucket["refill_per_s"] == pytest.approx(5 / 60)
        assert 3 <= bucket["tokens"] < 3 + 30 * 5 / 60  # 30 s: far longer than a loaded machine takes here
        metrics = Metrics.scrape(sink)
        assert metrics.value("smartsink_state_rate_capacity", domain="rated.test") == 5
        assert 3 <= metrics.value("smartsink_state_rate_tokens", domain="rated.test") < 5

    def test_greylist_entries_bounded_by_limit(self, sink):
        """Five greylisted triplets: counted as five, listed newest first, at most ?limit= of them."""
        for n in range(5):
            assert rcpt(sink, f"user{n}@grey.test")[0] == 451
        state = sink.state("?limit=2")
        assert state["greylist"]["count"] == 5
        assert [e["recipient"] for e in state["greylist"]["entries"]] == ["user4@grey.test", "user3@grey.test"]
        assert state["greylist"]["entries"][0]["client"] == "127.0.0.1"
        assert state["greylist"]["entries"][0]["sender"] == SENDER
        assert Metrics.scrape(sink).value("smartsink_state_greylist_entries") == 5

    def test_connections_and_transactions_in_flight(self, sink):
        """Three open connections, one of them in a held.test transaction: /state counts them per client and the
        transaction per domain, summed over the workers; closed, they are gone."""
        clients = [connect(sink) for _ in range(3)]
        try:
            clients[0].mail(SENDER)
            assert clients[0].rcpt("x@held.test")[0] == 250
            state = wait_for(lambda: (s := sink.state())["connections"]["count"] == 3 and s, what="3 connections")
            assert state["connections"]["clients"] == [{"client": "127.0.0.1", "open": 3}]
            assert state["transactions"]["entries"] == [
                {"domain": "held.test", "client": None, "mx": None, "in_flight": 1}
            ]
            assert state["connections"]["mx"] == []  # not meant for an MX of the sink's DNS (test_redirect.py)
        finally:
            for client in clients:
                close(client)
        wait_for(lambda: sink.state()["connections"]["count"] == 0, what="the connections to close")
        assert sink.state()["transactions"]["count"] == 0

    def test_override_windows_shown(self, sink):
        """The admin API's override windows are part of what /state shows."""
        body = json.dumps({"domain": "rated.test", "defer": 100, "length": "5m"}).encode()
        status, _ = post(sink, "/policy/overrides", body)
        assert status == 201
        (window,) = sink.state()["overrides"]
        assert window["domain"] == "rated.test"
        assert window["settings"] == {"defer": 100}


def post(sink, path: str, body: bytes) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"http://{sink.http}{path}", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class TestReset:
    def test_delete_forgets_everything_learnt(self, sink):
        """DELETE /state: the block is lifted (the next RCPT is deferred again, not refused), the bucket and the
        greylist are forgotten; it says how much it removed."""
        block(sink)
        assert rcpt(sink, "u@grey.test")[0] == 451
        assert send(sink, ["x@rated.test"])[0] == 250
        resets = sink.health()["state"]["resets"]
        counted = Metrics.scrape(sink).value("smartsink_state_resets_total")
        answer = delete(sink)
        assert answer["removed"] == {"reputations": 1, "rate_buckets": 1, "greylist": 1}
        state = sink.state()
        assert [state[k]["count"] for k in ("blocked", "deferrals", "rate_buckets", "greylist")] == [0, 0, 0, 0]
        assert rcpt(sink, "a@blocked.test") == DEFERRED
        assert sink.health()["state"]["resets"] == resets + 1
        assert Metrics.scrape(sink).value("smartsink_state_resets_total") == counted + 1

    def test_delete_by_domain(self, sink):
        """?domain=blocked.test lifts that block and leaves rated.test's bucket."""
        block(sink)
        assert send(sink, ["x@rated.test"])[0] == 250
        answer = delete(sink, "?domain=blocked.test")
        assert answer == {
            "domain": "blocked.test",
            "address": None,
            "removed": {"reputations": 1, "rate_buckets": 0, "greylist": 0},
        }
        assert sink.state()["rate_buckets"]["count"] == 1
        assert rcpt(sink, "a@blocked.test") == DEFERRED

    @pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.0/24"], ids=["address", "network"])
    def test_delete_by_address(self, sink, address):
        """?address= (a client, or a network holding it) forgets that client's block, bucket and greylist."""
        block(sink)
        assert rcpt(sink, "u@grey.test.sink.test")[0] == 451  # the suffix stripped, as the policy lookup does
        answer = delete(sink, f"?address={address}")
        assert answer["removed"] == {"reputations": 1, "rate_buckets": 0, "greylist": 1}
        assert delete(sink, "?address=127.0.0.2&domain=grey.test")["removed"]["greylist"] == 0

    @pytest.mark.parametrize(
        ("method", "query", "words"),
        [
            ("DELETE", "?domain=not%20a%20domain", "domain must be a domain name"),
            ("DELETE", "?address=localhost", "address must be an IP address or network"),
            ("DELETE", "?everything=1", "DELETE /state takes ?domain=NAME and ?address=IP, not 'everything'"),
            ("GET", "?limit=0", "limit must be a whole number from 1 to 1000"),
            ("GET", "?limit=many", "limit must be a whole number from 1 to 1000"),
            ("GET", "?domain=x.test", "GET /state takes ?limit=N, not 'domain'"),
        ],
        ids=["bad-domain", "bad-address", "unknown-key", "limit-0", "limit-word", "get-filter"],
    )
    def test_bad_input_is_400_with_one_error(self, sink, method, query, words):
        """Hostile input to /state: 400 with the problem named; nothing is forgotten and the sink serves on."""
        block(sink)
        status, body = sink.request(method, f"/state{query}")
        assert status == 400
        assert words in json.loads(body)["error"]
        assert sink.state()["blocked"]["count"] == 1
        assert rcpt(sink, "a@blocked.test") == BLOCKED


class TestKeep:
    def test_keep_carries_a_block_across_a_restart(self, tmp_path):
        """--state keep: the block written at a clean stop is in force after the restart, its end unchanged; the
        ready line says how much was read."""
        policy = write_policy(tmp_path, POLICY)
        kept = tmp_path / "state.json"
        args = ("--policy", str(policy), "--state", "keep", "--state-file", str(kept))
        first = start_sink(*args)
        try:
            block(first)
            (before,) = first.state()["blocked"]["entries"]
        finally:
            assert first.stop(signal.SIGTERM) == 0
        assert json.loads(kept.read_text())["reputations"]
        with running_sink(*args) as again:
            assert f"state kept in {kept} (1 entries read)" in again.log()
            (after,) = again.state()["blocked"]["entries"]
            assert after["until"] == pytest.approx(before["until"], abs=0.01)
            assert rcpt(again, "a@blocked.test") == BLOCKED

    def test_fresh_forgets_at_a_restart(self, tmp_path):
        """--state fresh (the default): a restarted sink knows nothing, and writes no file."""
        policy = write_policy(tmp_path, POLICY)
        with running_sink("--policy", str(policy), cwd=tmp_path) as first:
            block(first)
        with running_sink("--policy", str(policy), cwd=tmp_path) as again:
            assert "state fresh" in again.log()
            assert rcpt(again, "a@blocked.test") == DEFERRED
        assert not (tmp_path / "smartsink-state.json").exists()

    @pytest.mark.parametrize(
        ("content", "words"),
        [("{not json", "not a smartsink state file"), ('{"format": 99}', "not a smartsink state file")],
        ids=["not-json", "other-format"],
    )
    def test_an_unreadable_state_file_is_one_line(self, tmp_path, content, words):
        """A state file that is not one: exit 2 and one line naming it, never a traceback or a silent fresh start."""
        kept = tmp_path / "state.json"
        kept.write_text(content)
        policy = write_policy(tmp_path, POLICY)
        done = run_smartsink("--policy", str(policy), "--listen", "127.0.0.1:0", "--http", "off", "--state", "keep",
                             "--state-file", str(kept))  # fmt: skip
        assert done.returncode == 2
        line = one_line(done.stderr)
        assert line.startswith(f"smartsink: error: --state-file {kept}: ")
        assert words in line


def test_state_of_a_client_that_vanished_mid_transaction(tmp_path):
    """A client cut off in the middle of a held.test transaction gives its slot back: /state shows none."""
    with running_sink(policy=POLICY, tmp=tmp_path) as sink:
        client = smtplib.SMTP(*sink.address, timeout=10)
        client.ehlo("client.test")
        client.mail(SENDER)
        assert client.rcpt("x@held.test")[0] == 250
        wait_for(lambda: sink.state()["transactions"]["count"] == 1, what="the transaction counted")
        client.close()  # no QUIT: the connection just goes
        wait_for(lambda: sink.state()["transactions"]["count"] == 0, what="the slot given back")
