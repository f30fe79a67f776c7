#!/usr/bin/env bash
# The README's main job, as far as it goes today: install kanoa-local, check this machine, then
# serve a small model on the best runtime here and get one real answer from it.
# On this kind of machine (no GPU, no model hub) that is the vLLM CPU engine in a local image
# with the tiny model the test harness generates; everything started is removed at the end,
# on error, or on Ctrl-C.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -e . 2> >(grep -v "is ignored: it is neither" >&2)
KL=.venv/bin/kanoa-local

echo "== kanoa-local check"
set +e; "$KL" check; rc=$?; set -e
echo "(check exit code $rc: 0 GPU ready, 10 CPU only, 11 GPU not ready, 12 cannot serve)"
if [ "$rc" -ne 0 ] && [ "$rc" -ne 10 ] && [ "$rc" -ne 11 ]; then exit "$rc"; fi

echo "== preparing the vLLM CPU runtime (cached after the first run)"
bash scripts/docker-engine.sh
eval "$(bash scripts/cpu-runtime.sh all | grep '^KANOA_CPU_' | sed 's/^/export /')"
MODEL="$("$KANOA_CPU_VENV/bin/python" scripts/tiny_model.py)"
echo "== serving the tiny model with $KANOA_CPU_IMAGE"
exec .venv/bin/python scripts/demo_serve.py --image "$KANOA_CPU_IMAGE" --model "$MODEL"
