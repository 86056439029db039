"""Turning one run's results into targets, a Markdown report and plots."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# The targets, as ratios from one run.
TARGETS = {
    "saturation_vs_limit": 0.90,  # (c)/(a) throughput at saturation
    "vs_seed_at_16": 1.30,  # (c)/(b) throughput at concurrency 16 (and lower p99)
    "text_batching_gain": 2.00,  # TextEncoder batching on/off, short texts, concurrency 16
    "overhead_c1_ms": 15.0,  # p50 of (c) at concurrency 1 minus in-process compute p50
}


# ---- machine fingerprint ------------------------------------------------------------


def fingerprint() -> dict:
    import psutil
    import torch

    versions = {"python": platform.python_version()}
    for name in ("torch", "transformers", "ray", "fastapi", "gradio", "httpx", "numpy"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # an optional package missing must not stop the report
            versions[name] = None
    cpu_model = ""
    try:
        cpu_model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu_model = platform.processor()
    gpus = []
    if torch.cuda.is_available():
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": gpus,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch_parallel": torch.__config__.parallel_info().splitlines()[:6],
        "versions": versions,
        "argv": sys.argv,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


# ---- targets -----------------------------------------------------------------------


def _ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def _work(row: dict) -> float:
    """Mix-weighted throughput when known (see serve_load.summarize_level), else requests/s."""
    return row["work_rps"] if row.get("work_rps") is not None else row["throughput_rps"]


def _work_cpu(row: dict):
    return row.get("work_per_cpu_s") if row.get("work_per_cpu_s") is not None else row.get("ok_per_cpu_s")


def evaluate(results: dict) -> list[dict]:
    """One row per target: the measured value, the threshold, met or not, and the inputs."""
    a, b, c = results.get("limit"), results.get("seed"), results.get("served")
    rows = []
    if a and c and c.get("levels"):
        best = max(c["levels"], key=_work)
        value = _ratio(_work(best), _work(a))
        cpu_value = _ratio(_work_cpu(best), _work_cpu(a))
        rows.append({"target": "(c)/(a) throughput at saturation", "value": value,
                     "threshold": f">= {TARGETS['saturation_vs_limit']}",
                     "met": value is not None and value >= TARGETS["saturation_vs_limit"],
                     "detail": f"(c) best {_work(best):.2f} mix-weighted rps ({best['throughput_rps']:.2f} raw) "
                               f"at concurrency {best['concurrency']} "
                               f"using {best.get('cores_used')} cores; (a) {a['throughput_rps']:.2f} rps at batch "
                               f"{a['best_batch_size']}, {a.get('best_threads')} threads, using {a.get('cores_used')} "
                               f"cores; ok/CPU-s ratio {cpu_value}"})
    level16 = _level(c, 16)
    if b and level16:
        b16 = b["by_concurrency"].get("16")
        b_rps, b_note = seed_throughput(results)
        value = _ratio(_work(level16), b_rps)
        # (b)'s queue-model p99 scales with its service time: rescale it to the faster thread count.
        b16_p99 = b16["p99_ms"] * _work(b) / b_rps if b16 else None
        p99_lower = level16["p99_ms"] is not None and b16_p99 is not None and level16["p99_ms"] < b16_p99
        rows.append({"target": "(c)/(b) throughput at concurrency 16, lower p99", "value": value,
                     "threshold": f">= {TARGETS['vs_seed_at_16']} and p99 lower",
                     "met": value is not None and value >= TARGETS["vs_seed_at_16"] and bool(p99_lower),
                     "detail": f"(c) {_work(level16):.2f} mix-weighted rps ({level16['throughput_rps']:.2f} raw) "
                               f"p99 {level16['p99_ms']} ms; (b) {b_rps:.2f} rps {b_note}, queue-model p99 "
                               f"{round(b16_p99) if b16_p99 else None} ms"})
    scenario = (c or {}).get("text_batching")
    if scenario and scenario.get("configured") and scenario.get("batching_off"):
        on, off = scenario["configured"], scenario["batching_off"]
        # The deployment's own throughput (DeploymentHandle, in the cluster): what its batching
        # buys. End to end over HTTP the proxy and driver share the same 2 cores and cap the rate.
        h_on, h_off = on.get("handle", {}), off.get("handle", {})
        value = _ratio(h_on.get("calls_per_s"), h_off.get("calls_per_s"))
        rows.append({"target": "TextEncoder batching on/off, short texts, concurrency 16", "value": value,
                     "threshold": f">= {TARGETS['text_batching_gain']}",
                     "met": value is not None and value >= TARGETS["text_batching_gain"],
                     "detail": f"TextEncoder via DeploymentHandle: on {h_on.get('calls_per_s')} calls/s, off "
                               f"{h_off.get('calls_per_s')} calls/s. End to end over HTTP: "
                               f"{_ratio(on['throughput_rps'], off['throughput_rps'])} "
                               f"(on {on['throughput_rps']:.2f} rps, mean batch "
                               f"{on['batches'].get('TextEncoder', {}).get('mean_batch_size')}; "
                               f"off {off['throughput_rps']:.2f} rps)"})
    level1 = _level(c, 1)
    paired = (c or {}).get("paired_overhead")
    if paired and paired["difference"]["p50_ms"] is not None:
        value = paired["difference"]["p50_ms"]
        rows.append({"target": "overhead at concurrency 1: p50 of (HTTP - in-process), paired per request",
                     "value": value, "threshold": f"<= {TARGETS['overhead_c1_ms']} ms",
                     "met": value <= TARGETS["overhead_c1_ms"],
                     "detail": f"HTTP p50 {paired['http']['p50_ms']} ms, in-process p50 {paired['in_process']['p50_ms']} ms; "
                               + "; ".join(f"{k}: {v['p50_ms']} ms" for k, v in paired["difference_by_kind"].items())})
    elif b and level1 and level1["p50_ms"] is not None:
        value = round(level1["p50_ms"] - b["service"]["p50_ms"], 1)
        rows.append({"target": "overhead at concurrency 1: p50 (c) - in-process compute p50", "value": value,
                     "threshold": f"<= {TARGETS['overhead_c1_ms']} ms",
                     "met": value <= TARGETS["overhead_c1_ms"],
                     "detail": f"(c) p50 {level1['p50_ms']} ms; in-process (b) p50 {b['service']['p50_ms']} ms; "
                               + "; ".join(f"{k}: {level1['by_kind'][k]['p50_ms']} vs {b['service_by_kind'][k]['p50_ms']}"
                                           for k in sorted(level1.get("by_kind", {})) if k in b["service_by_kind"])})
    return rows


def seed_throughput(results: dict) -> tuple[float, str]:
    """(b)'s throughput at its faster torch thread count. (b) runs with every core in one
    pool; the paired overhead phase also times each request with 1 thread, and on a
    busy machine that is often faster, so the comparison uses whichever is better."""
    b = results["seed"]
    best, note = _work(b), f"({b.get('threads', results.get('inprocess_threads'))} threads)"
    paired = (results.get("served") or {}).get("paired_overhead") or {}
    for threads, row in paired.get("in_process_by_threads", {}).items():
        if row.get("mean_ms") and 1000.0 / row["mean_ms"] > best:
            best, note = 1000.0 / row["mean_ms"], f"({threads} thread(s), from the paired phase)"
    return best, note


def _level(served: dict | None, concurrency: int) -> dict | None:
    for level in (served or {}).get("levels", []):
        if level["concurrency"] == concurrency:
            return level
    return None


# ---- plots -------------------------------------------------------------------------


def plot_latency_throughput(results: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    levels = results.get("served", {}).get("levels", [])
    if levels:
        x = [_work(lvl) for lvl in levels]
        for key, style in (("p50_ms", "o-"), ("p99_ms", "s--")):
            ax.plot(x, [lvl[key] or float("nan") for lvl in levels], style, label=f"(c) served {key[:3]}")
        for lvl in levels:
            ax.annotate(f"c={lvl['concurrency']}", (_work(lvl), lvl["p50_ms"] or 0),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)
    seed = results.get("seed")
    if seed:
        conc = sorted(seed["by_concurrency"], key=int)
        ax.plot([seed["throughput_rps"]] * len(conc), [seed["by_concurrency"][k]["p99_ms"] for k in conc], "x:",
                label="(b) seed p99 (queue model)")
    limit = results.get("limit")
    if limit:
        ax.axvline(limit["throughput_rps"], color="gray", linestyle=":",
                   label=f"(a) limit, batch {limit['best_batch_size']}, {limit.get('best_threads')} threads")
    ax.set_xlabel("throughput (requests/s of the workload mix)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title("Latency vs throughput")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_batch_histograms(results: dict, path: Path) -> None:
    served = results.get("served", {})
    runs = [(f"c={lvl['concurrency']}", lvl["batches"]) for lvl in served.get("levels", [])]
    scenario = served.get("text_batching") or {}
    runs += [(f"text-only {name}", run["batches"]) for name, run in scenario.items() if isinstance(run, dict)]
    names = ("TextEncoder", "AudioEncoder", "FusionHead")
    fig, axes = plt.subplots(1, len(names), figsize=(13, 3.8))
    width = 0.8 / max(1, len(runs))
    for ax, name in zip(axes, names):
        for i, (label, batches) in enumerate(runs):
            hist = batches.get(name, {}).get("histogram", {})
            total = sum(hist.values()) or 1
            sizes = sorted(int(k) for k in hist)
            ax.bar([s + i * width for s in sizes], [hist[str(s)] / total for s in sizes], width=width, label=label)
        ax.set_title(name)
        ax.set_xlabel("batch size")
        ax.set_ylabel("share of batches")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_replicas(results: dict, path: Path) -> bool:
    """RUNNING replicas per deployment over the served phase, with each load phase marked.
    Returns False (and draws nothing) when no timeline was recorded."""
    timeline = results.get("served", {}).get("replica_timeline", [])
    points = [t for t in timeline if "replicas" in t]
    if not points:
        return False
    fig, ax = plt.subplots(figsize=(10, 3.6))
    names = sorted({name for p in points for name in p["replicas"]})
    for i, name in enumerate(names):
        running = [p["replicas"].get(name, {}).get("RUNNING", 0) for p in points]
        # A small offset per deployment keeps equal counts from hiding each other.
        ax.step([p["t_s"] for p in points], [n + 0.04 * i for n in running], where="post", label=name)
    top = max(max(p["replicas"].get(n, {}).get("RUNNING", 0) for n in names) for p in points)
    for phase in (t for t in timeline if "phase" in t):
        ax.axvline(phase["t_s"], color="gray", linestyle=":", linewidth=0.8)
        ax.annotate(phase["phase"], (phase["t_s"], top + 0.35), rotation=90, fontsize=7, va="top",
                    xytext=(2, 0), textcoords="offset points")
    ax.set_ylim(0, top + 0.6)
    ax.set_xlabel("seconds since the served phase began")
    ax.set_ylabel("RUNNING replicas")
    ax.set_title("Replicas over time (serve.status())")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---- markdown ---------------------------------------------------------------------


def _fmt(value, digits=2):
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def settle_note(levels: list[dict]) -> str:
    """Which levels first ran unrecorded until the autoscaler had acted, and with what result."""
    settled = [lv for lv in levels if lv.get("settle")]
    if not settled:
        return "No level waited for the autoscaler (quick mode, or no level could trigger a scale-up)."
    parts = []
    for lv in settled:
        counts = ", ".join(f"{name} {sum(states.values())}" for name, states in sorted(lv["settle"]["replicas"].items()))
        parts.append(f"c={lv['concurrency']}: {lv['settle']['seconds']:.0f} s, then {counts or 'unknown'}")
    return ("Before each level that can trigger a scale-up, the same load ran unrecorded until the autoscaler had "
            "acted and no replica was starting, so measured levels are steady state: " + "; ".join(parts) + ".")


def results_table(results: dict) -> str:
    rows = ["| system | concurrency | throughput (mix rps) | raw rps | p50 ms | p95 ms | p99 ms | errors | 503 | "
            "cores used | mix req/CPU-s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    a = results.get("limit")
    if a:
        best = a["sweep"][a["best"]]
        rows.append(f"| (a) in-process batched, batch {a['best_batch_size']}, {a['best_threads']} threads | all at once | "
                    f"{_fmt(_work(a))} | {_fmt(a['throughput_rps'])} | "
                    f"{_fmt(best['p50_ms'], 0)} | {_fmt(best['p95_ms'], 0)} | {_fmt(best['p99_ms'], 0)} | 0 | 0 | "
                    f"{_fmt(a.get('cores_used'))} | {_fmt(_work_cpu(a))} |")
    b = results.get("seed")
    if b:
        for conc, row in sorted(b["by_concurrency"].items(), key=lambda kv: int(kv[0])):
            rows.append(f"| (b) seed, one at a time, {b.get('threads', '?')} threads | {conc} | {_fmt(_work(row))} | {_fmt(row['throughput_rps'])} | "
                        f"{_fmt(row['p50_ms'], 0)} | "
                        f"{_fmt(row['p95_ms'], 0)} | {_fmt(row['p99_ms'], 0)} | 0 | 0 | {_fmt(b.get('cores_used'))} | "
                        f"{_fmt(_work_cpu(b))} |")
    for lvl in results.get("served", {}).get("levels", []):
        rows.append(f"| (c) serve run | {lvl['concurrency']} | {_fmt(_work(lvl))} | {_fmt(lvl['throughput_rps'])} | "
                    f"{_fmt(lvl['p50_ms'], 0)} | "
                    f"{_fmt(lvl['p95_ms'], 0)} | {_fmt(lvl['p99_ms'], 0)} | {lvl['errors']} | {lvl['status_503']} | "
                    f"{_fmt(lvl['cores_used'])} | {_fmt(_work_cpu(lvl))} |")
    return "\n".join(rows)


def targets_table(rows: list[dict]) -> str:
    out = ["| target | measured | threshold | met | detail |", "|---|---|---|---|---|"]
    for row in rows:
        out.append(f"| {row['target']} | {_fmt(row['value'], 3)} | {row['threshold']} | "
                   f"{'yes' if row['met'] else '**no**'} | {row['detail']} |")
    return "\n".join(out)


def batches_table(results: dict) -> str:
    out = ["| run | deployment | batches | mean size | histogram (size: count) |", "|---|---|---|---|---|"]
    served = results.get("served", {})
    runs = [(f"mixed c={lvl['concurrency']}", lvl["batches"]) for lvl in served.get("levels", [])]
    runs += [(f"text-only c=16, {name}", run["batches"]) for name, run in (served.get("text_batching") or {}).items()
             if isinstance(run, dict)]
    for label, batches in runs:
        for name, snap in batches.items():
            hist = ", ".join(f"{k}: {v}" for k, v in sorted(snap["histogram"].items(), key=lambda kv: int(kv[0])))
            flag = "" if snap.get("same_replica", True) else " (replica changed)"
            out.append(f"| {label} | {name} | {snap['batches']} | {snap['mean_batch_size']} | {hist}{flag} |")
    return "\n".join(out)


def memory_table(served: dict) -> str:
    out = ["| process | count | peak RSS MiB (max) | peak RSS MiB (sum) | peak GPU MiB |", "|---|---|---|---|---|"]
    for role, row in served.get("memory", {}).items():
        out.append(f"| {role} | {row.get('processes')} | {row.get('peak_rss_mib_max')} | {row.get('peak_rss_mib_sum')} | "
                   f"{_fmt(row.get('peak_gpu_mib_max'), 0)} |")
    return "\n".join(out)


def replicas_summary(served: dict) -> str:
    timeline = [t for t in served.get("replica_timeline", []) if "replicas" in t]
    if not timeline:
        return "No replica timeline was recorded."
    peak: dict[str, dict[str, int]] = {}
    for point in timeline:
        for name, states in point["replicas"].items():
            for state, count in states.items():
                peak.setdefault(name, {})[state] = max(count, peak.get(name, {}).get(state, 0))
    out = ["| deployment | most replicas seen per state |", "|---|---|"]
    for name, states in sorted(peak.items()):
        out.append(f"| {name} | {', '.join(f'{s}: {n}' for s, n in sorted(states.items()))} |")
    return "\n".join(out) + f"\n\n{len(timeline)} samples of `serve.status()`; the full timeline is in results.json."


def profile_section(served: dict) -> str:
    profile = served.get("profile")
    if not profile:
        return "No profile was taken (run with `--profile`)."
    out = [f"py-spy, {profile['seconds']} s at concurrency {profile['concurrency']} (mixed workload), "
           f"{profile['rate']} samples/s per thread, Python frames; samples blocked in C (event loops, Ray's "
           "core-worker loop, idle pool threads) are dropped, shares are of the busy samples.\n"]
    generic = ("threading.py", "default_worker.py", "futures/thread.py", "_private/worker.py")
    for role, summary in profile["processes"].items():
        if "error" in summary:
            out.append(f"**{role}**: {summary['error']}\n")
            continue
        out.append(f"**{role}** ({summary['samples']} busy, {summary.get('waiting_samples', 0)} waiting samples):\n")
        out.append("| inclusive | frame |\n|---|---|")
        frames = [(f, v) for f, v in summary["top_inclusive"] if not any(g in f for g in generic)]
        for frame, share in frames[:8]:
            out.append(f"| {share:.0%} | `{frame}` |")
        out.append("\n| self | frame |\n|---|---|")
        for frame, share in summary["top_self"][:5]:
            out.append(f"| {share:.0%} | `{frame}` |")
        out.append("")
    return "\n".join(out)


def write_report(out_dir: Path, results: dict) -> Path:
    results["targets"] = evaluate(results)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    plot_latency_throughput(results, out_dir / "latency_vs_throughput.png")
    plot_batch_histograms(results, out_dir / "batch_histograms.png")
    replicas_plotted = plot_replicas(results, out_dir / "replicas_over_time.png")
    fp, served = results["fingerprint"], results.get("served", {})
    scenario = served.get("text_batching") or {}
    lines = [
        f"# Benchmark report: {results['started_at']}",
        "",
        f"Mode: **{results['mode']}**. Models: `{results['bundle']['name']}` "
        f"(text {results['bundle'].get('text_encoder')}, audio {results['bundle'].get('audio_encoder')}). "
        "Random weights: same FLOPs as trained checkpoints.",
        "",
        "## Machine",
        "",
        f"- {fp['cpu_model']}; {fp['logical_cores']} logical / {fp['physical_cores']} physical cores; "
        f"{fp['memory_gib']} GiB; GPUs: {', '.join(fp['gpus']) or 'none'}",
        f"- torch threads in-process: {results.get('inprocess_threads')}; "
        f"versions: {', '.join(f'{k} {v}' for k, v in fp['versions'].items())}",
        f"- load average at start {fp['loadavg_at_start']}; per phase: {results.get('loadavg')}. "
        "The machine is shared, so absolute numbers are noisy; targets are ratios from this one run, and "
        "'mix req/CPU-s' (requests of the workload mix completed per CPU-second the system itself used) is the "
        "view least disturbed by neighbours.",
        "",
        "## Workload",
        "",
        f"{json.dumps(results['workload']['mixed'])} (texts: {results['workload']['text_source']}; "
        "audio: synthetic voiced signal). Text-only batching scenario: "
        f"{json.dumps(results['workload']['short_texts'])}.",
        "",
        "## Targets",
        "",
        targets_table(results["targets"]),
        "",
        "## Results",
        "",
        results_table(results),
        "",
        "'mix rps' weights each completed request by its in-process cost relative to the workload mean (from (b)), "
        "because in a short window a closed loop completes cheap text-only requests more often than the mix holds "
        "them; 'raw rps' counts requests. "
        "(a) processes the workload in arrival-order chunks (latency = chunk time). (b) throughput is measured; its "
        "latency at concurrency C comes from a FIFO queue of C closed-loop clients over the measured service times, "
        "with no HTTP cost. (c) is closed-loop HTTP load: throughput over the steady window, latencies of requests "
        "started in it.",
        "",
        settle_note(served.get("levels", [])),
        "",
        "![latency vs throughput](latency_vs_throughput.png)",
        "",
        "## TextEncoder batching (text-only short texts, concurrency 16)",
        "",
        "| TextEncoder user_config | HTTP throughput (rps) | p50 ms | p99 ms | errors | "
        "TextEncoder alone via DeploymentHandle (calls/s) | its p50 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, run in scenario.items():
        if isinstance(run, dict):
            handle = run.get("handle", {})
            lines.append(f"| {name}: {json.dumps(run.get('user_config'))} | {_fmt(run['throughput_rps'])} | "
                         f"{_fmt(run['p50_ms'], 0)} | {_fmt(run['p99_ms'], 0)} | {run['errors']} | "
                         f"{handle.get('calls_per_s', handle.get('error', '')[:80])} | {handle.get('p50_ms', '')} |")
    paired = served.get("paired_overhead")
    if paired:
        lines += [
            "",
            "## Overhead at concurrency 1 (each request over HTTP, then the same request in-process)",
            "",
            "| | p50 ms | p95 ms | p99 ms |",
            "|---|---|---|---|",
        ]
        for name, row in (("HTTP (c)", paired["http"]), ("in-process, faster thread count", paired["in_process"]),
                          *((f"in-process, {t} torch threads", v)
                            for t, v in paired.get("in_process_by_threads", {}).items()),
                          ("difference, per request", paired["difference"]),
                          *((f"difference, {k} only", v) for k, v in paired["difference_by_kind"].items())):
            lines.append(f"| {name} | {_fmt(row['p50_ms'], 1)} | {_fmt(row['p95_ms'], 1)} | {_fmt(row['p99_ms'], 1)} |")
    lines += [
        "",
        "## Batch sizes formed (one replica per deployment, from GET /v1/stats)",
        "",
        batches_table(results),
        "",
        "![batch histograms](batch_histograms.png)",
        "",
        "## Replicas (serve.status())",
        "",
        replicas_summary(served),
        "",
        "![replicas over time](replicas_over_time.png)" if replicas_plotted else "",
        "",
        "## Peak memory per process (RSS, sampled every 0.5 s)",
        "",
        memory_table(served),
        "",
        "## Profile",
        "",
        profile_section(served),
        "",
    ]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
