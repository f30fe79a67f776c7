#!/usr/bin/env bash
# Qwen2.5-VL 7B on one machine
# Rendered by kanoa-local from its plan; run each block on its node. The API key comes from
# the environment (never written here): export VLLM_API_KEY=... (`kanoa-local env` shows one).
set -euo pipefail
: "${VLLM_API_KEY:?set VLLM_API_KEY first}"
HF_CACHE="${HF_HOME:-$HOME/.cache/huggingface}"

# --- node 0 (node0)
docker run -d --name kanoa-qwen2.5-vl-7b --restart no --gpus "device=0" --ipc=host -p 127.0.0.1:8000:8000 -v "$HF_CACHE:/root/.cache/huggingface" -e VLLM_API_KEY -e HF_TOKEN --label io.kanoa-local.deployment=qwen2.5-vl-7b --label io.kanoa-local.model=qwen2.5-vl-7b --label io.kanoa-local.node-rank=0 vllm/vllm-openai:v0.33.0 \
  --model Qwen/Qwen2.5-VL-7B-Instruct --served-model-name qwen2.5-vl-7b --host 0.0.0.0 --port 8000 --max-model-len 13312 --gpu-memory-utilization 0.92 --limit-mm-per-prompt '{"image":1}'
