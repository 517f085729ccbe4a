"""The redirect mode, really done, inside network namespaces these tests create (and delete).

- The iptables recipe: outgoing port 25 DNATed to the sink; smtplib and trafficgen mail 127.0.0.9:25 and reach the
  sink, which answers with its policy and counts the connections as redirected (SO_ORIGINAL_DST).
- The whole recipe with an MTA that routes for itself: a Postfix with no relayhost and no transport map, its
  resolver the sink's DNS (`ip netns exec` gives it /etc/netns/NAME/resolv.conf), the MX network's port 25 DNATed
  to the sink. trafficgen sends a run over the seeds' domains with the default suffix; Postfix looks up each
  domain's MX, delivers to each provider's MX hosts, and every message is reconciled.
- The sink listening on the MX addresses itself (no NAT): the local address a connection reached names its MX, and
  a `per = "mx"` connection cap holds for the whole sink across workers.
"""

from __future__ import annotations

import collections
import ipaddress
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from harness.metrics import Metrics
from harness.net import Namespace, namespace, netns_unusable
from harness.policies import ACCEPT_ALL
from harness.postfix import needs_postfix, running_postfix
from harness.sink import running_sink, wait_for
from harness.trafficgen import run_report, run_trafficgen
from smartsink.config import DEFAULT_DNS_NETWORK
from smartsink.dns.table import shipped

pytestmark = pytest.mark.netns

POLICY = """
[default]
bounce = 0
defer = 0

[[bounce."gmail.com"]]
code = 550
msg = "5.1.1 The email account that you tried to reach does not exist."
"""
SUFFIX = "sink.test"
MX_NETWORK = str(ipaddress.ip_network(DEFAULT_DNS_NETWORK))  # the sink's default --dns-network


@pytest.fixture
def ns() -> Iterator[Namespace]:
    reason = netns_unusable()
    if reason:
        pytest.skip(reason)
    with namespace() as made:
        yield made


def redirect(ns: Namespace, destination: str, target: str) -> list[str]:
    """Add the DNAT rule for port 25 of `destination` (an address or a network) to `target`; the rule, to delete."""
    rule = ["-p", "tcp", "-d", destination, "--dport", "25", "-j", "DNAT", "--to-destination", target]
    added = ns.run("iptables", "-t", "nat", "-A", "OUTPUT", *rule)
    if added.returncode != 0:
        pytest.skip(f"iptables cannot add a NAT rule here: {added.stderr.strip()}")
    return rule


SMTPLIB = """
import json, smtplib
message = b"Subject: x\\r\\n\\r\\nhi\\r\\n"
with smtplib.SMTP("127.0.0.9", 25, timeout=10) as client:
    accepted = client.sendmail("me@example.test", ["user@example.com"], message) == {}
    try:
        client.sendmail("me@example.test", ["permfail@gmail.com"], message)
        refused = None
    except smtplib.SMTPDataError as e:
        refused = [e.smtp_code, e.smtp_error.decode()]
print(json.dumps({"accepted": accepted, "refused": refused}))
"""


def test_port_25_redirected_to_the_sink(ns, tmp_path):
    """With the DNAT rule, smtplib and trafficgen mail to 127.0.0.9:25 reach the sink and get its answers."""
    with running_sink("--seed", "1", policy=POLICY, tmp=tmp_path, prefix=ns.prefix) as sink:
        rule = redirect(ns, "127.0.0.9", sink.target)

        mailed = ns.run(sys.executable, "-c", SMTPLIB)
        assert mailed.returncode == 0, mailed.stderr
        answers = json.loads(mailed.stdout)
        assert answers["accepted"] is True
        assert answers["refused"] == [550, "5.1.1 The email account that you tried to reach does not exist."]

        generated = run_trafficgen(
            "--target",
            "127.0.0.9:25",
            "--message-count",
            "40",
            "--concurrency",
            "4",
            "--domain",
            "example.com",
            "--quiet",
            "--json",
            "-",
            argv0=[*ns.prefix, sys.executable, "-m", "trafficgen"],
            timeout=60,
        )
        assert generated.returncode == 0, generated.stderr
        report = json.loads(generated.stdout)
        assert report["totals"]["accepted"] == 40
        assert report["target"] == "127.0.0.9:25"

        assert (
            Metrics.scrape(sink).value("smartsink_redirected_connections_total") == 1 + report["connections"]["opened"]
        )
        assert "meant for 127.0.0.9:25" in sink.log()

        # Without the rule, nothing listens on 127.0.0.9:25 in the namespace.
        ns.check("iptables", "-t", "nat", "-D", "OUTPUT", *rule)
        assert ns.run(sys.executable, "-c", SMTPLIB).returncode != 0


