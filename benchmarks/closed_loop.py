"""Closed-loop HTTP load on ``POST /v1/predict`` and the arithmetic of one load level:
steady-window throughput, latencies, status counts and the batch sizes it formed."""

from __future__ import annotations

import asyncio
import time

import httpx

from benchmarks.latency_stats import by_kind, summarize
from benchmarks.workload import Request


async def closed_loop(url: str, requests: list[Request], concurrency: int, duration_s: float,
                      timeout_s: float) -> tuple[list[tuple], float]:
    """``concurrency`` clients, each sending its next request when the last one answers,
    until ``duration_s`` has passed; in-flight requests then finish (drain).

    Returns records (start_s, end_s, status, kind, index) relative to the start, and
    the moment the last request finished.
    """
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    records: list[tuple] = []
    async with httpx.AsyncClient(limits=limits, timeout=timeout_s) as client:
        t0 = time.perf_counter()
        stop_at = t0 + duration_s

        async def worker(w: int) -> None:
            k = w
            while time.perf_counter() < stop_at:
                request = requests[k % len(requests)]
                k += concurrency
                start = time.perf_counter()
                try:
                    resp = await client.post(f"{url}/v1/predict", **request.http_body())
                    status = resp.status_code
                except httpx.TimeoutException:
                    status = "client_timeout"
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                records.append((start - t0, time.perf_counter() - t0, status, request.kind, request.index))

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        return records, time.perf_counter() - t0


def summarize_level(records: list[tuple], duration_s: float, warmup_s: float,
                    weights: list[float] | None = None) -> dict:
    """Throughput over the steady window [warmup, duration]; latencies of requests
    started in it (drained ones included); status counts over all of them.

    ``weights`` (request index -> cost relative to the workload's mean) gives
    ``work_rps``: in a short window a closed loop completes cheap requests more often
    than the mix holds them, so plain requests/s flatters a heterogeneous mix.
    """
    window = max(duration_s - warmup_s, 1e-9)
    measured = [r for r in records if r[0] >= warmup_s]
    ok = [r for r in measured if r[2] == 200]
    in_window = [r for r in records if r[2] == 200 and warmup_s <= r[1] <= duration_s]
    done_in_window = len(in_window)
    statuses: dict[str, int] = {}
    for r in measured:
        statuses[str(r[2])] = statuses.get(str(r[2]), 0) + 1
    latencies = [r[1] - r[0] for r in ok]
    return {
        "throughput_rps": done_in_window / window,
        "work_rps": sum(weights[r[4]] for r in in_window) / window if weights else None,
        "requests": len(measured),
        "ok": len(ok),
        "errors": len(measured) - len(ok),
        "status_503": statuses.get("503", 0),
        "statuses": statuses,
        **summarize(latencies),
        "by_kind": by_kind(latencies, [r[3] for r in ok]),
    }


def stats_delta(before: dict, after: dict) -> dict:
    """Batch-size histograms formed during one level, per deployment (one replica each),
    from two ``GET /v1/stats`` snapshots."""
    out = {}
    for name, snap in after.items():
        prev = before.get(name, {})
        same = prev.get("pid") == snap.get("pid")
        hist = {k: v - (prev.get("histogram", {}).get(k, 0) if same else 0) for k, v in snap["histogram"].items()}
        hist = {k: v for k, v in hist.items() if v > 0}
        batches = sum(hist.values())
        items = sum(int(k) * v for k, v in hist.items())
        out[name] = {"pid": snap.get("pid"), "same_replica": same, "histogram": hist, "batches": batches,
                     "items": items, "mean_batch_size": round(items / batches, 2) if batches else 0.0}
    return out


def get_stats(url: str) -> dict:
    """The app's ``GET /v1/stats`` (batch-size histograms per deployment)."""
    return httpx.get(f"{url}/v1/stats", timeout=30).json()
