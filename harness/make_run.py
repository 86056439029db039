"""``make run`` on free ports: ``scripts/run.sh`` with a copy of a Serve config, its own Ray head.

What ``make loadtest`` soaks and what the front-door tests check: the script a user runs
(Ray head with token auth and the dashboard, HAProxy, ``serve run``), with only the
bundle and the ports changed. Every process of one run carries ``SENTIMENT_RAY_RUN=<its
folder>`` in its environment (run.sh exports it), which is how ``processes()`` finds them.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

from harness.health import wait_healthy
from harness.ports import free_port, worker_port_window
from harness.processes import REPO, pids_with_env

START_TIMEOUT_S = 420


@dataclass
class MakeRun:
    """One ``scripts/run.sh`` run; ``start()`` returns once ``/healthz`` answers 200."""

    config: Path  # the Serve config to copy (serve_config.yaml)
    workdir: Path  # where the copy and run.sh's output go
    bundle: Path | None = None
    num_cpus: float | None = None
    env: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = field(default=None, init=False)
    run_dir: str | None = field(default=None, init=False)

    def start(self, timeout_s: float = START_TIMEOUT_S) -> "MakeRun":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.app_config = yaml.safe_load(self.config.read_text())
        self.port = free_port()
        self.app_config["http_options"]["port"] = self.port
        if self.bundle is not None:
            self.app_config["applications"][0]["args"]["bundle"] = str(Path(self.bundle).resolve())
        path = self.workdir / "serve_config.yaml"
        path.write_text(yaml.safe_dump(self.app_config))
        lo, hi = worker_port_window()
        self.dashboard_port = free_port()
        env = dict(os.environ, RAY_GCS_PORT=str(free_port()), RAY_DASHBOARD_PORT=str(self.dashboard_port),
                   RAY_METRICS_PORT=str(free_port()),
                   RAY_START_ARGS=f"--min-worker-port={lo} --max-worker-port={hi} --ray-client-server-port={free_port()}",
                   **({"RAY_NUM_CPUS": f"{self.num_cpus:g}"} if self.num_cpus else {}), **self.env)
        env.pop("RAY_ADDRESS", None)
        self.log_path = self.workdir / "run.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([str(REPO / "scripts" / "run.sh"), str(path)], cwd=REPO, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while self.run_dir is None:
                found = re.search(r"Ray logs: (\S+)/session_latest/logs", self.log_path.read_text())
                if found:
                    self.run_dir = found.group(1)
                elif self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"run.sh did not start Ray:\n{self.output()}")
                else:
                    time.sleep(0.5)
            wait_healthy(self.url, timeout_s, check=self._check_running)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def serve_logs(self) -> Path:
        return Path(self.run_dir) / "session_latest" / "logs" / "serve"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _check_running(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"run.sh exited with {self.proc.returncode}:\n{self.output()}")

    def processes(self) -> list[int]:
        return run_processes(self.run_dir)

    def stop(self, timeout_s: float = 90) -> int | None:
        """SIGTERM to the script's process group, as Ctrl-C in a terminal; returns its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=timeout_s)
        self._log.close()
        return self.proc.returncode


def run_processes(run_dir: str) -> list[int]:
    """The processes of the run in ``run_dir``: by the environment marker, or (HAProxy, whose
    environment Ray does not set) by a command line naming the run's folder."""
    found = set(pids_with_env(f"SENTIMENT_RAY_RUN={run_dir}"))
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(run_dir in part for part in proc.info["cmdline"] or []):
                found.add(proc.pid)
    return sorted(found - {os.getpid()})
