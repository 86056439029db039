"""Systems (a) and (b): the model in this process, calling ``model/`` directly.

(a) *The limit*: the whole workload in arrival-order chunks of ``B`` requests
    through ``model.pipeline.SentimentPipeline``: both encoders length-bucketed the
    way their deployments are, one fusion call per chunk. No RPC, no HTTP, no
    waiting for a batch to fill: an upper bound for any server. The best ``B`` of a
    sweep is reported.
(b) *The seed's way*: one request at a time: decode, text, then audio, then
    fusion, batch size 1. Its latency at concurrency C is derived from the measured
    service times with a closed-loop FIFO queue of C clients (what a one-at-a-time
    server does); no HTTP cost is added, which flatters (b).

Both decode audio from the same WAV bytes the HTTP clients send.
"""

from __future__ import annotations

import time

import torch

from benchmarks.latency_stats import by_kind, summarize
from benchmarks.workload import Request
from model.audio import AudioLimits, decode_audio
from model.bundle import Bundle
from model.pipeline import SentimentPipeline


class InProcessModel:
    def __init__(self, bundle_path, device: str | None = None):
        self.bundle = Bundle.load(bundle_path)
        self.pipeline = SentimentPipeline(self.bundle, device)
        self.sampling_rate = self.pipeline.audio_encoder.sampling_rate
        self.limits = AudioLimits()

    def decode(self, request: Request):
        return decode_audio(request.wav, self.sampling_rate, self.limits) if request.wav is not None else None

    def predict_one(self, request: Request) -> dict:
        """(b): text, then audio, then fusion, batch size 1."""
        return self.pipeline.predict([request.text], [self.decode(request)])[0]

    def predict_batch(self, requests: list[Request]) -> list[dict]:
        """(a): one chunk, every stage batched (the pipeline's length buckets included)."""
        return self.pipeline.predict([r.text for r in requests], [self.decode(r) for r in requests])

    def warm_up(self, requests: list[Request]) -> None:
        # First calls pay for oneDNN kernel selection and allocator growth.
        for kind in ("text", "audio", "both"):
            sample = next((r for r in requests if r.kind == kind), None)
            if sample is not None:
                self.predict_one(sample)
        self.predict_batch(requests[:4])


def closed_loop_fifo(service_s: list[float], concurrency: int, total: int) -> list[float]:
    """Latencies of ``total`` requests served one at a time to ``concurrency`` closed-loop
    clients (each sends its next request when the previous answer arrives).

    Service times are cycled from ``service_s``. The first ``concurrency`` requests
    (the ramp-up, which sees a shorter queue) are dropped.
    """
    finish: list[float] = []
    clock = 0.0
    latencies = []
    for k in range(total):
        submitted = finish[k - concurrency] if k >= concurrency else 0.0
        clock = max(clock, submitted) + service_s[k % len(service_s)]
        finish.append(clock)
        if k >= concurrency:
            latencies.append(clock - submitted)
    return latencies


def run_sequential(model: InProcessModel, requests: list[Request], concurrencies: list[int],
                   thread_counts: list[int] | None = None) -> dict:
    """System (b), at each of ``thread_counts`` torch threads; the faster one is reported
    (the seed used torch's default, every core, which a busy machine can make the slower)."""
    threads_before = torch.get_num_threads()
    runs = {}
    try:
        for threads in thread_counts or [threads_before]:
            torch.set_num_threads(threads)
            service = []
            cpu = time.process_time()
            for request in requests:
                start = time.perf_counter()
                model.predict_one(request)
                service.append(time.perf_counter() - start)
            runs[threads] = (service, time.process_time() - cpu)
    finally:
        torch.set_num_threads(threads_before)
    threads, (service, cpu) = min(runs.items(), key=lambda kv: sum(kv[1][0]))
    kinds = [r.kind for r in requests]
    per_concurrency = {}
    for c in concurrencies:
        lat = closed_loop_fifo(service, c, total=max(4 * len(service), 20 * c))
        per_concurrency[str(c)] = {"throughput_rps": len(service) / sum(service),
                                   "work_rps": len(service) / sum(service), **summarize(lat)}
    return {
        "threads": threads,
        "throughput_rps": len(service) / sum(service),
        "work_rps": len(service) / sum(service),  # the whole mix, so the same
        **cpu_use(len(service), sum(service), cpu),
        "service": summarize(service),
        "service_by_kind": by_kind(service, kinds),
        "service_s": service,
        "by_concurrency": per_concurrency,
        "by_threads": {str(t): {"throughput_rps": len(s) / sum(s), "service": summarize(s)} for t, (s, _) in runs.items()},
    }


def run_batched(model: InProcessModel, requests: list[Request], batch_sizes: list[int],
                thread_counts: list[int] | None = None) -> dict:
    """System (a): one pass over the workload per (torch threads, batch size); the best is the limit.

    Threads are swept too: with every core in one intra-op pool, each small op waits for
    all its threads, which costs dearly when other processes hold a core.
    """
    threads_before = torch.get_num_threads()
    sweep = {}
    try:
        for threads in thread_counts or [threads_before]:
            torch.set_num_threads(threads)
            for size in batch_sizes:
                latencies = []
                start, cpu = time.perf_counter(), time.process_time()
                for lo in range(0, len(requests), size):
                    chunk_start = time.perf_counter()
                    chunk = requests[lo : lo + size]
                    model.predict_batch(chunk)
                    latencies += [time.perf_counter() - chunk_start] * len(chunk)
                wall, cpu = time.perf_counter() - start, time.process_time() - cpu
                sweep[f"{size}@{threads}t"] = {"batch_size": size, "threads": threads,
                                               "throughput_rps": len(requests) / wall,
                                               **cpu_use(len(requests), wall, cpu), **summarize(latencies)}
    finally:
        torch.set_num_threads(threads_before)
    best = max(sweep, key=lambda s: sweep[s]["throughput_rps"])
    return {"best": best, "best_batch_size": sweep[best]["batch_size"], "best_threads": sweep[best]["threads"],
            "throughput_rps": sweep[best]["throughput_rps"], "work_rps": sweep[best]["throughput_rps"],
            "cores_used": sweep[best]["cores_used"],
            "ok_per_cpu_s": sweep[best]["ok_per_cpu_s"], "sweep": sweep}


def thread_sweep(model: InProcessModel) -> list[int]:
    """Torch thread counts the in-process systems try on CPU: one, and every core. On a
    GPU threads barely matter."""
    if model.pipeline.text_encoder.device.type != "cpu":
        return [torch.get_num_threads()]
    return sorted({1, torch.get_num_threads()})


def relative_costs(service_s: list[float]) -> list[float]:
    """Each request's in-process service time relative to the mean: its weight in mix-weighted throughput."""
    mean = sum(service_s) / len(service_s)
    return [round(s / mean, 4) for s in service_s]


def cpu_use(n: int, wall_s: float, cpu_s: float) -> dict:
    """CPU seconds this process used, cores used on average, and requests per CPU-second:
    on a shared machine the last is far steadier than wall-clock throughput."""
    per_cpu = round(n / cpu_s, 3) if cpu_s else None
    return {"wall_s": round(wall_s, 3), "cpu_s": round(cpu_s, 3), "cores_used": round(cpu_s / wall_s, 2),
            "ok_per_cpu_s": per_cpu, "work_per_cpu_s": per_cpu}
