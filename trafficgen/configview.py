"""How the report's `config` shows the options whose values are not plain: weights as tables, the body size's
distribution as its bounds and quantiles, the rate per second, thresholds and the profile as written, URLs without
their credentials. Each function takes a field's value and gives the report's keys for it (mailload.options calls
them, as the fields declare); what the run derived from several options is trafficgen.derived's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mailload.units import RateSpec
from trafficgen.bodysize import BodySize, LogNormalSize, QuantileSize
from trafficgen.profile import Profile
from trafficgen.readers import Weighted, Workload, without_credentials
from trafficgen.stats.document import ConfigView
from trafficgen.thresholds import Threshold


def show_throttle(spec: RateSpec | None) -> ConfigView:
    return {"throttle_per_s": spec.per_second if spec else None, "max_burst": spec.max_burst if spec else None}


def show_domains(domains: tuple[Weighted, ...]) -> ConfigView:
    return {"domains": {d.name: d.weight for d in domains}}


def show_weights(key: str) -> Callable[[tuple[Weighted, ...]], ConfigView]:
    def show(items: tuple[Weighted, ...]) -> ConfigView:
        return {key: {i.name: i.weight for i in items}}

    return show


def show_sources(sources: tuple[Weighted, ...]) -> ConfigView:
    # `source_address` (one address) is what reports always held; `source_addresses` holds them all.
    return {
        "source_address": sources[0].name if sources else None,
        "source_addresses": {s.name: s.weight for s in sources},
    }


def show_body_size(size: BodySize) -> ConfigView:
    if isinstance(size, LogNormalSize):
        return {"body_size": [size.low, size.high], "body_size_median": size.median, "body_size_p99": size.p99}
    if isinstance(size, QuantileSize):
        median, p99 = round(size.quantile(0.5)), round(size.quantile(0.99))
        return {"body_size": [size.low, size.high], "body_size_median": median, "body_size_p99": p99}
    return {"body_size": list(size), "body_size_median": None, "body_size_p99": None}


def show_profile(profile: Profile | None) -> ConfigView:
    return {"profile": profile.text if profile else None}


def show_thresholds(items: tuple[Threshold, ...]) -> ConfigView:
    return {"fail_if": [t.text for t in items]}


def show_workload(workload: Workload | None) -> ConfigView:
    if workload is None:
        return {"workload": None}
    return {"workload": {"file": Path(workload.path).name, "sha256": workload.sha256}}


def show_headers(headers: tuple[tuple[str, str], ...]) -> ConfigView:
    return {"headers": [f"{n}: {v}" for n, v in headers]}


def show_shard(shard: tuple[int, int]) -> ConfigView:
    return {"shard": f"{shard[0]}/{shard[1]}"}


def show_reconcile(sinks: tuple[str, ...] | None) -> ConfigView:
    return {"reconcile": list(sinks) if sinks else None}


def show_reset(sinks: tuple[str, ...]) -> ConfigView:
    return {"reset_sink": [without_credentials(url) for url in sinks]}
