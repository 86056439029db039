"""The model-bound limit: the encoders' and fusion head's forward passes alone, the ceiling no server can pass.

Inputs are prepared first (texts tokenized with ``TextEncoder.tokenize_each``, audio
decoded and resampled, encoder features computed), so only the three forward passes
are timed: ``TextEncoder.encode_ids`` (+ ``unpad``, the copy to the host every
deployment makes), ``AudioEncoder.encode`` (+ ``unpad``; its feature extractor's
normalisation is part of the encoder's work) and the fusion head's ``run``. Each stage
is timed over the whole workload in length-sorted chunks (the least padding any batcher
could form) at each batch size and torch thread count; its best is kept. The stages
add up: one device does all three.

On a CPU a stage run with ``k`` threads counts as ``cores / k`` copies side by side
(perfect scaling assumed, so the bound errs high), and the best ``k`` is kept. On a
GPU the device is the limit and threads do not count.
"""

from __future__ import annotations

import math
import time

import torch

from benchmarks.workload import Request

# Batch sizes tried per stage, by where the models run.
BATCH_SIZES = {
    "cpu": {"text": [1, 8, 32], "audio": [1, 4], "fusion": [8, 32]},
    "cuda": {"text": [8, 32, 128], "audio": [4, 16, 32], "fusion": [32, 128]},
}
QUICK_BATCH_SIZES = {"text": [1, 16], "audio": [1, 4], "fusion": [32]}


def best_config(sweep: dict[tuple[int, int], float], cores: int, on_cpu: bool) -> tuple[tuple[int, int], float]:
    """The (batch size, threads) whose pass over the workload is fastest, and its time
    scaled to the whole machine: ``seconds * threads / cores`` on a CPU, as measured on a GPU."""
    def effective(key):
        return sweep[key] * key[1] / cores if on_cpu else sweep[key]

    key = min(sweep, key=effective)
    return key, effective(key)


def ceiling(sweeps: dict[str, dict[tuple[int, int], float]], requests: int, cores: int, on_cpu: bool) -> dict:
    """The model-bound limit from each stage's timings (seconds per pass over the workload):
    requests per second with every stage at its best, one after the other."""
    stages, total = {}, 0.0
    for stage, sweep in sweeps.items():
        if not sweep:
            continue
        (batch, threads), seconds = best_config(sweep, cores, on_cpu)
        stages[stage] = {"best_batch_size": batch, "best_threads": threads, "seconds": round(seconds, 5),
                         "sweep": {f"{b}@{t}t": round(s, 5) for (b, t), s in sorted(sweep.items())}}
        total += seconds
    return {
        "requests": requests, "bound_s": round(total, 5), "stages": stages,
        "throughput_rps": round(requests / total, 3) if total else None,
        # Core-milliseconds per request at the bound (CPU only): comparable with a
        # served role's CPU ms per request.
        "core_ms_per_request": round(1000.0 * total * cores / requests, 3) if on_cpu and requests else None,
    }


def fraction_of_bound(served_rps: float | None, bound: dict | None) -> float | None:
    """Served throughput as a share of the model-bound limit."""
    limit = (bound or {}).get("throughput_rps")
    return round(served_rps / limit, 4) if served_rps is not None and limit else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_passes(run, items: list, lengths: list[int], batch_size: int, device: torch.device,
                min_s: float = 1.0, max_passes: int = 20) -> float:
    """Seconds of the fastest pass of ``run`` over ``items`` in length-sorted chunks of
    ``batch_size`` (passes repeat until ``min_s`` is spent; a warm-up chunk goes first)."""
    order = sorted(range(len(items)), key=lengths.__getitem__)
    chunks = [[items[i] for i in order[lo: lo + batch_size]] for lo in range(0, len(order), batch_size)]
    run(chunks[-1])  # the longest chunk: first calls pay for kernel selection and allocator growth
    _sync(device)
    best, spent, passes = math.inf, 0.0, 0
    while passes == 0 or (spent < min_s and passes < max_passes):
        start = time.perf_counter()
        for chunk in chunks:
            run(chunk)
        _sync(device)
        elapsed = time.perf_counter() - start
        best, spent, passes = min(best, elapsed), spent + elapsed, passes + 1
    return best


def model_bound(model, requests: list[Request], batch_sizes: dict[str, list[int]], thread_counts: list[int],
                cores: int) -> dict:
    """The model-bound limit of ``requests`` on an ``InProcessModel``'s pipeline."""
    pipeline = model.pipeline
    device = pipeline.text_encoder.device
    texts = [r.text for r in requests if r.text is not None]
    waves = [model.decode(r) for r in requests if r.wav is not None]
    tokenized = pipeline.text_encoder.tokenize_each(texts) if texts else None
    text_feats = iter(pipeline.text_encoder.encode_each(texts, tokenized) if texts else [])
    audio_feats = iter(pipeline.audio_encoder.encode_each(waves) if waves else [])
    pairs = [(next(text_feats) if r.text is not None else None, next(audio_feats) if r.wav is not None else None)
             for r in requests]

    @torch.inference_mode()
    def fusion(chunk):
        pipeline.fusion.run([t for t, _ in chunk], [a for _, a in chunk])

    stages = {
        "text": (lambda ids: pipeline.text_encoder.encode_ids(ids).unpad(), tokenized.ids if texts else [],
                 [len(ids) for ids in tokenized.ids] if texts else []),
        "audio": (lambda chunk: pipeline.audio_encoder.encode(chunk).unpad(), waves, [len(w) for w in waves]),
        "fusion": (fusion, pairs, [sum(len(x) for x in p if x is not None) for p in pairs]),
    }
    threads_before = torch.get_num_threads()
    sweeps: dict[str, dict[tuple[int, int], float]] = {}
    try:
        for threads in thread_counts:
            torch.set_num_threads(threads)
            for stage, (run, items, lengths) in stages.items():
                for size in batch_sizes[stage] if items else []:
                    seconds = time_passes(run, items, lengths, min(size, len(items)), device)
                    sweeps.setdefault(stage, {})[(min(size, len(items)), threads)] = seconds
    finally:
        torch.set_num_threads(threads_before)
    out = ceiling(sweeps, len(requests), cores, device.type == "cpu")
    for stage, (_, items, _) in stages.items():
        if stage in out["stages"]:
            out["stages"][stage]["items"] = len(items)
    out["device"] = str(device)
    out["kinds"] = {k: sum(r.kind == k for r in requests) for k in ("text", "audio", "both")}
    return out
