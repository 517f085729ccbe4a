"""SendConfig: the options that shape what is sent, declared once (the first part of RunConfig): the workload
file, the target, the traffic mix, the load shape, the content and SMTP. Each field carries its option
(mailload.options): help, --help panel, metavar, variable, its kind of value (mailload.values, trafficgen.readers)
and how the report shows it; the command line, docs/cli.md, workload files and the report's `config` come from them.

A field holds what was given or its default, never rewritten: where the default follows other options it is None,
and trafficgen.derived gives the value the run uses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mailload import contract
from mailload.options import HIDDEN, option
from mailload.units import RateSpec
from mailload.values import Count, Flag, Many, Percent, Seconds, Text
from trafficgen.bodysize import BodySize, read_body_size
from trafficgen.configview import (
    show_body_size,
    show_domains,
    show_headers,
    show_profile,
    show_sources,
    show_throttle,
    show_weights,
    show_workload,
)
from trafficgen.profile import Profile
from trafficgen.readers import (
    DomainWeight,
    Weighted,
    Workload,
    read_address,
    read_body_file,
    read_connect_rate,
    read_domains,
    read_header_name,
    read_headers,
    read_labels,
    read_profile,
    read_sender_domains,
    read_sources,
    read_suffix,
    read_target,
    read_throttle,
    read_word,
    read_workload,
)

DEFAULT_TARGET = "127.0.0.1:2025"
DEFAULT_HTTP_TARGET = "http://127.0.0.1:8000"  # KumoMTA's traffic-gen's, with --http
DEFAULT_DOMAINS = ("aol.com", "gmail.com", "hotmail.com", "yahoo.com")
DEFAULT_SUFFIX = contract.DEFAULT_SUFFIX
DEFAULT_TIMEOUT = 60.0
DEFAULT_CONNECT_RATE = 2000.0
MAX_DURATION = 30 * 86400.0  # a run longer than 30 days is a typo (1e12 s), not a test
MAX_WAIT = 86400.0  # --timeout, --reconcile-wait
CONTENT_KINDS = ("text", "html", "mixed")
WORKLOAD, TARGET, MIX, LOAD, CONTENT, SMTP = ("Workload file", "Target", "Traffic mix", "Load shape", "Content", "SMTP")


@dataclass(frozen=True)
class SendConfig:
    """What is sent: the first panels of RunConfig's options (a field's order is its place in --help)."""

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
        kind=Text(read_workload),
        report=show_workload,
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
        kind=Text(read_target),
        shown_default=f"{DEFAULT_TARGET}; with --http, {DEFAULT_HTTP_TARGET}",
    )
    domains: tuple[DomainWeight, ...] = option(
        tuple(DomainWeight(d, 1.0) for d in DEFAULT_DOMAINS),
        help="A destination domain and its weight, repeatable; the variable holds several, separated by spaces",
        doc="repeatable; float weights (default 1); each message goes to one domain chosen by weight",
        panel=TARGET,
        metavar="NAME[:WEIGHT]",
        flags=("--domain",),
        kind=Many(read_domains),
        shown_default=" ".join(DEFAULT_DOMAINS),
        report=show_domains,
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
        kind=Text(read_suffix),
    )
    sender: str | None = option(
        None,
        help="Fixed envelope sender",
        doc="fixed envelope sender",
        panel=TARGET,
        metavar="ADDRESS",
        kind=Text(read_address("--sender")),
        shown_default="noreply@<domain>.<suffix>",
    )
    recipient: str | None = option(
        None,
        help="Fixed envelope recipient: no weights, no suffix",
        doc="fixed envelope recipient: no weights, no suffix; the report has one domain, the recipient's",
        panel=TARGET,
        metavar="ADDRESS",
        kind=Text(read_address("--recipient")),
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
        kind=Many(read_labels("--tenant")),
        report=show_weights("tenants"),
    )
    campaigns: tuple[Weighted, ...] = option(
        (),
        help="A campaign and its weight, repeatable: written in the --campaign-header of each message",
        doc="repeatable; each message is given one campaign, chosen by weight, in its `--campaign-header`; counted "
        "per campaign",
        panel=MIX,
        metavar="NAME[:WEIGHT]",
        flags=("--campaign",),
        kind=Many(read_labels("--campaign")),
        report=show_weights("campaigns"),
    )
    tenant_header: str = option(
        "X-Tenant",
        help="The header that names the tenant",
        doc="the header that names the tenant",
        panel=MIX,
        metavar="NAME",
        kind=Text(read_header_name("--tenant-header")),
    )
    campaign_header: str = option(
        "X-Campaign",
        help="The header that names the campaign",
        doc="the header that names the campaign",
        panel=MIX,
        metavar="NAME",
        kind=Text(read_header_name("--campaign-header")),
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
        kind=Many(read_sender_domains),
        report=show_weights("sender_domains"),
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
        kind=Count(at_least=1),
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
        kind=Text(read_connect_rate),
        shown_default="2000/s",
        report="connect_rate_per_s",
    )
    duration: float | None = option(
        None,
        help="How long to send: seconds, or 90s, 5m, 2h",
        doc=(
            "how long to send (`90`, `90s`, `1.5m`, `2h`); messages in flight at the end get 10 s to finish. With "
            "`--profile` the run lasts as long as its stages, and `--duration` caps it"
        ),
        panel=LOAD,
        metavar="DURATION",
        kind=Seconds(at_most=MAX_DURATION),
        shown_default="60, or none with --message-count, or the --profile's",
        report="duration_s",
    )
    message_count: int | None = option(
        None,
        help="Send exactly this many messages (not cut short by the default duration)",
        doc="exactly N attempts; not cut short by the default duration (give `--duration` too to cap it)",
        panel=LOAD,
        metavar="N",
        kind=Count(at_least=1),
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
        kind=Text(read_throttle),
        report=show_throttle,
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
        kind=Text(read_profile),
        report=show_profile,
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
        kind=Count(at_least=1),
    )
    messages_per_connection: int | None = option(
        None,
        help="Reconnect after this many messages",
        doc="QUIT and reconnect after N messages",
        panel=LOAD,
        metavar="N",
        kind=Count(at_least=1),
        shown_default="never",
    )
    recipients_per_message: int = option(
        1,
        help="RCPT commands per message",
        doc="RCPTs per message, all in the message's domain, each a unique address",
        panel=LOAD,
        metavar="N",
        kind=Count(at_least=1),
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
        kind=Flag(),
    )
    timeout: float = option(
        DEFAULT_TIMEOUT,
        help="The longest wait for any connect or reply: seconds, or 500ms, 2m",
        doc=(
            "the longest wait for a connection or any reply; past it, the message is an error. A target that "
            "sends no greeting before `--timeout` or the end of the run is an error named as such (exit 1)"
        ),
        panel=LOAD,
        metavar="DURATION",
        kind=Seconds(at_most=MAX_WAIT),
        report="timeout_s",
    )
    seed: int | None = option(
        None,
        help="Seed the random choices (domains, bodies, sizes)",
        doc="seed the domain choices, body text and sizes",
        panel=LOAD,
        metavar="N",
        kind=Count(),
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
        kind=Text(parse=read_word("--content", CONTENT_KINDS)),
    )
    attachment_share: float = option(
        20.0,
        help="With --content mixed: the percentage of messages with an attachment",
        doc="with `--content mixed`: the percentage of messages with an attachment",
        panel=CONTENT,
        metavar="PERCENT",
        kind=Percent(),
    )
    body_size: BodySize = option(
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
        kind=Text(read_body_size),
        shown_default="1024",
        report=show_body_size,
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
        kind=Text(read_body_file),
    )
    headers: tuple[tuple[str, str], ...] = option(
        (),
        help='Extra header "Name: value", repeatable; the variable holds one per line',
        doc="repeatable extra header",
        panel=CONTENT,
        metavar='"NAME: VALUE"',
        flags=("--header",),
        kind=Many(read_headers),
        report=show_headers,
    )
    # SMTP
    starttls: bool = option(
        False,
        help="Use STARTTLS when offered (certificates not verified)",
        doc="use STARTTLS when the server offers it (certificates are not verified)",
        panel=SMTP,
        kind=Flag(),
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
        kind=Many(read_sources),
        report=show_sources,
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
        kind=Flag(),
    )
