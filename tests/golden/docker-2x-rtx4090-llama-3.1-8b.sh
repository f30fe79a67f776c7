#!/usr/bin/env bash
# Llama 3.1 8B on one machine
# Rendered by kanoa-local from its plan; run each block on its node. The API key comes from
# the environment (never written here): export VLLM_API_KEY=... (`kanoa-local env` shows one).
set -euo pipefail
: "${VLLM_API_KEY:?set VLLM_API_KEY first}"
HF_CACHE="${HF_HOME:-$HOME/.cache/huggingface}"

# --- node 0 (node0)
docker run -d --name kanoa-llama-3.1-8b --restart no --gpus "device=0" --ipc=host -p 127.0.0.1:8000:8000 -v "$HF_CACHE:/root/.cache/huggingface" -e VLLM_API_KEY -e HF_TOKEN --label io.kanoa-local.deployment=llama-3.1-8b --label io.kanoa-local.model=llama-3.1-8b --label io.kanoa-local.node-rank=0 vllm/vllm-openai:v0.33.0-cu129 \
  --model meta-llama/Llama-3.1-8B-Instruct --served-model-name llama-3.1-8b --host 0.0.0.0 --port 8000 --max-model-len 12800 --gpu-memory-utilization 0.92
