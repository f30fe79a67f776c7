#!/usr/bin/env bash
# Llama 3.1 405B on 2 nodes × 8 GPUs (TP 8, PP 2)
# Rendered by kanoa-local from its plan; run each block on its node. The API key comes from
# the environment (never written here): export VLLM_API_KEY=... (`kanoa-local env` shows one).
set -euo pipefail
: "${VLLM_API_KEY:?set VLLM_API_KEY first}"
HF_CACHE="${HF_HOME:-$HOME/.cache/huggingface}"
: "${HEAD_ADDR:?set HEAD_ADDR to the address of the head node}"

# --- node 0 (node0), the head: serves the API
docker run -d --name kanoa-llama-3.1-405b-0 --restart no --gpus all --ipc=host --network host -v "$HF_CACHE:/root/.cache/huggingface" -e VLLM_API_KEY -e HF_TOKEN --label io.kanoa-local.deployment=llama-3.1-405b --label io.kanoa-local.model=llama-3.1-405b --label io.kanoa-local.node-rank=0 vllm/vllm-openai:v0.33.0 \
  --model meta-llama/Llama-3.1-405B-Instruct --served-model-name llama-3.1-405b --host 127.0.0.1 --port 8000 --max-model-len 131072 --gpu-memory-utilization 0.92 --tensor-parallel-size 8 --pipeline-parallel-size 2 --distributed-executor-backend mp --nnodes 2 --node-rank 0 --master-addr "$HEAD_ADDR"

# --- node 1 (node1)
docker run -d --name kanoa-llama-3.1-405b-1 --restart no --gpus all --ipc=host --network host -v "$HF_CACHE:/root/.cache/huggingface" -e VLLM_API_KEY -e HF_TOKEN --label io.kanoa-local.deployment=llama-3.1-405b --label io.kanoa-local.model=llama-3.1-405b --label io.kanoa-local.node-rank=1 --entrypoint vllm vllm/vllm-openai:v0.33.0 serve \
  --model meta-llama/Llama-3.1-405B-Instruct --served-model-name llama-3.1-405b --host 127.0.0.1 --port 8000 --max-model-len 131072 --gpu-memory-utilization 0.92 --tensor-parallel-size 8 --pipeline-parallel-size 2 --distributed-executor-backend mp --nnodes 2 --node-rank 1 --master-addr "$HEAD_ADDR" --headless
