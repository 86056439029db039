"""Traces: one request is one connected trace across the four deployments, exported over OTLP; off by default.

The collector is a real OTLP/HTTP receiver in this process (``tests/otlp_collector.py``);
the replicas' exporter reaches it over HTTP the way it would reach an OpenTelemetry
Collector. The shared app's replicas (``conftest.served_app``) get the environment
``deployments.tracing.ray_env`` gives ``make run`` (through their ``runtime_env``, since
the test cluster started without it), so these tests trace requests to that app.
"""

from __future__ import annotations

import base64
import concurrent.futures
import re
import time
from collections import defaultdict

import httpx
import pytest

from deployments import ray_env, tracing
MODEL_DEPLOYMENTS = ("TextEncoder", "AudioEncoder", "FusionHead")
# The batch span processor exports every half second here (its default is 5 s, conftest.served_app).
EXPORT_LIMIT_S = 60.0


def wait_for(predicate, what: str):
    deadline = time.monotonic() + EXPORT_LIMIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"no {what} within {EXPORT_LIMIT_S:.0f} s"
        time.sleep(0.5)


@pytest.mark.slow
def test_one_request_is_one_connected_trace(served_app, otlp_collector, wav_bytes):
    rid = "trace-both-1"
    reply = httpx.post(f"{served_app}/v1/predict", timeout=60, headers={"X-Request-ID": rid},
                       json={"text": "a fine film", "audio": base64.b64encode(wav_bytes).decode()})
    assert reply.status_code == 200 and reply.json()["request_id"] == rid, reply.text
    wanted = {"edge", "decode_audio", *(f"{d}.forward" for d in MODEL_DEPLOYMENTS)}
    wait_for(lambda: wanted <= {s["name"] for s in otlp_collector.of_request(rid)}, "spans of the request")
    time.sleep(2)  # the replicas' last export of this request

    traces_seen = {s["trace_id"] for s in otlp_collector.of_request(rid)}
    for s in [s for t in traces_seen for s in otlp_collector.of_trace(t)]:
        print(f'{s["trace_id"][:8]} {s["span_id"][:8]} <- {s["parent"][:8] or "root    "} {s["name"]} '
              f'{s["attributes"].get("request_id")}')
    trace_ids = {s["trace_id"] for s in otlp_collector.of_request(rid)}
    assert len(trace_ids) == 1, "the request's spans are split over several traces"
    [trace_id] = trace_ids
    spans = otlp_collector.of_trace(trace_id)
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
def test_a_shared_batch_keeps_every_request_in_its_own_trace(served_app, otlp_collector):
    # Sixteen at once, as test_serving's batching check sends them: with the shared app's
    # 50 ms batch window, some of them ride one forward pass.
    rids = [f"trace-batch-{i}" for i in range(16)]

    def send(rid):
        return httpx.post(f"{served_app}/v1/predict", timeout=60, headers={"X-Request-ID": rid},
                          json={"text": f"request {rid}"}).status_code

    with concurrent.futures.ThreadPoolExecutor(len(rids)) as pool:
        assert list(pool.map(send, rids)) == [200] * len(rids)
    # Text-only: the text encoder fuses them itself, so TextEncoder.forward is their one forward span.
    wait_for(lambda: all("TextEncoder.forward" in {s["name"] for s in otlp_collector.of_request(r)} for r in rids),
             "forward spans of the batched requests")
    traces = defaultdict(set)
    for rid in rids:
        spans = otlp_collector.of_request(rid)
        traces[rid] = {s["trace_id"] for s in spans}
        assert len(traces[rid]) == 1, (rid, traces[rid])
    assert len(set.union(*traces.values())) == len(rids), "two requests share a trace"
    sizes = [s["attributes"]["batch_size"] for r in rids for s in otlp_collector.of_request(r) if s["name"] == "TextEncoder.forward"]
    print("TextEncoder batch sizes seen by the traced requests:", sizes)
    assert max(sizes) >= 2, sizes  # at least two of them rode one forward pass, each with its own span


@pytest.mark.slow
def test_a_ui_event_is_one_trace_with_the_request_that_submitted_it(served_app, otlp_collector, tmp_path, wav_bytes):
    """Gradio runs an event in its queue's task, outside the HTTP request that submitted it;
    the event still continues that request's trace, under its request id."""
    from gradio_client import Client, handle_file

    wav = tmp_path / "speech.wav"
    wav.write_bytes(wav_bytes)
    notes = Client(served_app + "/", verbose=False).predict("a fine film", handle_file(str(wav)),
                                                            api_name="/predict")[-1]
    [rid] = re.findall(r"Request `([^`]+)`", notes)
    wanted = {"ui.predict", "decode_audio", *(f"{d}.forward" for d in MODEL_DEPLOYMENTS)}
    wait_for(lambda: wanted <= {s["name"] for s in otlp_collector.of_request(rid)}, "spans of the UI event")
    time.sleep(2)  # the replicas' last export of this event
    trace_ids = {s["trace_id"] for s in otlp_collector.of_request(rid)}
    assert len(trace_ids) == 1, "the event's spans are split over several traces"
    spans = otlp_collector.of_trace(trace_ids.pop())
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
