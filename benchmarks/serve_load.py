"""System (c): the real application under ``serve run``, driven over HTTP.

A private Ray head (``ray start --head --block``) is started on free ports with
its own temp dir, so it neither collides with nor is picked up by anyone else's
``ray.init()`` on this machine (the "current cluster" file lives in that temp
dir). The app is deployed with ``serve run --non-blocking`` from a config derived
from ``serve_config.yaml``. Stopping the ``--block`` process stops every Ray
process it started; survivors are killed by pid.

While load runs, a sampler walks the head's process tree for peak memory and
CPU seconds per role, and a poller records ``serve.status()`` replica counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import yaml

from benchmarks.metrics import MachineCPU, by_kind, summarize
from benchmarks.workload import Request

APP_NAME = "sentiment"
DEPLOYMENTS = ("Driver", "TextEncoder", "AudioEncoder", "FusionHead")
BIN = Path(sys.executable).parent


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_range_free(lo: int, hi: int) -> bool:
    for port in range(lo, hi + 1, 10):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def worker_port_window(size: int = 200) -> tuple[int, int]:
    """A worker port range below Linux's ephemeral range and away from Ray's default
    (10002-19999) that other clusters on this machine use."""
    rng = random.Random()
    for _ in range(50):
        lo = rng.randrange(20_000, 32_000 - size)
        if _port_range_free(lo, lo + size - 1):
            return lo, lo + size - 1
    raise RuntimeError("no free worker port window found")


# ---- the served config ----------------------------------------------------------


TOP_LEVEL_KEYS = ("proxy_location", "http_options", "grpc_options", "logging_config")


def set_path(tree: dict, dotted: str, value) -> None:
    """Overrides: ``Deployment.key.sub=value`` (a deployment by name), ``app.key=value``
    (the application), or a top-level key such as ``logging_config.enable_access_log=false``."""
    name, *keys = dotted.split(".")
    app = tree["applications"][0]
    if name in TOP_LEVEL_KEYS:
        target, keys = tree, [name, *keys]
    elif name == "app":
        target = app
    else:
        target = next((d for d in app.setdefault("deployments", []) if d["name"] == name), None)
        if target is None:
            target = {"name": name}
            app["deployments"].append(target)
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value


def derive_config(base: Path, bundle: Path, port: int, overrides: dict[str, object] | None = None) -> dict:
    """``serve_config.yaml`` with the bundle, a loopback port and any overrides applied."""
    config = yaml.safe_load(base.read_text())
    config = copy.deepcopy(config)
    config.setdefault("http_options", {}).update({"host": "127.0.0.1", "port": port})
    app = config["applications"][0]
    app.setdefault("args", {})["bundle"] = str(Path(bundle).resolve())
    for dotted, value in (overrides or {}).items():
        set_path(config, dotted, value)
    return config


def scale_up_trigger(config: dict) -> tuple[int | None, float]:
    """The lowest concurrency that can make an autoscaled deployment add a replica (its
    ``target_ongoing_requests``), and the longest time its autoscaler takes to decide
    (look-back window plus upscale delay, with Ray's defaults where unset)."""
    from ray.serve.config import AutoscalingConfig

    triggers = []
    for dep in config["applications"][0].get("deployments", []):
        auto = dep.get("autoscaling_config")
        if auto and auto.get("max_replicas", 1) > auto.get("min_replicas", 1):
            full = AutoscalingConfig(**auto)
            triggers.append((full.target_ongoing_requests, full.look_back_period_s + full.upscale_delay_s))
    if not triggers:
        return None, 0.0
    return int(min(t for t, _ in triggers)), max(d for _, d in triggers)


def deployment_option(config: dict, name: str, *keys, default=None):
    for dep in config["applications"][0].get("deployments", []):
        if dep["name"] == name:
            value = dep
            for key in keys:
                if not isinstance(value, dict) or key not in value:
                    return default
                value = value[key]
            return value
    return default


# ---- processes ------------------------------------------------------------------


def role_of(cmdline: list[str], name: str) -> str:
    """What a process in the head's tree is, from its (Ray-set) process title."""
    title = " ".join(cmdline) if cmdline else name
    if title.startswith("ray::ServeReplica:"):
        return title.split()[0].split(":")[-1]
    if title.startswith("ray::ProxyActor"):
        return "Proxy"
    if title.startswith("ray::ServeController"):
        return "Controller"
    return "ray-system"


class ProcessSampler:
    """Peak RSS per process and CPU seconds per role, for the head's process tree."""

    def __init__(self, root_pid: int, interval_s: float = 0.5):
        self.root = psutil.Process(root_pid)
        self.interval_s = interval_s
        self.peak_rss: dict[int, int] = {}
        self.peak_gpu_mib: dict[int, float] = {}
        self.nvidia_smi = shutil.which("nvidia-smi")
        self._samples = 0
        self.roles: dict[int, str] = {}
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
        if self.roles.get(proc.pid, "ray-system") == "ray-system":
            with contextlib.suppress(psutil.Error):
                self.roles[proc.pid] = role_of(proc.cmdline(), proc.name())
        return self.roles.get(proc.pid, "ray-system")

    def sample(self) -> None:
        for proc in self._walk():
            with contextlib.suppress(psutil.Error):
                rss = proc.memory_info().rss
                self._role(proc)
                self.peak_rss[proc.pid] = max(rss, self.peak_rss.get(proc.pid, 0))
        self._samples += 1
        if self.nvidia_smi and self._samples % 4 == 1:  # nvidia-smi costs CPU: every 2 s is enough
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

    def replica_pids(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for proc in self._walk():
            role = self._role(proc)
            if role not in ("ray-system",):
                out.setdefault(role, []).append(proc.pid)
        return out

    def memory_report(self) -> dict:
        per_role: dict[str, list[float]] = {}
        for pid, peak in self.peak_rss.items():
            per_role.setdefault(self.roles.get(pid, "ray-system"), []).append(peak / 2**20)
        report = {
            role: {"processes": len(v), "peak_rss_mib_max": round(max(v), 1), "peak_rss_mib_sum": round(sum(v), 1)}
            for role, v in sorted(per_role.items())
        }
        for pid, mib in self.peak_gpu_mib.items():
            row = report.setdefault(self.roles.get(pid, "ray-system"), {})
            row["peak_gpu_mib_max"] = max(mib, row.get("peak_gpu_mib_max", 0.0))
        return report


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

        self._stop.set()
        self._thread.join(timeout=10)
        ray.shutdown()

    def mark(self, label: str) -> None:
        self.timeline.append({"t_s": round(time.perf_counter() - self._t0, 1), "phase": label})


@dataclass
class RayHead:
    """A private single-node Ray head on free ports, stopped by ``stop()``."""

    num_cpus: int
    num_gpus: int | None = None
    env: dict = field(default_factory=dict)
    log_dir: Path | None = None
    # Where `serve run` runs. Ray puts the driver's working directory first on every
    # worker's sys.path, so a modified copy of deployments/ is only picked up from here.
    code_dir: Path | None = None
    proc: subprocess.Popen | None = field(default=None, init=False)

    def start(self) -> "RayHead":
        self.temp_dir = Path(tempfile.mkdtemp(prefix="bench-ray-", dir="/tmp"))
        self.port = free_port()
        lo, hi = worker_port_window()
        ports = {
            "--port": self.port, "--node-manager-port": free_port(), "--object-manager-port": free_port(),
            "--ray-client-server-port": free_port(), "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(), "--metrics-export-port": free_port(),
            "--runtime-env-agent-port": free_port(), "--dashboard-port": free_port(),
            "--min-worker-port": lo, "--max-worker-port": hi,
        }
        cmd = [cli("ray"), "start", "--head", "--block", "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", str(self.temp_dir),
               "--num-cpus", str(self.num_cpus)]
        if self.num_gpus is not None:
            cmd += ["--num-gpus", str(self.num_gpus)]
        for flag, value in ports.items():
            cmd += [flag, str(value)]
        self.log_path = (self.log_dir or self.temp_dir) / "ray-start.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.child_env(),
                                     start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}; see {self.log_path}")
            if "Ray runtime started" in self.log_path.read_text(errors="replace"):
                return self
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"Ray head did not start in 120 s; see {self.log_path}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(
                f"the benchmark's Ray head died; see {self.log_path}. On a shared machine, another "
                "user's `ray stop` kills every Ray process, this one included."
            )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def child_env(self) -> dict:
        # Ray 2.60 turns token auth on for a local `ray start` head, but a client that
        # connects by address only sends the token (~/.ray/auth_token) in "token" mode.
        from deployments import ray_env

        env = ray_env.apply({**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
                             "TRANSFORMERS_OFFLINE": "1", "RAY_AUTH_MODE": "token", **self.env})
        env.pop("RAY_ADDRESS", None)
        return env

    def stop(self) -> list[int]:
        """Stop the head and everything under it; returns pids that had to be killed."""
        if self.proc is None:
            return []
        try:
            tree = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        _, alive = psutil.wait_procs(tree, timeout=15)
        killed = []
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
                killed.append(proc.pid)
        self._log.close()
        self.proc = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return killed


