"""Latency summaries shared by every system in the benchmark, so all are computed the same way."""

from __future__ import annotations

import numpy as np


def summarize(latencies_s: list[float]) -> dict:
    """p50/p95/p99/mean/max in milliseconds (linear interpolation between samples)."""
    if not latencies_s:
        return {"n": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None}
    ms = np.asarray(latencies_s) * 1000.0
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"n": int(ms.size), "p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2),
            "p99_ms": round(float(p99), 2), "mean_ms": round(float(ms.mean()), 2), "max_ms": round(float(ms.max()), 2)}


def by_kind(latencies_s: list[float], kinds: list[str]) -> dict:
    """``summarize`` per request kind (text / audio / both)."""
    out = {}
    for kind in sorted(set(kinds)):
        out[kind] = summarize([lat for lat, k in zip(latencies_s, kinds) if k == kind])
    return out
