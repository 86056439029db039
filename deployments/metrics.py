"""The service's own Prometheus metrics: every name, tag key and bucket, and the hooks that record them.

They are ``ray.serve.metrics`` instruments, so they travel the way Serve's own metrics do:
each replica hands them to its node's metrics agent, which serves them on the node's
metrics export port (``ray start --metrics-export-port``, 8080 in ``make run``) at
``/metrics``. The agent prefixes every name with ``ray_`` and a counter gets ``_total``;
``exported_names()`` lists the names Prometheus sees. Serve adds the ``deployment``,
``replica`` and ``application`` tags itself, so nothing here names a deployment.

Serve's metric classes read the replica's context when they are created, so the
instruments are created on first use inside each process, never at import. In a process
without Ray (unit tests, the in-process pipeline) every hook does nothing.
"""

from __future__ import annotations

import contextlib
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass

PREFIX = "ray_"

# Seconds. From a small forward pass to a request at the 30 s deadline.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Items per forward pass: powers of two up to BatchingConfig's limit (512).
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# Seconds a request waits for its batch: zero at low load, about one forward pass under load.
QUEUE_WAIT_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The modality tag's values; "none" is a request that never reached Driver.predict.
MODALITIES = ("text", "audio", "both", "none")
# The route tag of everything the Gradio mount serves (its paths are many and open-ended),
# and of requests the edge refused before any routing (401, 413).
UI_ROUTE, EDGE_ROUTE = "ui", "edge"


@dataclass(frozen=True)
class Metric:
    kind: str  # "counter", "histogram" or "gauge"
    description: str
    tag_keys: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()

    def exported(self, name: str) -> list[str]:
        """The names Prometheus sees for this metric."""
        base = PREFIX + name
        if self.kind == "counter":
            return [base + "_total"]
        if self.kind == "histogram":
            return [base + "_bucket", base + "_sum", base + "_count"]
        return [base]


METRICS = {
    "sentiment_http_requests": Metric(
        "counter", "HTTP requests the Driver answered, by route template, modality and status code",
        ("route", "modality", "status")),
    "sentiment_http_request_duration_seconds": Metric(
        "histogram", "Time from the edge receiving a request to its response ending",
        ("route", "modality"), LATENCY_BUCKETS_S),
    "sentiment_errors": Metric(
        "counter", "Error responses by the error family's code (deployments/http/errors.py)", ("code", "status")),
    "sentiment_audio_received_seconds": Metric("counter", "Seconds of audio decoded (its duration, not decode time)"),
    "sentiment_audio_decode_seconds": Metric("histogram", "Time to decode and resample one audio input",
                                             boundaries=LATENCY_BUCKETS_S),
    "sentiment_batch_size": Metric("histogram", "Items in one forward pass", boundaries=BATCH_SIZE_BUCKETS),
    "sentiment_forward_seconds": Metric("histogram", "Time of one batch's forward pass", boundaries=LATENCY_BUCKETS_S),
    "sentiment_batch_queue_wait_seconds": Metric(
        "histogram", "Time an item waited in a replica's batch queue before its forward pass began",
        boundaries=QUEUE_WAIT_BUCKETS_S),
    "sentiment_replica_retries": Metric(
        "counter", "Model calls the Driver sent again after a replica failed (died or answered non-finite numbers)",
        ("failure",)),
    "sentiment_bundle_info": Metric("gauge", "The model bundle served (always 1)", ("name", "version")),
}


def exported_names() -> set[str]:
    return {exported for name, metric in METRICS.items() for exported in metric.exported(name)}


_instruments: dict | None = None
_lock = threading.Lock()


def _build() -> dict:
    from ray.serve.metrics import Counter, Gauge, Histogram

    built = {}
    for name, m in METRICS.items():
        tags = m.tag_keys or None
        if m.kind == "counter":
            built[name] = Counter(name, m.description, tags)
        elif m.kind == "histogram":
            built[name] = Histogram(name, m.description, list(m.boundaries), tags)
        else:
            built[name] = Gauge(name, m.description, tags)
    return built


