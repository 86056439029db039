"""py-spy profiles of the served replicas under load, summarized from collapsed stacks."""

from __future__ import annotations

import subprocess
from pathlib import Path

from benchmarks.served_config import DEPLOYMENTS
from benchmarks.workload import Request
from harness import cli


def _frame_label(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (to/file.py)``: lines merged, paths shortened."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({'/'.join(where.split('/')[-2:])})" if where else name


# Leaf frames where a thread is blocked in C (event-loop select, Ray's core-worker loop,
# an idle pool thread): py-spy's idle heuristic does not catch these, so they are dropped.
WAIT_LEAVES = ("Worker.main_loop", "Thread.run", "_run_user_code_event_loop", "_run_router_event_loop",
               "_worker (futures/thread.py)", "Condition.wait", "Event.wait", "select (selectors.py)",
               "BaseEventLoop._run_once", "Thread._wait_for_tstate_lock")


def summarize_collapsed(text: str, top: int = 15) -> dict:
    """Inclusive and self shares per frame among busy samples, from py-spy's ``--format raw``."""
    inclusive: dict[str, int] = {}
    leaf: dict[str, int] = {}
    total = waiting = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame_label(f) for f in stack.split(";") if f]
        if frames and any(wait in frames[-1] for wait in WAIT_LEAVES):
            waiting += n
            continue
        total += n
        for label in set(frames[1:] if frames and frames[0].startswith(("process", "thread")) else frames):
            inclusive[label] = inclusive.get(label, 0) + n
        if frames:
            leaf[frames[-1]] = leaf.get(frames[-1], 0) + n
    share = lambda d: sorted(((k, v / total) for k, v in d.items()), key=lambda kv: -kv[1])[:top]  # noqa: E731
    return {"samples": total, "waiting_samples": waiting, "top_inclusive": share(inclusive) if total else [],
            "top_self": share(leaf) if total else []}


def profile_level(system, requests: list[Request], concurrency: int, seconds: int, out_dir: Path,
                  rate: int = 25, timeout_s: float = 60) -> dict:
    """Load at ``concurrency`` on a ``ServedSystem`` while py-spy samples one process of
    each role (non-blocking)."""
    try:
        spy = cli("py-spy")
    except FileNotFoundError:
        return {"error": "py-spy is not installed"}
    jobs = {}
    for role, pids in system.sampler.replica_pids().items():
        if role in ("Proxy", *DEPLOYMENTS) and pids:
            raw = out_dir / f"pyspy-{role}.txt"
            cmd = [spy, "record", "--pid", str(pids[0]), "--duration", str(seconds), "--rate", str(rate),
                   "--format", "raw", "--output", str(raw), "--nonblocking"]
            jobs[role] = (subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), raw)
    level = system.run_level(requests, concurrency, seconds + 2, 1, timeout_s, "profile")
    processes = {}
    for role, (proc, raw) in jobs.items():
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            err = "py-spy did not finish"
        processes[role] = summarize_collapsed(raw.read_text()) if raw.is_file() else {"error": err[-500:]}
    return {"seconds": seconds, "rate": rate, "concurrency": concurrency, "processes": processes,
            "throughput_rps_while_profiling": level["throughput_rps"]}
