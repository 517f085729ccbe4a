"""The sink's DNS without a socket: the MX table, the addresses of MX hosts, the zone's answer to each kind of query
(dnspython builds the queries and reads the answers), and the per-client query rate with an injected clock."""

from __future__ import annotations

import ipaddress
import subprocess
import sys

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest

from harness.policies import SHIPPED_POLICY
from smartsink.config import DEFAULT_DNS_NETWORK
from smartsink.dns.addresses import Addressing
from smartsink.dns.ratelimit import ClientRates
from smartsink.dns.table import TableError, parse_table, shipped
from smartsink.dns.zone import Zone, answer
from smartsink.policy import load_policy, parse_policy
from smartsink.policy.model import Exchange, Rate

NETWORK = ipaddress.ip_network(DEFAULT_DNS_NETWORK)
NETWORK6 = ipaddress.ip_network("2001:db8::/64")
SUFFIXES = ("sink.test", "mx-sink.wezfurlong.org")
# KumoMTA's example list of destination domains (its traffic-gen and smart-sink documentation)
KUMO_DOMAINS = (
    "aol.com",
    "bellsouth.net",
    "comcast.net",
    "gmail.com",
    "hotmail.com",
    "icloud.com",
    "live.com",
    "me.com",
    "msn.com",
    "orange.fr",
    "outlook.com",
    "sbcglobal.net",
    "yahoo.com",
)
# Domains that publish one MX set in reality, and so share it in the table
SHARED = {
    "gmail": ("gmail.com", "googlemail.com"),
    "yahoo": ("yahoo.com", "ymail.com", "rocketmail.com"),
    "aol-verizon": ("aol.com", "verizon.net"),
    "att": ("att.net", "sbcglobal.net", "bellsouth.net", "pacbell.net"),
    "apple": ("icloud.com", "me.com", "mac.com"),
    "orange": ("orange.fr", "wanadoo.fr"),
    "gmx": ("gmx.de", "gmx.net"),
    "mail.ru": ("mail.ru", "bk.ru", "inbox.ru", "list.ru"),
    "proton": ("proton.me", "protonmail.com"),
}


def zone(table=None, v6: bool = False, listen: str | None = "127.0.0.1") -> Zone:
    table = table or shipped()
    return Zone.of(
        SUFFIXES,
        table,
        Addressing.of(NETWORK, table.hosts),
        Addressing.of(NETWORK6, table.hosts) if v6 else None,
        listen_host=listen,
    )


def ask(name: str, rdtype: str = "MX", the_zone: Zone | None = None, **query_options) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **query_options)
    return answer(dns.message.from_wire(query.to_wire()), the_zone or zone())


def records(response: dns.message.Message, rdtype: str) -> list[str]:
    wanted = dns.rdatatype.from_text(rdtype)
    return sorted(rd.to_text() for rrset in response.answer if rrset.rdtype == wanted for rd in rrset)


