"""The serving path's overhead at concurrency 1: each request over HTTP, then at once in-process."""

from __future__ import annotations

import time

import httpx

from benchmarks.latency_stats import by_kind, summarize
from benchmarks.workload import Request


def paired_overhead(url: str, requests: list[Request], local_predict, timeout_s: float,
                    thread_counts: list[int]) -> dict:
    """Each request once over HTTP, then at once in-process: paired under the same load.

    On a shared machine the CPU this process gets swings from minute to minute, so
    p50(HTTP) - p50(in-process) from separate phases measures the neighbours; the
    median of per-request differences measures the serving path. The in-process time
    is the faster of ``thread_counts`` (torch threads), so contention on a pool of
    several threads is not counted as serving overhead.
    """
    import torch

    threads_before = torch.get_num_threads()
    http, local, kinds, diffs = [], [], [], []
    per_threads: dict[int, list[float]] = {t: [] for t in thread_counts}
    try:
        with httpx.Client(timeout=timeout_s) as client:
            for request in requests:
                start = time.perf_counter()
                resp = client.post(f"{url}/v1/predict", **request.http_body())
                t_http = time.perf_counter() - start
                if resp.status_code != 200:
                    continue
                times = []
                for threads in thread_counts:
                    torch.set_num_threads(threads)
                    start = time.perf_counter()
                    local_predict(request)
                    times.append(time.perf_counter() - start)
                    per_threads[threads].append(times[-1])
                http.append(t_http)
                local.append(min(times))
                kinds.append(request.kind)
                diffs.append(t_http - min(times))
    finally:
        torch.set_num_threads(threads_before)
    return {
        "http": summarize(http), "in_process": summarize(local), "difference": summarize(diffs),
        "difference_by_kind": by_kind(diffs, kinds),
        "in_process_by_threads": {str(t): summarize(v) for t, v in per_threads.items()},
    }
