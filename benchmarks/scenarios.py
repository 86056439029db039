"""The scenarios beside the base-size random models: the demo bundle, and the front door on near-free models.

Each runs its own in-process references ((a) and the model-bound limit, on the same
inputs) and then its own private Ray head with the run's serve config, so its CPU per
request by role is measured on exactly what a user deploys.

- **demo**: ``artifacts/demo-bundle`` (``make demo-model``), text-only requests at
  concurrency 16 (the issue's headline: the CPU of everything but the two encoders per
  request), then the mixed workload. Skipped, with a note, when the bundle is absent,
  unless ``--build-demo`` asks for it to be built.
- **front door**: the tiny test bundle (``model.factory.save_tiny_bundle``), whose models
  cost next to nothing, text-only, with the Driver at 1, 2 and 4 replicas (fixed, its
  autoscaling dropped): what HTTP, HAProxy, the Driver and Serve's hops alone can carry.
  Each level is loaded again by Triton's perf_analyzer on ``/v2`` (``benchmarks.oip_perf``).
- **long recordings**: the demo bundle (else the tiny one), short mixed requests at
  concurrency 4 alone, then beside one client sending 5-minute synthetic recordings back
  to back: the short requests' p50 and p99 with and without the long traffic, and how
  long a recording took to come back as a timeline.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.progress import log
from benchmarks.workload import Request

ROOT = Path(__file__).resolve().parent.parent
DEMO_BUNDLE = ROOT / "artifacts" / "demo-bundle"
TEXT_BATCH_SIZES = [1, 8, 32]  # (a) on text-only inputs, as the main scenario's short texts


def client_timeout_s(config: dict) -> float:
    """The load client's timeout: the Driver's own budget plus slack, so the server answers first."""
    return float(config["applications"][0]["args"].get("settings", {}).get("request_timeout_s", 30)) + 30


def inprocess_refs(bundle_path: Path, device: str, workloads: dict[str, tuple[list[Request], list[int]]],
                   mode: dict, with_seed: tuple[str, ...] = ()) -> dict:
    """(a) and the model-bound limit for each named workload (and (b)'s service times for
    ``with_seed``, which weight mixed requests), with the bundle loaded in this process."""
    from benchmarks.inprocess import InProcessModel, run_batched, run_sequential, thread_sweep
    from benchmarks.model_bound import model_bound

    model = InProcessModel(bundle_path, device)
    try:
        model.warm_up(next(iter(workloads.values()))[0])
        threads = thread_sweep(model)
        out = {}
        for name, (requests, batch_sizes) in workloads.items():
            ref = {"limit": run_batched(model, requests, batch_sizes, threads),
                   "model_bound": model_bound(model, requests, mode["model_bound_batches"], threads,
                                              os.cpu_count() or 1)}
            if name in with_seed:
                ref["seed_service_s"] = run_sequential(model, requests, [1], threads)["service_s"]
            log(f"  {name}: (a) {ref['limit']['throughput_rps']:.2f} rps; model-bound "
                f"{ref['model_bound']['throughput_rps']} rps")
            out[name] = ref
        return out
    finally:
        del model
        gc.collect()


def measure_levels(system, config: dict, requests: list[Request], concurrencies: list[int], duration_s: float,
                   warmup_s: float, settle: bool, weights: list[float] | None = None, label: str = "") -> list[dict]:
    """One closed-loop level per concurrency. With ``settle``, a level that can make the
    autoscaler add replicas first runs unrecorded until it has (a starting replica's CPU
    would otherwise be charged to the level)."""
    from benchmarks.served_config import scale_up_trigger

    timeout_s = client_timeout_s(config)
    trigger, decide_s = scale_up_trigger(config)
    levels = []
    for c in concurrencies:
        settled = None
        if settle and trigger is not None and c > trigger:
            log(f"{label}concurrency {c}: settling, at least {decide_s:.0f} s (autoscaler look-back + upscale delay)")
            settled = system.settle(requests, c, decide_s, timeout_s)
        log(f"{label}concurrency {c} for {duration_s:.0f} s")
        level = system.run_level(requests, c, duration_s, warmup_s, timeout_s, f"{label}c={c}", weights)
        level["settle"] = settled
        levels.append(level)
        log(f"{label}c={c}: {level['throughput_rps']:.2f} rps p50 {level['p50_ms']} ms p99 {level['p99_ms']} ms "
            f"errors {level['errors']}; CPU {level['cpu_ms_per_request']} ms/request")
    return levels


def ensure_demo_bundle(path: Path, build: bool) -> str | None:
    """None when the demo bundle is there (built first when ``build``), else why it is skipped."""
    if (path / "bundle.json").is_file():
        return None
    if not build:
        return (f"no demo bundle at {path}: the demo scenario was skipped. Build it with `make demo-model` "
                "(minutes: it synthesizes speech and trains), or pass --build-demo.")
    log(f"demo: building the demo bundle at {path} (python -m model.demo)")
    subprocess.run([sys.executable, "-m", "model.demo", "--out", str(path), "--no-progress"], cwd=ROOT, check=True)
    return None


def _tokenizer(bundle_path: Path):
    from transformers import AutoTokenizer

    from model.bundle import Bundle

    bundle = Bundle.load(bundle_path)
    return AutoTokenizer.from_pretrained(bundle.resolve(bundle.text_encoder))


def _short_texts(n: int, tokenizer) -> list[Request]:
    from benchmarks import workload

    return workload.build_workload(n, tokenizer, seed=1, kinds={"text": 1.0}, token_range=(8, 24))[0]


def _stop(system, result: dict, workdir: Path) -> None:
    from benchmarks.served_system import stop_system

    result["memory"] = system.sampler.memory_report()
    result["replica_timeline"] = system.poller.timeline if system.poller else []
    result.update(stop_system(system, workdir))


def demo_scenario(setup, mode: dict, out: Path, device: str, path: Path | None = None, build: bool = False) -> dict:
    """The demo bundle: in-process references, then text-only at concurrency 16 and the mixed levels, served."""
    from benchmarks import bundles, workload
    from benchmarks.inprocess import relative_costs
    from harness import free_port

    path = (path or DEMO_BUNDLE).resolve()
    note = ensure_demo_bundle(path, build)
    if note is not None:
        log(f"demo: {note}")
        return {"skipped": note, "path": str(path)}
    tokenizer = _tokenizer(path)
    mixed, _ = workload.build_workload(mode["requests"], tokenizer, seed=0)
    short = _short_texts(mode["short_texts"], tokenizer)
    result: dict = {"bundle": bundles.describe(path),
                    "workload": {"mixed": workload.describe(mixed), "short_texts": workload.describe(short)}}
    log(f"demo: in-process references on {path}")
    result["inprocess"] = inprocess_refs(path, device, {"mixed": (mixed, mode["batch_sizes"]),
                                                        "short_texts": (short, TEXT_BATCH_SIZES)},
                                         mode, with_seed=("mixed",))
    weights = relative_costs(result["inprocess"]["mixed"].pop("seed_service_s"))
    config = setup.config(path, free_port())
    timeout_s = client_timeout_s(config)
    log("demo: starting Ray and `serve run`")
    system = setup.start(config, out / "demo")
    result["startup_s"] = round(system.startup_s, 1)
    try:
        system.run_level(mixed, 4, mode["warmup_s"], 0, timeout_s, "demo warm-up")
        # Text-only first, while every deployment still runs its initial replicas: the
        # headline is about the default config as it starts.
        log(f"demo: text-only, concurrency 16 for {mode['scenario_s']:.0f} s")
        text_only = system.run_level(short, 16, mode["scenario_s"], min(mode["warmup_s"], 5), timeout_s,
                                     "demo text-only c=16")
        result["text_only"] = text_only
        log(f"demo: text-only {text_only['throughput_rps']:.2f} rps; CPU outside the encoders "
            f"{text_only['serving_cpu_ms_per_request']} ms/request")
        result["levels"] = measure_levels(system, config, mixed, mode["demo_concurrencies"], mode["scenario_s"],
                                          mode["warmup_s"], mode["settle"], weights, "demo ")
    finally:
        _stop(system, result, out / "demo")
    return result


def perf_analyzer_level(system, concurrency: int, seconds: float, label: str) -> dict:
    """Triton's perf_analyzer on ``/v2/models/sentiment/infer`` (binary tensors, short review
    texts) at the closed loop's concurrency: a second load generator, not ours, on the same system."""
    from benchmarks.oip_perf import PerfAnalyzerFailed, find_perf_analyzer, measure, usable

    command = find_perf_analyzer()
    if command is None or not usable(command):
        return {"skipped": "perf_analyzer not found: `make install` puts it in the venv (scripts/perf-analyzer.sh)"}
    log(f"{label}perf_analyzer, concurrency {concurrency}")
    try:
        # Three windows that make up the level's duration; a loose stability bar and few
        # trials, so a noisy shared machine cannot stretch the run.
        summary = measure(command, system.url.removeprefix("http://"), str(concurrency),
                          measurement_interval_ms=max(1000, int(seconds * 1000 / 3)), timeout_s=seconds * 10 + 60,
                          extra_args=("--stability-percentage", "50", "--max-trials", "4"))
    except PerfAnalyzerFailed as exc:
        return {"failed": str(exc)[-2000:]}
    level = summary["results"][0]
    log(f"{label}perf_analyzer c={concurrency}: {level['requests_per_s']} rps p50 {level['p50_ms']} ms "
        f"p99 {level['p99_ms']} ms")
    return level


