"""A real Prometheus scrapes Ray's metrics export: the app's metrics arrive with the counts the traffic implies.

Debian's ``prometheus`` binary (``make install`` installs it) runs on loopback with the
shipped ``cluster/prometheus.yml``, its target rewritten to the test cluster's metrics
port (tests/conftest.py starts Ray with a known port; Ray reports every 10 s, its default). The
traffic is sequential and counted: text, audio, both, one undecodable clip, one body over
the cap (refused at the edge), a UI page,
and one request that meets a poisoned FusionHead and is retried twice. Every name and
every query of ``cluster/grafana-dashboard.json`` must then find series in Prometheus.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from deployments.metrics import exported_names
from deployments.replica import FAULT_INJECTION_ENV
from tests.conftest import deploy, free_port
from tests.test_dashboard import dashboard_metric_names, dashboard_queries

pytestmark = pytest.mark.slow

APP, PREFIX = "prom", "/prom"
CONFIG = Path(__file__).resolve().parent.parent / "cluster" / "prometheus.yml"
PROMETHEUS = shutil.which("prometheus")
# Ray reports every 10 s and Prometheus scrapes every 5 s: a count should arrive within
# about 15 s; the bound leaves room for a loaded machine.
ARRIVAL_LIMIT_S = 90.0
BODY_CAP = 200_000


@pytest.fixture(scope="module")
def prometheus(ray_cluster, tmp_path_factory):
    import ray

    if PROMETHEUS is None:
        pytest.fail("prometheus is not installed: run `make install` (scripts/system-deps.sh)")
    [node] = [n for n in ray.nodes() if n["Alive"]]
    target = f"{node['NodeManagerAddress']}:{node['MetricsExportPort']}"
    # The shipped config as it is, but for its target. It once ran at a 1 s interval, which caps
    # each scrape at 1 s (Prometheus's timeout is at most its interval); in one full-suite run no
    # metric arrived in 90 s, and Ray's metrics page grows with every app the suite deployed.
    # The failure message below shows the scrape's health and duration.
    config = yaml.safe_load(CONFIG.read_text())
    [job] = config["scrape_configs"]
    job["static_configs"] = [{"targets": [target]}]
    workdir = tmp_path_factory.mktemp("prometheus")
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=open(workdir / "prometheus.log", "w"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (workdir / "prometheus.log").read_text()
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "Prometheus did not become ready"
            time.sleep(0.3)
        yield url, target
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def app(ray_cluster, tiny_bundle):
    from ray import serve

    fusion = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1,
                                                       "runtime_env": {"env_vars": {FAULT_INJECTION_ENV: "1"}}},
              # The poisoned replica must stay in place for all three attempts of one request.
              "health_check_period_s": 600}
    # A small body cap, so that one refusal at the edge costs little to send.
    args = {"bundle": str(tiny_bundle), "settings": {"retries": 2, "limits": {"max_body_bytes": BODY_CAP, "max_long_body_bytes": BODY_CAP}},
            "deployments": {"FusionHead": fusion}}
    url = deploy(ray_cluster, args, name=APP, route_prefix=PREFIX)
    yield url
    serve.delete(APP)


def query(prom_url: str, promql: str) -> list[dict]:
    reply = httpx.get(f"{prom_url}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert reply["status"] == "success", reply
    return reply["data"]["result"]


def value(prom_url: str, promql: str) -> float | None:
    result = query(prom_url, promql)
    return float(result[0]["value"][1]) if result else None


def send_traffic(url: str, wav: bytes, bad_audio: bytes) -> dict:
    audio = base64.b64encode(wav).decode()
    with httpx.Client(base_url=url, timeout=60) as client:
        for text in ("a warm and tender film", "dull", "fine"):
            assert client.post("/v1/predict", json={"text": text}).status_code == 200
        for _ in range(2):
            assert client.post("/v1/predict", json={"audio": audio}).status_code == 200
            assert client.post("/v1/predict", json={"text": "great", "audio": audio}).status_code == 200
        bad = client.post("/v1/predict", json={"audio": base64.b64encode(bad_audio).decode()})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "audio_undecodable", bad.text
        too_big = client.post("/v1/predict", content=b"x" * (BODY_CAP + 1), headers={"content-type": "application/json"})
        assert too_big.status_code == 413, too_big.text
        assert client.get("/healthz").status_code == 200
        assert client.get("/").status_code == 200  # the Gradio page
        model = client.get("/v1/model").json()
        from ray import serve

        serve.get_deployment_handle("FusionHead", app_name=APP).inject_fault.remote("nan_weights").result()
        # Text with audio: FusionHead fuses it (the text encoder fuses text-only requests itself).
        poisoned = client.post("/v1/predict", json={"text": "after the fault", "audio": audio})
        assert poisoned.status_code == 503 and poisoned.json()["error"]["code"] == "model_unhealthy", poisoned.text
    return model


def test_app_metrics_reach_prometheus(prometheus, app, wav_bytes):
    prom_url, target = prometheus
    model = send_traffic(app, wav_bytes, b"random bytes" * 40)
    sel = f'application="{APP}"'
    predict = f'{sel}, route="/v1/predict"'
    # The poisoned request takes 3 attempts; text-only requests never reach FusionHead.
    per_item = {"TextEncoder": 3 + 2 + 3, "AudioEncoder": 2 + 2 + 3, "FusionHead": 2 + 2 + 3}
    expected = {
        f'sum(ray_sentiment_http_requests_total{{{predict}, modality="text", status="200"}})': 3,
        f'sum(ray_sentiment_http_requests_total{{{predict}, modality="both", status="503"}})': 1,
        f'sum(ray_sentiment_http_requests_total{{{predict}, modality="audio", status="200"}})': 2,
        f'sum(ray_sentiment_http_requests_total{{{predict}, modality="audio", status="422"}})': 1,
        f'sum(ray_sentiment_http_requests_total{{{predict}, modality="both", status="200"}})': 2,
        f'sum(ray_sentiment_http_requests_total{{{sel}, route="ui", modality="none", status="200"}})': 1,
        f'sum(ray_sentiment_http_requests_total{{{sel}, route="edge", modality="none", status="413"}})': 1,
        f'sum(ray_sentiment_errors_total{{{sel}, code="payload_too_large", status="413"}})': 1,
        f'sum(ray_sentiment_http_request_duration_seconds_count{{{predict}}})': 9,
        f'sum(ray_sentiment_errors_total{{{sel}, code="audio_undecodable", status="422"}})': 1,
        f'sum(ray_sentiment_errors_total{{{sel}, code="model_unhealthy", status="503"}})': 1,
        f'sum(ray_sentiment_audio_received_seconds_total{{{sel}}})': 5.0,  # five 1 s clips
        f'sum(ray_sentiment_audio_decode_seconds_count{{{sel}}})': 5,
        f'sum(ray_sentiment_replica_retries_total{{{sel}, failure="ModelUnhealthy"}})': 2,
        f'sum(ray_sentiment_bundle_info{{{sel}, name="{model["name"]}", version="{model["version"]}"}})': 1,
    }
    # Items are counted by the queue wait (one observation each), not by batch_size_sum:
    # Ray's metrics agent rebuilds a histogram's sum from its bucket midpoints.
    for deployment, items in per_item.items():
        expected[f'sum(ray_sentiment_batch_queue_wait_seconds_count{{{sel}, deployment="{deployment}"}})'] = items
    seen: dict = {}
    began = time.monotonic()
    deadline = began + ARRIVAL_LIMIT_S
    while time.monotonic() < deadline:
        seen = {promql: value(prom_url, promql) for promql in expected}
        if all(seen[q] is not None and abs(seen[q] - want) < 0.01 for q, want in expected.items()):
            break
        time.sleep(2)
    print(f"queried for {time.monotonic() - began:.1f} s after the traffic")
    for promql, want in expected.items():
        print(f"{seen.get(promql)!s:>6}  {promql}")
    wrong = {q: (seen.get(q), want) for q, want in expected.items()
             if seen.get(q) is None or abs(seen[q] - want) >= 0.01}
    scrape = {q: value(prom_url, f'{q}{{instance="{target}"}}') for q in ("up", "scrape_duration_seconds")}
    assert not wrong, f"(seen, expected) after {ARRIVAL_LIMIT_S:.0f} s: {wrong}; the target's {scrape}"

    [up] = query(prom_url, f'up{{instance="{target}"}}')
    assert up["value"][1] == "1"
    healthz = value(prom_url, f'sum(ray_sentiment_http_requests_total{{{sel}, route="/healthz", status="200"}})')
    assert healthz is not None and healthz >= 1  # deploy()'s own health polls come on top
    for deployment, items in per_item.items():
        dep = f'{sel}, deployment="{deployment}"'
        batches = value(prom_url, f'sum(ray_sentiment_batch_size_count{{{dep}}})')
        forwards = value(prom_url, f'sum(ray_sentiment_forward_seconds_count{{{dep}}})')
        assert 1 <= batches <= items and forwards == batches, (deployment, batches, forwards)

    # The dashboard: every metric it names exists in this Prometheus, and every panel's
    # query finds series for this application.
    names = set(httpx.get(f"{prom_url}/api/v1/label/__name__/values", timeout=10).json()["data"])
    assert exported_names() <= names
    missing = dashboard_metric_names() - names
    assert not missing, f"dashboard metrics absent from the scrape: {sorted(missing)}"
    # Serve's own series (replica health, queue lengths) come from the controller's periodic
    # reports, later than the request counters: each query gets until the deadline.
    deadline = time.monotonic() + ARRIVAL_LIMIT_S
    for expr in dashboard_queries():
        promql = expr.replace("$application", APP).replace("$__rate_interval", "5m")
        while not query(prom_url, promql) and time.monotonic() < deadline:
            time.sleep(2)
        assert query(prom_url, promql), f"no series for the dashboard query {promql}"
    print(json.dumps({"target": target, "names": len(names)}))
