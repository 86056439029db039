"""Soak test: the real app from ``serve_config.yaml``, as ``make run`` serves it, driven by Locust.

    python -m loadtest.run --users 16 --duration 60s        # make loadtest
    python -m loadtest.run --url http://127.0.0.1:8000      # an app that already runs

Without ``--url`` it starts ``scripts/run.sh`` with a copy of the config on free loopback
ports (``harness.MakeRun``: its own Ray head, HAProxy, ``serve run``) and stops it after.
Locust runs headless (no web UI, no ports). Writes to ``--out``: Locust's CSVs,
``timeline.csv`` (requests per second by status code, latency percentiles),
``memory.csv`` (RSS per Serve process role every 2 s, for a run on this machine) and
``summary.json``/``summary.md``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from harness import RAY_SYSTEM, MakeRun, role_of, run_processes, wait_healthy

ROOT = Path(__file__).resolve().parent.parent


def pick_bundle(requested: str | None, out: Path) -> Path:
    if requested:
        return Path(requested)
    demo = ROOT / "artifacts" / "demo-bundle"
    if (demo / "bundle.json").is_file():
        return demo
    from model.factory import save_tiny_bundle

    tiny = out / "tiny-bundle"
    if not (tiny / "bundle.json").is_file():
        save_tiny_bundle(tiny)
    return tiny


class MemorySampler(threading.Thread):
    """RSS (MiB) summed per Serve process role, every ``interval_s``, over ``pids()``."""

    def __init__(self, pids: Callable[[], list[int]], interval_s: float = 2.0):
        super().__init__(daemon=True)
        self.pids, self.interval_s, self.rows, self._halt = pids, interval_s, [], threading.Event()

    def run(self) -> None:
        self._t0 = time.monotonic()
        while not self._halt.wait(self.interval_s):
            totals: dict[str, float] = collections.defaultdict(float)
            for pid in self.pids():
                with contextlib.suppress(psutil.Error):
                    proc = psutil.Process(pid)
                    role = role_of(proc.cmdline(), proc.name())
                    if role != RAY_SYSTEM:  # Serve's processes only: their memory is what a soak watches
                        totals[role] += proc.memory_info().rss / 2**20
            self.rows.append({"second": round(time.monotonic() - self._t0), **{k: round(v) for k, v in totals.items()}})

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


def summarize(timeline: Path, memory: list[dict], healthz_after_s: float, args) -> dict:
    with timeline.open() as f:
        rows = list(csv.DictReader(f))
    statuses = collections.Counter()
    for row in rows:
        for key, value in row.items():
            if key.startswith("status_"):
                statuses[key.removeprefix("status_")] += int(value)
    windows = []
    for start in range(0, len(rows), 10):  # 10-second windows: the latency over time
        chunk = rows[start:start + 10]
        p95 = [float(r["p95_ms"]) for r in chunk if r["p95_ms"] not in ("", "nan")]
        windows.append({"from_s": int(chunk[0]["second"]), "requests": sum(int(r["requests"]) for r in chunk),
                        "p95_ms_max": max(p95) if p95 else None})
    roles = sorted({k for row in memory for k in row if k != "second"})
    mem = {role: {"first_mib": next((r[role] for r in memory if role in r), None),
                  "peak_mib": max((r.get(role, 0) for r in memory), default=None),
                  "last_mib": next((r[role] for r in reversed(memory) if role in r), None)} for role in roles}
    return {"users": args.users, "duration": args.duration, "status_histogram": dict(sorted(statuses.items())),
            "requests": sum(statuses.values()), "windows_10s": windows, "memory_mib": mem,
            "healthz_after_s": round(healthz_after_s, 2)}


def markdown(summary: dict) -> str:
    lines = [f"# Soak test: {summary['users']} users for {summary['duration']}", "",
             f"Requests: {summary['requests']}; status histogram: {summary['status_histogram']}; "
             f"/healthz 200 again {summary['healthz_after_s']} s after the load stopped.", "",
             "| window from (s) | requests | max p95 per second (ms) |", "|---|---|---|"]
    lines += [f"| {w['from_s']} | {w['requests']} | {w['p95_ms_max']} |" for w in summary["windows_10s"]]
    lines += ["", "| process role | RSS first (MiB) | peak | last |", "|---|---|---|---|"]
    lines += [f"| {role} | {m['first_mib']} | {m['peak_mib']} | {m['last_mib']} |"
              for role, m in summary["memory_mib"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="the config run.sh serves (default: serve_config.yaml)")
    parser.add_argument("--bundle", help="bundle folder (default: artifacts/demo-bundle, else a tiny test bundle)")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--spawn-rate", type=float, default=4)
    parser.add_argument("--duration", default="60s", help="Locust --run-time, e.g. 60s or 10m")
    parser.add_argument("--num-cpus", type=float, default=None, help="logical CPUs for Ray (default: run.sh's, 2)")
    parser.add_argument("--url", help="drive the app already serving at this URL instead of starting one")
    parser.add_argument("--ray-run", help="with --url: the folder of the `make run` that serves it (run.sh prints "
                                          "'Ray logs: <folder>/session_latest/logs'), whose memory is sampled")
    parser.add_argument("--out", default=str(ROOT / "bench-results" / "loadtest"))
    args = parser.parse_args(argv)
    starts_its_own = {"--config": args.config, "--bundle": args.bundle, "--num-cpus": args.num_cpus}
    if args.url and any(value is not None for value in starts_its_own.values()):
        given = ", ".join(flag for flag, value in starts_its_own.items() if value is not None)
        parser.error(f"{given}: only for the run this command starts; with --url the app already runs")
    if args.ray_run and not args.url:
        parser.error("--ray-run: only with --url (without it, the run this command starts is sampled)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    run = None
    if args.url:
        url = args.url.rstrip("/")
        processes = (lambda: run_processes(args.ray_run)) if args.ray_run else list
    else:
        bundle = pick_bundle(args.bundle, out)
        config = Path(args.config or ROOT / "serve_config.yaml")
        print(f"starting scripts/run.sh with {config} and {bundle}", flush=True)
        run = MakeRun(config, out / "make-run", bundle=bundle, num_cpus=args.num_cpus).start()
        url, processes = run.url, run.processes
    sampler = MemorySampler(processes)
    try:
        wait_healthy(url, 300, interval_s=0.25, request_timeout_s=2)
        print(f"serving at {url}; load: {args.users} users for {args.duration}", flush=True)
        sampler.start()
        timeline = out / "timeline.csv"
        env = {**os.environ, "LOADTEST_TIMELINE": str(timeline)}
        subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(Path(__file__).with_name("locustfile.py")), "--headless",
             "--host", url, "-u", str(args.users), "-r", str(args.spawn_rate), "--run-time", args.duration,
             "--csv", str(out / "locust"), "--csv-full-history", "--only-summary", "--stop-timeout", "10",
             "--exit-code-on-error", "0"],
            env=env, check=True, timeout=24 * 3600,
        )
        # Fine-grained polling: how soon /healthz recovers after the load is a result.
        healthz_after_s = wait_healthy(url, 60, interval_s=0.25, request_timeout_s=2)
        time.sleep(2 * sampler.interval_s)  # one more memory sample after the load
        sampler.stop()
        summary = summarize(timeline, sampler.rows, healthz_after_s, args)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        with (out / "memory.csv").open("w", newline="") as f:
            fields = ["second"] + sorted({k for r in sampler.rows for k in r if k != "second"})
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(sampler.rows)
        (out / "summary.md").write_text(markdown(summary))
        print(markdown(summary))
        bad = {s: n for s, n in summary["status_histogram"].items() if s not in ("200", "503")}
        return 1 if bad else 0
    finally:
        if sampler.is_alive():
            sampler.stop()
        if run is not None:
            run.stop()


if __name__ == "__main__":
    sys.exit(main())
