"""The benchmark report's plots: latency vs throughput, batch-size histograms, replicas over time, CPU by role."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.targets import work_rps  # noqa: E402


def plot_latency_throughput(results: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    levels = results.get("served", {}).get("levels", [])
    if levels:
        x = [work_rps(lvl) for lvl in levels]
        for key, style in (("p50_ms", "o-"), ("p99_ms", "s--")):
            ax.plot(x, [lvl[key] or float("nan") for lvl in levels], style, label=f"(c) served {key[:3]}")
        for lvl in levels:
            ax.annotate(f"c={lvl['concurrency']}", (work_rps(lvl), lvl["p50_ms"] or 0),
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
    if ax.get_legend_handles_labels()[0]:
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
    if runs:
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



def plot_cpu_by_role(results: dict, path: Path) -> bool:
    """CPU ms per answered request, stacked by process role, one bar per served level of
    every scenario. Returns False (and draws nothing) when no level recorded it."""
    from benchmarks.cpu_cost import ROLE_ORDER
    from benchmarks.scenario_report import level_rows

    rows = [r for r in level_rows(results) if r["by_role"]]
    if not rows:
        return False
    roles = [role for role in ROLE_ORDER if any(role in r["by_role"] for r in rows)]
    roles += sorted({role for r in rows for role in r["by_role"]} - set(roles))
    labels = [f"{r['scenario']}, {r['workload']}, c={r['concurrency']}"
              + (f", Driver x{r['driver_replicas']}" if r["driver_replicas"] else "") for r in rows]
    fig, ax = plt.subplots(figsize=(11, 0.45 * len(rows) + 1.8))
    left = [0.0] * len(rows)
    for role in roles:
        widths = [r["by_role"].get(role) or 0.0 for r in rows]
        ax.barh(range(len(rows)), widths, left=left, label=role)
        left = [a + b for a, b in zip(left, widths)]
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("CPU ms per answered request")
    ax.set_title("CPU per request by process role")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: bars fill the axes
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
