"""RunConfig: every option of a run, declared once, validated once (by the CLI or a program), then only read.

Each field is an option (mailload.options): its help, --help panel, metavar, environment variable and how the
text a user writes becomes its value are declared on the field, and the command line, docs/cli.md and the JSON
report's `config` are derived from them. `build()` takes options as a user writes them ("gmail.com:67.4",
"10kb..200kb", "1,000/hr") and raises ConfigError with one line naming the bad one; checks that involve several
options run after each option is read, one function per concern.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import secrets
import socket
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from mailload import contract, units
from mailload.options import HIDDEN, OptionError, option, report, values
from mailload.units import RateSpec
from trafficgen import profile as profiles
from trafficgen import thresholds as threshold_parser
from trafficgen import workload as workloads
from trafficgen.profile import Profile
from trafficgen.thresholds import Threshold

DEFAULT_TARGET = "127.0.0.1:2025"
DEFAULT_HTTP_TARGET = "http://127.0.0.1:8000"  # KumoMTA's traffic-gen's, with --http
DEFAULT_DOMAINS = ("aol.com", "gmail.com", "hotmail.com", "yahoo.com")
DEFAULT_SUFFIX = contract.DEFAULT_SUFFIX
DEFAULT_DURATION = 60.0
DEFAULT_TIMEOUT = 60.0
DEFAULT_CONNECT_RATE = 2000.0
MAX_BODY = 512 * 1024 * 1024
INJECT_PATH = "/api/inject/v1"
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}[A-Za-z0-9_])?"
_DOMAIN = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 ftext: printable ASCII except ':'
_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")
_URL = re.compile(r"^https?://[^/\s]+")

CONTENT_KINDS = ("text", "html", "mixed")
OUTPUTS = ("summary", "kumomta")
LOGNORMAL_MAX_P99S = 10  # a log-normal size without max= is capped at 10 x its p99
_LOGNORMAL = re.compile(r"^\s*(?:log-?normal\s*[:(]?\s*)?median\s*=", re.I)
_QUANTILES = re.compile(r"^\s*(?:quantiles\s*[:(]?\s*)?(?:min|p[0-9.]+)\s*=", re.I)
_QUANTILE_KEY = re.compile(r"^p(\d{1,3}(?:\.\d+)?)$")
_LABEL_VALUE = re.compile(r"^[!-9;-~]{1,200}$")  # a header value word: printable ASCII, no space, no ':'

WORKLOAD, TARGET, MIX, LOAD, CONTENT, SMTP, OUTPUT, CI, RECONCILE, HTTP, FLEET = (
    "Workload file",
    "Target",
    "Traffic mix",
    "Load shape",
    "Content",
    "SMTP",
    "Output",
    "Thresholds (CI)",
    "Reconciliation",
    "KumoMTA HTTP injection",
    "Many machines",
)


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
class LogNormalSize:
    """--body-size median=20kb,p99=2mb[,max=...]: sizes drawn from a log-normal with that median and 99th
    percentile (as smartsink's latency key), none above `high`."""

    median: int
    p99: int
    high: int

    @property
    def low(self) -> int:
        return 0


@dataclass(frozen=True, slots=True)
class QuantileSize:
    """--body-size min=1kb,p10=3kb,p50=20kb,p90=80kb,p99=2mb,max=10mb: sizes whose quantiles are these (as a log's
    are: `trafficgen workload from-logs` writes them), drawn between two given quantiles on a log scale."""

    points: tuple[tuple[float, int], ...]  # (share from 0 to 1, bytes), from (0, the least) to (1, the most)

    @property
    def low(self) -> int:
        return self.points[0][1]

    @property
    def high(self) -> int:
        return self.points[-1][1]

    def quantile(self, q: float) -> float:
        """The size below which a share `q` of the sizes fall: log-linear between the two given around it."""
        points = self.points
        if q <= 0:
            return float(points[0][1])
        for (q0, s0), (q1, s1) in itertools.pairwise(points):
            if q <= q1:
                a, b = math.log1p(s0), math.log1p(s1)
                return math.expm1(a + (b - a) * (q - q0) / (q1 - q0))
        return float(points[-1][1])


@dataclass(frozen=True, slots=True)
class Workload:
    """--workload FILE: the file, and a digest of what it held (so reports say which workload they ran)."""

    path: str
    sha256: str


# --- reading one option ------------------------------------------------------------------------------------------


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
    if not _DOMAIN.match(name):
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
    if not _is_ip(text):
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
        if not _is_ip(address):
            raise ConfigError(f"--source-address {text!r}: {address!r} is not an IP address")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:  # creating the socket fails too where the family is off (IPv6 disabled): the same one line then
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((address, 0))
    except OSError as e:
        raise ConfigError(f"--source-address {address} is not an address of this host ({e.strerror})") from None
    return Weighted(address, weight)


def _is_ip(text: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
    except OSError:
        return False
    return True


def parse_header(text: str) -> tuple[str, str]:
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


def _listed(texts: str | list[str]) -> list[str]:
    """A repeatable option's values (a program may pass one string)."""
    return [texts] if isinstance(texts, str) else list(texts)


def _unique(flag: str, items: tuple[Weighted, ...]) -> tuple[Weighted, ...]:
    seen = [i.name for i in items]
    twice = next((n for n in seen if seen.count(n) > 1), None)
    if twice is not None:
        raise ConfigError(f"{flag} {twice!r} is given twice: give each once, with its weight")
    return items


def _domains(texts: list[str]) -> tuple[Weighted, ...]:
    return tuple(parse_domain(t) for t in _listed(texts))


def _sender_domains(texts: list[str]) -> tuple[Weighted, ...]:
    return _unique("--sender-domain", tuple(parse_domain(t, "--sender-domain") for t in _listed(texts)))


def _labels(flag: str) -> Any:
    def parse(texts: list[str]) -> tuple[Weighted, ...]:
        return _unique(flag, tuple(parse_label(t, flag) for t in _listed(texts)))

    return parse


def _sources(texts: list[str]) -> tuple[Weighted, ...]:
    return _unique("--source-address", tuple(parse_source(t) for t in _listed(texts)))


def _header_name(flag: str) -> Any:
    def parse(text: str) -> str:
        name = text.strip()
        if not name or not _HEADER_NAME.match(name):
            raise ConfigError(f"{flag} {text!r} is not a header name (printable characters, no spaces or ':')")
        return name

    return parse


def _content(text: str) -> str:
    kind = text.strip().lower()
    if kind not in CONTENT_KINDS:
        raise ConfigError(f"--content {text!r}: use one of {', '.join(CONTENT_KINDS)}")
    return kind


def _output(text: str) -> str:
    kind = text.strip().lower()
    if kind not in OUTPUTS:
        raise ConfigError(f"--output {text!r}: use one of {', '.join(OUTPUTS)}")
    return kind


def _percent(flag: str) -> Any:
    def parse(text: str | float) -> float:
        try:
            value = float(str(text).strip().removesuffix("%"))
        except ValueError:
            raise ConfigError(f"{flag} {text!r} is not a percentage like 20 or 20%") from None
        if not 0 <= value <= 100:
            raise ConfigError(f"{flag} {text!r}: a percentage is between 0 and 100")
        return value

    return parse


def _profile(text: str | list[str]) -> Profile:
    try:
        return profiles.parse(", ".join(_listed(text)))
    except profiles.ProfileError as e:
        raise ConfigError(f"--profile: {e}") from None


def _thresholds(texts: list[str]) -> tuple[Threshold, ...]:
    parsed = []
    for text in _listed(texts):
        try:
            parsed.append(threshold_parser.parse(text))
        except ValueError as e:
            raise ConfigError(f"--fail-if {e}") from None
    return tuple(parsed)


def _workload(text: str) -> Workload:
    try:
        return Workload(text, workloads.digest(text))
    except workloads.WorkloadError as e:
        raise ConfigError(str(e)) from None


def _headers(texts: list[str]) -> tuple[tuple[str, str], ...]:
    return tuple(parse_header(t) for t in texts)


def _suffix(text: str) -> str:
    suffix = text.strip().strip(".").lower()
    if suffix and not _DOMAIN.match(suffix):
        raise ConfigError(f"--domain-suffix {text!r} is not a domain name")
    return suffix


def _body_size(text: str | int) -> tuple[int, int] | LogNormalSize | QuantileSize:
    """A size, a range low..high (uniform), a log-normal median=20kb,p99=2mb[,max=50mb], or quantiles
    min=1kb,p50=20kb,...,max=10mb."""
    text = str(text)
    if _LOGNORMAL.match(text):
        return _lognormal(text)
    if _QUANTILES.match(text):
        return _quantiles(text)
    try:
        size = units.parse_size_range(text)
    except ValueError as e:
        raise ConfigError(f"--body-size: {e}") from None
    if size[1] > MAX_BODY:
        raise ConfigError(f"--body-size {text!r} is larger than {MAX_BODY // 1024 // 1024} MiB")
    return size


def _lognormal(text: str) -> LogNormalSize:
    body = re.sub(r"^\s*log-?normal\s*[:(]?", "", text, flags=re.I).rstrip(" )")
    given: dict[str, int] = {}
    for item in body.split(","):
        key, equals, value = item.partition("=")
        key = key.strip().lower()
        if not equals or key not in ("median", "p99", "max"):
            raise ConfigError(f"--body-size {text!r}: write median=SIZE,p99=SIZE[,max=SIZE], like median=20kb,p99=2mb")
        try:
            given[key] = units.parse_size(value.strip())
        except ValueError as e:
            raise ConfigError(f"--body-size {text!r}: {e}") from None
    median, p99 = given.get("median"), given.get("p99")
    if median is None or p99 is None:
        raise ConfigError(f"--body-size {text!r}: a log-normal size needs both median= and p99=")
    if not 0 < median <= p99:
        raise ConfigError(f"--body-size {text!r}: the median must be more than 0 and at most the p99")
    high = given.get("max", min(MAX_BODY, p99 * LOGNORMAL_MAX_P99S))
    if high < p99:
        raise ConfigError(f"--body-size {text!r}: max= is below the p99")
    if high > MAX_BODY:
        raise ConfigError(f"--body-size {text!r}: max= is larger than {MAX_BODY // 1024 // 1024} MiB")
    return LogNormalSize(median, p99, high)


def _quantiles(text: str) -> QuantileSize:
    usage = "write min=SIZE,pN=SIZE,...,max=SIZE, like min=1kb,p50=20kb,p99=2mb,max=10mb"
    body = re.sub(r"^\s*quantiles\s*[:(]?", "", text, flags=re.I).rstrip(" )")
    points: dict[float, int] = {}
    for item in body.split(","):
        key, equals, value = (part.strip() for part in item.partition("="))
        key = key.lower()
        m = _QUANTILE_KEY.match(key)
        share = {"min": 0.0, "median": 50.0, "max": 100.0}.get(key, float(m.group(1)) if m else -1.0)
        if not equals or not 0 <= share <= 100:
            raise ConfigError(f"--body-size {text!r}: {key!r} is not min, max, median or p0..p100: {usage}")
        if share / 100 in points:
            raise ConfigError(f"--body-size {text!r}: {key} is given twice")
        try:
            points[share / 100] = units.parse_size(value)
        except ValueError as e:
            raise ConfigError(f"--body-size {text!r}: {e}") from None
    if 0.0 not in points or 1.0 not in points:
        raise ConfigError(f"--body-size {text!r}: quantiles need both ends, min= (p0) and max= (p100): {usage}")
    ordered = tuple(sorted(points.items()))
    if any(b[1] < a[1] for a, b in itertools.pairwise(ordered)):
        raise ConfigError(f"--body-size {text!r}: a higher quantile cannot be a smaller size")
    if ordered[-1][1] > MAX_BODY:
        raise ConfigError(f"--body-size {text!r}: max= is larger than {MAX_BODY // 1024 // 1024} MiB")
    return QuantileSize(ordered)


def _readable_file(text: str) -> str:
    path = Path(text)
    if path.is_dir():
        raise ConfigError(f"--body-file {text}: is a directory")
    if not path.is_file():
        raise ConfigError(f"--body-file {text}: no such file")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"--body-file {text}: cannot be read")
    return text


def _throttle(text: str) -> RateSpec:
    try:
        return units.parse_rate(text, allow_burst=True)
    except ValueError as e:
        raise ConfigError(f"--throttle: {e}") from None


def _connect_rate(text: str) -> float:
    try:
        return units.parse_rate(text).per_second
    except ValueError as e:
        raise ConfigError(f"--connect-rate: {e}") from None


def _address(flag: str) -> Any:
    def parse(text: str) -> str:
        if not _ADDRESS.match(text):
            raise ConfigError(f"{flag} {text!r} is not an address like user@example.test")
        return text

    return parse


def _writable(flag: str) -> Any:
    def parse(text: str) -> str:
        if text != "-":
            directory = Path(text).resolve().parent
            if Path(text).is_dir():
                raise ConfigError(f"{flag} {text}: is a directory")
            if not directory.is_dir() or not os.access(directory, os.W_OK):
                raise ConfigError(f"{flag} {text}: cannot write in {directory}")
        return text

    return parse


def _hostport(flag: str) -> Any:
    def parse(text: str) -> tuple[str, int]:
        try:
            return units.parse_hostport(text, flag)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    return parse


def _shard(text: str) -> tuple[int, int]:
    m = re.match(r"^\s*(\d+)\s*/\s*(\d+)\s*$", text)
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise ConfigError(f"--shard {text!r} must be INDEX/COUNT with 0 <= INDEX < COUNT, like 0/4")
    return int(m.group(1)), int(m.group(2))


def _run_id(text: str) -> str:
    if not contract.RUN_ID.match(text):
        raise ConfigError(f"--run-id {text!r}: use 1 to {contract.RUN_ID_MAX} letters, digits, '-' or '_'")
    return text


MAX_DURATION = 30 * 86400.0  # a run longer than 30 days is a typo (1e12 s), not a test
MAX_WAIT = 86400.0  # --timeout, --reconcile-wait


def _finite(flag: str, most: float) -> Any:
    def parse(value: float) -> float:
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{flag} must be more than 0 seconds, got {value:g}")
        if value > most:
            raise ConfigError(f"{flag} {value:g} is more than {most:,.0f} seconds ({most / 86400:g} days)")
        return value

    return parse


def _wait(flag: str) -> Any:
    def parse(value: float) -> float:
        if not 0 <= value <= MAX_WAIT:
            raise ConfigError(f"{flag} {value:g} must be between 0 and {MAX_WAIT:,.0f} seconds")
        return value

    return parse


# --- the report's view of some options --------------------------------------------------------------------------


def _show_throttle(spec: RateSpec | None) -> dict[str, Any]:
    return {"throttle_per_s": spec.per_second if spec else None, "max_burst": spec.max_burst if spec else None}


def _show_domains(domains: tuple[Weighted, ...]) -> dict[str, Any]:
    return {"domains": {d.name: d.weight for d in domains}}


def _show_weights(key: str) -> Any:
    def show(items: tuple[Weighted, ...]) -> dict[str, Any]:
        return {key: {i.name: i.weight for i in items}}

    return show


def _show_sources(sources: tuple[Weighted, ...]) -> dict[str, Any]:
    # `source_address` (one address) is what reports always held; `source_addresses` holds them all.
    return {
        "source_address": sources[0].name if sources else None,
        "source_addresses": {s.name: s.weight for s in sources},
    }


def _show_body_size(size: tuple[int, int] | LogNormalSize | QuantileSize) -> dict[str, Any]:
    if isinstance(size, LogNormalSize):
        return {"body_size": [size.low, size.high], "body_size_median": size.median, "body_size_p99": size.p99}
    if isinstance(size, QuantileSize):
        median, p99 = round(size.quantile(0.5)), round(size.quantile(0.99))
        return {"body_size": [size.low, size.high], "body_size_median": median, "body_size_p99": p99}
    return {"body_size": list(size), "body_size_median": None, "body_size_p99": None}


def _show_profile(profile: Profile | None) -> dict[str, Any]:
    return {"profile": profile.text if profile else None}


def _show_thresholds(items: tuple[Threshold, ...]) -> dict[str, Any]:
    return {"fail_if": [t.text for t in items]}


def _show_workload(workload: Workload | None) -> dict[str, Any]:
    if workload is None:
        return {"workload": None}
    return {"workload": {"file": Path(workload.path).name, "sha256": workload.sha256}}


def _show_headers(headers: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    return {"headers": [f"{n}: {v}" for n, v in headers]}


def _show_shard(shard: tuple[int, int]) -> dict[str, Any]:
    return {"shard": f"{shard[0]}/{shard[1]}"}


def _show_reconcile(sinks: tuple[str, ...] | None) -> dict[str, Any]:
    return {"reconcile": list(sinks) if sinks else None}


def _reset_sinks(texts: list[str]) -> tuple[str, ...]:
    sinks = [url for text in _listed(texts) for url in parse_sink_urls(text, "--reset-sink")]
    return tuple(dict.fromkeys(sinks))


def without_credentials(url: str) -> str:
    """The URL as shown: a sink's admin token given in it (`http://:TOKEN@host:8026`) left out."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


def _show_reset(sinks: tuple[str, ...]) -> dict[str, Any]:
    return {"reset_sink": [without_credentials(url) for url in sinks]}


@dataclass(frozen=True)
class RunConfig:
    """Every option of a run. A field's default is what a run does when the option is not given."""

    # Workload file
    workload: Workload | None = option(
        None,
        help="Read the run's options from this TOML file (keys are the options' names); options given win",
        doc=(
            "read the run's options from this TOML file: each key is an option's name (`domain`, `body-size`, "
            "`profile`, `fail-if`...) with the value written as on the command line, or a list for a repeatable "
            'option, or a table of weights (`domain = { "gmail.com" = 67.4 }`). Options given on the command '
            "line or in variables win over the file. A bad key or value is named with its `FILE:LINE` "
            "([below](#workload-files), [an example](workloads/production.toml))"
        ),
        panel=WORKLOAD,
        metavar="FILE.toml",
        parse=_workload,
        report=_show_workload,
    )
    # Target
    target: str = option(
        DEFAULT_TARGET,
        help="Where to send: HOST:PORT, [IPv6]:PORT (with --http, the MTA's URL)",
        doc=(
            "where to send (an MTA under test, or a sink); `[v6]:PORT` for IPv6; with `--http`, the MTA's URL "
            f"(default `{DEFAULT_HTTP_TARGET}`, as KumoMTA's traffic-gen)"
        ),
        panel=TARGET,
        metavar="HOST:PORT",
        shown_default=f"{DEFAULT_TARGET}; with --http, {DEFAULT_HTTP_TARGET}",
    )
    domains: tuple[DomainWeight, ...] = option(
        tuple(DomainWeight(d, 1.0) for d in DEFAULT_DOMAINS),
        help="A destination domain and its weight, repeatable; the variable holds several, separated by spaces",
        doc="repeatable; float weights (default 1); each message goes to one domain chosen by weight",
        panel=TARGET,
        metavar="NAME[:WEIGHT]",
        flags=("--domain",),
        given_as=list[str],
        parse=_domains,
        shown_default=" ".join(DEFAULT_DOMAINS),
        report=_show_domains,
    )
    domain_suffix: str = option(
        DEFAULT_SUFFIX,
        help="Appended to every generated domain so no mail can reach a real mailbox; '' for none",
        doc=(
            "appended to every generated domain (`gmail.com.sink.test`); `.test` is reserved by RFC 2606, so no "
            "generated address can reach a real mailbox. `''` disables it (then mail is addressed to the real "
            "domains: only do this when the target routes everything to a sink)"
        ),
        panel=TARGET,
        metavar="SUFFIX",
        parse=_suffix,
    )
    sender: str | None = option(
        None,
        help="Fixed envelope sender",
        doc="fixed envelope sender",
        panel=TARGET,
        metavar="ADDRESS",
        parse=_address("--sender"),
        shown_default="noreply@<domain>.<suffix>",
    )
    recipient: str | None = option(
        None,
        help="Fixed envelope recipient: no weights, no suffix",
        doc="fixed envelope recipient: no weights, no suffix; the report has one domain, the recipient's",
        panel=TARGET,
        metavar="ADDRESS",
        parse=_address("--recipient"),
        shown_default="user-<n>.<run>@<domain>.<suffix>",
    )
    # Traffic mix
    tenants: tuple[Weighted, ...] = option(
        (),
        help="A tenant and its weight, repeatable: written in the --tenant-header of each message",
        doc=(
            "repeatable; each message is given one tenant, chosen by weight, in its `--tenant-header` (KumoMTA "
            "users key their queues on it); counted per tenant in the summary and the report"
        ),
        panel=MIX,
        metavar="NAME[:WEIGHT]",
        flags=("--tenant",),
        given_as=list[str],
        parse=_labels("--tenant"),
        report=_show_weights("tenants"),
    )
    campaigns: tuple[Weighted, ...] = option(
        (),
        help="A campaign and its weight, repeatable: written in the --campaign-header of each message",
        doc="repeatable; each message is given one campaign, chosen by weight, in its `--campaign-header`; counted "
        "per campaign",
        panel=MIX,
        metavar="NAME[:WEIGHT]",
        flags=("--campaign",),
        given_as=list[str],
        parse=_labels("--campaign"),
        report=_show_weights("campaigns"),
    )
    tenant_header: str = option(
        "X-Tenant",
        help="The header that names the tenant",
        doc="the header that names the tenant",
        panel=MIX,
        metavar="NAME",
        parse=_header_name("--tenant-header"),
    )
    campaign_header: str = option(
        "X-Campaign",
        help="The header that names the campaign",
        doc="the header that names the campaign",
        panel=MIX,
        metavar="NAME",
        parse=_header_name("--campaign-header"),
    )
    sender_domains: tuple[Weighted, ...] = option(
        (),
        help="A sending domain and its weight, repeatable: the sender is noreply@<it>.<suffix>",
        doc=(
            "repeatable; each message is sent from `noreply@<domain>.<suffix>` (From and envelope), the domain "
            "chosen by weight; counted per sender domain. Without it, the sender is in the recipient's domain"
        ),
        panel=MIX,
        metavar="NAME[:WEIGHT]",
        flags=("--sender-domain",),
        given_as=list[str],
        parse=_sender_domains,
        report=_show_weights("sender_domains"),
    )
    # Load shape
    concurrency: int = option(
        10 * (os.cpu_count() or 1),
        help="Connections in all, opened at --connect-rate and held for the whole run",
        doc=(
            "connections in all (split over `--processes`), opened at `--connect-rate` and held for the whole "
            "run, with or without `--throttle` ([below](#connections)). The open-files soft limit is raised to "
            "the hard limit; a count that cannot fit is refused with the limit named"
        ),
        panel=LOAD,
        metavar="N",
        given_as=int,
        shown_default="10 x CPUs",
    )
    connect_rate: float = option(
        DEFAULT_CONNECT_RATE,
        help="How fast the connections are first opened, in all: 500/s",
        doc=(
            "how fast the connections are first opened, in all: 20,000 connections take 10 s at the default, 100 "
            "take 50 ms"
        ),
        panel=LOAD,
        metavar="RATE",
        parse=_connect_rate,
        shown_default="2000/s",
        report="connect_rate_per_s",
    )
    duration: float | None = option(
        DEFAULT_DURATION,
        help="Seconds to send for",
        doc=(
            "how long to send; messages in flight at the end get 10 s to finish. With `--profile` the run lasts as "
            "long as its stages, and `--duration` caps it"
        ),
        panel=LOAD,
        metavar="SECONDS",
        given_as=float,
        parse=_finite("--duration", MAX_DURATION),
        shown_default="60, or none with --message-count, or the --profile's",
        report="duration_s",
    )
    message_count: int | None = option(
        None,
        help="Send exactly this many messages (not cut short by the default duration)",
        doc="exactly N attempts; not cut short by the default duration (give `--duration` too to cap it)",
        panel=LOAD,
        metavar="N",
        given_as=int,
    )
    throttle: RateSpec | None = option(
        None,
        help="One rate for the whole run, all connections and processes: 300/s, 6000/m, 1,000/hr[,max_burst=N]",
        doc=(
            "one rate for the whole run, all connections and processes: `300/s`, `6000/m`, `1,000/hr`, "
            "`50/min,max_burst=10`, and KumoMTA's spellings `100/5m`, `10/2s`, `100/30sec`, `local:100/s` (one "
            "run is one schedule, so `local:` changes nothing). Open loop: see "
            "[performance.md](performance.md#latency-that-does-not-lie). "
            "When the run achieves less than 98% of it, the live view, the summary and the report (`schedule`) "
            "say so, with the messages that fell due and were never sent"
        ),
        panel=LOAD,
        metavar="RATE",
        parse=_throttle,
        report=_show_throttle,
    )
    profile: Profile | None = option(
        None,
        help='Stages of rate over time: "ramp 0..500/s 60s, hold 500/s 10m, spike 2000/s 30s" or stairs "step ..."',
        doc=(
            "stages of rate over time, open loop like `--throttle`, shared by all processes: `ramp [FROM..]TO "
            "DURATION`, `hold RATE DURATION`, `spike RATE DURATION`, `pause DURATION`, and last the stairs `step "
            "RATE every DURATION [from RATE] [to RATE] [until CONDITION [or CONDITION]]` that find the highest "
            "rate that holds. The run lasts as long as the stages (`--duration` caps it) "
            "([below](#load-profiles))"
        ),
        panel=LOAD,
        metavar="STAGES",
        parse=_profile,
        report=_show_profile,
    )
    processes: int = option(
        1,
        help="Processes to spread the connections over",
        doc=(
            "spread the connections over N processes (one per core is sensible); counts and histograms are "
            "merged, `--throttle` is one schedule shared by all, `--concurrency` and `--message-count` are split "
            "exactly"
        ),
        panel=LOAD,
        metavar="N",
        given_as=int,
    )
    messages_per_connection: int | None = option(
        None,
        help="Reconnect after this many messages",
        doc="QUIT and reconnect after N messages",
        panel=LOAD,
        metavar="N",
        given_as=int,
        shown_default="never",
    )
    recipients_per_message: int = option(
        1,
        help="RCPT commands per message",
        doc="RCPTs per message, all in the message's domain, each a unique address",
        panel=LOAD,
        metavar="N",
        given_as=int,
    )
    keep_going: bool = option(
        False,
        help="Go on when a connection cannot be opened: count it and retry with backoff, instead of stopping",
        doc=(
            "an error on an open connection (lost, a timeout) always ends only that connection: it is counted and "
            "the worker reconnects with backoff (50 ms doubling to 2 s), as KumoMTA's traffic-gen does. "
            "`--keep-going` goes on when a connection cannot be opened too (refused, no greeting, failed TLS or "
            "AUTH: a target restarting); without it that ends the run, exit 1 ([below](#outcomes))"
        ),
        panel=LOAD,
        given_as=bool,
    )
    timeout: float = option(
        DEFAULT_TIMEOUT,
        help="Seconds to wait for any connect or reply",
        doc=(
            "the longest wait for a connection or any reply; past it, the message is an error. A target that "
            "sends no greeting before `--timeout` or the end of the run is an error named as such (exit 1)"
        ),
        panel=LOAD,
        metavar="SECONDS",
        given_as=float,
        parse=_finite("--timeout", MAX_WAIT),
        report="timeout_s",
    )
    seed: int | None = option(
        None,
        help="Seed the random choices (domains, bodies, sizes)",
        doc="seed the domain choices, body text and sizes",
        panel=LOAD,
        metavar="N",
        given_as=int,
        shown_default="random",
    )
    # Content
    content: str = option(
        "text",
        help="text, html (multipart/alternative text and HTML) or mixed (html, some with an attachment)",
        doc=(
            "`text`: text/plain; `html`: multipart/alternative, a text and an HTML part; `mixed`: as html, and "
            "`--attachment-share` of the messages are multipart/mixed with a base64 attachment (a PDF, an image...)"
            ". Bodies differ from message to message"
        ),
        panel=CONTENT,
        metavar="KIND",
        parse=_content,
    )
    attachment_share: float = option(
        20.0,
        help="With --content mixed: the percentage of messages with an attachment",
        doc="with `--content mixed`: the percentage of messages with an attachment",
        panel=CONTENT,
        metavar="PERCENT",
        parse=_percent("--attachment-share"),
    )
    body_size: tuple[int, int] | LogNormalSize | QuantileSize = option(
        (1024, 1024),
        help="Body size: 1024, 60kb, 1MiB, a range 10kb..200kb, log-normal median=20kb,p99=2mb, or quantiles "
        "min=1kb,p50=20kb,max=10mb",
        doc=(
            "at least this many bytes of body (text, or all the MIME parts); `60kb` (1000s), `1MiB` (1024s); a "
            "range `10kb..200kb` picks a size per message, uniformly; `median=20kb,p99=2mb[,max=20mb]` draws it "
            "from a log-normal with that median and 99th percentile, none above `max` (10 x the p99 unless given); "
            "`min=1kb,p10=3kb,p50=20kb,p99=2mb,max=10mb` draws it so that these are its quantiles (`pN` for any N, "
            "`min` and `max` required), log-linearly between two of them: a log's sizes, as "
            "[`trafficgen workload from-logs`](#deriving-a-workload-and-a-policy-from-the-mtas-logs) writes them"
        ),
        panel=CONTENT,
        metavar="SIZE",
        given_as=str,
        parse=_body_size,
        shown_default="1024",
        report=_show_body_size,
    )
    body_file: str | None = option(
        None,
        help="Send this whole message (headers and body)",
        doc=(
            "send this file as the whole message (headers and body): line endings made CRLF, dot-stuffed; "
            "`X-Trafficgen-Id` and `--header`s are put in front"
        ),
        panel=CONTENT,
        metavar="PATH",
        parse=_readable_file,
    )
    headers: tuple[tuple[str, str], ...] = option(
        (),
        help='Extra header "Name: value", repeatable; the variable holds one per line',
        doc="repeatable extra header",
        panel=CONTENT,
        metavar='"NAME: VALUE"',
        flags=("--header",),
        given_as=list[str],
        parse=_headers,
        report=_show_headers,
    )
    # SMTP
    starttls: bool = option(
        False,
        help="Use STARTTLS when offered (certificates not verified)",
        doc="use STARTTLS when the server offers it (certificates are not verified)",
        panel=SMTP,
        given_as=bool,
    )
    auth_user: str | None = option(
        None,
        help="AUTH PLAIN/LOGIN user (with --http, HTTP basic authentication)",
        doc=(
            "AUTH PLAIN, or LOGIN when PLAIN is not offered; a refused login is an error. With `--http`, the "
            "user of HTTP basic authentication (KumoMTA's `http_server_validate_auth_basic`)"
        ),
        panel=SMTP,
        metavar="USER",
    )
    auth_password: str | None = option(None, help="AUTH password", panel=SMTP, metavar="PASSWORD", report=HIDDEN)
    ehlo: str = option(
        f"trafficgen.{DEFAULT_SUFFIX}",
        help="EHLO name",
        doc="the EHLO name",
        panel=SMTP,
        metavar="NAME",
        shown_default="trafficgen.<suffix>",
        report=HIDDEN,
    )
    source_address: tuple[Weighted, ...] = option(
        (),
        help="Local address to connect from, repeatable with weights: connections are spread over them",
        doc=(
            "local address to connect from; repeatable, each with an optional weight (`127.0.0.2:3`, "
            "`[::1]:2`): the connections are spread over them in proportion (round-robin when the weights are "
            "equal), and counted per source address. Each must be an address of this host (on Linux any "
            "127.x.y.z is, without setup)"
        ),
        panel=SMTP,
        metavar="IP[:WEIGHT]",
        given_as=list[str],
        parse=_sources,
        report=_show_sources,
    )
    pipelining: bool = option(
        True,
        help="Use PIPELINING when offered",
        doc=(
            "on: MAIL, every RCPT and DATA leave in one write when the server offers PIPELINING; `--no-"
            "pipelining` sends each command and waits for its reply"
        ),
        panel=SMTP,
        flags=("--pipelining/--no-pipelining",),
        given_as=bool,
    )
    # Output
    json_path: str | None = option(
        None,
        help="Write the JSON report here ('-': stdout)",
        doc="write the JSON report ([report.md](report.md)); `-` writes it to stdout and the summary to stderr",
        panel=OUTPUT,
        metavar="PATH",
        flags=("--json",),
        parse=_writable("--json"),
        report=HIDDEN,
    )
    html_path: str | None = option(
        None,
        help="Write the HTML report here (charts; one file that needs no network)",
        doc=(
            "write the HTML report: one self-contained file (the charting library inside it, nothing fetched when "
            "viewed) with throughput, latency and connections over time, outcomes per domain, the top replies, "
            "the profile's stages and the thresholds ([report.md](report.md#the-html-report)). Also "
            "`trafficgen report html REPORT.json` from a saved report"
        ),
        panel=OUTPUT,
        metavar="PATH",
        flags=("--html",),
        parse=_writable("--html"),
        report=HIDDEN,
    )
    output: str = option(
        "summary",
        help="summary (per domain and reply), or kumomta (KumoMTA traffic-gen's closing lines)",
        doc=(
            "what is printed at the end: `summary`, the per-domain and per-reply tables; `kumomta`, the lines "
            "KumoMTA's traffic-gen prints, which its users' scripts grep: `sent N messages, failed F over T.`, "
            "`transaction latency: avg=... p99=...`, `overall rate: N msgs/s, ...` ([below](#kumomta-output))"
        ),
        panel=OUTPUT,
        metavar="FORMAT",
        parse=_output,
        report=HIDDEN,
    )
    quiet: bool = option(
        False,
        help="No live progress",
        doc="no live progress (the final summary is still printed)",
        panel=OUTPUT,
        flags=("--quiet", "-q"),
        given_as=bool,
        report=HIDDEN,
    )
    hdr_log: str | None = option(
        None,
        help="Write each second's latency as an HdrHistogram interval log",
        doc="write each second's transaction latency as an HdrHistogram interval log",
        panel=OUTPUT,
        metavar="PATH",
        parse=_writable("--hdr-log"),
        report=HIDDEN,
    )
    metrics: tuple[str, int] | None = option(
        None,
        help="Serve live counters and latency for Prometheus at HOST:PORT",
        doc="serve live counters and latency for Prometheus at `http://HOST:PORT/metrics`",
        panel=OUTPUT,
        metavar="HOST:PORT",
        parse=_hostport("--metrics"),
        report=HIDDEN,
    )
    # Thresholds (CI)
    fail_if: tuple[Threshold, ...] = option(
        (),
        help='A condition the run must meet, repeatable: "p99 < 2s", "success_rate > 0.95", "gmail.com: errors < 1%"',
        doc=(
            "a condition the run must meet, as k6 writes thresholds; repeatable. Metrics: latency `p50` ... "
            "`p99.9`, `min`, `mean`, `max` (from the intended send time under `--throttle` or `--profile`), "
            "`success_rate`, `accepted`, `tempfailed`, `permfailed`, `errors`, `attempted` (counts, or shares "
            "with `%`), `throughput` (msg/s), `never_sent`; a `DOMAIN:` prefix (or `tenant=NAME:`, `campaign=`, "
            "`sender-domain=`, `source=`) scopes it. Each is printed and in the report; one that fails gives exit "
            "status 3 ([below](#thresholds))"
        ),
        panel=CI,
        metavar='"EXPR"',
        flags=("--fail-if",),
        given_as=list[str],
        parse=_thresholds,
        report=_show_thresholds,
    )
    fail_fast: bool = option(
        False,
        help="Check the --fail-if thresholds each second and stop the run at the first that fails",
        doc=(
            "check the `--fail-if` thresholds once a second (once 100 messages have their outcome) and stop the "
            "run at the first that fails: in-flight messages finish, the report is written, exit status 3"
        ),
        panel=CI,
        given_as=bool,
    )
    # Reconciliation
    reconcile: tuple[str, ...] | None = option(
        None,
        help="At the end, ask the sinks at these admin URLs (comma-separated) what became of every recipient",
        doc=(
            "at the end, ask the sink(s) at these admin URLs what became of every recipient the target accepted, "
            "and so of every message: delivered, duplicated, bounced (and whether the MTA sent a DSN), expired, "
            "deferred or pending, lost; attempts, transit times "
            "([deployment.md](deployment.md#did-the-mta-lose-or-duplicate-mail-reconciliation))"
        ),
        panel=RECONCILE,
        metavar="URL[,URL]",
        parse=parse_sink_urls,
        report=_show_reconcile,
    )
    reconcile_wait: float = option(
        0.0,
        help="Ask once a second for up to this long while the MTA delivers its queue",
        doc=(
            "ask once a second for up to this long while the MTA delivers its queue, showing the recipients "
            "delivered and awaited so far and the time left; ends early once nothing is left to wait for"
        ),
        panel=RECONCILE,
        metavar="SECONDS",
        given_as=float,
        parse=_wait("--reconcile-wait"),
        report=HIDDEN,
    )
    mta_queue: str | None = option(
        None,
        help="A command that prints the MTA's queue (postqueue -j): recipients it names are deferred, not lost",
        doc=(
            "a shell command that prints the MTA's queue, run before each reading of the sinks' ledgers (Postfix: "
            "`postqueue -j`; Exim: `exim -bp`; any listing that names each queued recipient): a recipient the sink "
            "has not taken that it names is `deferred` (still in the MTA's queue); one it does not name, neither "
            "taken nor bounced nor returned in a DSN, is `lost`. Without it, a recipient the sink only deferred is "
            "`pending`"
        ),
        panel=RECONCILE,
        metavar="COMMAND",
    )
    reset_sink: tuple[str, ...] = option(
        (),
        help="Before the run, make the sink at this admin URL forget what it learnt (DELETE /state); repeatable",
        doc=(
            "before sending, ask the sink(s) at these admin URLs to forget what they learnt from earlier runs "
            "(`DELETE /state`: clients blocked by `escalate`, rate buckets, the greylist), so runs compared with "
            "`report compare` start equal; repeatable, or comma-separated. A sink with `--admin-token` takes it in "
            "the URL, `http://:TOKEN@host:8026` (never shown). A sink that does not answer stops the run before it "
            "starts (exit 1). The report's `config.reset_sink` lists them "
            "([policy.md](policy.md#state-what-the-sink-remembers))"
        ),
        panel=RECONCILE,
        metavar="URL",
        given_as=list[str],
        parse=_reset_sinks,
        report=_show_reset,
    )
    run_id: str = option(
        factory=lambda: secrets.token_hex(6),
        help="Run id for the trace header",
        doc=(
            "the run id (1 to 64 letters, digits, `-`, `_`) in `X-Trafficgen-Id: <run_id>.<seq>; t=<ms>`, in each "
            "recipient (`user-<n>.<run>@...`: in lower case, or a digest of it past 32 characters) and in the report"
        ),
        panel=RECONCILE,
        metavar="ID",
        parse=_run_id,
        shown_default="random",
        report=HIDDEN,
    )
    # KumoMTA HTTP injection
    http: bool = option(
        False,
        help="Submit through KumoMTA's HTTP injection API at the --target URL",
        doc=(
            "submit through KumoMTA's HTTP injection API: `--target http://HOST:PORT`, `POST "
            "{target}/api/inject/v1` ([deployment.md](deployment.md#kumomtas-http-injection-api))"
        ),
        panel=HTTP,
        given_as=bool,
    )
    http_batch_size: int = option(
        1,
        help="Recipients per injected message, one request each (with --http)",
        doc=(
            "with `--http`: recipients per injected message, one request each. It counts recipients, as "
            "KumoMTA's traffic-gen does: `--message-count` counts requests (messages), so `--message-count 100 "
            "--http-batch-size 10` injects 100 requests for 1,000 recipients, and the report counts both"
        ),
        panel=HTTP,
        metavar="N",
        given_as=int,
    )
    http_defer_spool: bool = option(
        False,
        help="Ask the MTA to defer spooling (with --http)",
        doc="with `--http`: KumoMTA's `deferred_spool`",
        panel=HTTP,
        given_as=bool,
    )
    http_defer_generation: bool = option(
        False,
        help="Ask the MTA to defer generation (with --http)",
        doc="with `--http`: KumoMTA's `deferred_generation`",
        panel=HTTP,
        given_as=bool,
    )
    # Many machines
    shard: tuple[int, int] = option(
        (0, 1),
        help="This instance's share of a run spread over several machines with one --run-id",
        doc=(
            "this instance's share of a run spread over COUNT instances with one `--run-id`: message ids (and "
            "recipients) `seq = n * COUNT + INDEX`"
        ),
        panel=FLEET,
        metavar="INDEX/COUNT",
        parse=_shard,
        shown_default="0/1",
        report=_show_shard,
    )

    # --- derived, read-only -------------------------------------------------------------------------------

    @cached_property
    def endpoint(self) -> tuple[str, int]:
        """(host, port) of an SMTP target."""
        return units.parse_hostport(self.target, "--target")

    @property
    def host(self) -> str:
        return self.endpoint[0]

    @property
    def port(self) -> int:
        return self.endpoint[1]

    @property
    def http_url(self) -> str:
        return self.target if self.http else ""

    @property
    def shard_index(self) -> int:
        return self.shard[0]

    @property
    def shard_count(self) -> int:
        return self.shard[1]

    @property
    def marks_per_message(self) -> int:
        """What reconciliation follows in each message: every recipient trafficgen numbers, or with --recipient
        (one fixed address, no number) the message as a whole."""
        return 1 if self.recipient else self.recipients_per_message

    def domain_with_suffix(self, name: str) -> str:
        return f"{name}.{self.domain_suffix}" if self.domain_suffix else name

    @property
    def domain_names(self) -> list[str]:
        """The domains the report counts: the recipient's with --recipient, else each --domain."""
        return [self.recipient.rpartition("@")[2]] if self.recipient else [d.name for d in self.domains]

    @property
    def dimensions(self) -> dict[str, list[str]]:
        """The dimensions besides the domain that this run uses, by the report's key: tenants, campaigns..."""
        given = {
            "tenants": self.tenants,
            "campaigns": self.campaigns,
            "sender_domains": self.sender_domains,
            "source_addresses": self.source_address,
        }
        return {key: [i.name for i in items] for key, items in given.items() if items}

    @property
    def scheduled(self) -> bool:
        """Messages are due by a schedule (--throttle or --profile): latency is measured from the due times."""
        return self.throttle is not None or self.profile is not None

    @property
    def live_view(self) -> bool:
        """Something reads everything counted while the run goes: --metrics, --fail-fast, or the stairs."""
        return bool(self.metrics or self.fail_fast or (self.profile and self.profile.stairs))

    def public(self) -> dict[str, object]:
        """The config as the JSON report shows it (no password, no local paths)."""
        shown = report(self)
        shown["http_batch_size"] = self.http_batch_size if self.http else None
        return shown


# --- checks across options, one concern each ------------------------------------------------------------------------


def _resolve_target(fields: dict[str, Any]) -> None:
    target = str(fields.get("target", DEFAULT_TARGET))
    if fields.get("http"):
        if not _URL.match(target):
            raise ConfigError(f"--target {target!r}: with --http, give the MTA's URL, like http://127.0.0.1:8000")
        fields["target"] = target.rstrip("/") + INJECT_PATH
        return
    if fields.get("http_batch_size", 1) != 1 or fields.get("http_defer_spool") or fields.get("http_defer_generation"):
        raise ConfigError("--http-batch-size, --http-defer-spool and --http-defer-generation go with --http")
    if re.match(r"^https?://", target):
        raise ConfigError(f"--target {target!r} is a URL: add --http to submit through the injection API")
    try:
        host, port = units.parse_hostport(target, "--target")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if port == 0:
        raise ConfigError(f"--target {target!r}: port 0 is not a port to connect to")
    fields["target"] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_http(fields: dict[str, Any]) -> None:
    if not fields.get("http"):
        return
    if fields.get("recipients_per_message", 1) != 1:
        raise ConfigError("with --http, --http-batch-size sets the recipients of each message")
    for name, flag in (
        ("starttls", "--starttls"),
        ("source_address", "--source-address"),
    ):
        if fields.get(name):
            raise ConfigError(f"{flag} applies to SMTP, not to --http")
    fields["recipients_per_message"] = fields.get("http_batch_size", 1)


def _check_counts(fields: dict[str, Any]) -> None:
    for name in (
        "concurrency",
        "message_count",
        "messages_per_connection",
        "processes",
        "http_batch_size",
        "recipients_per_message",
    ):
        value = fields.get(name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    processes, count = fields.get("processes", 1), fields.get("message_count")
    concurrency = fields.get("concurrency", RunConfig.concurrency)
    if processes > concurrency:
        raise ConfigError(f"--processes {processes} is more than --concurrency {concurrency}: each needs a connection")
    if count is not None and processes > count:
        raise ConfigError(f"--processes {processes} is more than --message-count {count}")


def _check_times(fields: dict[str, Any]) -> None:
    duration = fields.get("duration")
    if duration is not None and duration <= 0:
        raise ConfigError(f"--duration must be more than 0 seconds, got {duration}")
    if fields.get("timeout", DEFAULT_TIMEOUT) <= 0:
        raise ConfigError(f"--timeout must be more than 0 seconds, got {fields['timeout']}")
    if fields.get("reconcile_wait", 0.0) < 0:
        raise ConfigError(f"--reconcile-wait cannot be negative, got {fields['reconcile_wait']}")
    if fields.get("mta_queue") is not None and not fields.get("reconcile"):
        raise ConfigError("--mta-queue is read at reconciliation: give --reconcile too")
    if fields.get("mta_queue") is not None and not fields["mta_queue"].strip():
        raise ConfigError("--mta-queue is empty: give the command that prints the MTA's queue")
    if fields.get("mta_queue") is not None and fields.get("recipient"):
        raise ConfigError("--mta-queue finds recipients trafficgen numbers, and --recipient gives one fixed address")
    if "duration" not in fields and fields.get("message_count") is not None:
        fields["duration"] = None  # --message-count alone is never cut short by the default duration


def _check_profile(fields: dict[str, Any]) -> None:
    profile: Profile | None = fields.get("profile")
    if profile is None:
        return
    if fields.get("throttle") is not None:
        raise ConfigError("--profile and --throttle both set the rate: give one")
    if fields.get("message_count") is not None:
        raise ConfigError(
            "--profile and --message-count both set how many messages are sent (the stages make them due): give "
            "one (--duration caps a profile)"
        )
    length = profile.duration
    given = fields.get("duration")
    # The run lasts as long as the profile; --duration, when given, caps it.
    fields["duration"] = length if given is None else (given if length is None else min(given, length))


def _check_mix(fields: dict[str, Any]) -> None:
    if fields.get("sender") and fields.get("sender_domains"):
        raise ConfigError("--sender fixes the sender: it cannot go with --sender-domain")
    if fields.get("body_file") and fields.get("content", "text") != "text":
        raise ConfigError("--content shapes generated bodies: it cannot go with --body-file")


def _check_sources(fields: dict[str, Any]) -> None:
    sources: tuple[Weighted, ...] = fields.get("source_address", ())
    if not sources or fields.get("http"):
        return
    host = units.parse_hostport(fields["target"], "--target")[0]
    if _is_ip(host):
        for source in sources:
            if (":" in source.name) != (":" in host):
                raise ConfigError(
                    f"--source-address {source.name} and --target {fields['target']} are not of one IP version"
                )


def _check_thresholds(fields: dict[str, Any]) -> None:
    items: tuple[Threshold, ...] = fields.get("fail_if", ())
    if fields.get("fail_fast") and not items:
        raise ConfigError("--fail-fast stops the run at the first failed --fail-if: give --fail-if")
    recipient = fields.get("recipient")
    known = {
        "domains": [recipient.rpartition("@")[2]] if recipient else [d.name for d in fields.get("domains", ())],
        "tenants": [t.name for t in fields.get("tenants", ())],
        "campaigns": [c.name for c in fields.get("campaigns", ())],
        "sender_domains": [d.name for d in fields.get("sender_domains", ())],
        "source_addresses": [s.name for s in fields.get("source_address", ())],
    }
    if "domains" not in fields and not recipient:
        known["domains"] = list(DEFAULT_DOMAINS)
    for item in items:
        if item.scope_key is not None and item.scope not in known[item.scope_key]:
            what = item.scope_key[:-1].replace("_", " ")
            names = ", ".join(known[item.scope_key]) or "none given"
            raise ConfigError(f"--fail-if {item.text!r}: {item.scope!r} is not a {what} of this run ({names})")


def _check_auth(fields: dict[str, Any]) -> None:
    if bool(fields.get("auth_user")) != bool(fields.get("auth_password")):
        raise ConfigError("--auth-user and --auth-password go together: give both")


def _default_ehlo(fields: dict[str, Any]) -> None:
    if not fields.get("ehlo"):  # the default follows --domain-suffix
        fields["ehlo"] = f"trafficgen.{fields.get('domain_suffix', DEFAULT_SUFFIX) or 'localdomain'}"


CHECKS = (
    _resolve_target,
    _check_http,
    _check_counts,
    _check_profile,
    _check_times,
    _check_mix,
    _check_sources,
    _check_thresholds,
    _check_auth,
    _default_ehlo,
)


def build(**given: Any) -> RunConfig:
    """Validate options as a user writes them (by field name; None or absent: the default); ConfigError names
    the first bad one. With `workload` (a file), the file's options apply where none is given."""
    if given.get("workload") is not None:
        try:
            from_file = workloads.load(str(given["workload"]), RunConfig)
        except workloads.WorkloadError as e:
            raise ConfigError(str(e)) from None
        given = {**from_file, **{k: v for k, v in given.items() if v is not None}}
    if given.get("http") and not given.get("target"):
        given = {**given, "target": DEFAULT_HTTP_TARGET}
    try:
        fields = values(RunConfig, given)
    except OptionError as e:
        raise ConfigError(str(e)) from None
    for check in CHECKS:
        check(fields)
    return RunConfig(**fields)
