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

log "lint (ruff) and types (mypy, pydantic plugin; the tests too)"
.venv/bin/python -m ruff check kanoa_local tests benchmarks scripts
.venv/bin/python -m mypy kanoa_local tests

# The unit tests once more against the declared minimum versions (a venv cached by that list).
if [[ " $* " != *" not docker and not engine"* ]]; then
  MIN=".venv-min"
  stamp="$(sha256sum scripts/min-versions.txt pyproject.toml | sha256sum | cut -c1-16)"
  if [ "$(cat "$MIN/.stamp" 2>/dev/null)" != "$stamp" ]; then
    log "venv with the minimum versions (scripts/min-versions.txt)"
    rm -rf "$MIN"; "$PY" -m venv "$MIN"
    "$MIN/bin/python" -m pip install -q -c scripts/min-versions.txt -e ".[test]" 2> >(grep -v "is ignored: it is neither" >&2)
    echo "$stamp" > "$MIN/.stamp"
  fi
  log "unit tests on the minimum versions"
  "$MIN/bin/python" -m pytest -q -p no:cacheprovider -m "not docker and not engine and not scaleout and not gpu" \
    -W error::UserWarning:pydantic -o addopts="" --timeout 600
fi

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