def serve_run(head: RayHead, config: dict, path: Path, timeout_s: float = 180) -> float:
    """Deploy ``config`` with ``serve run --non-blocking``; returns seconds until it was accepted."""
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    start = time.perf_counter()
    log_path = path.with_suffix(".serve-run.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([cli("serve"), "run", "--non-blocking", "--address", head.address,
                                 str(path.resolve())],
                                env=head.child_env(), stdout=log, stderr=subprocess.STDOUT,
                                cwd=head.code_dir or Path(__file__).resolve().parent.parent)
        while proc.poll() is None:
            if time.perf_counter() - start > timeout_s or not head.alive():
                proc.kill()
                proc.wait()
                break
            time.sleep(0.5)
    head.check_alive()
    if proc.returncode != 0:
        raise RuntimeError(f"serve run failed ({proc.returncode}); see {log_path}:\n"
                           + log_path.read_text(errors="replace")[-3000:])
    return time.perf_counter() - start


def wait_healthy(url: str, timeout_s: float, head: RayHead | None = None) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        if head is not None:
            head.check_alive()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return time.perf_counter() - start
        time.sleep(1.0)
    raise TimeoutError(f"{url}/healthz not healthy after {timeout_s:.0f} s")


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


# ---- load ---------------------------------------------------------------------------


