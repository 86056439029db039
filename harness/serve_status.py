"""Wait, in one process, until a Serve app runs a deployment's replicas: what polling
``serve status`` does, without a new process per poll.

Each ``serve status`` is a new Python process importing Ray; a test that polls it every
second for a minute spends more CPU on polling than on what it waits for (measured in
docs/operations.md, "Test suite"). This asks the same dashboard endpoint through the same
client (``ServeSubmissionClient.get_serve_details``, which ``serve status`` calls) from one
process, with the same token auth. That process is not the caller: Ray takes token auth
from ``RAY_AUTH_MODE`` in the environment, and a test process also talks to its own Ray
started without it.

    python -m harness.serve_status --address http://127.0.0.1:8265 --app sentiment \
        --deployment Driver --replicas 2 --timeout 180

Exits 0 once the app is RUNNING and the deployment has at least ``--replicas`` replicas,
all RUNNING (none starting, none stopping); 1 at the timeout. Either way its last line is
the deployment's replica states as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def replica_states(details: dict, app: str, deployment: str) -> tuple[str | None, dict[str, int]]:
    """The app's status and the deployment's replica count per state, from the dashboard's
    ``/api/serve/applications/`` reply."""
    application = details.get("applications", {}).get(app)
    if application is None:
        return None, {}
    states: dict[str, int] = {}
    for replica in application.get("deployments", {}).get(deployment, {}).get("replicas", []):
        states[replica["state"]] = states.get(replica["state"], 0) + 1
    return application.get("status"), states


def settled(status: str | None, states: dict[str, int], wanted: int) -> bool:
    return status == "RUNNING" and set(states) == {"RUNNING"} and states["RUNNING"] >= wanted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", required=True, help="the dashboard's URL")
    parser.add_argument("--app", required=True)
    parser.add_argument("--deployment", required=True)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args(argv)

    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    client = ServeSubmissionClient(args.address)
    deadline = time.monotonic() + args.timeout
    status, states = None, {}
    while time.monotonic() < deadline:
        try:
            status, states = replica_states(client.get_serve_details(), args.app, args.deployment)
        except Exception as error:  # the dashboard not up yet, or restarting
            status, states = f"unreachable: {error}", {}
        if settled(status, states, args.replicas):
            print(json.dumps(states))
            return 0
        time.sleep(0.5)
    print(json.dumps({"status": status, "replicas": states}))
    return 1


def wait_for_replicas(dashboard_port: int | str, app: str, deployment: str, replicas: int,
                      timeout_s: float = 180.0) -> tuple[bool, str]:
    """Run this module against a token-auth run's dashboard; (settled, its last line)."""
    from harness.processes import REPO, repo_pythonpath

    proc = subprocess.run(
        [sys.executable, "-m", "harness.serve_status", "--address", f"http://127.0.0.1:{dashboard_port}",
         "--app", app, "--deployment", deployment, "--replicas", str(replicas), "--timeout", str(timeout_s)],
        cwd=REPO, env=dict(os.environ, RAY_AUTH_MODE="token", PYTHONPATH=repo_pythonpath()),
        capture_output=True, text=True, timeout=timeout_s + 60)
    last = (proc.stdout.strip().splitlines() or [proc.stderr[-2000:]])[-1]
    return proc.returncode == 0, last


if __name__ == "__main__":
    sys.exit(main())
