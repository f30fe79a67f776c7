#!/usr/bin/env bash
# Install everything the tests need and run them all: the README's test command, and exactly
# what CI runs (.ci/run). Idempotent; slow artefacts are cached outside the checkout
# ($KANOA_DEV_CACHE, default ~/.cache/kanoa-local-dev), so a re-run is fast.
#
#   bash scripts/test.sh                          # everything
#   bash scripts/test.sh -m "not docker and not engine"   # the seconds-long unit loop
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
start=$SECONDS
log() { printf '[test.sh %4ds] %s\n' "$((SECONDS - start))" "$*" >&2; }

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi
log "installing kanoa-local with its test extras"
.venv/bin/python -m pip install -q -e ".[test]" 2> >(grep -v "is ignored: it is neither" >&2)

# The real parts: a Docker Engine, the vLLM CPU runtime (venv + image). Unit-only runs skip them.
if [[ " $* " != *" not docker and not engine"* ]]; then
  log "Docker Engine"
  bash scripts/docker-engine.sh
  log "vLLM CPU runtime (wheels, venv, image, Gemma 3 270M; cached)"
  eval "$(bash scripts/cpu-runtime.sh all | grep -E '^KANOA_(CPU|GEMMA)_' | sed 's/^/export /')"
fi

log "lint (ruff) and types (mypy, pydantic plugin)"
.venv/bin/python -m ruff check kanoa_local tests benchmarks scripts
.venv/bin/python -m mypy kanoa_local

log "pytest"
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
log "done (pytest exit $rc)"
exit "$rc"
