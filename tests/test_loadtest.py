"""``make loadtest`` end to end, shortened: serve_config.yaml's app on a private Ray, driven by real Locust."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import repo_pythonpath

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_loadtest_drives_the_shipped_config_and_writes_its_report(tiny_bundle, tmp_path):
    out = tmp_path / "loadtest"
    command = [sys.executable, "-m", "loadtest.run", "--bundle", str(tiny_bundle), "--users", "4",
               "--spawn-rate", "4", "--duration", "8s", "--num-cpus", "4", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": repo_pythonpath()}
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    print(f"\n[loadtest] {summary['requests']} requests, statuses {summary['status_histogram']}, "
          f"healthz after {summary['healthz_after_s']} s")
    # Real traffic was answered, and nothing but 200 or a back-pressure 503 (what run.py's exit code checks).
    assert summary["status_histogram"].get("200", 0) > 0, summary
    assert set(summary["status_histogram"]) <= {"200", "503"}, summary
    assert summary["users"] == 4 and summary["windows_10s"] and summary["windows_10s"][0]["requests"] > 0
    # Every deployment of serve_config.yaml ran and was sampled.
    assert {"Driver", "TextEncoder", "AudioEncoder", "FusionHead"} <= set(summary["memory_mib"]), summary
    with (out / "locust_stats.csv").open() as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    # Locust's own statistics agree: requests were made, none failed (the locustfile fails anything but 200/503).
    assert int(rows["Aggregated"]["Request Count"]) > 0 and rows["Aggregated"]["Failure Count"] == "0", rows
    assert (out / "summary.md").read_text().startswith("# Soak test: 4 users for 8s")
