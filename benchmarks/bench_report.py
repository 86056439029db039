"""One benchmark run's results.json and Markdown report (targets, tables, plots, profile)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.plots import plot_batch_histograms, plot_cpu_by_role, plot_latency_throughput, plot_replicas
from benchmarks.scenario_report import (cpu_tables, long_recordings_table, model_bound_table, perf_analyzer_table,
                                        scenario_notes)
from benchmarks.targets import evaluate, work_per_cpu, work_rps


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
                    f"{_fmt(work_rps(a))} | {_fmt(a['throughput_rps'])} | "
                    f"{_fmt(best['p50_ms'], 0)} | {_fmt(best['p95_ms'], 0)} | {_fmt(best['p99_ms'], 0)} | 0 | 0 | "
                    f"{_fmt(a.get('cores_used'))} | {_fmt(work_per_cpu(a))} |")
    b = results.get("seed")
    if b:
        for conc, row in sorted(b["by_concurrency"].items(), key=lambda kv: int(kv[0])):
            rows.append(f"| (b) seed, one at a time, {b.get('threads', '?')} threads | {conc} | {_fmt(work_rps(row))} | {_fmt(row['throughput_rps'])} | "
                        f"{_fmt(row['p50_ms'], 0)} | "
                        f"{_fmt(row['p95_ms'], 0)} | {_fmt(row['p99_ms'], 0)} | 0 | 0 | {_fmt(b.get('cores_used'))} | "
                        f"{_fmt(work_per_cpu(b))} |")
    for lvl in results.get("served", {}).get("levels", []):
        rows.append(f"| (c) serve run | {lvl['concurrency']} | {_fmt(work_rps(lvl))} | {_fmt(lvl['throughput_rps'])} | "
                    f"{_fmt(lvl['p50_ms'], 0)} | "
                    f"{_fmt(lvl['p95_ms'], 0)} | {_fmt(lvl['p99_ms'], 0)} | {lvl['errors']} | {lvl['status_503']} | "
                    f"{_fmt(lvl['cores_used'])} | {_fmt(work_per_cpu(lvl))} |")
    return "\n".join(rows)


def targets_table(rows: list[dict]) -> str:
    out = ["| target | measured | threshold | met | detail |", "|---|---|---|---|---|"]
    for row in rows:
        met = "not measured" if row["met"] is None else "yes" if row["met"] else "**no**"
        out.append(f"| {row['target']} | {_fmt(row['value'], 3)} | {row['threshold']} | {met} | {row['detail']} |")
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
    cpu_plotted = plot_cpu_by_role(results, out_dir / "cpu_by_role.png")
    fp, served = results["fingerprint"], results.get("served", {})
    scenario = served.get("text_batching") or {}
    bundle = results.get("bundle") or {}
    workload = results.get("workload") or {}
    lines = [
        f"# Benchmark report: {results['started_at']}",
        "",
        f"Mode: **{results['mode']}**. Models: `{bundle.get('name', 'none: the base-size scenario was skipped')}` "
        f"(text {bundle.get('text_encoder')}, audio {bundle.get('audio_encoder')}). "
        "Random weights: same FLOPs as trained checkpoints."
        + (f" Serve config overrides: `{' '.join(results['overrides'])}`." if results.get("overrides") else ""),
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
        f"{json.dumps(workload.get('mixed'))} (texts: {workload.get('text_source')}; "
        "audio: synthetic voiced signal). Text-only requests (the batching scenario, the demo bundle's headline "
        f"and the front door): {json.dumps(workload.get('short_texts'))}; the other scenarios build the same "
        "workloads with their own tokenizer.",
        "",
        "## Targets",
        "",
        targets_table(results["targets"]),
        "",
        "## CPU per request by process role",
        "",
        "Per served level: each process's user+system CPU seconds over the level (per pid, so processes that start "
        "or exit in it count for the time they ran), summed by role and divided by the requests answered, in ms. "
        "Roles come from process titles (`harness.processes.role_of`): HAProxy is Serve's compiled ingress and "
        "HAProxyManager the actor that runs it; Proxy is Serve's Python proxy (with HAProxy on, only its fallback); "
        "ray-system is every other Ray process (raylet, GCS, agents, idle workers). 'outside the encoders' is all "
        "but TextEncoder and AudioEncoder. '÷ (a) req/CPU-s' compares requests per CPU-second with the in-process "
        "batched pipeline on the same inputs; '÷ model-bound rps' compares throughput with the model-bound limit "
        "below. The front door runs the tiny test bundle (near-free models) with the Driver fixed at each replica "
        "count: what the serving path alone can carry.",
        "",
        scenario_notes(results),
        "",
        cpu_tables(results),
        "![CPU per request by role](cpu_by_role.png)" if cpu_plotted else "",
        "",
        "### front door, two load generators",
        "",
        "The same served system right after each front-door level, loaded again by Triton's perf_analyzer on the "
        "Open Inference Protocol route (`/v2/models/sentiment/infer`, binary tensors, short review texts; "
        "`benchmarks.oip_perf`): a load generator that is not ours confirms our closed loop's figures.",
        "",
        perf_analyzer_table(results),
        "",
        "## Long recordings beside short requests",
        "",
        long_recordings_table(results),
        "",
        "## Model-bound limit",
        "",
        "The encoders' and the fusion head's forward passes alone, on inputs already tokenized and decoded, each at "
        "its best batch size over length-sorted chunks, one stage after the other (`benchmarks.model_bound`): the "
        "ceiling no server can pass. On a CPU a stage at k threads counts as cores/k copies side by side, perfect "
        "scaling assumed; core-ms/request is then comparable with the encoders' and FusionHead's CPU ms per request "
        "above.",
        "",
        model_bound_table(results),
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
