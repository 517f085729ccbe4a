"""SinkConfig: every option of a sink, built once (by the CLI or a program) and then only read."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from mailload import contract, units

DEFAULT_LISTEN = "127.0.0.1:2026"
DEFAULT_HTTP = "127.0.0.1:8000"
DEFAULT_POLICY = "policy/responses.toml"
DEFAULT_SUFFIX = contract.DEFAULT_SUFFIX
DEFAULT_MAX_MESSAGE_SIZE = "50MB"
AUTH_MODES = ("off", "any", "required")
ENGINES = ("fast", "aiosmtpd")


class ConfigError(ValueError):
    """An option that cannot be used; the message names it."""


def default_policy_path() -> str:
    """./policy/responses.toml when run from a checkout, else the copy shipped inside the package."""
    if Path(DEFAULT_POLICY).is_file():
        return DEFAULT_POLICY
    return str(resources.files("smartsink").joinpath("data/responses.toml"))


@dataclass(frozen=True)
class SinkConfig:
    listen: tuple[str, int] = ("127.0.0.1", 2026)
    http: tuple[str, int] | None = ("127.0.0.1", 8000)
    policy_path: str = field(default_factory=default_policy_path)
    workers: int = 1
    seed: int | None = None
    domain_suffixes: tuple[str, ...] = (DEFAULT_SUFFIX,)
    max_message_size: int = 50_000_000
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_self_signed: bool = False
    auth: str = "off"
    hostname: str = field(default_factory=socket.gethostname)
    engine: str = "fast"
    timeout: float = 300.0  # RFC 5321 4.5.3.2.7: a server waits at least 5 minutes for the next command
    max_recipients: int = 1000
    log_level: str = "info"

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert or self.tls_self_signed)


def build(
    *,
    listen: str = DEFAULT_LISTEN,
    http: str = DEFAULT_HTTP,
    policy: str | None = None,
    workers: int = 1,
    seed: int | None = None,
    domain_suffix: str | None = DEFAULT_SUFFIX,
    max_message_size: str = DEFAULT_MAX_MESSAGE_SIZE,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    tls_self_signed: bool = False,
    auth: str = "off",
    hostname: str | None = None,
    engine: str = "fast",
    timeout: float = 300.0,
    log_level: str = "info",
) -> SinkConfig:
    """Validate options as a user writes them and build the config; ConfigError names the bad one."""
    try:
        listen_addr = units.parse_hostport(listen, "--listen")
        http_addr = None if http.strip().lower() in ("", "off", "none") else units.parse_hostport(http, "--http")
        size = units.parse_size(max_message_size)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if size < 1024:
        raise ConfigError(f"--max-message-size {max_message_size!r} is below 1 KiB")
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if auth not in AUTH_MODES:
        raise ConfigError(f"--auth must be one of {', '.join(AUTH_MODES)}, got {auth!r}")
    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if timeout <= 0:
        raise ConfigError(f"--timeout must be more than 0 seconds, got {timeout}")
    if bool(tls_cert) != bool(tls_key):
        raise ConfigError("--tls-cert and --tls-key go together: give both")
    if tls_cert and tls_self_signed:
        raise ConfigError("--tls-self-signed makes its own certificate: do not give --tls-cert with it")
    for path, name in ((tls_cert, "--tls-cert"), (tls_key, "--tls-key")):
        if path and not Path(path).is_file():
            raise ConfigError(f"{name} {path}: no such file")
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"--log-level must be debug, info, warning or error, got {log_level!r}")
    if hostname is not None and not re.match(r"^[\x21-\x7e]{1,255}$", hostname):
        raise ConfigError(f"--hostname {hostname!r} must be a name without spaces or control characters")
    suffixes = tuple(s.strip().strip(".").lower() for s in (domain_suffix or "").split(",") if s.strip().strip("."))
    return SinkConfig(
        listen=listen_addr,
        http=http_addr,
        policy_path=policy or default_policy_path(),
        workers=workers,
        seed=seed,
        domain_suffixes=suffixes,
        max_message_size=size,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_self_signed=tls_self_signed,
        auth=auth,
        hostname=hostname or socket.gethostname(),
        engine=engine,
        timeout=timeout,
        log_level=log_level.lower(),
    )
