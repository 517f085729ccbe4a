"""build(): a run's options as users write them -> one checked RunConfig; and the names a program needs.

One path for every way options are given: the command line and its variables (trafficgen.cli), a workload file
(trafficgen.workload) and a program (`trafficgen.run(build(duration="1m", ...))`). Each value is read by its
option's kind (mailload.values), so "1m" is a minute everywhere and a bad value gets the same words everywhere;
then the checks across options (trafficgen.checks) run on the built RunConfig, which they never change.
"""

from __future__ import annotations

from typing import Any

from mailload.options import OptionError, values
from trafficgen import checks
from trafficgen import workload as workloads
from trafficgen.bodysize import MAX_BODY, LogNormalSize, QuantileSize
from trafficgen.readers import ConfigError, DomainWeight, Weighted, parse_domain, parse_label, parse_sink_urls
from trafficgen.runconfig import RunConfig
from trafficgen.sendconfig import DEFAULT_HTTP_TARGET, DEFAULT_SUFFIX, DEFAULT_TARGET

__all__ = [
    "DEFAULT_HTTP_TARGET",
    "DEFAULT_TARGET",
    "MAX_BODY",
    "ConfigError",
    "DomainWeight",
    "LogNormalSize",
    "QuantileSize",
    "RunConfig",
    "Weighted",
    "build",
    "parse_domain",
    "parse_label",
    "parse_sink_urls",
]


def build(**given: Any) -> RunConfig:
    """Read options as a user writes them (by field name; None or absent: the default) and check them together;
    ConfigError names the first bad one. With `workload` (a file), the file's options apply where none is given."""
    given = {name: value for name, value in given.items() if value is not None}
    if "workload" in given:
        try:
            from_file = workloads.load(str(given["workload"]), RunConfig)
        except workloads.WorkloadError as e:
            raise ConfigError(str(e)) from None
        given = {**from_file, **given}
    try:
        fields = values(RunConfig, given)
    except OptionError as e:
        raise ConfigError(str(e)) from None
    return checks.check(RunConfig(**{**fields, **_following_defaults(fields)}))


def _following_defaults(fields: dict[str, Any]) -> dict[str, Any]:
    """The defaults that follow another option, for the options not given (an empty --ehlo is none): --target's
    with --http (KumoMTA's traffic-gen's URL), --ehlo's with --domain-suffix."""
    out: dict[str, Any] = {}
    if fields.get("http") and "target" not in fields:
        out["target"] = DEFAULT_HTTP_TARGET
    if not fields.get("ehlo"):
        out["ehlo"] = f"trafficgen.{fields.get('domain_suffix', DEFAULT_SUFFIX) or 'localdomain'}"
    return out
