#!/usr/bin/env bash
# What `make test` runs: the whole suite, in two phases (tests/conftest.py, "Phases and workers").
#
#   1. The destructive phase: the destructive tests (replica kills and a burst, timed to the
#      second, and the two-node test) on one worker. They leave the cores half idle, so beside
#      them, at idle CPU priority, runs the work that starts no Ray: the quick demo bundle's
#      build (the main phase serves it) and the fast tier (`make test-fast`). SCHED_IDLE rather
#      than nice 19: Ray runs its workers at nice 15, barely above a nice-19 neighbour, while
#      the kernel gives a SCHED_IDLE process only a core that nothing else wants.
#   2. The main phase: everything else, on two pytest-xdist workers.
#
# Every step runs even when one before it failed; the exit status is the first failure's.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
mkdir -p test-artifacts
BESIDE_LOG=test-artifacts/beside-phase-1.log

status=0
record() { [ "$status" -ne 0 ] || status=$1; }

idle_priority() {
  if command -v chrt >/dev/null && chrt --idle 0 true 2>/dev/null; then
    chrt --idle 0 "$@"
  else
    nice -n 19 "$@"
  fi
}

beside_phase_1() {  # run in the background: a subshell, with its own status
  echo "== the quick demo bundle (python -m model.demo.quick)"
  idle_priority "$PY" -m model.demo.quick || record $?
  echo "== the fast tier (make test-fast)"
  # No cache provider: two pytest sessions at once would both write .pytest_cache.
  idle_priority "$PY" -m pytest -q -ra -p no:cacheprovider -m "not slow" || record $?
  return "$status"
}

echo "== phase 1, the destructive phase: the destructive tests; beside them, the quick demo bundle and the fast tier ($BESIDE_LOG)"
beside_phase_1 >"$BESIDE_LOG" 2>&1 &
beside=$!
# Only the modules that mark tests destructive: collecting every module would import Gradio,
# Playwright, Hypothesis and the rest first, for tests this phase deselects.
mapfile -t destructive_modules < <(grep -l "mark.destructive" tests/test_*.py)
"$PY" -m pytest -q -ra --durations=5 -m destructive "${destructive_modules[@]}" || record $?
wait "$beside" || record $?
cat "$BESIDE_LOG"

echo "== phase 2, the main phase: everything else, on two workers"
"$PY" -m pytest -q -ra --durations=10 -n 2 --dist loadgroup -m "slow and not destructive" || record $?
exit "$status"
