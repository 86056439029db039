#!/usr/bin/env bash
# Start a local Ray head bound to loopback (dashboard and Serve HTTP on 127.0.0.1),
# run the Serve config in the foreground, and stop that Ray head on exit.
# Environment: RAY_GCS_PORT (6380), RAY_DASHBOARD_PORT (8265), RAY_METRICS_PORT (8080),
# RAY_NUM_CPUS (2), and RAY_START_ARGS for any other `ray start` flags (e.g. "--num-gpus=1").
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
TEMP_DIR=$(mktemp -d /tmp/ray-run.XXXXXX)
# HAProxy ingress, Serve's faster request path, and this run's own HAProxy files, ports
# and Gradio upload folder under TEMP_DIR (see deployments/ray_env.py); any value
# already set wins (RAY_SERVE_ENABLE_HA_PROXY=0 serves through Serve's Python proxy).
eval "$("$BIN/python" -m deployments.ray_env "$TEMP_DIR")"
# Every process of this Ray head inherits this variable, whatever title it gives itself
# later (ray::DashboardAgent, ray::ServeReplica...): cleanup finds them all by it.
export SENTIMENT_RAY_RUN=$TEMP_DIR
# Prometheus text for Ray's, Serve's and this app's metrics (deployments/metrics.py). Ray's
# metrics agent binds it to 127.0.0.1 because the node's address is loopback; a node with
# a routable address (the KubeRay pods) exports on all interfaces.
METRICS_PORT=${RAY_METRICS_PORT:-8080}
# Stop only this head: `ray stop` would end every Ray on the machine.
ours() {  # pids whose environment carries this run's marker, except this script; Ray's agents
  # retitle themselves over their environment, so they are found by their open files in TEMP_DIR
  # (left running, the dashboard agent would keep the metrics port)
  { grep -lzF "SENTIMENT_RAY_RUN=$TEMP_DIR" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3
    find /proc/[0-9]*/fd -lname "$TEMP_DIR/*" 2>/dev/null | cut -d/ -f3; } | sort -u | grep -vx "$$" || true
}
haproxies() {  # this run's HAProxy processes, current and replaced ones, by their config path
  # "[h]aproxy": a pattern that does not match grep's own command line, which holds it
  grep -lz -- "$TEMP_DIR/[h]aproxy/" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3 || true
}
cleanup() {
  trap - EXIT INT TERM
  # The commands ours() runs (grep, find, cut) would carry the marker and find themselves.
  export -n SENTIMENT_RAY_RUN
  # HAProxy is a child of Serve's HAProxyManager actor, which stops it only on a graceful
  # Serve shutdown; when that actor dies first, HAProxy lives on and keeps the port. So:
  # Serve's own shutdown first, then every process of this run, HAProxy included.
  timeout 20 "$BIN/serve" shutdown -a "http://127.0.0.1:${RAY_DASHBOARD_PORT:-8265}" -y >/dev/null 2>&1 || true
  # Serve's shutdown leaves HAProxy to finish on its own, which can take seconds; SIGTERM
  # below is HAProxy's hard stop, and nothing is served any more.
  for _ in $(seq 4); do [ -z "$(haproxies)" ] && break; sleep 0.5; done
  kill -TERM $(ours) $(haproxies) 2>/dev/null || true
  for _ in $(seq 6); do [ -z "$(ours)$(haproxies)" ] && break; sleep 0.5; done
  kill -KILL $(ours) $(haproxies) 2>/dev/null || true
  # A killed process lives on until the kernel has torn it down (a GCS server was seen
  # alive after its SIGKILL on a loaded machine): exit only once this run is gone, so the
  # ports are free for the next start.
  for _ in $(seq 40); do [ -z "$(ours)$(haproxies)" ] && break; sleep 0.25; done
  rm -rf "$TEMP_DIR"
}
# Before `ray start`: a start that times out on a loaded machine leaves a GCS running
# (seen in a test run), and the exit it causes must clean that up too.
trap cleanup EXIT INT TERM
"$BIN/ray" start --head --node-ip-address=127.0.0.1 --port="$PORT" \
  --dashboard-host=127.0.0.1 --dashboard-port="${RAY_DASHBOARD_PORT:-8265}" \
  --metrics-export-port="$METRICS_PORT" \
  --num-cpus="${RAY_NUM_CPUS:-2}" --temp-dir="$TEMP_DIR" --disable-usage-stats ${RAY_START_ARGS:-} >/dev/null
echo "Ray logs: $TEMP_DIR/session_latest/logs (removed on exit)"
echo "Metrics: http://127.0.0.1:$METRICS_PORT/metrics (Prometheus: cluster/prometheus.yml)"
echo "Serving on http://127.0.0.1:8000 (Ctrl-C to stop)"
"$BIN/serve" run "$CONFIG"
