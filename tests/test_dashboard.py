"""The Grafana dashboard's PromQL names only metrics that exist: the app's (deployments/metrics.py) or Serve's.

Serve's names are read from the installed Ray's source, so a Ray upgrade that renames a
metric fails here. tests/test_prometheus.py checks the same names against a real scrape.
"""

import json
import re
from pathlib import Path

import ray

from deployments.metrics import METRICS, PREFIX, exported_names

DASHBOARD = Path(__file__).resolve().parent.parent / "cluster" / "grafana-dashboard.json"
METRIC_NAME = re.compile(r"\bray_[a-z0-9_]+")


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def dashboard_metric_names() -> set[str]:
    return {name for expr in dashboard_queries() for name in METRIC_NAME.findall(expr)}


def serve_exported_names() -> set[str]:
    """Every ``serve_*`` metric name in Ray Serve's source, as Prometheus sees it."""
    source = Path(ray.__file__).parent / "serve"
    names = set()
    for path in source.rglob("*.py"):
        names |= set(re.findall(r"[\"'](serve_[a-z0-9_]+)[\"']", path.read_text(errors="replace")))
    suffixes = ("", "_total", "_bucket", "_sum", "_count")
    return {PREFIX + name + suffix for name in names for suffix in suffixes}


def test_serve_names_are_found_in_ray_source():
    # The reader above must see the two Serve metrics the dashboard relies on.
    names = serve_exported_names()
    assert "ray_serve_deployment_replica_healthy" in names
    assert "ray_serve_deployment_processing_latency_ms_bucket" in names
    assert "ray_serve_no_such_metric" not in names


def test_every_dashboard_metric_exists():
    unknown = dashboard_metric_names() - exported_names() - serve_exported_names()
    assert not unknown, f"the dashboard queries metrics nobody exports: {sorted(unknown)}"


def test_every_query_names_a_metric_and_every_app_metric_has_a_panel():
    for expr in dashboard_queries():
        assert METRIC_NAME.search(expr), expr
    used = dashboard_metric_names()
    for name, metric in METRICS.items():
        assert used & set(metric.exported(name)), f"no panel shows {name}"


def test_panels_are_well_formed():
    board = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "application"}
