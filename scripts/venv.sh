#!/usr/bin/env bash
# Creates VENV and installs the project into it (editable, with EXTRAS), as pip would,
# but with uv doing the install.
#
# Why uv: the venv is several GB of wheels (torch and its CUDA libraries), which pip
# unpacks one at a time and uv in parallel (timings: docs/operations.md, "Development").
# Why the translation below: uv reads neither pip.conf nor PIP_* variables, and a
# machine's pip may be pointed at local wheel indexes (on the 2-core test machines, torch
# and the nvidia-* wheels lie in one). Given the same indexes and constraints, uv
# resolves the same pinned versions; without them it would download torch from PyPI.
# The venv keeps pip, for users and for scripts/perf-analyzer.sh.
set -euo pipefail
VENV=${1:?usage: venv.sh VENV EXTRAS}
EXTRAS=${2:-}
PYTHON=${PYTHON:-python3}
UV_VERSION=0.11.33

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip "uv==$UV_VERSION"

args=()
pip_setting() {  # the value pip would use for one setting: PIP_<NAME> first, then its config files
  local env="PIP_$(echo "$1" | tr 'a-z-' 'A-Z_')"
  if [ -n "${!env:-}" ]; then echo "${!env}"; else "$VENV/bin/pip" config get "global.$1" 2>/dev/null || true; fi
}
for url in $(pip_setting index-url); do args+=(--index-url "$url"); done
for url in $(pip_setting extra-index-url); do args+=(--extra-index-url "$url"); done
for dir in $(pip_setting find-links); do args+=(--find-links "$dir"); done
for file in $(pip_setting constraint); do args+=(--constraint "$file"); done

# unsafe-best-match: pip's rule (the best version across all indexes), not uv's default
# (the first index that has the package at all). No --compile-bytecode: it is most of the
# install's time, so the Makefile compiles apart, where it is needed (its `.compiled` target).
"$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" --index-strategy unsafe-best-match \
  "${args[@]}" -e ".$EXTRAS"
