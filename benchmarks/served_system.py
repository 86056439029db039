"""System (c): the real application under ``serve run`` on a private Ray head, and one load level on it.

The head and ``serve run`` come from ``harness.ray_head``; the config from
``benchmarks.served_config``. While load runs, a ``harness.ProcessSampler`` walks the
head's process tree for peak memory and CPU seconds per role, and a ``StatusPoller``
records ``serve.status()`` replica counts.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.closed_loop import closed_loop, get_stats, stats_delta, summarize_level
from benchmarks.cpu_cost import cpu_delta_by_role, ms_per_request, serving_ms_per_request
from benchmarks.served_config import APP_NAME
from benchmarks.workload import Request
from harness import MachineCPU, ProcessSampler, RayHead, keep_serve_logs, serve_run, start_head, wait_healthy


class StatusPoller:
    """``serve.status()`` replica counts every few seconds, through a Ray connection."""

    def __init__(self, gcs_address: str, interval_s: float = 2.0):
        self.gcs_address = gcs_address
        self.interval_s = interval_s
        self.timeline: list[dict] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.perf_counter()

    def _poll(self) -> None:
        from ray import serve

        status = serve.status()
        app = status.applications.get(APP_NAME)
        if app is None:
            return
        self.timeline.append({
            "t_s": round(time.perf_counter() - self._t0, 1),
            "app_status": str(app.status.value if hasattr(app.status, "value") else app.status),
            "replicas": {name: {str(getattr(k, "value", k)): v for k, v in dep.replica_states.items()}
                         for name, dep in app.deployments.items()},
        })

    def latest_replicas(self) -> dict | None:
        """Replica states per deployment from the latest poll, or None before the first."""
        return next((e["replicas"] for e in reversed(self.timeline) if "replicas" in e), None)

    def transitioning(self) -> bool:
        """Whether the latest poll saw a replica in any state but RUNNING (starting, stopping...)."""
        latest = self.latest_replicas()
        return latest is None or any(state != "RUNNING" for dep in latest.values() for state in dep)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._poll()
            except Exception as exc:  # a poll failure must not stop the benchmark
                self.error = repr(exc)

    def start(self) -> "StatusPoller":
        import ray

        # RAY_AUTH_MODE=token must be in this process's environment before Ray is
        # imported (benchmarks.run sets it); see RayHead.child_env.
        ray.init(address=self.gcs_address, log_to_driver=False, logging_level="ERROR")
        self._thread.start()
        return self

    def stop(self) -> None:
        import ray

        from ray.serve.context import _set_global_client

        self._stop.set()
        self._thread.join(timeout=10)
        ray.shutdown()
        # Serve caches its client (a handle on this cluster's controller): the next
        # scenario's cluster has another controller, which serve.status() must find.
        _set_global_client(None)

    def mark(self, label: str) -> None:
        self.timeline.append({"t_s": round(time.perf_counter() - self._t0, 1), "phase": label})


def wait_reconfigured(timeout_s: float = 120) -> None:
    """After an in-place update, wait until every deployment reports HEALTHY again
    (through the Ray connection the StatusPoller opened)."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    time.sleep(2.0)  # let the controller pick up the new config first
    while time.monotonic() < deadline:
        app = serve.status().applications.get(APP_NAME)
        if app is not None and str(getattr(app.status, "value", app.status)) == "RUNNING" and all(
            str(getattr(d.status, "value", d.status)) == "HEALTHY" for d in app.deployments.values()
        ):
            return
        time.sleep(1.0)
    raise TimeoutError("application did not return to RUNNING/HEALTHY after reconfiguration")


def wait_replicas(deployment: str, n: int, timeout_s: float = 180) -> None:
    """After an in-place update, wait until ``deployment`` runs exactly ``n`` replicas, none
    starting or stopping, and the application is RUNNING again."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    time.sleep(2.0)  # let the controller pick up the new config first
    while time.monotonic() < deadline:
        app = serve.status().applications.get(APP_NAME)
        dep = app.deployments.get(deployment) if app is not None else None
        if dep is not None and str(getattr(app.status, "value", app.status)) == "RUNNING":
            states = {str(getattr(k, "value", k)): v for k, v in dep.replica_states.items() if v}
            if states == {"RUNNING": n}:
                return
        time.sleep(1.0)
    raise TimeoutError(f"{deployment} did not reach {n} RUNNING replicas in {timeout_s:.0f} s")


@dataclass
class ServeSetup:
    """How every served system of one run is started: the base config and its overrides,
    the head's resources and environment, where ``serve run`` runs."""

    config_path: Path
    overrides: dict
    num_cpus: int
    num_gpus: int | None
    health_timeout_s: float
    env: dict
    code_dir: Path | None = None

    def config(self, bundle: Path, port: int, extra: dict | None = None) -> dict:
        from benchmarks.served_config import derive_config

        return derive_config(self.config_path, bundle, port, {**self.overrides, **(extra or {})})

    def start(self, config: dict, workdir: Path) -> "ServedSystem":
        workdir.mkdir(parents=True, exist_ok=True)
        return start_system(config, workdir, self.num_cpus, self.num_gpus, self.health_timeout_s, self.env,
                            code_dir=self.code_dir)


