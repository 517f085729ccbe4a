"""trafficgen's own kinds of values, read from what users write: weighted names (domains, tenants, campaigns, sender
domains, source addresses), headers, addresses, sinks' URLs, rates, files to read and write, the shard, the run id.

Each reader takes text (mailload.values has made it text, whatever way it was given) and raises ConfigError whose
message begins with the option's flag, or a ValueError that mailload.options names. Pure, but for the files and
--source-address (an address this host does not have is refused now, not at the first connection).
"""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mailload import contract, units
from mailload.units import RateSpec
from trafficgen import profile as profiles
from trafficgen import thresholds as threshold_parser
from trafficgen import workload as workloads
from trafficgen.profile import Profile
from trafficgen.thresholds import Threshold

_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}[A-Za-z0-9_])?"
DOMAIN = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 ftext: printable ASCII except ':'
_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")
_LABEL_VALUE = re.compile(r"^[!-9;-~]{1,200}$")  # a header value word: printable ASCII, no space, no ':'


class ConfigError(ValueError):
    """An option that cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class Weighted:
    """One value of a weighted dimension (a domain, tenant, campaign, sender domain, source address) and its
    weight: it is chosen in proportion to it."""

    name: str
    weight: float


DomainWeight = Weighted


@dataclass(frozen=True, slots=True)
class Workload:
    """--workload FILE: the file, and a digest of what it held (so reports say which workload they ran)."""

    path: str
    sha256: str


def _weight(flag: str, text: str, weight_text: str) -> float:
    try:
        weight = float(weight_text)
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: weight {weight_text!r} is not a number") from None
    if math.isnan(weight):
        raise ConfigError(f"{flag} {text!r}: weight {weight_text!r} is not a number")
    if math.isinf(weight):
        raise ConfigError(f"{flag} {text!r}: weight {weight_text!r} is not finite: give a share like 67.4")
    if weight <= 0:
        raise ConfigError(f"{flag} {text!r}: weight must be more than 0")
    return weight


def parse_domain(text: str, flag: str = "--domain") -> Weighted:
    """ "gmail.com:67.4" or "gmail.com" (weight 1)."""
    name, colon, weight_text = text.strip().partition(":")
    name = name.strip().lower().rstrip(".")
    if not DOMAIN.match(name):
        raise ConfigError(f"{flag} {text!r}: {name!r} is not a domain name")
    return Weighted(name, _weight(flag, text, weight_text) if colon else 1.0)


def parse_label(text: str, flag: str) -> Weighted:
    """ "acme:3" or "acme": a tenant's or campaign's name (a header value without spaces) and its weight."""
    name, colon, weight_text = text.strip().rpartition(":") if ":" in text else (text.strip(), "", "")
    name = name.strip()
    if not _LABEL_VALUE.match(name):
        raise ConfigError(f"{flag} {text!r}: {name!r} must be 1 to 200 printable characters without spaces or ':'")
    return Weighted(name, _weight(flag, text, weight_text) if colon else 1.0)


def parse_source(text: str) -> Weighted:
    """ "127.0.0.2", "127.0.0.2:3", "::1", "[::1]:3": a local address to connect from and its weight; an address
    this host does not have is refused now, not at the first connection."""
    text = text.strip()
    address, weight = text, 1.0
    if not is_ip(text):
        if text.startswith("["):
            inner, bracket, rest = text[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise ConfigError(f"--source-address {text!r} must look like IP, IP:WEIGHT or [IPv6]:WEIGHT")
            address = inner
            if rest:
                weight = _weight("--source-address", text, rest[1:])
        else:
            address, colon, weight_text = text.rpartition(":")
            if not colon or ":" in address:
                raise ConfigError(f"--source-address {text!r} is not an IP address (IPv6 with a weight: [::1]:2)")
            weight = _weight("--source-address", text, weight_text)
        if not is_ip(address):
            raise ConfigError(f"--source-address {text!r}: {address!r} is not an IP address")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:  # creating the socket fails too where the family is off (IPv6 disabled): the same one line then
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((address, 0))
    except OSError as e:
        raise ConfigError(f"--source-address {address} is not an address of this host ({e.strerror})") from None
    return Weighted(address, weight)


def is_ip(text: str) -> bool:
    """An IPv4 or IPv6 address, written as one (not a name)."""
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
    except OSError:
        return False
    return True


def parse_header(text: str) -> tuple[str, str]:
    """ "Name: value", split at the first colon; a header that would not be one header line is refused."""
    name, colon, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not name or not _HEADER_NAME.match(name):
        raise ConfigError(f'--header {text!r} must look like "Name: value"')
    if "\r" in value or "\n" in value:
        raise ConfigError(f"--header {text!r}: a header value cannot hold a line break")
    return name, value


def parse_sink_urls(text: str, option_name: str = "--reconcile") -> tuple[str, ...]:
    """Sinks' admin URLs, comma-separated."""
    sinks = tuple(u.strip().rstrip("/") for u in text.split(",") if u.strip())
    if not sinks or not all(re.match(r"^https?://[^/\s]+$", u) for u in sinks):
        raise ConfigError(
            f"{option_name} {text!r}: give each sink's admin URL, like http://127.0.0.1:8026 (comma-separated)"
        )
    return sinks


