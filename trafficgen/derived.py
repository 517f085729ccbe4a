"""What a run derives from its options, apart from what was given: the target's host and port, the inject URL,
how long the run sends (a --profile's stages, none with --message-count alone), the recipients of each message
(--http-batch-size with --http), the names a report counts, and the report's `config`, which says what was derived
and from what.

RunConfig's fields hold what was given (or the option's default), and nothing rewrites them: Derived is the
read-only view over them that RunConfig inherits. Pure.
"""

from __future__ import annotations

from functools import cached_property

from mailload import options, units
from mailload.units import RateSpec
from trafficgen.profile import Profile
from trafficgen.readers import Weighted
from trafficgen.stats.document import ConfigView

INJECT_PATH = "/api/inject/v1"
DEFAULT_DURATION = 60.0  # a run's length when nothing says another


class Derived:
    """The values a run derives from its options (RunConfig declares the fields read here)."""

    target: str
    http: bool
    http_batch_size: int
    shard: tuple[int, int]
    recipient: str | None
    recipients_per_message: int
    domain_suffix: str
    domains: tuple[Weighted, ...]
    tenants: tuple[Weighted, ...]
    campaigns: tuple[Weighted, ...]
    sender_domains: tuple[Weighted, ...]
    source_address: tuple[Weighted, ...]
    duration: float | None
    message_count: int | None
    throttle: RateSpec | None
    profile: Profile | None
    metrics: tuple[str, int] | None
    fail_fast: bool

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
        """With --http, where messages are posted: the MTA's URL and KumoMTA's inject path."""
        return self.target.rstrip("/") + INJECT_PATH if self.http else ""

    @property
    def shard_index(self) -> int:
        return self.shard[0]

    @property
    def shard_count(self) -> int:
        return self.shard[1]

    @property
    def effective_duration(self) -> float | None:
        """How long the run sends (None: until --message-count is sent): a --profile's stages, capped by
        --duration; else --duration; else none with --message-count, and 60 s without."""
        if self.profile is not None:
            length = self.profile.duration
            if self.duration is None or length is None:
                return length if self.duration is None else self.duration
            return min(self.duration, length)
        if self.duration is None:
            return None if self.message_count is not None else DEFAULT_DURATION
        return self.duration

    @property
    def effective_recipients_per_message(self) -> int:
        """The recipients of each message: --recipients-per-message, or with --http, --http-batch-size."""
        return self.http_batch_size if self.http else self.recipients_per_message

    @property
    def marks_per_message(self) -> int:
        """What reconciliation follows in each message: every recipient trafficgen numbers, or with --recipient
        (one fixed address, no number) the message as a whole."""
        return 1 if self.recipient else self.effective_recipients_per_message

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

    def derivations(self) -> dict[str, ConfigView]:
        """The report's keys whose values the run derived from other options: for each, what its own option
        held (`given`: given or its default, None when not given) and the options the value follows (`from`)."""
        out: dict[str, ConfigView] = {}
        if self.profile is not None:
            out["duration_s"] = {"given": self.duration, "from": ["--profile"]}
        elif self.duration is None and self.message_count is not None:
            out["duration_s"] = {"given": None, "from": ["--message-count"]}
        if self.http:
            out["recipients_per_message"] = {"given": self.recipients_per_message, "from": ["--http-batch-size"]}
        return out

    def public(self) -> dict[str, object]:
        """The config as the JSON report shows it (no password, no local paths): each option as the run used it,
        and under `derived`, which of them the run derived from other options and what was given for them."""
        shown = options.report(self)
        shown["duration_s"] = self.effective_duration
        shown["recipients_per_message"] = self.effective_recipients_per_message
        shown["http_batch_size"] = self.http_batch_size if self.http else None
        shown["derived"] = self.derivations()
        return shown
