"""Two real Ray nodes on one machine: the encoders live on the second node, which dies and returns.

What runs (all real, nothing simulated):

* ``ray start --head --block`` and ``ray start --address ... --block``, each in its own
  process group, its own ``--temp-dir`` and its own ports, so they never touch another
  engineer's Ray on this machine, and ``ray.init()`` elsewhere never finds them (the
  address file lives in our temp dir, not ``/tmp/ray``). Token auth is on, with a token
  generated for this test and passed through the environment only.
* A child Python process (this file, run as a script) that connects with
  ``ray.init(address=...)``, deploys ``deployments.app.build_app`` with the tiny bundle
  (encoders pinned to the second node by the custom resource ``encoder_node``, the rest
  to the head by ``head_node``), and then writes Serve's status every half second.
* This process sends real HTTP traffic, SIGKILLs the second node's process group (a
  crash, not a drain), measures failures, starts the node again and measures recovery.

The pytest process itself never calls ``ray.init``, so conftest's session cluster, if
any, is neither used nor disturbed. Cleanup signals only what this test started: each
node's process group, then any Ray worker (workers leave their node's group) whose
environment carries this test's token (``harness.pids_with_env``). Every phase has a
deadline; a node whose startup misses Ray's own fixed deadlines on a loaded machine is
started again (up to 3 tries).

Run alone with ``pytest tests/test_multinode.py -s`` to see the figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Deadlines for each phase (seconds). Generous for a busy 2-core machine; the whole
# test is additionally bounded by the pytest timeout below.
START_S = 90
DEPLOY_S = 240
DETECT_S = 90
RECOVER_S = 180
TOTAL_S = 600


# ---- the child: connect, deploy, report Serve's status ---------------------------


def child_main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--timeline", required=True)
    args = parser.parse_args(argv)

    import ray
    from ray import serve

    sys.path.insert(0, str(REPO))
    from deployments.app import build_app

    ray.init(address=args.address, log_to_driver=False)
    deadline = time.monotonic() + START_S
    while sum(n["Alive"] for n in ray.nodes()) < 2:
        if time.monotonic() > deadline:
            raise SystemExit("the second node never joined")
        time.sleep(0.5)

    # HeadOnly: a proxy on the second node would want the same port on this machine.
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": args.http_port})
    on_head = {"num_cpus": 0.1, "resources": {"head_node": 0.1}}
    on_encoder_node = {"num_cpus": 0.1, "resources": {"encoder_node": 1}}
    app = build_app({
        "bundle": args.bundle,
        # Short timeout: during the outage requests fail in seconds, not half a minute.
        "settings": {"ui": False, "request_timeout_s": 5, "retries": 1},
        "deployments": {
            "Driver": {"ray_actor_options": on_head},
            "FusionHead": {"ray_actor_options": on_head},
            "TextEncoder": {"ray_actor_options": on_encoder_node},
            "AudioEncoder": {"ray_actor_options": on_encoder_node},
        },
    })
    serve.run(app, name="sentiment", route_prefix="/")
    print("DEPLOYED", flush=True)

    with open(args.timeline, "a", buffering=1) as out:
        while True:
            record = {"t": time.time()}
            try:
                record["nodes_alive"] = sum(n["Alive"] for n in ray.nodes())
                status = serve.status().applications["sentiment"]
                record["app"] = str(status.status.value if hasattr(status.status, "value") else status.status)
                record["deployments"] = {
                    name: {
                        "status": str(getattr(d.status, "value", d.status)),
                        "replicas": {str(getattr(k, "value", k)): v for k, v in d.replica_states.items()},
                        "message": d.message[:200],
                    }
                    for name, d in status.deployments.items()
                }
            except Exception as exc:  # the status call itself can fail mid-transition
                record["error"] = repr(exc)[:200]
            out.write(json.dumps(record) + "\n")
            time.sleep(0.5)


if __name__ == "__main__":
    child_main(sys.argv[1:])
    raise SystemExit(0)


# ---- the test -------------------------------------------------------------------

import httpx  # noqa: E402
import pytest  # noqa: E402

from deployments import ray_env  # noqa: E402
from harness import free_port, node_ports, pids_with_env, port_flags, repo_pythonpath, role_of  # noqa: E402


def _die_with_parent() -> None:
    # If pytest itself is killed, `ray start --block` gets SIGTERM and stops its node.
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class RayNode:
    """One ``ray start --block`` in its own process group; stop() signals only that group."""

    def __init__(self, name: str, args: list[str], env: dict, log_dir: Path):
        self.name = name
        self.log = log_dir / f"{name}.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", *args],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.pgid = self.proc.pid  # start_new_session: the leader's pid is the group id

    def wait_started(self, timeout_s: float = START_S) -> None:
        """Until ``ray start`` says so; it gives up by itself if its raylet is not registered in 30 s."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if "Ray runtime started" in self.log.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start ({self.name}) exited with {self.proc.returncode}")
            time.sleep(0.5)
        raise TimeoutError(f"ray start ({self.name}) did not finish in {timeout_s} s")

    def group_alive(self) -> list[int]:
        """The group's live processes. A zombie has exited: ``ray start`` itself stays one
        until this process reaps it, and counting it made every stop() wait its whole grace."""
        self.proc.poll()  # reap the leader once it has exited
        alive = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    # /proc/<pid>/stat: "pid (comm) state ppid pgrp ..."; comm may hold spaces.
                    state, _ppid, pgrp = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
                except OSError:
                    continue
                if int(pgrp) == self.pgid and state != "Z":
                    alive.append(int(entry.name))
        return alive

    def kill(self, sig=signal.SIGKILL) -> None:
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            pass

    def stop(self, grace_s: float = 10.0) -> None:
        self.kill(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while self.group_alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.kill(signal.SIGKILL)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


class Timeline:
    """Reads the child's status lines."""

    def __init__(self, path: Path):
        self.path = path
        self.child: subprocess.Popen | None = None  # fail fast when the reporter dies

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        lines = self.path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip().endswith("}")]

    def wait_for(self, predicate, after: float, timeout_s: float, what: str) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.child is not None and self.child.poll() is not None:
                raise AssertionError(f"the status reporter exited ({self.child.returncode}) while waiting for {what}")
            for record in self.records():
                if record["t"] >= after and "deployments" in record and predicate(record):
                    return record
            time.sleep(0.5)
        last = (self.records() or [{}])[-1]
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last status: {last}")


