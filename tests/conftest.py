"""Shared fixtures: tiny locally-built checkpoints and one real local Ray cluster.

Starting Ray and Serve costs tens of seconds on 2 cores, so the whole session
shares one cluster; test modules deploy their own applications onto it.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from deployments import ray_env

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    from model.factory import save_tiny_bundle

    path = tmp_path_factory.mktemp("bundles") / "tiny"
    save_tiny_bundle(path)
    return path


def repo_pythonpath() -> str:
    """PYTHONPATH for a subprocess: this checkout first, then whatever the caller had
    (an install with ``pip --target`` lives only on PYTHONPATH)."""
    repo = str(Path(__file__).resolve().parent.parent)
    return os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))


def tone(seconds: float = 1.0, rate: int = 16_000, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype("float32")


@pytest.fixture(scope="session")
def wav_bytes() -> bytes:
    from model.audio import encode_wav

    return encode_wav(tone(1.0, 22_050), 22_050)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray (4 logical CPUs on 2 cores: replicas mostly idle in tests) plus Serve on a free port."""
    import ray
    from ray import serve

    # address="local": always a fresh cluster, never one some other `ray start` left running.
    # Its processes get the same Serve request path as `make run` (deployments/ray_env.py).
    with ray_env.for_new_cluster():
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def wait_healthy(url: str, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url}/healthz did not become healthy in {timeout_s} s")


def deploy(url: str, args: dict, name: str = "sentiment", route_prefix: str = "/") -> str:
    """Deploy the real application (deployments.app.build_app) and wait until it answers."""
    from ray import serve

    from deployments.app import build_app

    serve.run(build_app(args), name=name, route_prefix=route_prefix)
    app_url = url.rstrip("/") + (route_prefix if route_prefix != "/" else "")
    wait_healthy(app_url)
    return app_url


@pytest.fixture(scope="module")
def served_app(ray_cluster, tiny_bundle):
    """The app serving the tiny bundle at ``/``; batch windows widened so batching is observable."""
    args = {
        "bundle": str(tiny_bundle),
        "deployments": {
            "TextEncoder": {"user_config": {"max_batch_size": 16, "batch_wait_timeout_s": 0.05}},
        },
    }
    return deploy(ray_cluster, args)
