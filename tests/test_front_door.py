"""The front door as `make run` builds it: scripts/run.sh with the shipped serve_config.yaml.

One run of the real script, on a Ray head of its own, checks what a new user gets:
HAProxy (not a Python proxy) answers on the HTTP port, the Driver runs the two
replicas the config asks for, both of them serve UI sessions through `gradio_client`,
and after SIGTERM to the script no process of that run (HAProxy included) is left
and the port is free again. Only the bundle (the tiny test bundle) and the ports differ
from the shipped config.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from harness import free_port, pids_with_env, wait_healthy
from harness.ports import worker_port_window
from tests.conftest import replica_log_lines

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 420


def listener_names(port: int) -> set[str]:
    """Executable names of the processes listening on ``port``. HAProxy reloads (a new
    process takes the socket over) whenever a Driver replica comes or goes, so a
    listener may exit while it is being looked at."""
    names = set()
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            try:
                names.add(Path(psutil.Process(conn.pid).exe()).name)
            except psutil.Error:
                pass
    return names


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def run_dir_processes(run_dir: str) -> list[int]:
    """Processes of that run: by the environment marker run.sh exports, or (HAProxy)
    by a command line naming the run's folder."""
    found = set(pids_with_env(f"SENTIMENT_RAY_RUN={run_dir}"))
    for proc in psutil.process_iter(["cmdline"]):
        if any(run_dir in part for part in proc.info["cmdline"] or []):
            found.add(proc.pid)
    return sorted(found - {os.getpid()})


def wait_for_driver_replicas(dashboard_port: str, config: dict, timeout_s: float = 180) -> None:
    """Until ``serve status`` shows the shipped config's minimum of Driver replicas, all RUNNING."""
    [driver] = [d for d in config["applications"][0]["deployments"] if d["name"] == "Driver"]
    wanted = driver.get("autoscaling_config", {}).get("min_replicas", driver.get("num_replicas", 1))
    serve = Path(sys.executable).parent / "serve"
    env = dict(os.environ, RAY_AUTH_MODE="token")  # run.sh starts Ray with token auth
    deadline, states = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        out = subprocess.run([str(serve), "status", "-a", f"http://127.0.0.1:{dashboard_port}"], env=env,
                             capture_output=True, text=True, timeout=60)
        if out.returncode == 0:
            app = (yaml.safe_load(out.stdout) or {}).get("applications", {}).get("sentiment", {})
            states = app.get("deployments", {}).get("Driver", {}).get("replica_states", {})
            if set(states) == {"RUNNING"} and states["RUNNING"] >= wanted:
                time.sleep(2)  # HAProxy's next reload has both
                return
        time.sleep(1)
    pytest.fail(f"Driver replicas never all RUNNING (wanted {wanted}): {states}")


@pytest.fixture(scope="module")
def make_run(tiny_bundle, tmp_path_factory):
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    config["applications"][0]["args"]["bundle"] = str(tiny_bundle)
    path = tmp_path_factory.mktemp("make-run") / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    lo, hi = worker_port_window()
    env = dict(os.environ, RAY_GCS_PORT=str(free_port()), RAY_DASHBOARD_PORT=str(free_port()),
               RAY_START_ARGS=f"--min-worker-port={lo} --max-worker-port={hi} --ray-client-server-port={free_port()}")
    env.pop("RAY_ADDRESS", None)
    log = open(path.with_suffix(".log"), "w")
    proc = subprocess.Popen([str(REPO / "scripts" / "run.sh"), str(path)], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    run_dir = None
    try:
        deadline = time.monotonic() + 60
        while run_dir is None and time.monotonic() < deadline and proc.poll() is None:
            found = re.search(r"Ray logs: (\S+)/session_latest/logs", path.with_suffix(".log").read_text())
            run_dir = found.group(1) if found else time.sleep(0.5)
        assert run_dir, path.with_suffix(".log").read_text()
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, START_TIMEOUT_S, check=lambda: proc.poll() is None or pytest.fail(
            "run.sh exited:\n" + path.with_suffix(".log").read_text()))
        # /healthz answers once one Driver replica is up. A UI session that starts before the
        # second joins can be moved by the cookie hash when it joins (a documented, one-off
        # failure), which is not what these tests are about: wait for the replicas first.
        wait_for_driver_replicas(env["RAY_DASHBOARD_PORT"], config)
        yield {"url": url, "port": port, "run_dir": run_dir, "proc": proc,
               "logs": Path(run_dir) / "session_latest" / "logs" / "serve"}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=90)
        log.close()


def test_the_ingress_is_haproxy_and_the_api_answers(make_run):
    assert listener_names(make_run["port"]) == {"haproxy"}, listener_names(make_run["port"])
    reply = httpx.post(make_run["url"] + "/v1/predict", json={"text": "a fine film"}, timeout=60)
    assert reply.status_code == 200, reply.text


def test_the_shipped_config_runs_two_driver_replicas_and_both_serve_ui_sessions(make_run):
    from gradio_client import Client

    def served() -> dict[str, int]:
        return replica_log_lines("sentiment", "Driver", "/gradio_api/queue/join", make_run["logs"])

    for _ in range(12):
        client = Client(make_run["url"] + "/", verbose=False)
        label = client.predict("what a great film", None, api_name="/predict")[0]
        assert label["label"] in {"negative", "positive"}, label
        if sum(1 for n in served().values() if n) == 2:
            break
    print(f"\n[make run] queue joins per Driver replica: {served()}")
    assert len(served()) == 2 and all(served().values()), served()


def test_stopping_make_run_stops_haproxy_and_every_ray_process(make_run):
    proc, run_dir, port = make_run["proc"], make_run["run_dir"], make_run["port"]
    assert run_dir_processes(run_dir), "nothing of the run was found while it ran: the check below would be vacuous"
    names = set()
    for pid in run_dir_processes(run_dir):
        try:
            names.add(Path(psutil.Process(pid).exe()).name)
        except psutil.Error:
            pass
    assert "haproxy" in names, names
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=90)
    left = [(pid, psutil.Process(pid).name()) for pid in run_dir_processes(run_dir) if psutil.pid_exists(pid)]
    assert left == [], left
    assert not port_in_use(port)
    assert not Path(run_dir).exists()
