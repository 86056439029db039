"""A private single-node Ray head (``ray start --head --block``) and ``serve run`` against it.

The head gets free ports and its own temp dir, so it neither collides with nor is
picked up by anyone else's ``ray.init()`` on this machine (the "current cluster" file
lives in that temp dir). Stopping the ``--block`` process stops every Ray process it
started; survivors are killed by pid. ``scripts/run.sh`` does the same for ``make run``
in shell, for a head on fixed ports.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

from harness.make_run import run_processes
from harness.ports import node_ports, port_flags, worker_port_window
from harness.processes import REPO, cli

START_TIMEOUT_S = 120


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
        # A short name: HAProxy refuses socket paths over 97 characters, and its admin and
        # metrics sockets live at <temp_dir>/haproxy/<56-character node id>/*.sock.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="br-", dir="/tmp"))
        from deployments import ray_env

        # This head's own HAProxy files, ports and upload folder (chosen once: every
        # process of the head must agree on them); the caller's env still wins.
        self.env = {**ray_env.run_env(self.temp_dir), **self.env}
        ports = node_ports(head=True)
        self.port = ports["--port"]
        lo, hi = worker_port_window()
        cmd = [cli("ray"), "start", "--head", "--block", "--include-dashboard=false", "--disable-usage-stats",
               "--temp-dir", str(self.temp_dir), "--num-cpus", str(self.num_cpus)]
        if self.num_gpus is not None:
            cmd += ["--num-gpus", str(self.num_gpus)]
        cmd += port_flags({**ports, "--min-worker-port": lo, "--max-worker-port": hi})
        self.log_path = (self.log_dir or self.temp_dir) / "ray-start.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.child_env(),
                                     start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}; see {self.log_path}")
            if "Ray runtime started" in self.log_path.read_text(errors="replace"):
                return self
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"Ray head did not start in {START_TIMEOUT_S} s; see {self.log_path}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(
                f"the private Ray head died; see {self.log_path}. On a shared machine, another "
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
        # HAProxy started by a config reload (-sf) may sit outside that tree and outlive the
        # head (it did after front-door runs); it names this head's temp dir in its command line.
        for pid in run_processes(str(self.temp_dir)):
            with contextlib.suppress(psutil.Error):
                alive.append(psutil.Process(pid))
        killed = []
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
                killed.append(proc.pid)
        self._log.close()
        self.proc = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return killed


def start_head(num_cpus: int, num_gpus: int | None = None, env: dict | None = None, log_dir: Path | None = None,
               code_dir: Path | None = None, attempts: int = 3) -> RayHead:
    """A started ``RayHead``; on a loaded machine its startup sometimes times out, so it is retried."""
    for attempt in range(1, attempts + 1):
        head = RayHead(num_cpus=num_cpus, num_gpus=num_gpus, env=env or {}, log_dir=log_dir, code_dir=code_dir)
        try:
            return head.start()
        except (RuntimeError, TimeoutError):
            head.stop()
            if attempt == attempts:
                raise
            time.sleep(5)
    raise AssertionError("unreachable")


def serve_run(head: RayHead, config: dict, path: Path, timeout_s: float = 180) -> float:
    """Write ``config`` to ``path`` and deploy it with ``serve run --non-blocking``;
    returns seconds until it was accepted."""
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    start = time.perf_counter()
    log_path = path.with_suffix(".serve-run.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([cli("serve"), "run", "--non-blocking", "--address", head.address,
                                 str(path.resolve())],
                                env=head.child_env(), stdout=log, stderr=subprocess.STDOUT,
                                cwd=head.code_dir or REPO)
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


def keep_serve_logs(head: RayHead, workdir: Path) -> None:
    """Copy Serve's logs out of the head's temp dir (which stop() deletes) to ``workdir/serve-logs``."""
    logs = head.temp_dir / "session_latest" / "logs" / "serve"
    if logs.is_dir():
        shutil.copytree(logs, workdir / "serve-logs", dirs_exist_ok=True)
