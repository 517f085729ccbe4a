"""The monitoring profile, tested without a Docker engine: the dashboard's queries name metrics the tools export,
Prometheus scrapes the compose services at their ports, Grafana is provisioned with both, and the metrics table of
docs/deployment.md is the metrics the tools have."""

from __future__ import annotations

import json
import re

import yaml
from prometheus_client import REGISTRY, CollectorRegistry

from harness import ROOT
from smartsink import metrics as sink_metrics
from smartsink.limits.state import SharedState
from trafficgen.stats.exporter import RunCollector
from trafficgen.stats.recorder import Recorder

DOCKER = ROOT / "docker"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "trafficgen-smartsink.json"
_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())  # type: ignore[no-any-return]


def exported() -> dict[str, str]:
    """Every metric family the sink and trafficgen export: name (without _total) -> type."""
    families: dict[str, str] = {}
    assert sink_metrics.MESSAGES is not None  # importing smartsink.metrics registers the sink's metrics
    for family in REGISTRY.collect():
        if family.name.startswith("smartsink_"):
            families[family.name] = family.type
    state = SharedState()  # the gauges of what the sink learnt, made at each scrape by the process that owns it
    for family in sink_metrics.state_families(state.summary(), state.by_domain()):
        families[family.name] = family.type
    registry = CollectorRegistry()
    registry.register(RunCollector(lambda: Recorder(["gmail.com"]), "run", "127.0.0.1:25"))
    for family in registry.collect():
        families[family.name] = family.type
    return families


def names_in(expr: str) -> set[str]:
    found = set()
    for name in re.findall(r"\b((?:smartsink|trafficgen)_[a-z0-9_]+)", expr):
        for suffix in _SUFFIXES:
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        found.add(name)
    return found


def test_dashboard_queries_name_exported_metrics():
    """Every metric a dashboard query names is one the sink or trafficgen exports."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(queries) >= 10
    families = exported()
    used = set().union(*(names_in(q) for q in queries))
    assert used - set(families) == set()
    assert {"smartsink_messages", "trafficgen_messages", "trafficgen_latency_seconds"} <= used


def test_dashboard_uses_the_provisioned_data_source():
    """Each panel reads the data source Grafana is provisioned with (uid prometheus)."""
    source = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (only,) = source["datasources"]
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == only["uid"]
    assert only["url"] == "http://prometheus:9090"


def test_scrape_targets_are_the_compose_services():
    """Prometheus scrapes smartsink at its admin port and trafficgen at the --metrics address compose gives it."""
    config = yaml.safe_load((DOCKER / "prometheus/prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    services = compose()["services"]
    assert targets["smartsink"] == ["smartsink:8026"]
    assert any(str(port).endswith(":8026") for port in services["smartsink"]["ports"])  # the container's admin port
    metrics_address = services["trafficgen"]["environment"]["TRAFFICGEN_METRICS"]
    assert targets["trafficgen"] == [f"trafficgen:{metrics_address.rsplit(':', 1)[1]}"]


def test_monitoring_profile_mounts_what_exists():
    """prometheus and grafana are in the monitoring profile, and every file they mount is in the repository."""
    services = compose()["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            assert (DOCKER / source).exists(), volume
    assert "monitoring" not in services["smartsink"].get("profiles", [])


def test_metrics_table_is_every_metric():
    """docs/deployment.md's metrics table names every metric the tools export, with its type, and nothing else."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    rows = re.findall(r"^\| `((?:smartsink|trafficgen)_[a-z0-9_]+)` \| (\w+) \|", text, re.M)
    documented = {name.removesuffix("_total"): kind for name, kind in rows}
    assert documented == {name: kind for name, kind in exported().items()}
