"""Closed-loop load on one deployment through a DeploymentHandle, from inside the cluster.

    python -m benchmarks.handle_load --address 127.0.0.1:PORT --deployment TextEncoder \
        --method encode --texts texts.json --concurrency 16 --seconds 15

What the TextEncoder's dynamic batching buys the deployment itself: the same short
texts as the HTTP scenario, but without the proxy, the driver and the fusion head,
which on a small machine can cap the end-to-end rate before the encoder does. Prints one
JSON object: completed calls, calls per second, and latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from benchmarks.latency_stats import summarize


async def drive(handle, method: str, texts: list[str], concurrency: int, seconds: float, warmup_s: float) -> dict:
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop = measure_from + seconds

    async def client(k: int) -> None:
        nonlocal errors
        i = k
        while time.perf_counter() < stop:
            t = time.perf_counter()
            try:
                await getattr(handle, method).remote(texts[i % len(texts)], False)  # explain=False
            except Exception:
                errors += 1
            if t >= measure_from:
                latencies.append(time.perf_counter() - t)
            i += concurrency

    await asyncio.gather(*(client(k) for k in range(concurrency)))
    stats = summarize(latencies)
    return {"calls": len(latencies), "errors": errors, "seconds": seconds, "concurrency": concurrency,
            "calls_per_s": round(len(latencies) / seconds, 2), "p50_ms": stats["p50_ms"], "p99_ms": stats["p99_ms"]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.handle_load", description=__doc__.split("\n\n")[0])
    p.add_argument("--address", required=True)
    p.add_argument("--app", default="sentiment")
    p.add_argument("--deployment", default="TextEncoder")
    p.add_argument("--method", default="encode")
    p.add_argument("--texts", required=True, help="JSON list of the inputs, sent round-robin")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--warmup", type=float, default=3.0)
    args = p.parse_args(argv)

    import ray
    from ray import serve

    ray.init(address=args.address, log_to_driver=False)
    with open(args.texts, encoding="utf-8") as f:
        texts = json.load(f)

    async def run() -> dict:
        handle = serve.get_deployment_handle(args.deployment, app_name=args.app)
        return await drive(handle, args.method, texts, args.concurrency, args.seconds, args.warmup)

    print(json.dumps(asyncio.run(run())))


if __name__ == "__main__":
    main()
