"""Traces: one request is one connected trace across the four deployments, exported over OTLP; off by default.

The collector is a real OTLP/HTTP receiver in this process (``/v1/traces``, protobuf,
decoded with ``opentelemetry-proto``); the replicas' exporter reaches it over HTTP the
way it would reach an OpenTelemetry Collector. The traced app's replicas get the
environment ``deployments.tracing.ray_env`` gives ``make run`` (through their
``runtime_env``, since the shared test cluster started without it).
"""

from __future__ import annotations

import base64
import concurrent.futures
import gzip
import re
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from deployments import ray_env, tracing
from tests.conftest import deploy

APP, PREFIX = "traced", "/traced"
MODEL_DEPLOYMENTS = ("TextEncoder", "AudioEncoder", "FusionHead")
# The batch span processor exports every half second here (its default is 5 s).
EXPORT_LIMIT_S = 60.0


class Collector:
    """Spans received over OTLP/HTTP, as dicts."""

    def __init__(self):
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                               ExportTraceServiceResponse)

        self.spans: list[dict] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                request = ExportTraceServiceRequest.FromString(body)
                collector.add(request)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, request) -> None:
        def value(v):
            return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None

        for resource_spans in request.resource_spans:
            resource = {a.key: value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    with self.lock:
                        self.spans.append({
                            "name": span.name, "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                            "parent": span.parent_span_id.hex(), "resource": resource,
                            "attributes": {a.key: value(a.value) for a in span.attributes},
                        })

    def of_request(self, request_id: str) -> list[dict]:
        with self.lock:
            return [s for s in self.spans if s["attributes"].get("request_id") == request_id]

    def of_trace(self, trace_id: str) -> list[dict]:
        with self.lock:
            return [s for s in self.spans if s["trace_id"] == trace_id]


@pytest.fixture(scope="module")
def collector():
    collector = Collector()
    yield collector
    collector.server.shutdown()


@pytest.fixture(scope="module")
def traced_app(ray_cluster, tiny_bundle, collector):
    from ray import serve

    env = tracing.ray_env(collector.endpoint) | {"OTEL_BSP_SCHEDULE_DELAY": "500"}
    actor = {"num_cpus": 0.1, "runtime_env": {"env_vars": env}}
    options = {name: {"ray_actor_options": actor} for name in ("Driver", *MODEL_DEPLOYMENTS)}
    # A batch window, so that concurrent texts share one forward pass.
    options["TextEncoder"]["user_config"] = {"max_batch_size": 16, "batch_wait_timeout_s": 0.3}
    url = deploy(ray_cluster, {"bundle": str(tiny_bundle), "settings": {"ui": True}, "deployments": options},
                 name=APP, route_prefix=PREFIX)
    yield url
    serve.delete(APP)


def wait_for(predicate, what: str):
    deadline = time.monotonic() + EXPORT_LIMIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"no {what} within {EXPORT_LIMIT_S:.0f} s"
        time.sleep(0.5)


@pytest.mark.slow
def test_one_request_is_one_connected_trace(traced_app, collector, wav_bytes):
    rid = "trace-both-1"
    reply = httpx.post(f"{traced_app}/v1/predict", timeout=60, headers={"X-Request-ID": rid},
                       json={"text": "a fine film", "audio": base64.b64encode(wav_bytes).decode()})
    assert reply.status_code == 200 and reply.json()["request_id"] == rid, reply.text
    wanted = {"edge", "decode_audio", *(f"{d}.forward" for d in MODEL_DEPLOYMENTS)}
    wait_for(lambda: wanted <= {s["name"] for s in collector.of_request(rid)}, "spans of the request")
    time.sleep(2)  # the replicas' last export of this request

    traces_seen = {s["trace_id"] for s in collector.of_request(rid)}
    for s in [s for t in traces_seen for s in collector.of_trace(t)]:
        print(f'{s["trace_id"][:8]} {s["span_id"][:8]} <- {s["parent"][:8] or "root    "} {s["name"]} '
              f'{s["attributes"].get("request_id")}')
    trace_ids = {s["trace_id"] for s in collector.of_request(rid)}
    assert len(trace_ids) == 1, "the request's spans are split over several traces"
    [trace_id] = trace_ids
    spans = collector.of_trace(trace_id)
    by_id = {s["span_id"]: s for s in spans}
    for s in spans:
        print(f'{s["name"]:<45} parent={by_id.get(s["parent"], {}).get("name", "-")}')
    # Every span of the trace carries the request id; exactly one root; every parent is in the trace.
    assert all(s["attributes"].get("request_id") == rid for s in spans), [s["name"] for s in spans]
    roots = [s for s in spans if not s["parent"]]
    assert len(roots) == 1, [s["name"] for s in roots]
    assert all(s["parent"] in by_id for s in spans if s["parent"]), "a span's parent is outside the trace"
    assert {s["attributes"].get("deployment") for s in spans} >= {"Driver", *MODEL_DEPLOYMENTS}
    assert all(s["resource"].get("service.name") == tracing.SERVICE_NAME for s in spans)

    def ancestors(span):
        while span["parent"]:
            span = by_id[span["parent"]]
            yield span

    # Each forward pass hangs under its own deployment's replica span, and that one under the edge.
    for deployment in MODEL_DEPLOYMENTS:
        [forward] = [s for s in spans if s["name"] == f"{deployment}.forward"]
        assert forward["attributes"]["batch_size"] == 1
        parent = by_id[forward["parent"]]
        assert parent["attributes"].get("deployment") == deployment, parent["name"]
        assert "edge" in {a["name"] for a in ancestors(forward)}
    [decode] = [s for s in spans if s["name"] == "decode_audio"]
    assert by_id[decode["parent"]]["name"] == "edge"


@pytest.mark.slow
def test_a_shared_batch_keeps_every_request_in_its_own_trace(traced_app, collector):
    rids = [f"trace-batch-{i}" for i in range(3)]

    def send(rid):
        return httpx.post(f"{traced_app}/v1/predict", timeout=60, headers={"X-Request-ID": rid},
                          json={"text": f"request {rid}"}).status_code

    with concurrent.futures.ThreadPoolExecutor(len(rids)) as pool:
        assert list(pool.map(send, rids)) == [200] * len(rids)
    # Text-only: the text encoder fuses them itself, so TextEncoder.forward is their one forward span.
    wait_for(lambda: all("TextEncoder.forward" in {s["name"] for s in collector.of_request(r)} for r in rids),
             "forward spans of the batched requests")
    traces = defaultdict(set)
    for rid in rids:
        spans = collector.of_request(rid)
        traces[rid] = {s["trace_id"] for s in spans}
        assert len(traces[rid]) == 1, (rid, traces[rid])
    assert len(set.union(*traces.values())) == len(rids), "two requests share a trace"
    sizes = [s["attributes"]["batch_size"] for r in rids for s in collector.of_request(r) if s["name"] == "TextEncoder.forward"]
    print("TextEncoder batch sizes seen by the traced requests:", sizes)
    assert max(sizes) >= 2, sizes  # at least two of them rode one forward pass, each with its own span


@pytest.mark.slow
def test_a_ui_event_is_one_trace_with_the_request_that_submitted_it(traced_app, collector, tmp_path, wav_bytes):
    """Gradio runs an event in its queue's task, outside the HTTP request that submitted it;
    the event still continues that request's trace, under its request id."""
    from gradio_client import Client, handle_file

    wav = tmp_path / "speech.wav"
    wav.write_bytes(wav_bytes)
    notes = Client(traced_app + "/", verbose=False).predict("a fine film", handle_file(str(wav)),
                                                            api_name="/predict")[-1]
    [rid] = re.findall(r"Request `([^`]+)`", notes)
    wanted = {"ui.predict", "decode_audio", *(f"{d}.forward" for d in MODEL_DEPLOYMENTS)}
    wait_for(lambda: wanted <= {s["name"] for s in collector.of_request(rid)}, "spans of the UI event")
    time.sleep(2)  # the replicas' last export of this event
    trace_ids = {s["trace_id"] for s in collector.of_request(rid)}
    assert len(trace_ids) == 1, "the event's spans are split over several traces"
    spans = collector.of_trace(trace_ids.pop())
    by_id = {s["span_id"]: s for s in spans}
    for s in spans:
        print(f'{s["name"]:<45} parent={by_id.get(s["parent"], {}).get("name", "-")} {s["attributes"].get("request_id")}')
    assert all(s["attributes"].get("request_id") == rid for s in spans), [s["name"] for s in spans]
    assert len([s for s in spans if not s["parent"]]) == 1
    assert all(s["parent"] in by_id for s in spans if s["parent"]), "a span's parent is outside the trace"
    [event] = [s for s in spans if s["name"] == "ui.predict"]
    # The event hangs under the edge span of the request that submitted it (queue/join) ...
    assert by_id[event["parent"]]["name"] == "edge"
    # ... and the model calls hang under the event.
    for deployment in MODEL_DEPLOYMENTS:
        [forward] = [s for s in spans if s["name"] == f"{deployment}.forward"]
        parent, ancestry = forward, []
        while parent["parent"]:
            parent = by_id[parent["parent"]]
            ancestry.append(parent["name"])
        assert "ui.predict" in ancestry, (deployment, ancestry)


def test_tracing_is_off_unless_an_endpoint_is_named():
    env = ray_env.defaults({})
    assert "RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH" not in env and tracing.ENDPOINT_ENV not in env
    on = ray_env.defaults({tracing.ENDPOINT_ENV: "http://collector:4318"})
    assert on["RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH"] == tracing.EXPORTER_IMPORT_PATH
    assert tracing.traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert tracing.traces_url("http://collector:4318/custom/path") == "http://collector:4318/custom/path"
    # In a process where Serve set up no tracer provider, the helpers do nothing.
    assert not tracing.enabled() and tracing.capture() is None
    with tracing.span("edge") as span:
        assert span is None