@dataclass
class ServedSystem:
    """One running deployment of the app: a Ray head, its URL, its samplers."""

    head: RayHead
    url: str
    config: dict
    config_path: Path
    sampler: ProcessSampler
    poller: StatusPoller | None
    startup_s: float

    def settle(self, requests: list[Request], concurrency: int, decide_s: float, timeout_s: float,
               max_s: float = 120) -> dict:
        """Load at ``concurrency`` (unrecorded) until the autoscaler has acted on it.

        ``decide_s`` is how long the autoscaler needs to see the load before it scales
        (its look-back window plus its upscale delay); after that, load goes on while
        any replica is starting, so a measured level never pays for a replica's start.
        """
        if self.poller is not None:
            self.poller.mark(f"settle c={concurrency}")
        start = time.perf_counter()
        chunk = decide_s
        while True:
            asyncio.run(closed_loop(self.url, requests, concurrency, chunk, timeout_s))
            self.head.check_alive()
            elapsed = time.perf_counter() - start
            if self.poller is None or not self.poller.transitioning() or elapsed >= max_s:
                break
            chunk = 5.0
        latest = self.poller.latest_replicas() if self.poller else None
        return {"seconds": round(elapsed, 1), "replicas": latest or {}}

    def run_level(self, requests: list[Request], concurrency: int, duration_s: float, warmup_s: float,
                  timeout_s: float, label: str, weights: list[float] | None = None) -> dict:
        """One closed-loop level: its latency summary plus CPU per role, batch sizes and records."""
        self.head.check_alive()
        if self.poller is not None:
            self.poller.mark(label)
        before = get_stats(self.url)
        cpu_before = self.sampler.cpu_by_pid()
        client_cpu_before = time.process_time()
        machine = MachineCPU()
        records, elapsed = asyncio.run(closed_loop(self.url, requests, concurrency, duration_s, timeout_s))
        self.head.check_alive()
        client_cpu = time.process_time() - client_cpu_before
        used = cpu_delta_by_role(cpu_before, self.sampler.cpu_by_pid())
        after = get_stats(self.url)
        cpu = {role: round(v, 2) for role, v in used.items()}
        total_cpu = sum(used.values())
        # CPU is summed over the whole closed loop (warm-up and drain included), so it is
        # divided by every request answered in that time.
        ok_all = [r for r in records if r[2] == 200]
        work_all = sum(weights[r[4]] for r in ok_all) if weights else None
        level = summarize_level(records, duration_s, warmup_s, weights)
        level.update({
            "concurrency": concurrency,
            "duration_s": duration_s,
            "elapsed_s": round(elapsed, 2),
            "cpu_s_by_role": cpu,
            "cpu_s": round(total_cpu, 2),
            "answered": len(ok_all),
            "cpu_ms_per_request_by_role": ms_per_request(used, len(ok_all)),
            "cpu_ms_per_request": round(1000.0 * total_cpu / len(ok_all), 2) if ok_all else None,
            "serving_cpu_ms_per_request": serving_ms_per_request(used, len(ok_all)),
            "client_cpu_s": round(client_cpu, 2),
            "cores_used": round(total_cpu / elapsed, 2),
            "machine_busy_cores": machine.busy_cores(),
            "ok_per_cpu_s": round(len(ok_all) / total_cpu, 3) if total_cpu else None,
            "work_per_cpu_s": round(work_all / total_cpu, 3) if total_cpu and weights else None,
            "records": [(round(a, 3), round(b, 3), st, k, i) for a, b, st, k, i in records],
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
            "batches": stats_delta(before, after),
        })
        latest = self.poller.latest_replicas() if self.poller is not None else None
        level["running_replicas"] = {name: states.get("RUNNING", 0) for name, states in (latest or {}).items()}
        return level


def start_system(config: dict, workdir: Path, num_cpus: int, num_gpus: int | None, health_timeout_s: float,
                 env: dict | None = None, poll_status: bool = True, code_dir: Path | None = None) -> ServedSystem:
    """A private head, ``config`` deployed on it, healthy, with its samplers running."""
    head = start_head(num_cpus, num_gpus, env or {}, workdir, code_dir)
    try:
        config_path = workdir / "serve_config.bench.yaml"
        start = time.perf_counter()
        serve_run(head, config, config_path)
        url = f"http://127.0.0.1:{config['http_options']['port']}"
        wait_healthy(url, health_timeout_s, check=head.check_alive, interval_s=1.0)
        startup_s = time.perf_counter() - start
        sampler = ProcessSampler(head.proc.pid).start()
        poller = StatusPoller(head.address).start() if poll_status else None
        return ServedSystem(head, url, config, config_path, sampler, poller, startup_s)
    except BaseException:
        keep_serve_logs(head, workdir)
        head.stop()
        raise


def stop_system(system: ServedSystem, workdir: Path, keep_logs: bool = False) -> dict:
    """Final samples, then the head and everything under it; reports pids that had to be killed."""
    system.sampler.sample()
    system.sampler.stop()
    if system.poller is not None:
        system.poller.stop()
    if keep_logs:
        keep_serve_logs(system.head, workdir)
    killed = system.head.stop()
    # By role: a survivor of the head's own shutdown (e.g. HAProxy, whose manager does
    # not always stop it) is worth knowing about.
    return {"killed_after_stop": killed,
            "killed_after_stop_roles": [system.sampler.roles.get(pid, "unknown") for pid in killed]}
