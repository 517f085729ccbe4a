"""SinkConfig: every option of a sink, declared once, built once (by the CLI or a program), then only read.

Each field is an option (mailload.options): its help, --help panel, metavar, environment variable and how the
text a user writes becomes its value are declared on the field; the command line and docs/cli.md come from them.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from mailload import contract, units
from mailload.options import HIDDEN, OptionError, option, values
from mailload.values import Choice, Count, Flag, HostPort, Seconds, Text
from smartsink.policy.model import Rate

DEFAULT_LISTEN = "127.0.0.1:2026"
# Not 8000: kumod's HTTP listener and KumoMTA traffic-gen's --http target are there, so a sink on a kumod host
# could not start, and trafficgen --http with its default would inject straight into the sink. 8026 is free of
# both, and pairs with the SMTP port 2026.
DEFAULT_HTTP_PORT = 8026
DEFAULT_HTTP = f"127.0.0.1:{DEFAULT_HTTP_PORT}"
DEFAULT_POLICY = "policy/responses.toml"
DEFAULT_SUFFIX = contract.DEFAULT_SUFFIX
# KumoMTA traffic-gen's default suffix: a public name whose MX is loopback. Stripped too, so its users' runs get
# the providers' rules without a flag.
KUMO_SUFFIX = "mx-sink.wezfurlong.org"
DEFAULT_MAX_MESSAGE_SIZE = "50MB"
# The largest size the sink advertises: the reference engine holds a message in memory, and no provider takes more.
MAX_MESSAGE_SIZE = 1024**3
AUTH_MODES = ("off", "any", "required")
ENGINES = ("fast", "aiosmtpd")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
# TEST-NET-1 (RFC 5737): documentation only, never a real host, so an MX address the sink's DNS gives out can only
# reach the sink (through the redirect) and never anyone else.
DEFAULT_DNS_NETWORK = "192.0.2.0/24"
DEFAULT_DNS_RATE = "5000/s"
STATE_MODES = ("fresh", "keep")
DEFAULT_STATE_FILE = "smartsink-state.json"
# Where KumoMTA's smart sink keeps its policy (its compose file mounts ./policy there): served when it exists and
# no --policy is given, so a KumoMTA user's mount is not silently ignored.
KUMO_POLICY = "/opt/kumomta/etc/policy/responses.toml"
LISTEN, POLICY, SMTP, DNS, RUN = "Listeners", "Policy", "SMTP", "DNS", "Running"


class ConfigError(ValueError):
    """An option that cannot be used; the message names it."""


def default_policy_path() -> str:
    """./policy/responses.toml when run from a checkout, else KumoMTA's policy path when a file is there, else the
    copy shipped inside the package."""
    for path in (DEFAULT_POLICY, KUMO_POLICY):
        if Path(path).is_file():
            return path
    return str(resources.files("smartsink").joinpath("data/responses.toml"))


# --- reading one option ------------------------------------------------------------------------------------------


def _network(flag: str, version: int) -> Any:
    def parse(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        if version == 6 and text.strip().lower() in ("", "off", "none"):
            return None
        try:
            network = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            example = "2001:db8::/64" if version == 6 else DEFAULT_DNS_NETWORK
            raise ConfigError(f"{flag} {text!r} is not a network like {example}") from None
        if network.version != version:
            raise ConfigError(f"{flag} {text!r} must be an IPv{version} network")
        return network

    return parse


def _dns_rate(text: str) -> Rate | None:
    if text.strip().lower() in ("off", "none", "0"):
        return None
    try:
        spec = units.parse_rate(text)
    except ValueError as e:
        raise ConfigError(f"--dns-rate: {e}") from None
    if spec.count <= 0:
        raise ConfigError(f"--dns-rate {text!r} must be more than 0 (or off)")
    return Rate(spec.count, spec.per)


def _suffixes(text: str) -> tuple[str, ...]:
    return tuple(s.strip().strip(".").lower() for s in text.split(",") if s.strip().strip("."))


def _size(text: str) -> int:
    try:
        size = units.parse_size(text)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if size < 1024:
        raise ConfigError(f"--max-message-size {text!r} is below 1 KiB")
    if size > MAX_MESSAGE_SIZE:
        raise ConfigError(f"--max-message-size {text!r} is larger than the sink's bound of 1 GiB")
    return size


def _file(flag: str) -> Any:
    def parse(text: str) -> str:
        if not Path(text).is_file():
            raise ConfigError(f"{flag} {text}: no such file")
        return text

    return parse


def _token(text: str) -> str:
    token = text.strip()
    if len(token) < 16 or not re.fullmatch(r"[\x21-\x7e]+", token):
        raise ConfigError("--admin-token must be at least 16 visible characters, without spaces")
    return token


def _token_file(text: str) -> str:
    try:
        return _token(Path(text).read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"--admin-token-file {text}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--admin-token-file {text}: not UTF-8 text") from None
    except ConfigError as e:
        raise ConfigError(f"--admin-token-file {text}: {str(e).removeprefix('--admin-token ')}") from None


def _hostname(text: str) -> str:
    if not re.match(r"^[\x21-\x7e]{1,255}$", text):
        raise ConfigError(f"--hostname {text!r} must be a name without spaces or control characters")
    return text


@dataclass(frozen=True)
class SinkConfig:
    """Every option of a sink. A field's default is what the sink does when the option is not given."""

    # Listeners
    listen: tuple[str, int] = option(
        ("127.0.0.1", 2026),
        help="The SMTP listener HOST:PORT (port 0: a free one)",
        doc="the SMTP listener (2026 is where the iptables recipe sends port 25); port 0 picks a free one",
        panel=LISTEN,
        metavar="HOST:PORT",
        kind=HostPort(),
        shown_default=DEFAULT_LISTEN,
    )
    http: tuple[str, int] | None = option(
        ("127.0.0.1", DEFAULT_HTTP_PORT),
        help="The admin listener HOST:PORT (/health, /metrics, /state, /runs, the inject API); 'off' for none",
        doc=(
            "the admin listener: `/health`, `/metrics`, `/state`, `/api/inject/v1`, `/runs/<id>`, "
            "`/policy/overrides` ([policy.md](policy.md#behaviour-over-time-schedulename-and-policyoverrides)); "
            "`off` for none. Not 8000, where kumod and KumoMTA traffic-gen's `--http` are"
        ),
        panel=LISTEN,
        metavar="HOST:PORT",
        kind=HostPort(off=True),
        shown_default=DEFAULT_HTTP,
    )
    admin_token: str | None = option(
        None,
        help="A secret every admin request that changes something must carry (Bearer, or Basic's password)",
        doc=(
            "a secret (16 or more visible characters) that every admin request that changes state must carry "
            "(`POST`/`DELETE /policy/overrides`, `DELETE /state`, `POST /api/inject/v1`): `Authorization: Bearer "
            "TOKEN`, or HTTP basic auth with any user and the token as the password; others get 401. Unset: no "
            "credential "
            "([deployment.md](deployment.md#the-admin-listener))"
        ),
        panel=LISTEN,
        metavar="TOKEN",
        kind=Text(_token),
        report=HIDDEN,
    )
    admin_token_file: str | None = option(
        None,
        help="Read --admin-token from this file (a mounted secret)",
        doc="read `--admin-token` from this file (a Docker or Kubernetes secret), surrounding blanks dropped",
        panel=LISTEN,
        metavar="PATH",
        kind=Text(_token_file),
        report=HIDDEN,
    )
    workers: int = option(
        1,
        help="Processes serving the SMTP port (SO_REUSEPORT)",
        doc=(
            "processes serving the SMTP port (SO_REUSEPORT) under a supervisor; use one per core for the most "
            "throughput"
        ),
        panel=LISTEN,
        metavar="N",
        kind=Count(at_least=1),
    )
    # Policy
    policy_path: str = option(
        factory=default_policy_path,
        help="The policy file, watched and reloaded",
        doc="the policy ([policy.md](policy.md)); watched and reloaded",
        panel=POLICY,
        metavar="PATH",
        flags=("--policy",),
        shown_default=f"./policy/responses.toml, else {KUMO_POLICY}, else the copy inside the package",
    )
    accept_all: bool = option(
        False,
        help="A plain black hole: every recipient 250 at once, no policy read (raw-throughput runs)",
        doc=(
            "a plain black hole for raw-throughput runs: every recipient and message gets 250 at once, no latency, "
            "no limits; no policy is read (`--policy` is ignored). `--max-message-size`, `--auth` and STARTTLS "
            "still apply"
        ),
        panel=POLICY,
        kind=Flag(),
    )
    domain_suffixes: tuple[str, ...] = option(
        (DEFAULT_SUFFIX, KUMO_SUFFIX),
        help="Suffixes stripped from recipient domains before the policy lookup, comma-separated; '' for none",
        doc=(
            "stripped from recipient domains before the policy lookup, so `user@gmail.com.sink.test` gets "
            "gmail.com's rules; `''` for none. A policy's `domain_suffix` key adds more"
        ),
        panel=POLICY,
        metavar="SUFFIX[,SUFFIX]",
        flags=("--domain-suffix",),
        kind=Text(_suffixes),
        shown_default=f"{DEFAULT_SUFFIX},{KUMO_SUFFIX}",
    )
    seed: int | None = option(
        None,
        shown_default="random",
        help="Seed every random choice, for reproducible answers",
        doc=(
            "seed every random choice (worker `i` uses N + i), so one worker answers a given sequence of "
            "recipients the same way each time"
        ),
        panel=POLICY,
        metavar="N",
        kind=Count(),
    )
    state: str = option(
        "fresh",
        help="fresh: start knowing nothing; keep: write what the sink learnt at stop and read it back at start",
        doc=(
            "what the sink has learnt (clients blocked by `escalate`, rate buckets, the greylist; `GET /state`) "
            "lives as long as the sink. `fresh`: a start knows nothing; `keep`: it is written to `--state-file` "
            "at a clean stop and read back at the next start, times kept (a block with 10 minutes left has 10 "
            "minutes less the downtime). Either way `DELETE /state` (or `trafficgen --reset-sink`) forgets it "
            "([policy.md](policy.md#state-what-the-sink-remembers))"
        ),
        panel=POLICY,
        metavar="MODE",
        kind=Choice(STATE_MODES),
    )
    state_file: str = option(
        DEFAULT_STATE_FILE,
        help="With --state keep: the file the state is written to and read from",
        doc="with `--state keep`: where the state is written at stop and read at start (JSON; written whole or not)",
        panel=POLICY,
        metavar="PATH",
    )
    # SMTP
    max_message_size: int = option(
        50_000_000,
        help="Advertised as SIZE; larger messages get 552: 10MB, 25MiB",
        doc="advertised as SIZE; a larger message (or `SIZE=` at MAIL) gets 552",
        panel=SMTP,
        metavar="SIZE",
        kind=Text(_size),
        shown_default=DEFAULT_MAX_MESSAGE_SIZE,
    )
    starttls: bool = option(
        True,
        help="Offer STARTTLS (--tls-cert, else a certificate made at start); --no-tls: plain SMTP only",
        doc=(
            "offer STARTTLS, as every large provider does, so an MTA with opportunistic TLS makes a handshake per "
            "connection: with `--tls-cert`/`--tls-key`, else a self-signed certificate made at start. `--no-tls` "
            "offers none"
        ),
        panel=SMTP,
        flags=("--tls/--no-tls",),
        kind=Flag(),
    )
    tls_cert: str | None = option(
        None,
        help="PEM certificate for STARTTLS",
        doc="offer STARTTLS with this certificate (and `--tls-key`) instead of one made at start",
        panel=SMTP,
        metavar="PATH",
        kind=Text(_file("--tls-cert")),
    )
    tls_key: str | None = option(
        None, help="PEM key for STARTTLS", panel=SMTP, metavar="PATH", kind=Text(_file("--tls-key"))
    )
    tls_self_signed: bool = option(
        False,
        help="Offer STARTTLS with a certificate made at start (the default now)",
        doc="STARTTLS with a certificate made at start: the default now, kept for command lines that give it",
        panel=SMTP,
        kind=Flag(),
    )
    auth: str = option(
        "off",
        help="AUTH PLAIN/LOGIN: off, any (accept any credentials), required (and demand it)",
        doc=(
            "`any`: offer AUTH PLAIN and LOGIN and accept any credentials (submission-port testing); `required`: "
            "the same, and MAIL without AUTH gets 530"
        ),
        panel=SMTP,
        metavar="MODE",
        kind=Choice(AUTH_MODES),
    )
    hostname: str = option(
        factory=socket.gethostname,
        help="The name in the greeting and the EHLO reply",
        doc="the name in the greeting and EHLO reply",
        panel=SMTP,
        metavar="NAME",
        kind=Text(_hostname),
        shown_default="this host's name",
    )
    engine: str = option(
        "fast",
        help="SMTP engine: fast, or aiosmtpd (the slower reference)",
        doc=(
            "`aiosmtpd` serves with aiosmtpd, the slower reference the fast engine is tested against "
            "([performance.md](performance.md))"
        ),
        panel=SMTP,
        metavar="ENGINE",
        kind=Choice(ENGINES),
    )
    timeout: float = option(
        300.0,  # RFC 5321 4.5.3.2.7: a server waits at least 5 minutes for the next command
        help="How long a client may stay silent (then 421) or leave the replies unread (then cut): 300, 5m",
        doc=(
            "a client silent this long gets `421 4.4.2` and is closed (RFC 5321 asks at least 5 minutes); one "
            "silent in a STARTTLS handshake is closed after it too. A client "
            "that stops reading the replies gets no more answers once 64 KiB of them wait for it (and at most 128 KiB "
            "in the kernel's send buffer; its further "
            "commands are not read either; `smartsink_connections_stalled` counts it), and is cut (a TCP reset, "
            "no reply) when it has taken nothing for this long (checked once a second: cut within a second after); "
            "one that closes or resets its connection gives its place back at once"
        ),
        panel=SMTP,
        metavar="DURATION",
        kind=Seconds(),
    )
    # DNS
    dns: tuple[str, int] | None = option(
        None,
        help="Serve DNS on HOST:PORT (UDP and TCP): the providers' MX topology under the suffixes, for redirect mode",
        doc=(
            "serve DNS on HOST:PORT, UDP and TCP, for an MTA that routes by MX itself (the redirect mode, "
            "[deployment.md](deployment.md#redirect-the-mtas-own-routing-to-the-sink)): authoritative for the names "
            "under the suffixes (`--domain-suffix`, the policy's `domain_suffix`), each domain's real MX hosts "
            "placed under the suffix, an address in `--dns-network` for each; REFUSED for any other name, never "
            "recursion; port 0 picks a free one; `off` (the default) for none"
        ),
        panel=DNS,
        metavar="HOST:PORT",
        kind=HostPort(off=True),
        shown_default="off",
    )
    dns_network: ipaddress.IPv4Network = option(
        ipaddress.IPv4Network(DEFAULT_DNS_NETWORK),
        help="The network the DNS gives MX hosts their addresses in (redirect its port 25 to the sink)",
        doc=(
            "the IPv4 network the DNS gives each MX host a stable address in (a hash of its name, distinct while the "
            "network has room, the same after restarts); the sink maps a connection's original destination back to "
            "its MX host. Redirect this network's port 25 to the sink"
        ),
        panel=DNS,
        metavar="CIDR",
        kind=Text(_network("--dns-network", 4)),
        shown_default=DEFAULT_DNS_NETWORK,
    )
    dns_network6: ipaddress.IPv6Network | None = option(
        None,
        help="An IPv6 network for AAAA records too (none by default: no AAAA, so the MTA uses IPv4)",
        doc="an IPv6 network for AAAA records, as `--dns-network`; without it MX hosts have no AAAA, so MTAs use IPv4",
        panel=DNS,
        metavar="CIDR",
        kind=Text(_network("--dns-network6", 6)),
    )
    dns_rate: Rate | None = option(
        Rate(5000, 1.0),
        help="DNS queries a second one client address may ask; more are dropped and counted ('off': no limit)",
        doc=(
            "queries one client address may ask, as a rate (`5000/s`, one second's worth at once); the excess is "
            'dropped and counted (`smartsink_dns_dropped_total{reason="rate"}`); `off` for no limit'
        ),
        panel=DNS,
        metavar="RATE",
        kind=Text(_dns_rate),
        shown_default=DEFAULT_DNS_RATE,
    )
    # Running
    log_level: str = option(
        "info",
        help="debug (each connection and transaction, at most 200 lines a second), info, warning or error",
        doc="debug, info, warning, error (to stderr)",
        panel=RUN,
        metavar="LEVEL",
        kind=Choice(LOG_LEVELS),
    )
    log_format: str = option(
        "text",
        help="text, or json (one object a line, for log pipelines)",
        panel=RUN,
        metavar="FORMAT",
        kind=Choice(LOG_FORMATS),
    )
    max_recipients: int = 1000  # RCPTs per transaction before 452 (not an option)

    @property
    def tls(self) -> bool:
        """STARTTLS is offered."""
        return self.starttls

    @property
    def self_signed(self) -> bool:
        """STARTTLS with a certificate made at start."""
        return self.starttls and not self.tls_cert

    @property
    def admin_secret(self) -> str | None:
        """The admin credential, from --admin-token or --admin-token-file (which holds the token itself)."""
        return self.admin_token or self.admin_token_file


# --- checks across options: each reads a built SinkConfig, none changes it -----------------------------------------


def _check_tls(config: SinkConfig) -> None:
    if bool(config.tls_cert) != bool(config.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together: give both")
    if config.tls_cert and config.tls_self_signed:
        raise ConfigError("--tls-self-signed makes its own certificate: do not give --tls-cert with it")
    if not config.starttls and (config.tls_cert or config.tls_self_signed):
        given = "--tls-cert" if config.tls_cert else "--tls-self-signed"
        raise ConfigError(f"--no-tls offers no STARTTLS: do not give {given} with it")


def _check_admin(config: SinkConfig) -> None:
    if config.admin_token and config.admin_token_file:
        raise ConfigError("--admin-token and --admin-token-file say the same thing: give one")


CHECKS = (_check_tls, _check_admin)


def build(**given: Any) -> SinkConfig:
    """Read options as a user writes them (by field name; None or absent: the default; each by its kind,
    mailload.values, as the command line's are) and check them together; ConfigError names the bad one."""
    try:
        fields = values(SinkConfig, given)
    except OptionError as e:
        raise ConfigError(str(e)) from None
    config = SinkConfig(**fields)
    for check in CHECKS:
        check(config)
    return config
