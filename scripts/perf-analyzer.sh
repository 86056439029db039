#!/usr/bin/env bash
# Installs Triton's load generator, perf_analyzer, as VENV/bin/perf_analyzer.
#
# Its PyPI wheel (perf-analyzer 2.60) is tagged manylinux_2_38, so pip refuses it on an
# older system (Debian 12 has glibc 2.36) and it would not run there anyway. This script
# downloads the wheel for that tag, unpacks its binary, and where the system's glibc is
# older than 2.38 also unpacks Debian 13's libc6, libstdc++6 and libgcc-s1 (with
# `apt-get download` and `dpkg -x`: nothing is installed into the system). The
# VENV/bin/perf_analyzer it writes runs the binary with that newer loader and those
# libraries first, the system's after.
set -euo pipefail
VENV=${1:?usage: perf-analyzer.sh VENV}
VERSION=2.60.0
DEST="$VENV/opt/perf-analyzer"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

"$VENV/bin/pip" download --quiet --no-deps --only-binary=:all: --platform manylinux_2_38_x86_64 \
  --dest "$WORK" "perf-analyzer==$VERSION"
rm -rf "$DEST" && mkdir -p "$DEST"
"$VENV/bin/python" - "$WORK"/perf_analyzer-*.whl "$DEST/perf_analyzer" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open("perf_analyzer/bin/perf_analyzer") as src, \
        open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
chmod +x "$DEST/perf_analyzer"

glibc=$(getconf GNU_LIBC_VERSION | awk '{print $2}')
if [ "$(printf '%s\n' 2.38 "$glibc" | sort -V | head -1)" = 2.38 ]; then
  printf '#!/bin/sh\nexec "%s" "$@"\n' "$(realpath "$DEST")/perf_analyzer" > "$VENV/bin/perf_analyzer"
else
  command -v apt-get >/dev/null && command -v dpkg >/dev/null || {
    echo "perf-analyzer: glibc $glibc < 2.38 and no apt-get/dpkg to fetch a newer one; skipped" >&2; exit 0; }
  apt="$WORK/apt"
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
    > "$apt/sources.list"
  opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o Debug::NoLocking=1
        -o APT::Sandbox::User=root)
  apt-get "${opts[@]}" -qq update
  (cd "$WORK" && apt-get "${opts[@]}" -qq download libc6 libstdc++6 libgcc-s1)
  for deb in "$WORK"/*.deb; do dpkg -x "$deb" "$WORK/root"; done
  mkdir -p "$DEST/glibc"
  cp -a "$WORK/root/usr/lib/x86_64-linux-gnu/." "$DEST/glibc/"
  lib=$(realpath "$DEST/glibc")
  printf '#!/bin/sh\n# glibc %s here; perf_analyzer %s needs 2.38: run it with Debian 13'"'"'s loader and libraries.\nexec "%s/ld-linux-x86-64.so.2" --library-path "%s:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu" "%s" "$@"\n' \
    "$glibc" "$VERSION" "$lib" "$lib" "$(realpath "$DEST")/perf_analyzer" > "$VENV/bin/perf_analyzer"
fi
chmod +x "$VENV/bin/perf_analyzer"
"$VENV/bin/perf_analyzer" --version >/dev/null
echo "perf-analyzer: $VENV/bin/perf_analyzer"
