"""--body-size: the sizes of generated bodies as people write them, and the distributions they name: one size, a
range low..high (uniform), a log-normal median=20kb,p99=2mb[,max=...], or a log's quantiles min=1kb,p50=20kb,...,max=
(as `workload from-logs` writes them). Pure.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

from mailload import units
from trafficgen.readers import ConfigError

MAX_BODY = 512 * 1024 * 1024
LOGNORMAL_MAX_P99S = 10  # a log-normal size without max= is capped at 10 x its p99
_LOGNORMAL = re.compile(r"^\s*(?:log-?normal\s*[:(]?\s*)?median\s*=", re.I)
_QUANTILES = re.compile(r"^\s*(?:quantiles\s*[:(]?\s*)?(?:min|p[0-9.]+)\s*=", re.I)
_QUANTILE_KEY = re.compile(r"^p(\d{1,3}(?:\.\d+)?)$")


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


BodySize = tuple[int, int] | LogNormalSize | QuantileSize


def read_body_size(text: str) -> BodySize:
    """A size, a range low..high (uniform), a log-normal median=20kb,p99=2mb[,max=50mb], or quantiles
    min=1kb,p50=20kb,...,max=10mb (from a file or a program, a table of them: {median = "20kb", p99 = "2mb"})."""
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