# --- an MTA that routes by MX itself -------------------------------------------------------------------------------

# The seeds' domains, with the sets they share in reality: Gmail's with googlemail.com, AOL's with verizon.net,
# Apple's between icloud.com and me.com, AT&T's between att.net, sbcglobal.net and bellsouth.net; and one domain the
# table does not name, which resolves to one MX named after itself.
DOMAINS = (
    "gmail.com",
    "googlemail.com",
    "yahoo.com",
    "hotmail.com",
    "outlook.com",
    "aol.com",
    "verizon.net",
    "icloud.com",
    "me.com",
    "att.net",
    "sbcglobal.net",
    "bellsouth.net",
    "comcast.net",
    "example.com",
)
SHARED_SETS = (
    ("gmail.com", "googlemail.com"),
    ("aol.com", "verizon.net"),
    ("icloud.com", "me.com"),
    ("att.net", "sbcglobal.net", "bellsouth.net"),
)
UNLISTED = "example.com"
MESSAGES = 280
# Postfix retries at once in a test (harness.postfix), so delivery takes seconds; this is the most it may take on a
# loaded machine, and trafficgen stops asking as soon as nothing is pending.
RECONCILE_WAIT = 120


def bare(host: str) -> str:
    """An MX host as the table names it: the name Postfix logged without the suffix the sink's DNS put on it."""
    assert host.endswith("." + SUFFIX), host
    return host[: -len(SUFFIX) - 1]


