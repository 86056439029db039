"""The benchmark: ``python -m benchmarks.run [--quick] [--bundle B] [--gpu] [--out DIR]``.

Runs, on the same models and inputs, (a) the in-process batched limit, (b) the
seed's one-request-at-a-time way, the model-bound limit (the forward passes alone),
and (c) the application under ``serve run`` driven over HTTP at several
concurrencies, plus a text-only scenario with the TextEncoder's batching on and off.
Then the same for the demo bundle, and the front door on near-free models with 1, 2
and 4 Driver replicas (``benchmarks.scenarios``). Every served level records the CPU
per request of each process role. Writes results.json, report.md and plots to
bench-results/<timestamp>/ and prints that path.
"""

from __future__ import annotations

import os

# Before anything imports Ray: a client connecting to a `ray start` head by address
# only sends the token (~/.ray/auth_token) in token mode (Ray 2.60 default for heads).
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

from benchmarks.progress import log  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# Sizes of a run. quick: small models and short levels, a smoke test of the harness;
# default: base-size models (bert-base, wav2vec2-base), the FLOPs of real checkpoints.
# demo_concurrencies: the demo bundle's mixed levels (after its text-only level);
# front_door_*: each Driver replica count's levels.
MODES = {
    "quick": dict(size="quick", requests=48, short_texts=64, batch_sizes=[1, 4, 16], duration_s=20,
                  warmup_s=4, scenario_s=15, profile_s=8, health_timeout_s=300, settle=False,
                  demo_concurrencies=[], front_door_concurrency=[16], front_door_s=8),
    "default": dict(size="base", requests=32, short_texts=48, batch_sizes=[1, 4, 8], duration_s=45,
                    warmup_s=10, scenario_s=30, profile_s=10, health_timeout_s=600, settle=True,
                    demo_concurrencies=[1, 16], front_door_concurrency=[16], front_door_s=30),
    # One GPU: base-size models in fp16, larger batches. A GPU's numbers settle within
    # seconds, so levels are short.
    "gpu": dict(size="base", requests=64, short_texts=128, batch_sizes=[8, 32], duration_s=20,
                warmup_s=5, scenario_s=15, profile_s=10, health_timeout_s=600, settle=True,
                demo_concurrencies=[16, 64], front_door_concurrency=[16, 64], front_door_s=15),
}
# The parts of a run, for --skip and --only. inprocess: (a) and (b); model-bound: the
# forward passes alone; served: (c); scenario: text batching on/off (inside served);
# long-audio: short requests beside 5-minute recordings.
PARTS = ("inprocess", "model-bound", "served", "scenario", "demo", "front-door", "long-audio")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small models, short levels (a smoke test)")
    p.add_argument("--bundle", type=Path, help="benchmark this bundle instead of random-weight base-size models")
    p.add_argument("--gpu", action="store_true", help="serve_config.gpu.yaml, GPUs in-process and in Ray")
    p.add_argument("--out", type=Path, help="output folder (default bench-results/<timestamp>)")
    p.add_argument("--config", type=Path, help="serve config to derive from (default serve_config[.gpu].yaml)")
    p.add_argument("--concurrency", default="1,4,16,64", help="comma-separated client concurrencies for (c) of the base-size "
                                                      "models (the other scenarios' levels are set per mode)")
    p.add_argument("--duration", type=float, help="seconds per concurrency level")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                   help="override the derived serve config: Deployment.key..., app.key... or a top-level "
                        "key, e.g. AudioEncoder.ray_actor_options.num_cpus=1 or "
                        "logging_config.enable_access_log=false (VALUE is YAML; repeatable). For trying "
                        "settings; the report records them.")
    p.add_argument("--ray-cpus", type=int, help="CPUs the Ray head advertises (default: this machine's cores)")
    p.add_argument("--pythonpath", help="a folder holding a modified copy of deployments/ (and/or model/): "
                                        "`serve run` runs there and Ray workers import from it first, to "
                                        "measure a change without touching the tree")
    p.add_argument("--skip", default="", help=f"comma-separated parts to skip: {', '.join(PARTS)}")
    p.add_argument("--only", default="", help="comma-separated parts to run, all others skipped "
                                              "(e.g. --only front-door)")
    p.add_argument("--demo-bundle", type=Path, help="the demo scenario's bundle (default artifacts/demo-bundle; "
                                                    "skipped with a note when absent)")
    p.add_argument("--build-demo", action="store_true", help="build the demo bundle first when it is absent")
    p.add_argument("--front-door-replicas", default="1,2,4", help="Driver replica counts of the front-door scenario")
    p.add_argument("--profile", action="store_true", help="py-spy the replicas during an extra concurrency-16 level")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``sentiment-bench``, ``python -m benchmarks.run``): 0 when the run finished."""
    import signal

    signal.signal(signal.SIGTERM, _interrupt)
    run_benchmark(argv)
    return 0


def run_benchmark(argv: list[str] | None = None) -> Path:
    """One benchmark run; returns the path of its report.md (the folder is printed)."""
    args = parse_args(argv)
    mode = dict(MODES["gpu" if args.gpu else "quick" if args.quick else "default"])
    if args.gpu and args.quick:
        mode.update(size="quick", duration_s=15, scenario_s=15, demo_concurrencies=[], front_door_s=8)
    skip = parts_skipped(args.skip, args.only)
    from benchmarks.model_bound import BATCH_SIZES, QUICK_BATCH_SIZES

    mode["model_bound_batches"] = BATCH_SIZES["cuda" if args.gpu else "cpu"] if not args.quick else QUICK_BATCH_SIZES
    if args.duration:
        mode["duration_s"] = args.duration
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    started = dt.datetime.now()
    out = (args.out or ROOT / "bench-results" / started.strftime("%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)

    import torch

    from benchmarks.bench_report import write_report
    from benchmarks.fingerprint import fingerprint
    from benchmarks.scenario_report import model_bound_rows

    # Thread discipline: torch's pool gets every core (what the seed did); (a) and (b)
    # also try one thread and report the faster, since a busy machine can invert that.
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    results: dict = {"started_at": started.isoformat(timespec="seconds"), "fingerprint": fingerprint(),
                     "mode": ("gpu " if args.gpu else "") + ("quick" if args.quick else "default"),
                     "inprocess_threads": threads, "overrides": args.set, "loadavg": {}}

    device = "cuda" if args.gpu else "cpu"
    setup = serve_setup(args, mode)
    try:
        if {"inprocess", "model-bound", "served"} - skip:
            run_main(results, args, setup, mode, concurrencies, out, skip, device)
        gc.collect()
        from benchmarks import scenarios

        if "demo" not in skip:
            results.setdefault("scenarios", {})["demo"] = guarded(
                "demo", lambda: scenarios.demo_scenario(setup, mode, out, device, args.demo_bundle, args.build_demo))
        if "front-door" not in skip:
            replicas = [int(n) for n in args.front_door_replicas.split(",")]
            results.setdefault("scenarios", {})["front_door"] = guarded(
                "front door", lambda: scenarios.front_door_scenario(setup, mode, replicas, out, device))
        if "long-audio" not in skip:
            results.setdefault("scenarios", {})["long_recordings"] = guarded(
                "long recordings", lambda: scenarios.long_recordings_scenario(setup, mode, out, device, args.demo_bundle))
    except BaseException as exc:
        # A run that dies late (a lost Ray head, Ctrl-C) still leaves what it measured.
        results["failed"] = repr(exc)
        partial = out / "results.partial.json"
        partial.write_text(json.dumps(results, indent=1, default=str))
        log(f"failed: {exc!r}; what was measured is in {partial}")
        raise

    results["harness_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    results["finished_at"] = dt.datetime.now().isoformat(timespec="seconds")
    path = write_report(out, results)
    for row in results["targets"]:
        verdict = "not measured" if row["met"] is None else "met" if row["met"] else "NOT met"
        log(f"target {row['target']}: {row['value']} ({row['threshold']}) {verdict}")
    for row in model_bound_rows(results):
        log(f"served / model-bound, {row['scenario']} {row['workload']}: {row['fraction']} "
            f"({row['served_rps']} of {row['bound_rps']} rps)")
    print(out)
    return path


def parts_skipped(skip: str, only: str) -> set[str]:
    """The parts not to run, from --skip and --only (which skips every part it does not name)."""
    named = {p for p in (skip + "," + only).split(",") if p}
    unknown = named - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown part(s) {', '.join(sorted(unknown))}; the parts are {', '.join(PARTS)}")
    if only:
        kept = set(filter(None, only.split(",")))
        if "scenario" in kept:
            kept.add("served")  # the text-batching scenario runs on the served system
        return set(PARTS) - kept
    return set(filter(None, skip.split(",")))


def guarded(name: str, run) -> dict:
    """A scenario's result, or what went wrong: a late scenario failing must not lose the run's report."""
    try:
        return run()
    except Exception as exc:  # KeyboardInterrupt still unwinds the whole run
        log(f"{name}: failed: {exc!r}")
        return {"failed": repr(exc)}


def serve_setup(args, mode: dict):
    """The serve config, overrides, head resources and environment every served system of this run uses."""
    from benchmarks.served_system import ServeSetup

    config_path = (args.config or ROOT / ("serve_config.gpu.yaml" if args.gpu else "serve_config.yaml")).resolve()
    if not config_path.is_file():
        raise SystemExit(f"no serve config at {config_path}")
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    num_gpus = None
    if args.gpu:
        import torch

        num_gpus = torch.cuda.device_count()
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [args.pythonpath, os.environ.get("PYTHONPATH")]))} \
        if args.pythonpath else {}
    return ServeSetup(config_path, overrides, args.ray_cpus or os.cpu_count() or 1, num_gpus,
                      mode["health_timeout_s"], env, Path(args.pythonpath).resolve() if args.pythonpath else None)


def run_main(results, args, setup, mode, concurrencies, out, skip, device) -> None:
    """The base-size random models (or --bundle): (a), (b), the model-bound limit and (c)."""
    from transformers import AutoTokenizer

    from benchmarks import bundles, workload
    from benchmarks.inprocess import InProcessModel
    from model.bundle import Bundle

    bundle_path = args.bundle.resolve() if args.bundle else bundles.build_bundle(ROOT / "bench-results" / "_bundles",
                                                                                  mode["size"])
    results["bundle"] = bundles.describe(bundle_path)
    log(f"bundle {bundle_path}")
    bundle = Bundle.load(bundle_path)
    tokenizer = AutoTokenizer.from_pretrained(bundle.resolve(bundle.text_encoder))
    mixed, source = workload.build_workload(mode["requests"], tokenizer, seed=0)
    short, _ = workload.build_workload(mode["short_texts"], tokenizer, seed=1, kinds={"text": 1.0},
                                       token_range=(8, 24))
    results["workload"] = {"mixed": workload.describe(mixed), "short_texts": workload.describe(short),
                           "text_source": source}
    model = None
    if {"inprocess", "model-bound"} - skip:
        model = InProcessModel(bundle_path, device)
        model.warm_up(mixed)
    if "inprocess" not in skip:
        run_inprocess(results, model, mixed, short, mode, concurrencies)
    if "model-bound" not in skip:
        run_model_bound(results, model, mixed, short, mode)
    if "served" not in skip:
        run_served(results, setup, bundle_path, mixed, short, mode, concurrencies, out, skip, model, args.profile)


def run_inprocess(results, model, mixed, short, mode, concurrencies) -> None:
    from benchmarks import inprocess
    from benchmarks.inprocess import thread_sweep
    from harness import MachineCPU

    results["loadavg"]["inprocess"] = round(os.getloadavg()[0], 2)
    log("(b) seed: one request at a time")
    machine = MachineCPU()
    seed = inprocess.run_sequential(model, mixed, concurrencies, thread_sweep(model))
    seed["machine_busy_cores"] = machine.busy_cores()
    results["seed"] = seed
    log(f"(b) {seed['throughput_rps']:.2f} rps with {seed['threads']} threads; p50 service "
        f"{seed['service']['p50_ms']} ms")
    log(f"(a) limit: batch sizes {mode['batch_sizes']}")
    machine = MachineCPU()
    limit = inprocess.run_batched(model, mixed, mode["batch_sizes"], thread_sweep(model))
    limit["machine_busy_cores"] = machine.busy_cores()
    results["limit"] = limit
    log(f"(a) {limit['throughput_rps']:.2f} rps at batch {limit['best_batch_size']}, {limit['best_threads']} threads")
    # References for the text-only scenario.
    results["short_texts_inprocess"] = {
        "seed": inprocess.run_sequential(model, short, [16], thread_sweep(model)),
        "limit": inprocess.run_batched(model, short, [1, 8, 32], thread_sweep(model)),
    }
    gc.collect()


def run_model_bound(results, model, mixed, short, mode) -> None:
    from benchmarks.inprocess import thread_sweep
    from benchmarks.model_bound import model_bound

    log(f"model-bound limit: forward passes alone, batch sizes {mode['model_bound_batches']}")
    cores = os.cpu_count() or 1
    results["model_bound"] = {name: model_bound(model, requests, mode["model_bound_batches"], thread_sweep(model),
                                                cores)
                              for name, requests in (("mixed", mixed), ("short_texts", short))}
    for name, bound in results["model_bound"].items():
        best = ", ".join(f"{stage} batch {st['best_batch_size']}@{st['best_threads']}t"
                         for stage, st in bound["stages"].items())
        log(f"model-bound {name}: {bound['throughput_rps']} rps ({best})")


def run_served(results, setup, bundle_path, mixed, short, mode, concurrencies, out, skip, model,
               profile: bool = False) -> None:
    from benchmarks.inprocess import thread_sweep
    from benchmarks.overhead import paired_overhead
    from benchmarks.profiling import profile_level
    from benchmarks.scenarios import client_timeout_s, measure_levels
    from benchmarks.served_system import stop_system
    from harness import free_port

    port = free_port()
    config = setup.config(bundle_path, port)
    timeout_s = client_timeout_s(config)
    served: dict = {"config_file": str(setup.config_path), "port": port, "levels": []}
    results["served"] = served
    log(f"(c) starting Ray and `serve run` ({setup.config_path.name})")
    system = setup.start(config, out)
    served["startup_s"] = round(system.startup_s, 1)
    try:
        # Warm-up (not recorded): first requests pay for lazy initialisation in every process.
        system.run_level(mixed, 4, mode["warmup_s"], 0, timeout_s, "warm-up")
        weights = work_weights(results, len(mixed))
        served["work_weights"] = weights
        served["levels"] = measure_levels(system, config, mixed, concurrencies, mode["duration_s"], mode["warmup_s"],
                                          mode["settle"], weights, "(c) ")
        results["loadavg"]["served"] = round(os.getloadavg()[0], 2)
        if model is not None and "inprocess" not in skip:
            log("(c) overhead at concurrency 1: each request over HTTP, then in-process")
            served["paired_overhead"] = paired_overhead(system.url, mixed, model.predict_one, timeout_s,
                                                        thread_sweep(model))
            log(f"(c) paired overhead p50 {served['paired_overhead']['difference']['p50_ms']} ms")
        if "scenario" not in skip:
            served["text_batching"] = text_batching_scenario(system, config, short, mode, timeout_s, out)
        if profile:
            log("(c) profiling at concurrency 16")
            served["profile"] = profile_level(system, mixed, 16, mode["profile_s"], out)
        served["replica_timeline"] = system.poller.timeline if system.poller else []
        served["status_poll_error"] = system.poller.error if system.poller else None
        served["replica_pids"] = system.sampler.replica_pids()
    finally:
        served["memory"] = system.sampler.memory_report()
        served.update(stop_system(system, out))
        log("(c) Ray stopped")


def work_weights(results: dict, n: int) -> list[float] | None:
    """Each mixed request's cost relative to the mean: its in-process service time from (b)."""
    from benchmarks.inprocess import relative_costs

    service = (results.get("seed") or {}).get("service_s")
    return relative_costs(service) if service and len(service) == n else None