class TestTable:
    def test_it_covers_the_shipped_policy_and_kumomtas_list(self):
        """Every provider of policy/responses.toml and every domain of KumoMTA's example list has its MX set."""
        policy_domains = {d for d in load_policy(SHIPPED_POLICY).domains if not d.endswith(".test")}
        missing = sorted(d for d in (*policy_domains, *KUMO_DOMAINS) if shipped().exchanges(d) is None)
        assert missing == []

    @pytest.mark.parametrize("domains", SHARED.values(), ids=SHARED.keys())
    def test_domains_sharing_a_set_in_reality_share_it(self, domains):
        """Domains one provider serves from one MX set have that same set, so an MTA builds one site for them."""
        sets = {shipped().exchanges(d) for d in domains}
        assert len(sets) == 1, sets
        assert None not in sets

    def test_providers_do_not_share_hosts(self):
        """Two different sets have no host in common (a host belongs to one provider's site)."""
        sets = set(shipped().sets.values())
        for one in sets:
            for other in sets - {one}:
                assert not {e.host for e in one} & {e.host for e in other}, (one, other)

    def test_yahoo_and_aol_are_yahoodns_hosts_and_gmail_is_googles(self):
        """Yahoo's and AOL's hosts are under yahoodns.net (KumoMTA's shaping matches that suffix); Gmail's five
        are gmail-smtp-in.l.google.com and its alternates, by preference."""
        for domain in ("yahoo.com", "aol.com", "verizon.net"):
            assert all(e.host.endswith(".yahoodns.net") for e in shipped().exchanges(domain))
        gmail = shipped().exchanges("gmail.com")
        assert gmail[0] == Exchange(5, "gmail-smtp-in.l.google.com")
        assert [e.host for e in gmail[1:]] == [f"alt{n}.gmail-smtp-in.l.google.com" for n in range(1, 5)]
        assert [e.preference for e in gmail] == sorted(e.preference for e in gmail)

    def test_a_policy_adds_and_overrides(self):
        """A policy's `mx` replaces a domain's set, or gives one to a domain the table does not name."""
        policy = parse_policy(
            '[domain."gmail.com"]\nmx = ["mx.gmail.example"]\n[domain."n.test"]\nmx = ["1 a.n.test"]\n'
        )
        table = shipped().with_policy(policy.mx)
        assert table.exchanges("gmail.com") == (Exchange(10, "mx.gmail.example"),)
        assert table.exchanges("n.test") == (Exchange(1, "a.n.test"),)
        assert table.exchanges("googlemail.com") == shipped().exchanges("googlemail.com")
        assert "gmail-smtp-in.l.google.com" in table.hosts  # googlemail.com still uses it
        assert shipped().exchanges("gmail.com") != table.exchanges("gmail.com"), "the shipped table is unchanged"

    @pytest.mark.parametrize(
        ("text", "fragment"),
        [
            ('[[provider]]\nname = "a"\ndomains = ["a.test"]\nmx = ["mx.a.test"]\n' * 2, "listed by 'a' and by 'a'"),
            ('[[provider]]\nname = "a"\ndomains = ["a.test"]\nmx = ["bad_host"]\n', "not a host name"),
            ('[[provider]]\nname = "a"\ndomains = ["a.test"]\n', "must have name, domains and mx"),
            ("[other]\nx = 1\n", "must hold [[provider]] tables"),
        ],
        ids=["domain-twice", "bad-host", "missing-mx", "unknown-table"],
    )
    def test_a_bad_table_is_named(self, text, fragment):
        """A table with a problem is refused with the file and the problem named."""
        with pytest.raises(TableError, match=r"^mx\.toml: ") as caught:
            parse_table(text, "mx.toml")
        assert fragment in str(caught.value)


class TestAddresses:
    def test_every_known_host_has_its_own_address(self):
        """In the default network, no two MX hosts of the table share an address, and each maps back."""
        addressing = Addressing.of(NETWORK, shipped().hosts)
        addresses = {host: addressing.address(host) for host in shipped().hosts}
        assert len(set(addresses.values())) == len(addresses)
        for host, address in addresses.items():
            assert address in NETWORK
            assert address not in (NETWORK.network_address, NETWORK.broadcast_address)
            assert addressing.host_at(str(address)) == host

    def test_the_same_name_gets_the_same_address_in_any_order_and_any_process(self):
        """The assignment depends on the names alone: built in another order, or in a new process (a restart, a
        worker), every host has the same address."""
        hosts = sorted(shipped().hosts)
        forward = Addressing.of(NETWORK, hosts)
        backward = Addressing.of(NETWORK, reversed(hosts))
        assert all(forward.address(h) == backward.address(h) for h in hosts)
        script = (
            "import ipaddress; from smartsink.dns.addresses import Addressing; from smartsink.dns.table import shipped;"
            f"a = Addressing.of(ipaddress.ip_network({str(NETWORK)!r}), shipped().hosts);"
            "print(' '.join(f'{h}={a.address(h)}' for h in sorted(shipped().hosts)))"
        )
        other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
        assert other.split() == [f"{h}={forward.address(h)}" for h in hosts]

    def test_an_unlisted_name_never_takes_a_known_hosts_address(self):
        """The MX of an unlisted domain (named after it) hashes into the addresses the known hosts left."""
        addressing = Addressing.of(NETWORK, shipped().hosts)
        known = {addressing.address(h) for h in shipped().hosts}
        unlisted = {addressing.address(f"domain-{n}.example") for n in range(2000)}
        assert unlisted.isdisjoint(known)
        assert all(addressing.host_at(str(a)) is None for a in unlisted)
        assert addressing.address("Domain-7.Example") == addressing.address("domain-7.example")

    @pytest.mark.parametrize(("prefix", "usable"), [(30, 2), (31, 2), (32, 1)])
    def test_a_full_network_shares_addresses_and_stays_inside(self, prefix, usable):
        """More hosts than addresses: the first `usable` are distinct, then they share; none leaves the network."""
        network = ipaddress.ip_network(f"{NETWORK.network_address}/{prefix}")
        hosts = sorted(shipped().hosts)[:5]
        addressing = Addressing.of(network, hosts)
        addresses = [addressing.address(h) for h in hosts]
        assert len(set(addresses)) == usable
        assert all(a in network for a in addresses)
        assert addressing.address("unlisted.example") in network

    def test_ipv6_and_addresses_outside(self):
        """An IPv6 network works the same; an address outside the network, or of the other family, maps to none."""
        addressing = Addressing.of(NETWORK6, shipped().hosts)
        address = addressing.address("mx01.mail.icloud.com")
        assert address in NETWORK6
        assert addressing.host_at(str(address)) == "mx01.mail.icloud.com"
        v4 = Addressing.of(NETWORK, shipped().hosts)
        assert v4.slot_of("127.0.0.1") is None
        assert v4.slot_of(str(address)) is None
        assert v4.slot_of("not an address") is None