@needs_postfix
@pytest.mark.slow
class TestPostfixRoutesByMx:
    """One run of 280 messages over 14 domains: Postfix resolves each domain's MX in the sink's DNS and delivers
    to the providers' MX hosts, which the redirect brings to the sink."""

    @pytest.fixture(scope="class")
    @classmethod
    def scene(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
        reason = netns_unusable()
        if reason:
            pytest.skip(reason)
        tmp = tmp_path_factory.mktemp("mx")
        # The sink's DNS on port 53 of the namespace's loopback: resolv.conf names no port.
        with (
            namespace(resolv_conf="nameserver 127.0.0.1\n") as ns,
            running_sink("--dns", "127.0.0.1:53", policy=ACCEPT_ALL, tmp=tmp, prefix=ns.prefix) as sink,
        ):
            # A real MTA host reaches the MX network through its default route; this namespace has none, so the
            # network is made local here. The DNAT rule is the one the docs give.
            ns.check("ip", "route", "add", "local", MX_NETWORK, "dev", "lo")
            redirect(ns, MX_NETWORK, sink.target)
            with running_postfix(None, ns, default_process_limit="20") as postfix:
                report, _ = run_report(
                    "--target",
                    postfix.target,
                    "--message-count",
                    str(MESSAGES),
                    "--concurrency",
                    "8",
                    "--seed",
                    "22",
                    *(a for d in DOMAINS for a in ("--domain", d)),
                    "--reconcile",
                    f"http://{sink.http}",
                    "--reconcile-wait",
                    str(RECONCILE_WAIT),
                    argv0=[*ns.prefix, sys.executable, "-m", "trafficgen"],
                    timeout=RECONCILE_WAIT + 120,
                )
                yield {
                    "report": report,
                    "relays": postfix.relays("sent"),
                    "log": postfix.log(),
                    "metrics": Metrics.scrape(sink),
                }

    def test_every_message_is_delivered_and_reconciled(self, scene):
        """Postfix took all 280 and delivered each once: the sink's ledger matches exactly."""
        report = scene["report"]
        assert report["totals"]["accepted"] == MESSAGES
        reconciled = report["reconciliation"]["recipients"]
        assert reconciled["delivered"] == MESSAGES
        assert reconciled["lost"] == reconciled["duplicated"] == reconciled["pending"] == 0
        assert report["reconciliation"]["messages"]["delivered"] == MESSAGES
        assert len(scene["relays"]) == MESSAGES, "one status=sent line a message"
        assert "Host or domain name not found" not in scene["log"]

    def test_postfix_delivers_to_each_providers_mx_hosts(self, scene):
        """Each domain's mail went to hosts of its own MX set under the suffix; an unlisted domain to itself."""
        table = shipped()
        seen = collections.defaultdict(set)
        for domain, host, _ in scene["relays"]:
            assert domain.endswith("." + SUFFIX)
            seen[bare(domain)].add(bare(host))
        assert set(seen) == set(DOMAINS), "every domain got mail"
        for domain, hosts in seen.items():
            exchanges = table.exchanges(domain)
            expected = {e.host for e in exchanges} if exchanges else {domain}
            assert hosts <= expected, (domain, hosts)
        # Gmail's most preferred MX (5) is up, so Postfix uses it alone, as it does in production.
        assert seen["gmail.com"] == seen["googlemail.com"] == {"gmail-smtp-in.l.google.com"}
        assert f"relay=gmail-smtp-in.l.google.com.{SUFFIX}[" in scene["log"]
        assert seen[UNLISTED] == {UNLISTED}

    def test_domains_of_a_shared_set_share_its_hosts_and_addresses(self, scene):
        """Domains that share an MX set in reality reach the same hosts at the same addresses; other providers'
        hosts have addresses of their own."""
        addresses = collections.defaultdict(set)
        by_domain = collections.defaultdict(set)
        for domain, host, address in scene["relays"]:
            addresses[host].add(address)
            by_domain[bare(domain)].add(address)
        assert all(len(found) == 1 for found in addresses.values()), "one address per MX host"
        assert len({next(iter(a)) for a in addresses.values()}) == len(addresses), "distinct hosts, distinct addresses"
        network = ipaddress.ip_network(MX_NETWORK)
        assert all(ipaddress.ip_address(a) in network for found in addresses.values() for a in found)
        table = shipped()
        for group in SHARED_SETS:
            sets = {table.exchanges(d) for d in group}
            assert len(sets) == 1, f"{group} share one MX set in the table"
            reached = set().union(*(by_domain[d] for d in group))
            hosts = {f"{e.host}.{SUFFIX}" for e in next(iter(sets))}
            assert reached <= set().union(*(addresses[h] for h in hosts if h in addresses))
        providers = [by_domain[group[0]] for group in SHARED_SETS]
        assert all(a.isdisjoint(b) for i, a in enumerate(providers) for b in providers[i + 1 :])

    def test_the_sink_counts_each_mx_as_postfix_logged_it(self, scene):
        """smartsink_mx_messages_total by MX host equals Postfix's deliveries to that host (an unlisted domain's
        MX counts as "other"); every host seen had connections."""
        metrics: Metrics = scene["metrics"]
        logged = collections.Counter(
            "other" if bare(domain) == UNLISTED else bare(host) for domain, host, _ in scene["relays"]
        )
        counted = {
            mx: metrics.value("smartsink_mx_messages_total", mx=mx, outcome="accepted")
            for mx in metrics.label_values("smartsink_mx_messages_total", "mx")
        }
        assert counted == logged
        for mx in logged:
            assert metrics.value("smartsink_mx_connections_total", mx=mx) >= 1
        sets = {shipped().exchanges(d) for d in DOMAINS} - {None}
        hosts_of_sets = sorted(len(s) for s in sets)
        sample = next(line for line in scene["log"].splitlines() if "relay=gmail-smtp-in" in line)
        print(
            f"\nPostfix routed by MX: {sum(logged.values())} delivered, {len(sets) + 1} MX sets "
            f"({hosts_of_sets} hosts, and one for {UNLISTED}), per MX: {dict(sorted(logged.items()))}\n{sample}"
        )

    def test_postfix_asked_the_sinks_dns(self, scene):
        """The MX and A lookups were answered by the sink's DNS (its query counters)."""
        metrics: Metrics = scene["metrics"]
        assert metrics.value("smartsink_dns_queries_total", type="MX", rcode="NOERROR") >= len(DOMAINS)
        assert metrics.value("smartsink_dns_queries_total", type="A", rcode="NOERROR") >= 1


# --- the sink on the MX addresses themselves -----------------------------------------------------------------------

HOLD = """
import json, socket, sys
import dns.resolver

host, port, dns_port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
resolver = dns.resolver.Resolver(configure=False)
resolver.nameservers, resolver.port = ["127.0.0.1"], dns_port
held, greetings = [], {}
for name in ("gmail-smtp-in.l.google.com.sink.test", "mta5.am0.yahoodns.net.sink.test"):
    address = resolver.resolve(name, "A")[0].address
    replies = []
    for _ in range(count if name.startswith("gmail") else 1):
        s = socket.create_connection((address, port), timeout=10)
        held.append(s)
        replies.append(s.recv(512).decode()[:3])
    greetings[name] = replies
print(json.dumps(greetings))
"""

PER_MX = """
[default]
bounce = 0
defer = 0

[listener]
max_connections = 2
per = "mx"
"""


def test_per_mx_connection_cap_on_the_mx_addresses_across_workers(ns, tmp_path):
    """The sink listening on the MX addresses (no NAT): the local address each connection reached names its MX;
    `per = "mx"` caps connections per MX host for the whole sink, whichever of two workers took them."""
    ns.check("ip", "route", "add", "local", MX_NETWORK, "dev", "lo")
    args = ("--listen", "0.0.0.0:0", "--dns", "127.0.0.1:0", "--workers", "2", "--log-level", "debug")
    with running_sink(*args, policy=PER_MX, tmp=tmp_path, prefix=ns.prefix) as sink:
        assert sink.dns is not None
        held = ns.run(sys.executable, "-c", HOLD, "127.0.0.1", str(sink.port), str(sink.dns[1]), "6")
        assert held.returncode == 0, held.stderr
        greetings = json.loads(held.stdout)
        # Six connections to Gmail's MX: two in (the cap), four refused at the greeting; Yahoo's MX has its own.
        assert sorted(greetings["gmail-smtp-in.l.google.com.sink.test"]) == ["220"] * 2 + ["421"] * 4
        assert greetings["mta5.am0.yahoodns.net.sink.test"] == ["220"]
        metrics = Metrics.scrape(sink)
        assert metrics.value("smartsink_mx_connections_total", mx="gmail-smtp-in.l.google.com") == 6
        assert metrics.value("smartsink_mx_connections_total", mx="mta5.am0.yahoodns.net") == 1
        assert metrics.value("smartsink_redirected_connections_total") == 0, "no NAT here"
        assert "meant for MX gmail-smtp-in.l.google.com" in sink.log()


HOLD_OPEN = """
import socket, sys
import dns.resolver

port, dns_port = int(sys.argv[1]), int(sys.argv[2])
resolver = dns.resolver.Resolver(configure=False)
resolver.nameservers, resolver.port = ["127.0.0.1"], dns_port
held = []
for name, count in (("gmail-smtp-in.l.google.com.sink.test", 2), ("mta5.am0.yahoodns.net.sink.test", 1)):
    address = resolver.resolve(name, "A")[0].address
    for _ in range(count):
        s = socket.create_connection((address, port), timeout=10)
        assert s.recv(512).startswith(b"220")
        held.append(s)
print("held", flush=True)
sys.stdin.read()  # until the test closes it
"""


def test_state_counts_connections_per_mx(ns, tmp_path):
    """GET /state counts the open connections per MX host they were meant for, summed over two workers."""
    ns.check("ip", "route", "add", "local", MX_NETWORK, "dev", "lo")
    args = ("--listen", "0.0.0.0:0", "--dns", "127.0.0.1:0", "--workers", "2")
    with running_sink(*args, policy=ACCEPT_ALL, tmp=tmp_path, prefix=ns.prefix) as sink:
        assert sink.dns is not None
        holder = subprocess.Popen(
            [*ns.prefix, sys.executable, "-c", HOLD_OPEN, str(sink.port), str(sink.dns[1])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline() == "held\n", holder.stderr.read() if holder.stderr else ""
            state = wait_for(lambda: (s := sink.state())["connections"]["count"] == 3 and s, what="3 connections")
        finally:
            holder.communicate(timeout=30)
        assert state["connections"]["mx"] == [
            {"mx": "gmail-smtp-in.l.google.com", "open": 2},
            {"mx": "mta5.am0.yahoodns.net", "open": 1},
        ]
        wait_for(lambda: sink.state()["connections"]["mx"] == [], what="the connections to close")