def front_door_scenario(setup, mode: dict, replicas: list[int], out: Path, device: str) -> dict:
    """Near-free models, text-only, the Driver fixed at each of ``replicas`` in turn (updated in place)."""
    from benchmarks import bundles, workload
    from benchmarks.served_config import fixed_replicas
    from benchmarks.served_system import wait_replicas
    from harness import free_port, serve_run

    tiny = bundles.build_tiny_bundle(ROOT / "bench-results" / "_bundles")
    short = _short_texts(mode["short_texts"], _tokenizer(tiny))
    result: dict = {"bundle": bundles.describe(tiny), "workload": {"short_texts": workload.describe(short)},
                    "runs": []}
    log(f"front door: in-process references on {tiny}")
    result["inprocess"] = inprocess_refs(tiny, device, {"short_texts": (short, TEXT_BATCH_SIZES)}, mode)
    port = free_port()
    workdir = out / "front-door"
    system = None
    try:
        for n in replicas:
            config = setup.config(tiny, port, fixed_replicas("Driver", n))
            if system is None:
                log(f"front door: starting Ray and `serve run`, Driver x{n}")
                system = setup.start(config, workdir)
                result["startup_s"] = round(system.startup_s, 1)
            else:
                log(f"front door: Driver x{n} (in-place update)")
                workdir.mkdir(parents=True, exist_ok=True)
                serve_run(system.head, config, workdir / f"serve_config.driver-{n}.yaml")
                wait_replicas("Driver", n)
            # Unrecorded: new replicas' first requests pay for lazy initialisation, and
            # HAProxy picks up the new backends.
            system.run_level(short, 16, mode["warmup_s"], 0, client_timeout_s(config), f"front door warm-up x{n}")
            levels = measure_levels(system, config, short, mode["front_door_concurrency"], mode["front_door_s"],
                                    min(mode["warmup_s"], 5), settle=False, label=f"front door x{n} ")
            result["runs"].append({"driver_replicas": n, "levels": levels,
                                   "perf_analyzer": perf_analyzer_level(system, mode["front_door_concurrency"][0],
                                                                        mode["front_door_s"], f"front door x{n} ")})
    finally:
        if system is not None:
            _stop(system, result, workdir)
    return result