class TestZone:
    @pytest.mark.parametrize("domain", [*KUMO_DOMAINS, "googlemail.com", "att.net", "mac.com"])
    def test_mx_is_the_providers_set_under_the_suffix(self, domain):
        """MX of <domain>.sink.test: each of the provider's hosts with its preference, placed under the suffix."""
        response = ask(f"{domain}.sink.test")
        assert response.rcode() == dns.rcode.NOERROR
        expected = sorted(f"{e.preference} {e.host}.sink.test." for e in shipped().exchanges(domain))
        assert records(response, "MX") == expected

    def test_the_other_suffixes_too_and_the_longest_wins(self):
        """Names under KumoMTA's suffix get hosts under it; with nested suffixes, a name takes the longest."""
        assert records(ask("me.com.mx-sink.wezfurlong.org"), "MX") == [
            "10 mx01.mail.icloud.com.mx-sink.wezfurlong.org.",
            "10 mx02.mail.icloud.com.mx-sink.wezfurlong.org.",
        ]
        table = shipped()
        nested = Zone.of(("test", "sink.test"), table, Addressing.of(NETWORK, table.hosts))
        assert records(ask("msn.com.sink.test", the_zone=nested), "MX") == [
            "2 msn-com.olc.protection.outlook.com.sink.test."
        ]

    def test_an_unlisted_domain_has_one_mx_named_after_itself(self):
        """Any generated domain resolves: MX 10 itself, and an address for it."""
        response = ask("example.org.sink.test")
        assert records(response, "MX") == ["10 example.org.sink.test."]
        address = records(ask("example.org.sink.test", "A"), "A")
        assert len(address) == 1
        assert ipaddress.ip_address(address[0]) in NETWORK

    def test_a_for_mx_hosts_and_no_address_for_a_tables_domain(self):
        """An MX host has its address (the same under every suffix); a mail domain of the table has none."""
        addressing = Addressing.of(NETWORK, shipped().hosts)
        for host in ("gmail-smtp-in.l.google.com", "mta6.am0.yahoodns.net", "smtp-in.orange.fr"):
            for suffix in SUFFIXES:
                assert records(ask(f"{host}.{suffix}", "A"), "A") == [str(addressing.address(host))]
        nodata = ask("gmail.com.sink.test", "A")
        assert nodata.rcode() == dns.rcode.NOERROR
        assert nodata.answer == []
        assert nodata.authority[0].rdtype == dns.rdatatype.SOA
        assert ask("gmail-smtp-in.l.google.com.sink.test").answer == [], "an MX host has no MX of its own"

    def test_aaaa_only_with_an_ipv6_network(self):
        """Without --dns-network6, AAAA is empty (NOERROR, no data), so MTAs use IPv4; with it, an address."""
        assert ask("mx01.mail.icloud.com.sink.test", "AAAA").answer == []
        with_v6 = records(ask("mx01.mail.icloud.com.sink.test", "AAAA", zone(v6=True)), "AAAA")
        assert len(with_v6) == 1
        assert ipaddress.ip_address(with_v6[0]) in NETWORK6

    @pytest.mark.parametrize(
        ("name", "rdtype"),
        [
            ("_mta-sts.gmail.com.sink.test", "TXT"),
            ("_25._tcp.gmail-smtp-in.l.google.com.sink.test", "TLSA"),
            ("_dmarc.yahoo.com.sink.test", "TXT"),
            ("_25._tcp.mx01.mail.icloud.com.sink.test", "A"),
        ],
    )
    def test_no_mta_sts_and_no_tlsa(self, name, rdtype):
        """Service names do not exist (NXDOMAIN with the SOA): no MTA-STS policy, no DANE, nothing to switch off."""
        response = ask(name, rdtype)
        assert response.rcode() == dns.rcode.NXDOMAIN
        assert response.answer == []
        assert response.authority[0].rdtype == dns.rdatatype.SOA

    @pytest.mark.parametrize("rdtype", ["TXT", "TLSA", "SRV", "CNAME", "PTR", "CAA"])
    def test_other_types_have_no_data(self, rdtype):
        """TXT, TLSA and the rest: NOERROR without data, the SOA's TTL saying how long to remember that."""
        response = ask("gmail-smtp-in.l.google.com.sink.test", rdtype)
        assert response.rcode() == dns.rcode.NOERROR
        assert response.answer == []
        assert response.authority[0][0].minimum == response.authority[0].ttl

    @pytest.mark.parametrize("name", ["gmail.com", "sink.test.example", "test", ".", "google.com.sink.testing"])
    def test_outside_the_zone_is_refused_never_recursed(self, name):
        """A name outside the suffixes: REFUSED, not authoritative, and recursion is never offered."""
        response = ask(name)
        assert response.rcode() == dns.rcode.REFUSED
        assert not response.flags & (dns.flags.AA | dns.flags.RA)
        assert response.answer == []

    def test_authoritative_answers_echo_the_question(self):
        """AA set, RA clear, RD echoed, the question's case kept; names are matched without case."""
        response = ask("GMail.Com.Sink.Test")
        assert response.flags & dns.flags.AA
        assert not response.flags & dns.flags.RA
        assert response.flags & dns.flags.RD
        assert response.question[0].name.to_text() == "GMail.Com.Sink.Test."
        assert records(response, "MX") == records(ask("gmail.com.sink.test"), "MX")

    def test_the_suffix_itself_has_soa_and_ns(self):
        """SOA and NS at each suffix; the NS host's address is the listener's when it has a specific one."""
        soa = ask("sink.test", "SOA")
        assert records(soa, "SOA")[0].startswith("ns.sink.test. hostmaster.sink.test. ")
        assert records(ask("sink.test", "NS"), "NS") == ["ns.sink.test."]
        assert records(ask("ns.sink.test", "A"), "A") == ["127.0.0.1"]
        assert ask("ns.sink.test", "A", zone(listen="0.0.0.0")).answer == []

    def test_any_gives_what_there_is(self):
        """ANY: every record of the name (an MX host: its A; a domain: its MX)."""
        assert [r.rdtype for r in ask("mx02.mail.icloud.com.sink.test", "ANY").answer] == [dns.rdatatype.A]
        assert [r.rdtype for r in ask("icloud.com.sink.test", "ANY").answer] == [dns.rdatatype.MX]

    def test_transfers_other_opcodes_and_odd_messages(self):
        """AXFR is refused; an UPDATE or NOTIFY is not implemented; no question is a format error; EDNS version 1
        is BADVERS; the answers to EDNS queries carry EDNS."""
        assert ask("sink.test", "AXFR").rcode() == dns.rcode.REFUSED
        update = dns.message.make_query("sink.test", "SOA")
        update.set_opcode(dns.opcode.UPDATE)
        assert answer(update, zone()).rcode() == dns.rcode.NOTIMP
        empty = dns.message.make_query("sink.test", "SOA")
        empty.question = []
        assert answer(empty, zone()).rcode() == dns.rcode.FORMERR
        assert ask("gmail.com.sink.test", use_edns=1).rcode() == dns.rcode.BADVERS
        assert ask("gmail.com.sink.test", use_edns=0).edns == 0


class TestQueryRate:
    def test_a_client_gets_a_seconds_worth_then_the_rate(self):
        """A burst of one second's worth, then as many a second as the rate says; each client has its own."""
        now = [100.0]
        rates = ClientRates(Rate(10, 1.0), clock=lambda: now[0])
        assert [rates.allow("a") for _ in range(12)] == [True] * 10 + [False] * 2
        assert rates.allow("b")
        now[0] += 0.5
        assert [rates.allow("a") for _ in range(6)] == [True] * 5 + [False]
        now[0] += 60
        assert sum(rates.allow("a") for _ in range(20)) == 10, "never more than one second's worth at once"

    def test_memory_is_bounded(self):
        """Clients heard from least recently are forgotten first."""
        rates = ClientRates(Rate(1, 1.0), clock=lambda: 0.0, max_clients=100)
        for n in range(1000):
            rates.allow(f"client-{n}")
        assert len(rates.buckets) == 100
        assert "client-999" in rates.buckets
        assert "client-0" not in rates.buckets
