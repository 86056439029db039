#!/usr/bin/env bash
# Start a local Ray head bound to loopback (GCS, dashboard and Serve HTTP on 127.0.0.1
# only), run the Serve config in the foreground, and stop Ray on exit.
set -euo pipefail
CONFIG=${1:-serve_config.yaml}
BIN=$(dirname "$0")/../.venv/bin
export RAY_ADDRESS=127.0.0.1:${RAY_GCS_PORT:-6380}
"$BIN/ray" start --head --node-ip-address=127.0.0.1 --port="${RAY_GCS_PORT:-6380}" \
  --dashboard-host=127.0.0.1 --dashboard-port="${RAY_DASHBOARD_PORT:-8265}" \
  --num-cpus="${RAY_NUM_CPUS:-2}" --disable-usage-stats >/dev/null
trap '"$BIN/ray" stop >/dev/null 2>&1 || true' EXIT
echo "Serving on http://127.0.0.1:8000 (Ctrl-C to stop)"
"$BIN/serve" run "$CONFIG"