async def closed_loop(url: str, requests: list[Request], concurrency: int, duration_s: float,
                      timeout_s: float) -> tuple[list[tuple], float]:
    """``concurrency`` clients, each sending its next request when the last one answers,
    until ``duration_s`` has passed; in-flight requests then finish (drain).

    Returns records (start_s, end_s, status, kind, index) relative to the start, and
    the moment the last request finished.
    """
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    records: list[tuple] = []
    async with httpx.AsyncClient(limits=limits, timeout=timeout_s) as client:
        t0 = time.perf_counter()
        stop_at = t0 + duration_s

        async def worker(w: int) -> None:
            k = w
            while time.perf_counter() < stop_at:
                request = requests[k % len(requests)]
                k += concurrency
                start = time.perf_counter()
                try:
                    resp = await client.post(f"{url}/v1/predict", **request.http_body())
                    status = resp.status_code
                except httpx.TimeoutException:
                    status = "client_timeout"
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                records.append((start - t0, time.perf_counter() - t0, status, request.kind, request.index))

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        return records, time.perf_counter() - t0


def summarize_level(records: list[tuple], duration_s: float, warmup_s: float,
                    weights: list[float] | None = None) -> dict:
    """Throughput over the steady window [warmup, duration]; latencies of requests
    started in it (drained ones included); status counts over all of them.

    ``weights`` (request index -> cost relative to the workload's mean) gives
    ``work_rps``: in a short window a closed loop completes cheap requests more often
    than the mix holds them, so plain requests/s flatters a heterogeneous mix.
    """
    window = max(duration_s - warmup_s, 1e-9)
    measured = [r for r in records if r[0] >= warmup_s]
    ok = [r for r in measured if r[2] == 200]
    in_window = [r for r in records if r[2] == 200 and warmup_s <= r[1] <= duration_s]
    done_in_window = len(in_window)
    statuses: dict[str, int] = {}
    for r in measured:
        statuses[str(r[2])] = statuses.get(str(r[2]), 0) + 1
    latencies = [r[1] - r[0] for r in ok]
    return {
        "throughput_rps": done_in_window / window,
        "work_rps": sum(weights[r[4]] for r in in_window) / window if weights else None,
        "requests": len(measured),
        "ok": len(ok),
        "errors": len(measured) - len(ok),
        "status_503": statuses.get("503", 0),
        "statuses": statuses,
        **summarize(latencies),
        "by_kind": by_kind(latencies, [r[3] for r in ok]),
    }


