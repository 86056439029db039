#!/usr/bin/env bash
# Installs the Debian packages the project needs, when they are missing:
#   espeak-ng  speech synthesis for the demo model (the espeakng-loader wheel is the fallback)
#   chromium   the real browser the UI tests drive
#   prometheus the metrics server tests/test_prometheus.py scrapes Ray with (cluster/prometheus.yml).
#              Where systemd runs, Debian's package also starts its own prometheus.service on
#              :9090; the tests start theirs on a free loopback port and need none
#              (`sudo systemctl disable --now prometheus` stops it).
set -euo pipefail
missing=()
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
command -v chromium >/dev/null || missing+=(chromium)
command -v prometheus >/dev/null || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "system-deps: apt-get not found; please install: ${missing[*]}" >&2
  exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "system-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
