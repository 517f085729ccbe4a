"""--metrics HOST:PORT: the generator's live counters and latency for Prometheus, so a fleet of generators and
sinks is watched in one place.

Nothing is done per message: at each scrape a collector reads the Recorder (the merged one with --processes)
and turns it into metric families; latency buckets are cumulative counts read off the HDR histogram.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web
from hdrh.histogram import HdrHistogram
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from trafficgen.stats.recorder import Recorder

OUTCOMES = ("accepted", "tempfailed", "permfailed", "errors")
BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
QUANTILES = (0.5, 0.9, 0.99, 0.999)


def cumulative_buckets(histogram: HdrHistogram, bounds_s: tuple[float, ...]) -> list[tuple[str, float]]:
    """Prometheus buckets (le in seconds, count of values <= le) from a microsecond HDR histogram."""
    counts = [0] * len(bounds_s)
    for item in histogram.get_recorded_iterator():
        seconds = item.value_iterated_to / 1e6
        for i, bound in enumerate(bounds_s):
            if seconds <= bound:
                counts[i] += item.count_added_in_this_iter_step
                break
    out, running = [], 0
    for bound, count in zip(bounds_s, counts, strict=True):
        running += count
        out.append((repr(bound), float(running)))
    out.append(("+Inf", float(histogram.get_total_count())))
    return out


class RunCollector:
    """Reads a Recorder at scrape time."""

    def __init__(self, read: Callable[[], Recorder], run_id: str, target: str):
        self.read = read
        self.run_id = run_id
        self.target = target

    def collect(self) -> Iterator[Metric]:
        recorder = self.read()
        info = GaugeMetricFamily(
            "trafficgen_run_info", "The run this generator is sending", labels=["run_id", "target"]
        )
        info.add_metric([self.run_id, self.target], 1.0)
        yield info
        messages = CounterMetricFamily(
            "trafficgen_messages", "Messages by destination domain and outcome", labels=["domain", "outcome"]
        )
        for domain, row in zip(recorder.domains, recorder.counts, strict=True):
            for i, outcome in enumerate(OUTCOMES):
                messages.add_metric([domain, outcome], row[i + 1])
        yield messages
        recipients = CounterMetricFamily("trafficgen_recipients", "Recipients by outcome", labels=["outcome"])
        for outcome, count in zip(OUTCOMES, recorder.recipients, strict=True):
            recipients.add_metric([outcome], count)
        yield recipients
        yield GaugeMetricFamily("trafficgen_connections_open", "SMTP connections open now", recorder.connections_open)
        yield CounterMetricFamily(
            "trafficgen_connections_opened", "SMTP connections opened", value=recorder.connections_opened
        )
        latency = recorder.latency
        count = latency.get_total_count()
        yield HistogramMetricFamily(
            "trafficgen_latency_seconds",
            "Transaction latency (start to the deciding reply)",
            buckets=cumulative_buckets(latency, BUCKETS_S),
            sum_value=latency.get_mean_value() * count / 1e6 if count else 0.0,
        )
        quantiles = GaugeMetricFamily(
            "trafficgen_latency_quantile_seconds",
            "Transaction latency quantiles from the HDR histogram",
            labels=["quantile"],
        )
        for q in QUANTILES:
            quantiles.add_metric([str(q)], latency.get_value_at_percentile(q * 100) / 1e6 if count else 0.0)
        yield quantiles


async def serve(host: str, port: int, collector: RunCollector) -> Any:
    """Serve /metrics; returns the aiohttp runner to clean up."""
    registry = CollectorRegistry()
    registry.register(collector)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": "text/plain; version=0.0.4"})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    return runner