def stats_delta(before: dict, after: dict) -> dict:
    """Batch-size histograms formed during one level, per deployment (one replica each)."""
    out = {}
    for name, snap in after.items():
        prev = before.get(name, {})
        same = prev.get("pid") == snap.get("pid")
        hist = {k: v - (prev.get("histogram", {}).get(k, 0) if same else 0) for k, v in snap["histogram"].items()}
        hist = {k: v for k, v in hist.items() if v > 0}
        batches = sum(hist.values())
        items = sum(int(k) * v for k, v in hist.items())
        out[name] = {"pid": snap.get("pid"), "same_replica": same, "histogram": hist, "batches": batches,
                     "items": items, "mean_batch_size": round(items / batches, 2) if batches else 0.0}
    return out


def get_stats(url: str) -> dict:
    return httpx.get(f"{url}/v1/stats", timeout=30).json()


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
        self.head.check_alive()
        if self.poller is not None:
            self.poller.mark(label)
        before = get_stats(self.url)
        cpu_before = self.sampler.cpu_seconds()
        client_cpu_before = time.process_time()
        machine = MachineCPU()
        records, elapsed = asyncio.run(closed_loop(self.url, requests, concurrency, duration_s, timeout_s))
        self.head.check_alive()
        client_cpu = time.process_time() - client_cpu_before
        cpu_after = self.sampler.cpu_seconds()
        after = get_stats(self.url)
        cpu = {role: round(cpu_after.get(role, 0.0) - cpu_before.get(role, 0.0), 2) for role in cpu_after}
        total_cpu = sum(cpu.values())
        ok_all = [r for r in records if r[2] == 200]
        work_all = sum(weights[r[4]] for r in ok_all) if weights else None
        level = summarize_level(records, duration_s, warmup_s, weights)
        level.update({
            "concurrency": concurrency,
            "duration_s": duration_s,
            "elapsed_s": round(elapsed, 2),
            "cpu_s_by_role": cpu,
            "cpu_s": round(total_cpu, 2),
            "client_cpu_s": round(client_cpu, 2),
            "cores_used": round(total_cpu / elapsed, 2),
            "machine_busy_cores": machine.busy_cores(),
            "ok_per_cpu_s": round(len(ok_all) / total_cpu, 3) if total_cpu else None,
            "work_per_cpu_s": round(work_all / total_cpu, 3) if total_cpu and weights else None,
            "records": [(round(a, 3), round(b, 3), st, k, i) for a, b, st, k, i in records],
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
            "batches": stats_delta(before, after),
        })
        return level