def _get(name: str):
    """The instrument, or None in a process that is not connected to Ray."""
    global _instruments
    if _instruments is None:
        import ray

        if not ray.is_initialized():
            return None
        with _lock:
            if _instruments is None:
                _instruments = _build()
    return _instruments[name]


# ---- hooks ---------------------------------------------------------------------------


def modality(text, audio) -> str:
    return "both" if text is not None and audio is not None else "text" if text is not None else "audio"


def route_label(scope) -> str:
    """The route template that served ``scope`` (bounded cardinality, never the raw
    path). Read after the app ran: the router marks the scope (``router``) and writes the
    matched route into it (``route``), and a Mount (the Gradio UI) adds ``app_root_path``."""
    if "router" not in scope:
        return EDGE_ROUTE
    if "app_root_path" in scope:
        return UI_ROUTE
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class ObservedRequest:
    """One HTTP request at the edge: its status (from ``send``) and, set by
    ``note_modality`` from wherever the request is predicted, its modality."""

    def __init__(self, scope, send):
        self.scope = scope
        self.modality = "none"
        self.status = 499  # the client went away before any response (nginx's code for it)
        self.began = time.perf_counter()
        self._send = send

    async def send(self, message):
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self._send(message)

    def record(self) -> None:
        tags = {"route": route_label(self.scope), "modality": self.modality}
        _get("sentiment_http_request_duration_seconds").observe(time.perf_counter() - self.began, tags)
        _get("sentiment_http_requests").inc(1, tags | {"status": str(self.status)})


_observed: ContextVar[ObservedRequest | None] = ContextVar("sentiment_observed_request", default=None)


@contextlib.contextmanager
def observe_request(scope, send):
    """Yields the ``send`` to pass on; records the request when the block ends. The
    ``ObservedRequest`` is reachable from every task the request spawns (a context
    variable holds it and child tasks copy the reference), so ``note_modality`` in
    ``Driver.predict`` can label it."""
    if _get("sentiment_http_requests") is None:
        yield send
        return
    observed = ObservedRequest(scope, send)
    token = _observed.set(observed)
    try:
        yield observed.send
    finally:
        _observed.reset(token)
        observed.record()


def note_modality(text, audio) -> None:
    observed = _observed.get()
    if observed is not None:
        observed.modality = modality(text, audio)


def count_error(code: str, status: int) -> None:
    counter = _get("sentiment_errors")
    if counter is not None:
        counter.inc(1, {"code": code, "status": str(status)})


def record_decode(audio_seconds: float, decode_seconds: float) -> None:
    counter = _get("sentiment_audio_received_seconds")
    if counter is None:
        return
    if audio_seconds > 0:  # Ray refuses a counter increment of 0
        counter.inc(audio_seconds)
    _get("sentiment_audio_decode_seconds").observe(decode_seconds)


def observe_batch(waits_s: list[float], forward_s: float) -> None:
    """One forward pass: its size, its time, and how long each of its items waited."""
    sizes = _get("sentiment_batch_size")
    if sizes is None:
        return
    sizes.observe(len(waits_s))
    _get("sentiment_forward_seconds").observe(forward_s)
    wait = _get("sentiment_batch_queue_wait_seconds")
    for seconds in waits_s:
        wait.observe(seconds)


def count_retry(failure: BaseException) -> None:
    counter = _get("sentiment_replica_retries")
    if counter is not None:
        # The failure kinds are a handful of exception classes: bounded.
        counter.inc(1, {"failure": type(failure).__name__})


def publish_bundle(name: str, version: str) -> None:
    """The info gauge, set now and again in a daemon thread: the metrics agent forgets a
    gauge that its process stopped reporting (after two report intervals), so an info
    gauge set once would vanish while the replica lives on."""
    gauge = _get("sentiment_bundle_info")
    if gauge is None:
        return
    import ray

    # Ray's export cadence (metrics_report_interval_ms, never below 1 s); half of it
    # keeps the value fresh at every export.
    period_s = max(ray._config.metrics_report_interval_ms(), 1000) / 2000
    tags = {"name": name, "version": str(version)}

    def refresh():
        while True:
            gauge.set(1, tags)
            time.sleep(period_s)

    threading.Thread(target=refresh, name="sentiment-bundle-info", daemon=True).start()
