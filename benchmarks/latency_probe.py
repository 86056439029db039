"""Sequential latency of the served app: ``python -m benchmarks.latency_probe [--bundle B]``.

Starts its own Ray head and ``serve run`` with ``serve_config.yaml`` (the environment
of ``deployments/ray_env.py`` unless the caller's environment overrides it), then sends
one request at a time: text only, text plus a WAV, and ``/healthz`` (the proxy, the
driver and one parallel round of pings to the model deployments). Prints the medians
as JSON. Compare Serve's request paths with, for example::

    RAY_SERVE_THROUGHPUT_OPTIMIZED=0 python -m benchmarks.latency_probe
    python -m benchmarks.latency_probe
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_AUTH_MODE", "token")  # before Ray is imported (see benchmarks.run)

import argparse  # noqa: E402
import base64  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402

from benchmarks.latency_stats import summarize  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def median_ms(send, n: int, skip: int = 5) -> float:
    """p50 of ``n`` calls after ``skip`` warm-up calls."""
    times = []
    for i in range(n + skip):
        start = time.perf_counter()
        send(i)
        if i >= skip:
            times.append(time.perf_counter() - start)
    return summarize(times)["p50_ms"]


def main(argv: list[str] | None = None) -> dict:
    from benchmarks.served_config import derive_config
    from benchmarks.served_system import start_system, stop_system
    from harness import free_port
    from model.audio import encode_wav
    from model.demo.speech import Voice, available, synthesize

    p = argparse.ArgumentParser(prog="python -m benchmarks.latency_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=ROOT / "artifacts" / "demo-bundle")
    p.add_argument("--requests", type=int, default=40)
    args = p.parse_args(argv)

    if available():
        wav = encode_wav(synthesize("a wonderful film with brilliant acting", Voice()), 16_000)
    else:  # two seconds of a voiced-like tone
        import numpy as np

        t = np.arange(32_000) / 16_000
        wav = encode_wav((0.3 * np.sin(2 * np.pi * 140 * t)).astype("float32"), 16_000)
    audio = base64.b64encode(wav).decode()
    port = free_port()
    config = derive_config(ROOT / "serve_config.yaml", args.bundle.resolve(), port, {})
    workdir = Path(tempfile.mkdtemp(prefix="latency-probe-"))
    system = start_system(config, workdir, os.cpu_count() or 2, None, 300, {}, poll_status=False)
    try:
        with httpx.Client(timeout=60) as client:
            def predict(body):
                response = client.post(f"{system.url}/v1/predict", json=body)
                response.raise_for_status()

            result = {
                "env": {k: v for k, v in system.head.child_env().items() if k.startswith("RAY_SERVE_")},
                "text_p50_ms": median_ms(lambda i: predict({"text": f"a wonderful film, take {i}"}), args.requests),
                "text_and_wav_p50_ms": median_ms(
                    lambda i: predict({"text": f"a wonderful film, take {i}", "audio": audio}), args.requests),
                "healthz_p50_ms": median_ms(lambda i: client.get(f"{system.url}/healthz").raise_for_status(),
                                            args.requests),
            }
    finally:
        stop_system(system, workdir)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
