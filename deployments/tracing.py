"""OpenTelemetry traces of one request across the deployments: Serve's exporter hook and the service's own spans.

Off unless ``SENTIMENT_OTLP_ENDPOINT`` names an OTLP/HTTP collector (e.g.
``http://127.0.0.1:4318``) in the environment Ray starts with; ``deployments.ray_env``
then switches on Ray Serve's tracing, whose exporter is ``otlp_span_processors`` below.

Serve itself traces the hops: a span for each request a replica handles
(``replica_handle_request <Deployment> <method>``) and one for each handle call
(``route_to_replica ...``), each with a ``request_id`` attribute, and it carries the
trace context from the Driver to the model replicas. This module adds what Serve cannot
see: ``edge`` (the HTTP edge middleware), ``decode_audio`` in the Driver, and
``<Deployment>.forward`` for the batch that served an item. One forward pass serves
several requests, so each traced item gets its own forward span in its own trace, with
the batch's size and the item's wait in the queue.

When tracing is off every helper here returns at once: no spans, no context changes.
"""

from __future__ import annotations

import contextlib
import os
import time
from urllib.parse import urlparse

ENDPOINT_ENV = "SENTIMENT_OTLP_ENDPOINT"
EXPORTER_IMPORT_PATH = "deployments.tracing:otlp_span_processors"
SERVICE_NAME = "sentiment"


def _every_request(scope) -> bool:
    return True


# For ``FastAPI(telemetry=...)``: FastAPI's own tracing off, for the app and the Gradio app
# mounted on it (an excluded request is marked so that mounted FastAPI apps skip it too).
# FastAPI takes a server span's parent from the request's headers only, so beside Serve's
# span for the same request it would start a second trace. Serve's span is the root.
FASTAPI_TELEMETRY = {"exclude": _every_request}


def ray_env(endpoint: str | None) -> dict:
    """The environment that switches Serve's tracing on with our exporter (empty = off).

    Every request is sampled unless ``RAY_SERVE_TRACING_SAMPLING_RATIO`` says otherwise
    (values already in the environment win, ``deployments.ray_env.apply``). Ray's own
    default, 0.01, would make a trace of a request a rare event."""
    if not endpoint:
        return {}
    return {
        ENDPOINT_ENV: endpoint,
        "RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH": EXPORTER_IMPORT_PATH,
        "RAY_SERVE_TRACING_SAMPLING_RATIO": "1.0",
        "OTEL_SERVICE_NAME": SERVICE_NAME,
    }


def traces_url(endpoint: str) -> str:
    """A collector's base address gets OTLP/HTTP's traces path; a full URL stays as given."""
    endpoint = endpoint.rstrip("/")
    return endpoint + "/v1/traces" if urlparse(endpoint).path in ("", "/") else endpoint


def otlp_span_processors() -> list:
    """Serve's exporter hook (``RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH``): called once in
    every Serve process. A batch processor exports from a thread of its own, off the
    replica's event loop."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    return [BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(os.environ[ENDPOINT_ENV])))]


def enabled() -> bool:
    """Serve installed an SDK tracer provider in this process (``setup_tracing``)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    return isinstance(trace.get_tracer_provider(), TracerProvider)


def _in_sampled_trace() -> bool:
    """The service's spans never start a trace: they join the one Serve started, if it
    was sampled (below a sampling ratio of 1 most requests have none)."""
    from opentelemetry import trace

    return trace.get_current_span().get_span_context().trace_flags.sampled


def _tracer():
    from opentelemetry import trace

    return trace.get_tracer("deployments.tracing")


def _request_id() -> str:
    from ray.serve.context import _get_serve_request_context

    return _get_serve_request_context().request_id


def current_context():
    """This request's trace context, for work that runs later in another task (a Gradio
    event: ``continued``); None when tracing is off."""
    if not enabled():
        return None
    from opentelemetry import context

    return context.get_current()


@contextlib.contextmanager
def continued(parent, name: str, request_id: str):
    """A span ``name`` under ``parent`` (from ``current_context``), current inside the block,
    so that the handle calls made inside join the trace of the request that asked for them."""
    if parent is None or not enabled():
        yield None
        return
    from opentelemetry import context

    token = context.attach(parent)
    try:
        with _tracer().start_as_current_span(name, attributes={"request_id": request_id}) as s:
            yield s
    finally:
        context.detach(token)


@contextlib.contextmanager
def span(name: str, attributes: dict | None = None):
    """A child of the current span, with the request id, current inside the block."""
    if not enabled() or not _in_sampled_trace():
        yield None
        return
    with _tracer().start_as_current_span(name, attributes={"request_id": _request_id(), **(attributes or {})}) as s:
        yield s


def capture():
    """What a batch needs to trace this item later: (context, request id, arrival in ns)."""
    if not enabled() or not _in_sampled_trace():
        return None
    from opentelemetry import context

    return context.get_current(), _request_id(), time.time_ns()


def _deployment() -> str:
    from ray import serve

    try:
        return serve.get_replica_context().deployment
    except Exception:  # outside a replica
        return "model"


@contextlib.contextmanager
def batch_spans(captured: list):
    """``<Deployment>.forward`` around one forward pass, one span per traced item."""
    traced = [c for c in captured if c is not None]
    if not traced:
        yield
        return
    from opentelemetry.trace import Status, StatusCode

    tracer, name, began = _tracer(), f"{_deployment()}.forward", time.time_ns()
    spans = [tracer.start_span(name, context=ctx, start_time=began,
                               attributes={"request_id": request_id, "batch_size": len(captured),
                                           "queue_wait_ms": (began - arrived) / 1e6})
             for ctx, request_id, arrived in traced]
    try:
        yield
    except BaseException as exc:
        for s in spans:
            s.record_exception(exc)
            s.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        for s in spans:
            s.end()
