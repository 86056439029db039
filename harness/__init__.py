"""Process plumbing shared by benchmarks, loadtest and tests: free ports, health waits,
a private Ray head with ``serve run``, ``make run`` on free ports, a wait on a run's Serve status
(``harness.serve_status``), and process roles and CPU/memory samplers.

Nothing here imports Ray at module level, so importing ``harness`` is cheap.
"""

from harness.health import wait_healthy
from harness.make_run import MakeRun, run_processes
from harness.ports import free_port, node_ports, port_flags, worker_port_window
from harness.processes import (
    RAY_SYSTEM,
    MachineCPU,
    ProcessSampler,
    cli,
    pids_with_env,
    repo_pythonpath,
    role_of,
)
from harness.ray_head import RayHead, keep_serve_logs, serve_run, start_head

__all__ = [
    "RAY_SYSTEM", "MachineCPU", "MakeRun", "ProcessSampler", "RayHead", "cli", "free_port", "keep_serve_logs", "node_ports",
    "pids_with_env", "port_flags", "repo_pythonpath", "role_of", "run_processes", "serve_run", "start_head", "wait_healthy",
    "worker_port_window",
]