ENCODERS = ("TextEncoder", "AudioEncoder")


def encoders_unhealthy(record: dict) -> bool:
    return any(record["deployments"][name]["status"] != "HEALTHY" for name in ENCODERS)


def all_healthy(record: dict) -> bool:
    return record.get("app") == "RUNNING" and all(
        d["status"] == "HEALTHY" and set(d["replicas"]) == {"RUNNING"} for d in record["deployments"].values()
    )


class Traffic(threading.Thread):
    """Sends text, audio and text+audio requests in a loop and records every outcome."""

    def __init__(self, url: str, wav_b64: str, period_s: float = 0.25):
        super().__init__(daemon=True)
        self.url, self.period_s = url, period_s
        self.bodies = [{"text": "a fine day"}, {"audio": wav_b64}, {"text": "not good", "audio": wav_b64}]
        self.results: list[tuple[float, float, int | str]] = []  # (start, latency, status or error)
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=15) as client:
            i = 0
            while not self.halt.is_set():
                start = time.time()
                try:
                    outcome = client.post(f"{self.url}/v1/predict", json=self.bodies[i % 3]).status_code
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                self.results.append((start, time.time() - start, outcome))
                i += 1
                self.halt.wait(self.period_s)

    def between(self, t0: float, t1: float) -> list:
        return [r for r in self.results if t0 <= r[0] < t1]


def encoder_pids(url: str) -> dict:
    stats = httpx.get(f"{url}/v1/stats", timeout=20).json()
    return {name: stats[name]["pid"] for name in ENCODERS}


def summarize(results: list) -> dict:
    failures: dict[str, int] = {}
    for _, _, outcome in results:
        if outcome != 200:
            failures[str(outcome)] = failures.get(str(outcome), 0) + 1
    return {"sent": len(results), "ok": sum(1 for r in results if r[2] == 200), "failures": failures}


