"""Environment for the Ray processes that serve this app (set before Ray starts).

Serve reads these when each of its processes (controller, proxy, replicas) imports it,
so they must be in the environment of ``ray start`` / ``ray.init``, not set later.

``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` (Ray >= 2.56) turns on Serve's faster request path:
the ingress replica answers HTTP itself (direct ingress, on ``http_options.host``, so
loopback for local runs), deployments call each other over gRPC, and user code and the
router run on the replica's main event loop instead of extra threads. On the 2-core dev
machine, one request at a time with the demo bundle, text + speech was 11-20 ms faster
with it (``python -m benchmarks.latency_probe`` with and without
``RAY_SERVE_THROUGHPUT_OPTIMIZED=0``; figures in the README). That mode runs user code on the replica's event
loop, which is safe here because every forward pass and every audio decode runs in a
worker thread.

Request-path logs are written line by line (that mode buffers 1000 lines by default),
so a request id can be found in the logs as soon as the request is answered.
Values already in the environment win, so a user can switch any of them off.
"""

from __future__ import annotations

import contextlib
import os

SERVE_ENV = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1",
}


def apply(environ: dict | None = None) -> dict:
    """Add the defaults to ``environ`` (``os.environ`` by default) without overriding."""
    environ = os.environ if environ is None else environ
    for key, value in SERVE_ENV.items():
        environ.setdefault(key, value)
    return environ


@contextlib.contextmanager
def for_new_cluster():
    """The defaults in ``os.environ`` only while this process starts a local Ray
    (``ray.init(address="local")``), whose processes inherit them.

    This process itself keeps Serve's defaults: in that mode a ``DeploymentHandle``
    routes on the caller's event loop, so a script or test that calls
    ``handle.remote().result()`` outside asyncio would fail. Import ``ray.serve``
    before entering, since Serve reads its settings once, at import.
    """
    added = [key for key in SERVE_ENV if key not in os.environ]
    apply()
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


if __name__ == "__main__":  # for shell scripts: eval "$(python -m deployments.ray_env)"
    for key, value in SERVE_ENV.items():
        print(f"export {key}=${{{key}:-{value}}}")