def start_system(config: dict, workdir: Path, num_cpus: int, num_gpus: int | None, health_timeout_s: float,
                 env: dict | None = None, poll_status: bool = True, code_dir: Path | None = None) -> ServedSystem:
    head = start_head(num_cpus, num_gpus, env or {}, workdir, code_dir)
    try:
        config_path = workdir / "serve_config.bench.yaml"
        start = time.perf_counter()
        serve_run(head, config, config_path)
        url = f"http://127.0.0.1:{config['http_options']['port']}"
        wait_healthy(url, health_timeout_s, head)
        startup_s = time.perf_counter() - start
        sampler = ProcessSampler(head.proc.pid).start()
        poller = StatusPoller(head.address).start() if poll_status else None
        return ServedSystem(head, url, config, config_path, sampler, poller, startup_s)
    except BaseException:
        keep_serve_logs(head, workdir)
        head.stop()
        raise


def start_head(num_cpus: int, num_gpus: int | None, env: dict, workdir: Path, code_dir: Path | None = None,
               attempts: int = 3) -> RayHead:
    """A Ray head; on a loaded machine its startup sometimes times out, so it is retried."""
    for attempt in range(1, attempts + 1):
        head = RayHead(num_cpus=num_cpus, num_gpus=num_gpus, env=env, log_dir=workdir, code_dir=code_dir)
        try:
            return head.start()
        except (RuntimeError, TimeoutError):
            head.stop()
            if attempt == attempts:
                raise
            time.sleep(5)
    raise AssertionError("unreachable")


def keep_serve_logs(head: RayHead, workdir: Path) -> None:
    """Copy Serve's logs out of the temp dir (which stop() deletes), for diagnosis."""
    logs = head.temp_dir / "session_latest" / "logs" / "serve"
    if logs.is_dir():
        shutil.copytree(logs, workdir / "serve-logs", dirs_exist_ok=True)


def stop_system(system: ServedSystem, workdir: Path, keep_logs: bool = False) -> dict:
    system.sampler.sample()
    system.sampler.stop()
    if system.poller is not None:
        system.poller.stop()
    if keep_logs:
        keep_serve_logs(system.head, workdir)
    killed = system.head.stop()
    return {"killed_after_stop": killed}


# ---- profile ------------------------------------------------------------------------


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


def profile_level(system: ServedSystem, requests: list[Request], concurrency: int, seconds: int, out_dir: Path,
                  rate: int = 25, timeout_s: float = 60) -> dict:
    """Load at ``concurrency`` while py-spy samples one process of each role (non-blocking)."""
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


# ---- overhead at concurrency 1, paired ----------------------------------------------


def paired_overhead(url: str, requests: list[Request], local_predict, timeout_s: float,
                    thread_counts: list[int]) -> dict:
    """Each request once over HTTP, then at once in-process: paired under the same load.

    On a shared machine the CPU this process gets swings from minute to minute, so
    p50(HTTP) - p50(in-process) from separate phases measures the neighbours; the
    median of per-request differences measures the serving path. The in-process time
    is the faster of ``thread_counts`` (torch threads), so contention on a pool of
    several threads is not counted as serving overhead.
    """
    import torch

    threads_before = torch.get_num_threads()
    http, local, kinds, diffs = [], [], [], []
    per_threads: dict[int, list[float]] = {t: [] for t in thread_counts}
    try:
        with httpx.Client(timeout=timeout_s) as client:
            for request in requests:
                start = time.perf_counter()
                resp = client.post(f"{url}/v1/predict", **request.http_body())
                t_http = time.perf_counter() - start
                if resp.status_code != 200:
                    continue
                times = []
                for threads in thread_counts:
                    torch.set_num_threads(threads)
                    start = time.perf_counter()
                    local_predict(request)
                    times.append(time.perf_counter() - start)
                    per_threads[threads].append(times[-1])
                http.append(t_http)
                local.append(min(times))
                kinds.append(request.kind)
                diffs.append(t_http - min(times))
    finally:
        torch.set_num_threads(threads_before)
    return {
        "http": summarize(http), "in_process": summarize(local), "difference": summarize(diffs),
        "difference_by_kind": by_kind(diffs, kinds),
        "in_process_by_threads": {str(t): summarize(v) for t, v in per_threads.items()},
    }