LONG_RECORDING_S = 300.0


def long_recordings_scenario(setup, mode: dict, out: Path, device: str, path: Path | None = None) -> dict:
    """Short requests' latency with and without 5-minute recordings in the same service."""
    import asyncio
    import threading

    import numpy as np

    from benchmarks import bundles, workload
    from benchmarks.closed_loop import closed_loop
    from benchmarks.latency_stats import summarize
    from harness import free_port
    from model.audio import encode_wav

    path = (path or DEMO_BUNDLE).resolve()
    if not (path / "bundle.json").is_file():
        path = bundles.build_tiny_bundle(ROOT / "bench-results" / "_bundles")
    short, _ = workload.build_workload(mode["requests"], _tokenizer(path), seed=3)
    rate = 16_000
    recording = workload.Request(0, "audio", None, 0, encode_wav(
        workload.synth_audio(LONG_RECORDING_S, rate, np.random.default_rng(0)), rate), LONG_RECORDING_S, rate)
    result: dict = {"bundle": bundles.describe(path), "workload": {"short": workload.describe(short)},
                    "recording_seconds": LONG_RECORDING_S, "recording_is_synthetic": True}
    config = setup.config(path, free_port())
    seconds = mode["scenario_s"]
    log("long recordings: starting Ray and `serve run`")
    system = setup.start(config, out / "long-recordings")
    result["startup_s"] = round(system.startup_s, 1)
    try:
        system.run_level(short, 4, mode["warmup_s"], 0, client_timeout_s(config), "long recordings warm-up")
        result["short_alone"] = system.run_level(short, 4, seconds, min(mode["warmup_s"], 5),
                                                 client_timeout_s(config), "short alone c=4")
        long_records: list = []

        def long_traffic():
            records, _ = asyncio.run(closed_loop(system.url, [recording], 1, seconds, 600))
            long_records.extend(records)

        background = threading.Thread(target=long_traffic, daemon=True)
        background.start()
        result["short_with_long"] = system.run_level(short, 4, seconds, min(mode["warmup_s"], 5),
                                                     client_timeout_s(config), "short beside 5-min recordings c=4")
        background.join()
        answered = [end - start for start, end, status, *_ in long_records if status == 200]
        statuses: dict[str, int] = {}
        for record in long_records:
            statuses[str(record[2])] = statuses.get(str(record[2]), 0) + 1
        result["long"] = {"sent": len(long_records), "answered": len(answered), "statuses": statuses,
                          **summarize(answered)}
        for key in ("short_alone", "short_with_long"):
            level = result[key]
            log(f"long recordings: {key}: p50 {level['p50_ms']} ms p99 {level['p99_ms']} ms")
        log(f"long recordings: {len(answered)} of {len(long_records)} recordings answered")
    finally:
        _stop(system, result, out / "long-recordings")
    return result