def text_batching_scenario(system, config, short, mode, timeout_s, out) -> dict:
    """Text-only short texts at concurrency 16: TextEncoder batching as configured, then off."""
    from benchmarks.served_config import derive_config, deployment_option
    from benchmarks.served_system import wait_reconfigured
    from harness import serve_run

    configured = deployment_option(config, "TextEncoder", "user_config", default={}) or {}
    runs = {}
    for name, user_config in (("configured", configured), ("batching_off", {**configured, "max_batch_size": 1})):
        if name != "configured":
            changed = derive_config(system.config_path, Path(config["applications"][0]["args"]["bundle"]),
                                    config["http_options"]["port"], {"TextEncoder.user_config": user_config})
            serve_run(system.head, changed, out / "serve_config.batching_off.yaml")
            wait_reconfigured()
        log(f"(c) text-only c=16, TextEncoder {user_config}")
        run = system.run_level(short, 16, mode["scenario_s"], min(mode["warmup_s"], 5), timeout_s, f"text-{name}")
        run["user_config"] = user_config
        log(f"(c) text-only {name}: {run['throughput_rps']:.2f} rps p99 {run['p99_ms']} ms")
        run["handle"] = handle_level(system, [r.text for r in short], mode["scenario_s"], out / f"texts-{name}.json")
        log(f"(c) TextEncoder alone via DeploymentHandle, c=16, {name}: {run['handle'].get('calls_per_s')} calls/s")
        runs[name] = run
    return runs


def handle_level(system, texts: list[str], seconds: float, texts_path: Path) -> dict:
    """The TextEncoder deployment alone at concurrency 16, from a process inside the cluster."""
    import subprocess
    import sys

    texts_path.write_text(json.dumps(texts))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.handle_load", "--address", system.head.address,
                           "--texts", str(texts_path), "--concurrency", "16", "--seconds", str(seconds)],
                          env=system.head.child_env(), cwd=ROOT, capture_output=True, text=True, timeout=seconds + 120)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout)[-2000:]}
    return json.loads(lines[-1])


def _interrupt(signum, frame):
    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, so the Ray head is always stopped.
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    raise SystemExit(main())