# Destructive: it kills a node, and its startup misses Ray's fixed 30 s raylet deadline when the
# main phase's other worker loads the two cores (three heads in a row were seen to fail that way).
@pytest.mark.slow
@pytest.mark.destructive
@pytest.mark.timeout(TOTAL_S)
def test_encoder_node_outage_and_recovery(tiny_bundle, wav_bytes):
    import base64

    # Short path: Ray puts unix sockets under the temp dir (108-byte limit).
    root = Path(tempfile.mkdtemp(prefix="mn-", dir="/tmp"))
    token = secrets.token_hex(16)
    marker = f"RAY_AUTH_TOKEN={token}"  # in the environment of every process this test starts
    env = ray_env.apply(dict(
        os.environ,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        # Stop at once on SIGTERM during cleanup instead of draining for 30 s.
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
        RAY_USAGE_STATS_ENABLED="0",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONPATH=repo_pythonpath(),
    ), run_dir=root)  # the same Serve request path and HAProxy ingress as `make run`
    env.pop("RAY_ADDRESS", None)
    gcs_port, http_port = free_port(), free_port()
    address = f"127.0.0.1:{gcs_port}"
    url = f"http://127.0.0.1:{http_port}"
    timeline = Timeline(root / "timeline.jsonl")
    nodes: list[RayNode] = []
    child = None
    traffic = None
    failed = False

    def start_node(tag: str, args: list[str], attempts: int = 3) -> RayNode:
        # On a loaded machine a raylet can miss Ray's own fixed startup deadlines (30 s to
        # register, ~15 s for its agents); ray start then exits and we try once more.
        for attempt in range(1, attempts + 1):
            # Every port a node opens is chosen here: Ray's fixed defaults would collide with
            # other clusters on this machine (the head's GCS, client and dashboard ports are in ``args``).
            node = RayNode(f"{tag}-{attempt}", [*args, f"--temp-dir={root / f'{tag}-{attempt}'}",
                                                *port_flags(node_ports()), "--disable-usage-stats"], env, root)
            nodes.append(node)
            try:
                node.wait_started()
                return node
            except RuntimeError:
                node.stop()
                if attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    def start_encoder_node(tag: str) -> RayNode:
        return start_node(tag, [f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                                '--resources={"encoder_node": 2}', "--object-store-memory=100000000"])

    try:
        start_node("head", [
            "--head", f"--port={gcs_port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
            '--resources={"head_node": 1}', "--object-store-memory=200000000",
            "--include-dashboard=false", f"--dashboard-port={free_port()}", f"--ray-client-server-port={free_port()}",
        ])
        worker = start_encoder_node("encoders-1")

        t_start = time.time()
        child = subprocess.Popen(
            [sys.executable, __file__, "--address", address, "--bundle", str(tiny_bundle),
             "--http-port", str(http_port), "--timeline", str(timeline.path)],
            env=env, cwd=REPO, stdout=open(root / "child.log", "wb"), stderr=subprocess.STDOUT,
        )
        timeline.child = child
        timeline.wait_for(all_healthy, t_start, DEPLOY_S, "the app to deploy on two nodes")
        deploy_s = time.time() - t_start

        wav_b64 = base64.b64encode(wav_bytes).decode()
        for body in ({"text": "warm up"}, {"audio": wav_b64}, {"text": "both", "audio": wav_b64}):
            assert httpx.post(f"{url}/v1/predict", json=body, timeout=60).status_code == 200
        pids_before = encoder_pids(url)

        traffic = Traffic(url, wav_b64)
        traffic.start()
        time.sleep(2)

        # ---- outage: the encoder node crashes ------------------------------------
        t_kill = time.time()
        worker.kill(signal.SIGKILL)
        unhealthy = timeline.wait_for(encoders_unhealthy, t_kill, DETECT_S, "Serve to report the encoders unhealthy")
        detect_s = unhealthy["t"] - t_kill
        time.sleep(2)  # a few more seconds of traffic against the degraded app

        # ---- the node returns (new process, new ports, same resources) ------------
        t_back = time.time()
        start_encoder_node("encoders-2")
        healthy = timeline.wait_for(all_healthy, t_back, RECOVER_S, "Serve to reschedule the encoders")
        recover_s = healthy["t"] - t_back
        time.sleep(3)
        traffic.halt.set()
        traffic.join(timeout=30)

        outage = summarize(traffic.between(t_kill, healthy["t"]))
        before = summarize(traffic.between(0, t_kill))
        after = summarize(traffic.between(healthy["t"] + 1, float("inf")))
        ok_after_back = [r[0] for r in traffic.results if r[0] >= t_back and r[2] == 200]
        first_ok_s = (ok_after_back[0] - t_back) if ok_after_back else None
        # Successes right after the kill: requests already inside the dying replicas, or
        # served before Serve learned that the node was gone.
        ok_early = [round(r[0] - t_kill, 1) for r in traffic.between(t_kill, t_back) if r[2] == 200]
        failed_at = [round(r[0] - t_kill, 1) for r in traffic.between(t_kill, healthy["t"]) if r[2] != 200]
        pids_after = encoder_pids(url)
        report = {
            "deploy_s": round(deploy_s, 1),
            "detect_unhealthy_s": round(detect_s, 1),
            "unhealthy_status": {n: unhealthy["deployments"][n] for n in ENCODERS},
            "recover_s": round(recover_s, 1),
            "first_success_after_restart_s": None if first_ok_s is None else round(first_ok_s, 1),
            "outage_window_s": round(healthy["t"] - t_kill, 1),
            "ok_after_kill_at_s": ok_early,
            "first_failure_after_kill_s": failed_at[0] if failed_at else None,
            "before": before, "outage": outage, "after": after,
            "encoder_pids_before": pids_before, "encoder_pids_after": pids_after,
        }
        print("\nMULTINODE " + json.dumps(report, indent=1))

        assert before["sent"] > 0 and before["ok"] == before["sent"], before
        # The outage is real and measured: requests that needed the dead node failed.
        assert outage["ok"] < outage["sent"], outage
        assert after["sent"] > 0 and after["ok"] == after["sent"], after
        # Rescheduled: new replica processes answer after recovery.
        assert all(pids_after[n] != pids_before[n] for n in ENCODERS), (pids_before, pids_after)
    except BaseException:
        failed = True
        for log in sorted(root.glob("*.log")):
            print(f"---- {log.name} (tail) ----\n{log.read_text(errors='replace')[-2500:]}")
        for log in sorted(root.glob("*/session_latest/logs/serve/*.log")):
            errors = [line for line in log.read_text(errors="replace").splitlines() if "ERROR" in line]
            if errors:
                print(f"---- {log.name} (errors) ----\n" + "\n".join(errors[-10:])[-3000:])
        raise
    finally:
        if traffic is not None:
            traffic.halt.set()
        if child is not None:
            child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
        for node in reversed(nodes):
            node.stop()
        leftovers = {node.name: node.group_alive() for node in nodes if node.group_alive()}
        # Serve's HAProxy outlives its node: only a graceful Serve shutdown stops it (as in
        # scripts/run.sh), and it would hold this cleanup for the whole wait below. SIGTERM
        # is its hard stop.
        for pid in pids_with_env(marker):
            with contextlib.suppress(OSError):
                if role_of([os.readlink(f"/proc/{pid}/exe")]) == "HAProxy":
                    os.kill(pid, signal.SIGTERM)
        # Workers run in process groups of their own and exit when their raylet is gone;
        # give them a moment, then kill any that did not.
        deadline = time.monotonic() + 15
        while pids_with_env(marker) and time.monotonic() < deadline:
            time.sleep(0.5)
        strays = pids_with_env(marker)
        for pid in strays:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if strays:
            print(f"killed {len(strays)} worker(s) that outlived their node: {strays}")
            time.sleep(2)
            if pids_with_env(marker):
                leftovers["survived SIGKILL"] = pids_with_env(marker)
        if failed and os.environ.get("MULTINODE_KEEP_LOGS"):
            print(f"logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
        if leftovers:
            print(f"processes survived cleanup: {leftovers}")
    # Outside the finally: an assert there would replace the test's own failure with this one.
    assert not leftovers, f"processes survived cleanup: {leftovers}"