def read_word(flag: str, words: tuple[str, ...]) -> Callable[[str], str]:
    """One of a few words, in any case (trafficgen's wording: "--content 'pdf': use one of text, html, mixed")."""

    def read(text: str) -> str:
        word = text.strip().lower()
        if word not in words:
            raise ConfigError(f"{flag} {text!r}: use one of {', '.join(words)}")
        return word

    return read


def _unique(flag: str, items: tuple[Weighted, ...]) -> tuple[Weighted, ...]:
    seen = [i.name for i in items]
    twice = next((n for n in seen if seen.count(n) > 1), None)
    if twice is not None:
        raise ConfigError(f"{flag} {twice!r} is given twice: give each once, with its weight")
    return items


def read_domains(texts: list[str]) -> tuple[Weighted, ...]:
    return tuple(parse_domain(t) for t in texts)


def read_sender_domains(texts: list[str]) -> tuple[Weighted, ...]:
    return _unique("--sender-domain", tuple(parse_domain(t, "--sender-domain") for t in texts))


def read_labels(flag: str) -> Callable[[list[str]], tuple[Weighted, ...]]:
    def parse(texts: list[str]) -> tuple[Weighted, ...]:
        return _unique(flag, tuple(parse_label(t, flag) for t in texts))

    return parse


def read_sources(texts: list[str]) -> tuple[Weighted, ...]:
    return _unique("--source-address", tuple(parse_source(t) for t in texts))


def read_header_name(flag: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        name = text.strip()
        if not name or not _HEADER_NAME.match(name):
            raise ConfigError(f"{flag} {text!r} is not a header name (printable characters, no spaces or ':')")
        return name

    return parse


def read_profile(text: str) -> Profile:
    """The stages, written in one text or (from a file or a program) as a list, which is read joined by ", "."""
    try:
        return profiles.parse(text)
    except profiles.ProfileError as e:
        raise ConfigError(f"--profile: {e}") from None


def read_thresholds(texts: list[str]) -> tuple[Threshold, ...]:
    parsed = []
    for text in texts:
        try:
            parsed.append(threshold_parser.parse(text))
        except ValueError as e:
            raise ConfigError(f"--fail-if {e}") from None
    return tuple(parsed)


def read_workload(text: str) -> Workload:
    try:
        return Workload(text, workloads.digest(text))
    except workloads.WorkloadError as e:
        raise ConfigError(str(e)) from None


def read_headers(texts: list[str]) -> tuple[tuple[str, str], ...]:
    return tuple(parse_header(t) for t in texts)


def read_suffix(text: str) -> str:
    suffix = text.strip().strip(".").lower()
    if suffix and not DOMAIN.match(suffix):
        raise ConfigError(f"--domain-suffix {text!r} is not a domain name")
    return suffix


def read_target(text: str) -> str:
    """HOST:PORT, [IPv6]:PORT, or with --http a URL: which one is checked across options (trafficgen.checks)."""
    return text.strip()


def read_body_file(text: str) -> str:
    path = Path(text)
    if path.is_dir():
        raise ConfigError(f"--body-file {text}: is a directory")
    if not path.is_file():
        raise ConfigError(f"--body-file {text}: no such file")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"--body-file {text}: cannot be read")
    return text


def read_throttle(text: str) -> RateSpec:
    try:
        return units.parse_rate(text, allow_burst=True)
    except ValueError as e:
        raise ConfigError(f"--throttle: {e}") from None


def read_connect_rate(text: str) -> float:
    try:
        return units.parse_rate(text).per_second
    except ValueError as e:
        raise ConfigError(f"--connect-rate: {e}") from None


def read_address(flag: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not _ADDRESS.match(text):
            raise ConfigError(f"{flag} {text!r} is not an address like user@example.test")
        return text

    return parse


def writable(flag: str) -> Callable[[str], str]:
    """A path to write: its folder must exist and be writable ("-": stdout)."""

    def parse(text: str) -> str:
        if text != "-":
            directory = Path(text).resolve().parent
            if Path(text).is_dir():
                raise ConfigError(f"{flag} {text}: is a directory")
            if not directory.is_dir() or not os.access(directory, os.W_OK):
                raise ConfigError(f"{flag} {text}: cannot write in {directory}")
        return text

    return parse


def read_shard(text: str) -> tuple[int, int]:
    m = re.match(r"^\s*(\d+)\s*/\s*(\d+)\s*$", text)
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise ConfigError(f"--shard {text!r} must be INDEX/COUNT with 0 <= INDEX < COUNT, like 0/4")
    return int(m.group(1)), int(m.group(2))


def read_run_id(text: str) -> str:
    if not contract.RUN_ID.match(text):
        raise ConfigError(f"--run-id {text!r}: use 1 to {contract.RUN_ID_MAX} letters, digits, '-' or '_'")
    return text


def read_reset_sinks(texts: list[str]) -> tuple[str, ...]:
    sinks = [url for text in texts for url in parse_sink_urls(text, "--reset-sink")]
    return tuple(dict.fromkeys(sinks))


def without_credentials(url: str) -> str:
    """The URL as shown: a sink's admin token given in it (`http://:TOKEN@host:8026`) left out."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"
