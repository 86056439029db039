#!/usr/bin/env bash
# Start a local Ray head bound to loopback (dashboard and Serve HTTP on 127.0.0.1),
# run the Serve config in the foreground, and stop that Ray head on exit.
set -euo pipefail
CONFIG=${1:-serve_config.yaml}
BIN=$(cd "$(dirname "$0")/../.venv/bin" && pwd)
PORT=${RAY_GCS_PORT:-6380}

# Ray 2.60 turns token auth on for `ray start --head` when ~/.ray/auth_token exists,
# but clients connecting by address only send the token when RAY_AUTH_MODE=token.
# So: make sure a token exists and say "token" explicitly to both sides.
"$BIN/ray" get-auth-token --generate >/dev/null
export RAY_AUTH_MODE=token
export RAY_ADDRESS=127.0.0.1:$PORT
# Without this, Ray replaces --node-ip-address=127.0.0.1 with the machine's address
# and GCS, raylet and the dashboard agent listen on every interface.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
# Serve's faster request path (see deployments/ray_env.py); any value already set wins.
eval "$("$BIN/python" -m deployments.ray_env)"

TEMP_DIR=$(mktemp -d /tmp/ray-run.XXXXXX)
# Every process of this Ray head inherits this variable, whatever title it gives itself
# later (ray::DashboardAgent, ray::ServeReplica...): cleanup finds them all by it.
export SENTIMENT_RAY_RUN=$TEMP_DIR
"$BIN/ray" start --head --node-ip-address=127.0.0.1 --port="$PORT" \
  --dashboard-host=127.0.0.1 --dashboard-port="${RAY_DASHBOARD_PORT:-8265}" \
  --num-cpus="${RAY_NUM_CPUS:-2}" --temp-dir="$TEMP_DIR" --disable-usage-stats >/dev/null
# Stop only this head: `ray stop` would end every Ray on the machine.
ours() {  # pids whose environment carries this run's marker, except this script
  grep -lzF "SENTIMENT_RAY_RUN=$TEMP_DIR" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3 | grep -vx "$$" || true
}
cleanup() {
  trap - EXIT INT TERM
  kill -TERM $(ours) 2>/dev/null || true
  sleep 3
  kill -KILL $(ours) 2>/dev/null || true
  rm -rf "$TEMP_DIR"
}
trap cleanup EXIT INT TERM
echo "Serving on http://127.0.0.1:8000 (Ctrl-C to stop)"
"$BIN/serve" run "$CONFIG"
