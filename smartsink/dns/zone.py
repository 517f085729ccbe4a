"""The sink's DNS zone: the answer to one query, a pure function of the query and the zone (no sockets, no clock).

The zone is every name under the suffixes the sink strips (`sink.test`, `mx-sink.wezfurlong.org`, --domain-suffix,
the policy's `domain_suffix`), authoritative, never recursive:

- MX of `<domain>.<suffix>`: the domain's set from the MX table, each host placed under the same suffix
  (`gmail.com.sink.test MX 5 gmail-smtp-in.l.google.com.sink.test`), so no answer leads outside the zone; a domain
  the table does not name has one MX, itself (`example.org.sink.test MX 10 example.org.sink.test`).
- A (and AAAA with --dns-network6) of an MX host: its stable address (smartsink.dns.addresses). A domain of the
  table has no address of its own: mail goes to its MX hosts.
- Names with a label starting `_` (`_mta-sts.`, `_25._tcp.`, `_dmarc.`...) do not exist: no MTA-STS policy, no
  TLSA record, so MTA-STS and DANE stay off without touching the MTA. TXT, TLSA and every other type: no data.
- The suffix itself: SOA and NS (`ns.<suffix>`, whose address is the listener's when it has a specific one).
- A name outside the zone: REFUSED. Zone transfers: REFUSED. Another opcode: NOTIMP.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY import MX as _MX
from dns.rdtypes.ANY import NS as _NS
from dns.rdtypes.ANY import SOA as _SOA
from dns.rdtypes.IN import AAAA as _AAAA
from dns.rdtypes.IN import A as _A

from smartsink.dns.addresses import Addressing
from smartsink.dns.table import MxTable

TTL = 300  # seconds: what resolvers keep an answer (and a negative one, SOA minimum)
PAYLOAD = 1232  # the EDNS UDP size we offer (DNS flag day 2020: no fragmentation)
NS_LABEL = "ns"
IN = dns.rdataclass.IN
# dnspython's record constructors carry no annotations: typed names for them, (class, type, fields...) -> Rdata
Record = Callable[..., dns.rdata.Rdata]
MX: Record = _MX.MX
NS: Record = _NS.NS
SOA: Record = _SOA.SOA
A: Record = _A.A
AAAA: Record = _AAAA.AAAA
# How /metrics labels a query's type: these by name, anything else "other" (labels stay bounded).
TYPE_LABELS = frozenset({"A", "AAAA", "MX", "TXT", "TLSA", "NS", "SOA", "ANY", "CNAME", "SRV", "PTR"})
_TRANSFERS = (dns.rdatatype.AXFR, dns.rdatatype.IXFR)
_HOST_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA)
_ANY = (dns.rdatatype.SOA, dns.rdatatype.NS, dns.rdatatype.MX, *_HOST_TYPES)


@dataclass(frozen=True)
class Zone:
    """Everything an answer depends on."""

    origins: tuple[dns.name.Name, ...]  # the suffixes, longest first (a name takes the longest that holds it)
    table: MxTable
    v4: Addressing
    v6: Addressing | None = None
    ns_address: str | None = None  # the DNS listener's own address, when it is a specific one

    @classmethod
    def of(
        cls,
        suffixes: Iterable[str],
        table: MxTable,
        v4: Addressing,
        v6: Addressing | None = None,
        listen_host: str | None = None,
    ) -> Zone:
        names = {dns.name.from_text(s) for s in suffixes if s}
        origins = tuple(sorted(names, key=lambda n: (-len(n), n.to_text())))
        ns_address = None
        if listen_host:
            try:
                address = ipaddress.ip_address(listen_host)
            except ValueError:
                address = None
            if address is not None and not address.is_unspecified:
                ns_address = str(address)
        return cls(origins, table, v4, v6, ns_address)


def type_label(rdtype: int) -> str:
    """The query type as /metrics labels it."""
    text = dns.rdatatype.to_text(dns.rdatatype.RdataType.make(rdtype))
    return text if text in TYPE_LABELS else "other"


def answer(query: dns.message.Message, zone: Zone) -> dns.message.Message:
    """The response to a query (a parsed message with QR clear)."""
    response = dns.message.make_response(query, our_payload=PAYLOAD)
    response.flags |= dns.flags.AA  # authoritative; RA stays clear: this server never recurses
    if query.edns > 0:
        response.set_rcode(dns.rcode.BADVERS)  # RFC 6891 6.1.3: we speak EDNS version 0
    elif query.opcode() != dns.opcode.QUERY:
        response.set_rcode(dns.rcode.NOTIMP)
    elif len(query.question) != 1:
        response.set_rcode(dns.rcode.FORMERR)
    else:
        _answer_question(response, query.question[0], zone)
    return response


def _answer_question(response: dns.message.Message, question: dns.rrset.RRset, zone: Zone) -> None:
    name, rdtype = question.name, question.rdtype
    origin = next((o for o in zone.origins if name.is_subdomain(o)), None)
    if origin is None or question.rdclass != IN or rdtype in _TRANSFERS:
        response.flags &= ~dns.flags.AA
        response.set_rcode(dns.rcode.REFUSED)
        return
    relative = name.relativize(origin)
    domain = _domain(relative)
    if domain is None:  # a service label (_mta-sts, _25._tcp...) or bytes no mail domain has
        response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(_soa(origin))
        return
    records = _records(zone, origin, domain, rdtype)
    for rdatas in records:
        response.answer.append(dns.rrset.from_rdata_list(name, TTL, rdatas))
    if not records:
        response.authority.append(_soa(origin))  # NODATA (RFC 2308 2.2): the SOA says how long to remember it


def _domain(relative: dns.name.Name) -> str | None:
    """The name below the suffix as text ("" for the suffix itself), None when no mail domain can be it."""
    labels = relative.labels
    if any(label[:1] == b"_" for label in labels):
        return None
    try:
        return b".".join(labels).decode("ascii").lower()
    except UnicodeDecodeError:
        return None


def _records(zone: Zone, origin: dns.name.Name, domain: str, rdtype: int) -> list[list[dns.rdata.Rdata]]:
    """The records of one name, a list per type: of the type asked for (of every type there is, for ANY)."""
    wanted = (rdtype,) if rdtype != dns.rdatatype.ANY else _ANY
    return [rdatas for kind in wanted if (rdatas := _rdatas(zone, origin, domain, kind))]


def _rdatas(zone: Zone, origin: dns.name.Name, domain: str, rdtype: int) -> list[dns.rdata.Rdata]:
    if domain == "":
        return _apex(origin, rdtype)
    if rdtype == dns.rdatatype.MX:
        return _mx(zone, origin, domain)
    if rdtype in _HOST_TYPES:
        return _address(zone, domain, rdtype)
    return []


def _apex(origin: dns.name.Name, rdtype: int) -> list[dns.rdata.Rdata]:
    if rdtype == dns.rdatatype.SOA:
        return [_soa_rdata(origin)]
    if rdtype == dns.rdatatype.NS:
        return [NS(IN, dns.rdatatype.NS, dns.name.Name((NS_LABEL.encode(), *origin.labels)))]
    return []


def _mx(zone: Zone, origin: dns.name.Name, domain: str) -> list[dns.rdata.Rdata]:
    exchanges = zone.table.exchanges(domain)
    if exchanges is None:
        if domain in zone.table.hosts or domain == NS_LABEL:
            return []  # an MX host receives mail for its domains, it has none of its own
        return [MX(IN, dns.rdatatype.MX, 10, _under(domain, origin))]
    out: list[dns.rdata.Rdata] = []
    for exchange in exchanges:
        try:
            out.append(MX(IN, dns.rdatatype.MX, exchange.preference, _under(exchange.host, origin)))
        except dns.name.NameTooLong:
            continue  # a host that, under this suffix, is longer than DNS names may be
    return out


def _address(zone: Zone, domain: str, rdtype: int) -> list[dns.rdata.Rdata]:
    if domain == NS_LABEL:
        return _ns_address(zone, rdtype)
    if domain not in zone.table.hosts and zone.table.exchanges(domain) is not None:
        return []  # a mail domain of the table: its mail goes to its MX hosts
    if rdtype == dns.rdatatype.A:
        return [A(IN, rdtype, str(zone.v4.address(domain)))]
    if zone.v6 is not None:
        return [AAAA(IN, rdtype, str(zone.v6.address(domain)))]
    return []  # no --dns-network6: no AAAA, so the MTA uses IPv4


def _ns_address(zone: Zone, rdtype: int) -> list[dns.rdata.Rdata]:
    if zone.ns_address is None:
        return []
    version = ipaddress.ip_address(zone.ns_address).version
    if rdtype == dns.rdatatype.A and version == 4:
        return [A(IN, rdtype, zone.ns_address)]
    if rdtype == dns.rdatatype.AAAA and version == 6:
        return [AAAA(IN, rdtype, zone.ns_address)]
    return []


def _under(host: str, origin: dns.name.Name) -> dns.name.Name:
    return dns.name.Name((*(label.encode() for label in host.split(".")), *origin.labels))


def _soa_rdata(origin: dns.name.Name) -> dns.rdata.Rdata:
    mname = dns.name.Name((NS_LABEL.encode(), *origin.labels))
    rname = dns.name.Name((b"hostmaster", *origin.labels))
    return SOA(IN, dns.rdatatype.SOA, mname, rname, 1, 3600, 600, 86400, TTL)


def _soa(origin: dns.name.Name) -> dns.rrset.RRset:
    return dns.rrset.from_rdata_list(origin, TTL, [_soa_rdata(origin)])
